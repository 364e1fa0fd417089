"""The gateway's start-up opens and reads the state file off the event loop."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from splitserve.app import create_app
from splitserve.config import Settings, WorkerSettings
from splitserve.control.store import Store
from tests.control.conftest import ACCOUNT_ARN


async def test_the_state_file_is_opened_and_read_off_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop_thread = threading.current_thread()
    threads: dict[str, threading.Thread] = {}
    real_open = Store.open
    real_list = Store.list_endpoints

    def watched_open(*args: Any) -> Store:
        threads["open"] = threading.current_thread()
        return real_open(*args)

    def watched_list(self: Store) -> object:
        threads["recovery"] = threading.current_thread()
        return real_list(self)

    monkeypatch.setattr(Store, "open", staticmethod(watched_open))
    monkeypatch.setattr(Store, "list_endpoints", watched_list)
    settings = Settings(
        state_dir=tmp_path / "state",
        model_store=tmp_path / "models",
        # pytest's temporary directories are root's own: workers (none start here) stay root.
        workers=WorkerSettings(run_dir=tmp_path / "state" / "run", worker_user="root"),
    )
    async with TestClient(TestServer(create_app(settings))) as client:
        response = await client.post(
            "/", json={"ModelName": "m"}, headers={"X-Amz-Target": "SageMaker.DescribeModel"}
        )
        assert response.status == 400
        assert f"{ACCOUNT_ARN}:model/m" in json.loads(await response.read())["Message"]
    assert set(threads) == {"open", "recovery"}
    assert all(thread is not loop_thread for thread in threads.values())
    assert (tmp_path / "state" / "state.sqlite3").exists()
