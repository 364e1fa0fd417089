"""The gateway's log: request ids on the lines about a request (set by the boundary, read by the
filter), the text and JSON formats, and the access log (off by default) through the real edge."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from splitserve.app import create_app
from splitserve.config import MAX_PAYLOAD_BYTES, LogSettings, Settings
from splitserve.wiring import logs
from splitserve.wiring.boundary import REQUEST_ID_HEADER, ErrorBoundary, Plane
from splitserve.wiring.edge import EdgeLimits, EdgeRunner

_MIB = 1024 * 1024
handler_log = logging.getLogger("splitserve.test.handler")


def _record(message: str = "hello", **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("splitserve.x", logging.WARNING, __file__, 1, message, (), None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def _request_id(record: logging.LogRecord) -> object:
    return getattr(record, "request_id", "missing")


@pytest.fixture
def root_handlers() -> Iterator[None]:
    """Keep the root logger as pytest set it (configure replaces its handlers)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


@pytest.fixture
def no_access_handlers() -> Iterator[None]:
    yield
    for handler in list(logs.access_logger.handlers):
        logs.access_logger.removeHandler(handler)
        handler.close()


def test_the_filter_copies_the_request_id_of_the_current_context() -> None:
    record = _record()
    logs.RequestIdFilter().filter(record)
    assert _request_id(record) is None
    token = logs.REQUEST_ID.set("req-1")
    try:
        record = _record()
        assert logs.RequestIdFilter().filter(record)
        assert _request_id(record) == "req-1"
        # A record that names its own request (the access log's) keeps it.
        named = _record(request_id="req-2")
        logs.RequestIdFilter().filter(named)
        assert _request_id(named) == "req-2"
    finally:
        logs.REQUEST_ID.reset(token)


def test_text_lines_name_the_request_when_there_is_one() -> None:
    text = logs.TextFormatter()
    assert text.format(_record(request_id=None)).endswith("WARNING splitserve.x: hello")
    assert text.format(_record(request_id="r-9")).endswith(
        "WARNING splitserve.x: hello [request r-9]"
    )


def test_json_lines_are_one_object_each() -> None:
    line = logs.JsonFormatter().format(_record("two\nlines", request_id="r-1"))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "WARNING"
    assert entry["logger"] == "splitserve.x"
    assert entry["message"] == "two\nlines"
    assert entry["request_id"] == "r-1"
    assert entry["time"].endswith("Z")
    assert "request_id" not in json.loads(logs.JsonFormatter().format(_record(request_id=None)))
    try:
        raise ValueError("inside")
    except ValueError:
        failed = _record()
        failed.exc_info = sys.exc_info()
    assert "ValueError: inside" in json.loads(logs.JsonFormatter().format(failed))["exception"]


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log format 'xml'"):
        logs.formatter("xml")


def test_configure_writes_json_with_request_ids(root_handlers: None) -> None:
    stream = io.StringIO()
    logs.configure(LogSettings(level="info", format="json"), stream)
    token = logs.REQUEST_ID.set("req-7")
    try:
        logging.getLogger("splitserve.y").info("about a request")
    finally:
        logs.REQUEST_ID.reset(token)
    logging.getLogger("splitserve.y").debug("below the level")
    (line,) = stream.getvalue().splitlines()
    assert json.loads(line)["request_id"] == "req-7"


async def test_lines_logged_while_handling_carry_the_answers_request_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def ok(request: web.Request) -> web.Response:
        handler_log.warning("handling")
        return web.Response(text="ok")

    async def broken(request: web.Request) -> web.Response:
        handler_log.warning("about to fail")
        raise RuntimeError("internal detail")

    boundary = ErrorBoundary(Plane.CONTROL, MAX_PAYLOAD_BYTES)
    app = web.Application()
    app.add_routes(boundary.routes([web.get("/ok", ok), web.get("/broken", broken)]))
    caplog.set_level(logging.INFO)
    for handler in logging.getLogger().handlers:
        handler.addFilter(logs.RequestIdFilter())
    try:
        async with TestClient(TestServer(app)) as client:
            answered = await client.get("/ok")
            failed = await client.get("/broken")
            assert failed.status == 500
        by_message = {record.getMessage(): record for record in caplog.records}
        assert _request_id(by_message["handling"]) == answered.headers[REQUEST_ID_HEADER]
        failed_id = failed.headers[REQUEST_ID_HEADER]
        assert _request_id(by_message["about to fail"]) == failed_id
        assert _request_id(by_message[f"request {failed_id} failed"]) == failed_id
        # Outside a request, nothing is named.
        handler_log.warning("after")
        assert _request_id(caplog.records[-1]) is None
    finally:
        for handler in logging.getLogger().handlers:
            for log_filter in list(handler.filters):
                if isinstance(log_filter, logs.RequestIdFilter):
                    handler.removeFilter(log_filter)


def test_an_access_log_that_cannot_be_opened_is_a_clear_error(tmp_path: Path) -> None:
    target = tmp_path / "missing" / "access.log"
    with pytest.raises(logs.LogSetupError, match=f"cannot open the access log {target}"):
        logs.open_access_log(LogSettings(access_log=str(target)))


def test_no_access_log_by_default() -> None:
    assert logs.open_access_log(LogSettings()) is None


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_the_access_log_has_a_line_per_request_with_its_id(
    tmp_path: Path, log_format: str, no_access_handlers: None
) -> None:
    access = tmp_path / "access.log"
    settings = Settings(
        state_dir=tmp_path / "state",
        model_store=tmp_path / "models",
        logs=replace(LogSettings(), access_log=str(access), format=log_format),
    )
    limits = EdgeLimits.derive(settings.edge, descriptor_limit=4096, memory_bytes=4096 * _MIB)
    runner = EdgeRunner(create_app(settings), settings, limits)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"http://127.0.0.1:{site.port}/endpoints/nope/invocations") as answer,
        ):
            request_id = answer.headers[REQUEST_ID_HEADER]
            assert answer.status == 400
    finally:
        await runner.cleanup()
    for handler in logs.access_logger.handlers:
        handler.flush()
    (line,) = access.read_text().splitlines()
    if log_format == "json":
        entry = json.loads(line)
        assert entry["request_id"] == request_id
        assert entry["logger"] == "splitserve.access"
        line = entry["message"]
    else:
        assert line.endswith(f"[request {request_id}]")
    assert '"POST /endpoints/nope/invocations HTTP/1.1" 400 ' in line
