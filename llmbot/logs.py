"""Logging set-up: one plain line per record on stderr, secrets masked, noisy libraries quieted."""

from __future__ import annotations

import logging


def configure_logging(level: str, secrets: tuple[str, ...] = ()) -> None:
    """Plain one-line logs to stderr; any secret that slips into a message is masked."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The driver logs every websocket frame at INFO/DEBUG and forces its own level; keep it quiet.
    logging.getLogger("mattermostautodriver.websocket").setLevel(max(logging.getLevelName(level), logging.WARNING))
    for noisy in ("httpx", "httpx2", "httpcore", "openai", "aiohttp"):
        logging.getLogger(noisy).setLevel(max(logging.getLevelName(level), logging.WARNING))


class RedactSecrets(logging.Filter):
    """Replaces secrets in the rendered message (args included) with '***'."""

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
        return True
