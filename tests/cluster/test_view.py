"""The replica's identity: ids fit file names and rows and never repeat; a sole replica always
controls and has no peers."""

from __future__ import annotations

import re
import socket

import pytest

from splitserve.cluster.view import SoleReplica, new_replica_id


def test_replica_ids_are_unique_and_hold_only_file_name_characters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids = {new_replica_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(re.fullmatch(r"[A-Za-z0-9.-]+", replica_id) for replica_id in ids)
    monkeypatch.setattr(socket, "gethostname", lambda: "my host/../é")
    assert re.fullmatch(r"my-host-\.\.---\d+-[0-9a-f]{8}", new_replica_id())
    monkeypatch.setattr(socket, "gethostname", lambda: "")
    assert new_replica_id().startswith("host-")


async def test_a_sole_replica_controls_and_has_no_peers() -> None:
    sole = SoleReplica("r-1")
    assert sole.replica_id == "r-1"
    assert sole.is_controller()
    assert await sole.host_peers() == []
    assert SoleReplica().replica_id != SoleReplica().replica_id
