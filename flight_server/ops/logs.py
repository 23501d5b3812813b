"""Logging set-up: one JSON object a line in production, plain text for humans.

Modules log with `logging.getLogger(__name__)`; structured fields go in
`extra={"fields": {...}}` and appear as top-level keys of the JSON line.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from typing import Any


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info and record.exc_info[1] is not None:
            line["error"] = "".join(_format_exception(record.exc_info[1]))
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            text += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return text

    def formatException(self, ei: Any) -> str:
        return "".join(_format_exception(ei[1]))


def _format_exception(exc: BaseException) -> list[str]:
    # An explicit limit: the server sets sys.tracebacklimit = 0 so that tracebacks
    # never reach clients, but the log keeps them.
    return traceback.format_exception(type(exc), exc, exc.__traceback__, limit=50)


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("sqlglot").setLevel(logging.ERROR)
