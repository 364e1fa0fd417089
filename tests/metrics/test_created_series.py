"""/metrics leaves out the `_created` twins of counters and histograms unless asked for
(`serve --metrics-created`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from splitserve.app import create_app
from splitserve.cli import build_parser, settings_from_args
from splitserve.config import Settings
from splitserve.metrics.prometheus import (
    INVOCATION_4XX_ERRORS,
    INVOCATIONS,
    remove_variant_series,
    show_created_series,
)


@pytest.fixture(autouse=True)
def _restore_the_default() -> Iterator[None]:
    """The switch is process-wide: put back the gateway's default after each test."""
    yield
    show_created_series(Settings().metrics_created)


async def _exposition(tmp_path: Path, shown: bool) -> str:
    settings = Settings(
        state_dir=tmp_path / "state", model_store=tmp_path / "models", metrics_created=shown
    )
    async with TestClient(TestServer(create_app(settings))) as client:
        # A series of one of splitserve's own families and one of prometheus_client's counters.
        INVOCATIONS.labels("created-test", "A").inc()
        INVOCATION_4XX_ERRORS.labels("created-test", "A").inc()
        try:
            return await (await client.get("/metrics")).text()
        finally:
            remove_variant_series("created-test", "A")


async def test_metrics_has_no_created_series_by_default(tmp_path: Path) -> None:
    text = await _exposition(tmp_path, shown=False)
    assert "splitserve_" in text
    assert "_created" not in text


async def test_metrics_created_shows_them(tmp_path: Path) -> None:
    text = await _exposition(tmp_path, shown=True)
    assert "_created{" in text


def test_the_serve_flag_sets_it() -> None:
    parser = build_parser()
    assert not settings_from_args(parser.parse_args(["serve"])).metrics_created
    assert settings_from_args(parser.parse_args(["serve", "--metrics-created"])).metrics_created
