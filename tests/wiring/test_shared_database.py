"""Over PostgreSQL the parts of one gateway process share one connection pool; the replicas'
heartbeats and lease keep one of their own."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import aiohttp
import psycopg
from aiohttp import web

from splitserve.app import create_app
from splitserve.config import DatabaseSettings, Settings
from splitserve.wiring import keys
from splitserve.wiring.edge import EdgeLimits, EdgeRunner


def _connections(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as connection:
        row = connection.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    assert row is not None
    return int(row[0])


async def test_the_parts_of_a_process_share_one_pool(tmp_path: Path, postgres_url: str) -> None:
    database = DatabaseSettings(pool_min_size=1, pool_max_size=1)
    settings = replace(
        Settings(state_dir=tmp_path / "state", model_store=tmp_path / "models"),
        state_database_url=postgres_url,
        database=database,
    )
    limits = EdgeLimits.derive(settings.edge, descriptor_limit=4096, memory_bytes=1 << 32)
    app = create_app(settings)
    app[keys.INTERNAL_URL] = "http://127.0.0.1:9"  # only advertised: no other replica asks
    runner = EdgeRunner(app, settings, limits)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{site.port}/ping") as answer,
        ):
            assert answer.status == 200
        assert keys.SHARED_DATABASE in app
        # Control plane, CloudWatch and feedback: one pool; the replicas' tables: another; the
        # routing feed's LISTEN: one connection (a pool for each part was 4 + 1).
        assert _connections(postgres_url) <= 2 * database.pool_max_size + 1
    finally:
        await runner.cleanup()
    assert _connections(postgres_url) == 0
