"""Logging set-up: secrets masked wherever they slip in, one plain line per record, noisy libraries quiet."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from llmbot.logs import RedactSecrets, configure_logging

TOKEN = "mm-token-4f9c2e7a1b"
API_KEY = "sk-test-0123456789abcdef"


class TestRedactSecrets:
    @pytest.fixture
    def logged(self) -> Iterator[tuple[logging.Logger, io.StringIO]]:
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        handler.addFilter(RedactSecrets((TOKEN, API_KEY)))
        logger = logging.getLogger("tests.unit.test_logs.redact")
        logger.handlers[:] = [handler]
        logger.propagate = False
        logger.setLevel(logging.DEBUG)
        yield logger, stream
        logger.handlers.clear()

    def test_a_token_in_the_message_is_masked(self, logged: tuple[logging.Logger, io.StringIO]) -> None:
        logger, stream = logged
        logger.info(f"Authorization: Bearer {TOKEN}")
        assert stream.getvalue() == "INFO Authorization: Bearer ***\n"

    def test_a_token_in_the_args_is_masked(self, logged: tuple[logging.Logger, io.StringIO]) -> None:
        logger, stream = logged
        logger.warning("connecting with %s and key=%r", TOKEN, API_KEY)
        out = stream.getvalue()
        assert TOKEN not in out and API_KEY not in out
        assert out == "WARNING connecting with *** and key='***'\n"

    def test_a_token_in_a_traceback_is_masked(self, logged: tuple[logging.Logger, io.StringIO]) -> None:
        logger, stream = logged
        try:
            raise RuntimeError(f"401 for token {TOKEN}")
        except RuntimeError:
            logger.exception("request failed")
        out = stream.getvalue()
        assert TOKEN not in out
        assert "401 for token ***" in out

    def test_messages_without_secrets_are_untouched(self, logged: tuple[logging.Logger, io.StringIO]) -> None:
        logger, stream = logged
        logger.info("answered %d posts in %s", 3, "town-square")
        assert stream.getvalue() == "INFO answered 3 posts in town-square\n"

    def test_the_filter_never_drops_a_record(self) -> None:
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "key %s", (API_KEY,), None)
        assert RedactSecrets((API_KEY,)).filter(record) is True
        assert record.getMessage() == "key ***"

    def test_empty_and_very_short_secrets_are_not_masked(self) -> None:
        # Masking "" or "ab" would garble every log line.
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "a tab of bytes", None, None)
        RedactSecrets(("", "ab")).filter(record)
        assert record.getMessage() == "a tab of bytes"


class TestConfigureLogging:
    @pytest.fixture(autouse=True)
    def restore_root(self) -> Iterator[None]:
        """configure_logging replaces the root handlers; give the next test its own back."""
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        quiet = {name: logging.getLogger(name).level for name in ("httpx", "openai", "mattermostautodriver.websocket")}
        yield
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, old in quiet.items():
            logging.getLogger(name).setLevel(old)

    def test_one_plain_line_on_stderr_with_secrets_masked(self, capsys: pytest.CaptureFixture[str]) -> None:
        configure_logging("INFO", (TOKEN,))
        logging.getLogger("llmbot.test").info("logged in with %s", TOKEN)
        err = capsys.readouterr().err
        assert err.endswith("INFO llmbot.test: logged in with ***\n")
        assert TOKEN not in err

    def test_the_level_applies_to_llmbot_and_noisy_libraries_stay_at_warning(self) -> None:
        configure_logging("DEBUG")
        assert logging.getLogger().level == logging.DEBUG
        assert logging.getLogger("httpx").level == logging.WARNING
        assert logging.getLogger("mattermostautodriver.websocket").level == logging.WARNING
        configure_logging("ERROR")
        assert logging.getLogger("openai").level == logging.ERROR
