"""The gateway's log: its format, the request id on every line about a request, the access log.

- `configure` installs one handler on the root logger, writing text lines (the default) or one
  JSON object a line (`--log-format json`: time, level, logger, message, request_id when known,
  exception when there is one) for log shippers.
- The error boundary sets `REQUEST_ID` at the start of every request (one ContextVar.set);
  aiohttp runs each request in its own task, so the value is the request's for everything logged
  while it is handled and is gone after. `RequestIdFilter`, on the handlers, copies it onto each
  record as `request_id`; the text format appends `[request <id>]` when there is one.
- The access log (off by default; `--access-log FILE` or `-` for the log's own stream) is a line
  per answered request: client, method, path, status, size, seconds and request id, in the
  log's format. aiohttp calls `AccessLog.log` after the answer is written.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar
from typing import TextIO

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from splitserve.config import LogSettings

#: The id of the request being handled in this task, set by the error boundary.
REQUEST_ID: ContextVar[str | None] = ContextVar("splitserve_request_id", default=None)

#: Where access lines are logged (not propagated: they go to their own handler).
access_logger = logging.getLogger("splitserve.access")

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RequestIdFilter(logging.Filter):
    """Puts the current request's id on every record (`record.request_id`, None outside one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Annotate `record`; never drops it."""
        if getattr(record, "request_id", None) is None:
            record.request_id = REQUEST_ID.get()
        return True


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message`, then `[request <id>]` for a line about a request."""

    def __init__(self) -> None:
        """The gateway's text format."""
        super().__init__(_TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        """The line for `record`."""
        line = super().format(record)
        request_id = getattr(record, "request_id", None)
        if request_id is None:
            return line
        first, newline, rest = line.partition("\n")
        return f"{first} [request {request_id}]{newline}{rest}"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601 with milliseconds), level, logger, message,
    and request_id and exception when there are."""

    def format(self, record: logging.LogRecord) -> str:
        """The JSON line for `record` (newlines in the message are escaped, as JSON does)."""
        seconds = time.gmtime(record.created)
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", seconds) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            entry["request_id"] = request_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def formatter(log_format: str) -> logging.Formatter:
    """The formatter of `log_format` ("text" or "json").

    Raises:
        ValueError: another format.
    """
    if log_format == "text":
        return TextFormatter()
    if log_format == "json":
        return JsonFormatter()
    raise ValueError(f"unknown log format {log_format!r}: use text or json")


def configure(settings: LogSettings, stream: TextIO | None = None) -> None:
    """Send the gateway's log to `stream` (stderr) at `settings.level` in `settings.format`,
    with request ids, replacing the root logger's handlers.

    Raises:
        ValueError: an unknown format or level.
    """
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(formatter(settings.format))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.level.upper())


class LogSetupError(Exception):
    """The log cannot be set up as asked (e.g. the access log's file cannot be opened)."""


def open_access_log(settings: LogSettings) -> logging.Logger | None:
    """The logger access lines go to, set up for `settings.access_log`; None when it is off.
    "-" writes them to stderr beside the log; any other value is a file they are appended to.

    Raises:
        LogSetupError: the file cannot be opened.
    """
    target = settings.access_log
    if target is None:
        return None
    try:
        handler: logging.Handler = (
            logging.StreamHandler(sys.stderr)
            if target == "-"
            else logging.FileHandler(target, encoding="utf-8")
        )
    except OSError as error:
        raise LogSetupError(
            f"cannot open the access log {target}: {error.strerror or error}"
        ) from None
    handler.setFormatter(formatter(settings.format))
    for old in list(access_logger.handlers):
        access_logger.removeHandler(old)
        old.close()
    access_logger.addHandler(handler)
    access_logger.setLevel(logging.INFO)
    access_logger.propagate = False
    return access_logger


class AccessLog(AbstractAccessLogger):
    """aiohttp's access-log hook: one line per answered request, with its request id (read from
    the answer's x-amzn-RequestId, which the boundary sets on every answer)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        """Log one answered request; `time` is the seconds it took."""
        request_id = response.headers.get("x-amzn-RequestId")
        self.logger.info(
            '%s "%s %s HTTP/%d.%d" %d %d %.6f',
            request.remote or "-",
            request.method,
            request.path_qs,
            request.version.major,
            request.version.minor,
            response.status,
            response.body_length,
            time,
            extra={"request_id": request_id},
        )
