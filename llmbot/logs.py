"""Logging set-up: one line per record on stderr (plain text, or a JSON object with
LLMBOT_LOG_FORMAT=json), secrets masked in both, noisy libraries quieted."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

# What every LogRecord has; anything else on a record came from a call's `extra=` (thread_id, ...).
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}
# A LogRecord has a `thread` of its own (the OS thread): calls pass thread_id (and post_id), named so in JSON.
_JSON_NAMES = {"thread_id": "thread", "post_id": "post"}


def configure_logging(level: str, secrets: tuple[str, ...] = (), fmt: str = "text") -> None:
    """One-line logs to stderr, as text or (fmt "json") JSON objects; any secret that slips into a
    message, a traceback or a field is masked."""
    handler = logging.StreamHandler()
    text = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(JsonFormatter() if fmt == "json" else text)
    handler.addFilter(RedactSecrets(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The driver logs every websocket frame at INFO/DEBUG and forces its own level; keep it quiet.
    logging.getLogger("mattermostautodriver.websocket").setLevel(max(logging.getLevelName(level), logging.WARNING))
    for noisy in ("httpx", "httpx2", "httpcore", "openai", "aiohttp"):
        logging.getLogger(noisy).setLevel(max(logging.getLevelName(level), logging.WARNING))


def extra_fields(record: logging.LogRecord) -> dict[str, object]:
    """The fields a log call added with `extra=`."""
    return {key: value for key, value in record.__dict__.items() if key not in _STANDARD}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, then the call's
    `extra=` fields (thread_id and post_id as thread and post; plugin, outcome, duration...) and
    any traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            entry.setdefault(_JSON_NAMES.get(key, key), value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class RedactSecrets(logging.Filter):
    """Replaces secrets in the rendered message (args included), the traceback and the `extra=`
    fields with '***'."""

    def __init__(self, secrets: tuple[str, ...]) -> None:
        super().__init__()
        self.secrets = tuple(s for s in secrets if len(s) >= 4)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        text = message
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        for secret in self.secrets:
            text = text.replace(secret, "***")
            if record.exc_text:
                record.exc_text = record.exc_text.replace(secret, "***")
        if text != message:
            record.msg, record.args = text, None
        for key, value in extra_fields(record).items():
            masked = self._mask(value)
            if masked is not value:
                setattr(record, key, masked)
        return True

    def _mask(self, value: object) -> object:
        """`value` with the secrets masked: the same object when it holds none; strings, mappings
        and sequences masked inside; any other object in its str() form when that shows one."""
        if value is None or isinstance(value, (bool, int, float)):
            return value
        if isinstance(value, dict):
            items = {key: self._mask(item) for key, item in value.items()}
            return items if any(items[key] is not value[key] for key in value) else value
        if isinstance(value, (list, tuple)):
            masked = [self._mask(item) for item in value]
            return masked if any(a is not b for a, b in zip(masked, value, strict=True)) else value
        text = value if isinstance(value, str) else str(value)
        if not any(secret in text for secret in self.secrets):
            return value
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text
