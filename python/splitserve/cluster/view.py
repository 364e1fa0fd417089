"""What the other parts may ask of this gateway process as a replica (`ReplicaView`).

The metrics, CloudWatch and capture code need three facts about the process they run in: its
replica id (to name what it writes, so replicas never write the same rows or files), whether it
is the controller now (only the controller evaluates alarms and runs instances), and the
internal addresses of the other replicas on its host (a host's /metrics sums theirs). They read
them through this protocol; `SoleReplica` is the single-process gateway's answer.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Protocol

__all__ = ["ReplicaView", "SoleReplica", "new_replica_id"]


def new_replica_id() -> str:
    """A replica id unique across hosts and restarts: host name, pid and a random suffix.

    It is used in file names (capture files) and store rows, so it holds only ASCII letters,
    digits, '-' and '.'.
    """
    host = "".join(
        c if (c.isascii() and c.isalnum()) or c in "-." else "-" for c in socket.gethostname()
    )
    return f"{host or 'host'}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class ReplicaView(Protocol):
    """This process as a replica, read by metrics, CloudWatch and capture."""

    @property
    def replica_id(self) -> str:
        """This process's replica id (`new_replica_id`)."""
        ...

    def is_controller(self) -> bool:
        """True while this process holds the controller lease."""
        ...

    async def host_peers(self) -> list[str]:
        """Internal base URLs (`http://host:port`) of the other live replicas on this host."""
        ...


class SoleReplica:
    """The only gateway process: always the controller, with no peers."""

    def __init__(self, replica_id: str | None = None) -> None:
        """A sole replica named `replica_id` (a new id when None)."""
        self._replica_id = replica_id or new_replica_id()

    @property
    def replica_id(self) -> str:
        """This process's replica id."""
        return self._replica_id

    def is_controller(self) -> bool:
        """Always: nothing else could be."""
        return True

    async def host_peers(self) -> list[str]:
        """None: there is no other replica."""
        return []
