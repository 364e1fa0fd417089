"""Feedback over HTTP: the routes behind the control plane's error boundary, signed as under
`serve --auth`, called by `splitserve.feedback` (the stdlib client, signing with botocore), and
the experiment view read by `splitserve experiment`'s fetch and table."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

import splitserve
from splitserve import cli
from splitserve.app import create_app, signed_routes
from splitserve.cli_experiment import fetch_experiment, render_experiment
from splitserve.cli_stats import StatsUnavailable
from splitserve.config import FeedbackSettings
from splitserve.database import open_database
from splitserve.gateway_client import GatewayClient, GatewayRequestError
from splitserve.online import routes as online_routes
from splitserve.online.client import signed_headers
from splitserve.online.service import FeedbackService
from splitserve.online.store import FeedbackStore
from splitserve.wiring import keys
from splitserve.wiring.auth import AccessKey, SigV4Verifier
from splitserve.wiring.boundary import ErrorBoundary, Plane

KEY = ("AKIDFEEDBACK0001", "feedback-secret/0123456789")
NOW = 1_750_000_000.0


class Endpoints:
    def known(self, endpoint: str) -> bool:
        return endpoint == "ab"

    def weights(self, endpoint: str) -> Mapping[str, float] | None:
        return {"A": 1.0, "B": 1.0} if endpoint == "ab" else None

    def names(self) -> list[str]:
        return ["ab"]


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[tuple[str, FeedbackStore]]:
    """A server with the feedback routes as the app adds them (POST signed), over SQLite."""
    path = tmp_path / "state.sqlite3"
    sqlite3.connect(path).close()
    store = FeedbackStore.open(open_database(f"sqlite://{path}"), owned=True)
    settings = FeedbackSettings(max_body_bytes=4096)
    service = FeedbackService(settings, store, Endpoints(), lambda: NOW)
    verifier = SigV4Verifier([AccessKey(*KEY)], max_clock_skew_seconds=300)
    table = online_routes.routes(lambda: service, settings)
    app = web.Application()
    app.router.add_routes(
        ErrorBoundary(Plane.CONTROL, 1 << 20).routes(
            [
                *signed_routes([r for r in table if r.method == "POST"], verifier),
                *(r for r in table if r.method != "POST"),
            ]
        )
    )
    async with TestServer(app) as server:
        yield str(server.make_url("")).rstrip("/"), store
    store.close()


def _send(url: str, items: list[object], **options: object) -> dict[str, object]:
    return splitserve.feedback(url, "ab", items, **options)  # type: ignore[arg-type]


async def test_signed_feedback_joins_and_the_view_shows_it(
    gateway: tuple[str, FeedbackStore],
) -> None:
    url, store = gateway
    store.write_index(
        [("ab", f"i{n}", "AB"[n % 2], False, NOW - 5, "text/csv", b"0.8") for n in range(6)]
    )
    answer = await asyncio.to_thread(
        _send, url, [("i0", 1), ("i1", True), ("i2", "0"), ("i9", 1)], credentials=KEY
    )
    assert answer["Joined"] == 3
    assert answer["Refused"] == 1
    records = answer["Records"]
    assert isinstance(records, list)
    assert records[3]["Outcome"] == "unknown"
    view = await asyncio.to_thread(fetch_experiment, url, "ab", 5.0)
    assert view["labels"] == {"joined": 3, "refused": {"unknown": 1}}
    text = render_experiment(view)
    assert text.startswith("Endpoint ab: 3 labels joined, 1 refused (unknown 1)")
    assert "accuracy *" in text
    assert "winner: none yet" in text
    assert "action" not in text
    shown = render_experiment({**view, "action": {"mode": "promote", "status": "waiting"}})
    assert shown.endswith("action (promote): waiting\n")


async def test_refusals_over_http(gateway: tuple[str, FeedbackStore]) -> None:
    url, store = gateway
    store.write_index([("ab", "one", "A", False, NOW - 5, "text/csv", b"0.8")])
    # Unsigned: refused before anything is read.
    with pytest.raises(GatewayRequestError) as unsigned:
        await asyncio.to_thread(_send, url, [("one", 1)])
    assert unsigned.value.status == 403
    # A single record's refusal is the answer's error, with its status.
    single = json.dumps({"groundTruthData": {"data": "1"}, "eventMetadata": {"eventId": "missing"}})
    for body, status, message in [
        (single, 404, "No answered invocation has inference id 'missing'"),
        ("not json at all", 400, "neither JSON nor JSON Lines"),
    ]:
        with pytest.raises(GatewayRequestError) as refused:
            await asyncio.to_thread(_post_signed, url, body.encode())
        assert refused.value.status == status
        assert message in refused.value.message
    await asyncio.to_thread(_send, url, [("one", 1)], credentials=KEY)
    with pytest.raises(GatewayRequestError) as duplicate:
        await asyncio.to_thread(
            _post_signed,
            url,
            json.dumps(
                {"groundTruthData": {"data": "0"}, "eventMetadata": {"eventId": "one"}}
            ).encode(),
        )
    assert duplicate.value.status == 409
    # Over the body limit: 413, by Content-Length, before reading it.
    with pytest.raises(GatewayRequestError) as large:
        await asyncio.to_thread(_send, url, [("x" * 60, 1)] * 100, credentials=KEY)
    assert large.value.status == 413
    # The view of an unknown endpoint.
    with pytest.raises(StatsUnavailable, match="Endpoint nope not found"):
        await asyncio.to_thread(fetch_experiment, url, "nope", 5.0)


def _post_signed(url: str, body: bytes) -> object:
    """POST `body` as it is, signed (what `splitserve.feedback` does with its own body)."""
    path = "/splitserve/feedback/ab"
    headers = signed_headers(
        url + path, body, {"Content-Type": "application/json"}, KEY, "us-east-1"
    )
    return GatewayClient(url, 5.0).post(path, body, headers)


async def test_the_experiment_command_prints_json_and_watches(
    gateway: tuple[str, FeedbackStore],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, _ = gateway
    assert await asyncio.to_thread(cli.main, ["experiment", "ab", "--json", "--url", url]) == 0
    assert json.loads(capsys.readouterr().out)["EndpointName"] == "ab"
    slept: list[float] = []

    def interrupt(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr("splitserve.cli_experiment.time.sleep", interrupt)
    watched = await asyncio.to_thread(cli.main, ["experiment", "ab", "--watch", "--url", url])
    assert watched == 0
    assert slept == [2.0, 2.0]
    assert capsys.readouterr().out.count("Endpoint ab: 0 labels joined") == 2
    assert await asyncio.to_thread(cli.main, ["experiment", "nope", "--url", url]) == 1
    assert "Endpoint nope not found" in capsys.readouterr().err


def test_serve_takes_the_experiment_metric(tmp_path: Path) -> None:
    parser = cli.build_parser()
    args = parser.parse_args(["serve", "--state-dir", str(tmp_path), "--experiment-metric", "auc"])
    assert cli.settings_from_args(args).feedback.metric == "auc"
    default = parser.parse_args(["serve", "--state-dir", str(tmp_path)])
    assert cli.settings_from_args(default).feedback.metric == "accuracy"
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--experiment-metric", "speed"])


def test_serve_can_keep_no_feedback_index(tmp_path: Path) -> None:
    parser = cli.build_parser()
    args = parser.parse_args(["serve", "--state-dir", str(tmp_path), "--no-feedback-index"])
    settings = cli.settings_from_args(args)
    assert settings.feedback.index_enabled is False
    assert keys.FEEDBACK_INDEX not in create_app(settings)  # the request path records nothing
    default = cli.settings_from_args(parser.parse_args(["serve", "--state-dir", str(tmp_path)]))
    assert default.feedback.index_enabled is True
    assert keys.FEEDBACK_INDEX in create_app(default)
