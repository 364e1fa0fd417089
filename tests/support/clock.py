"""A wall clock under the test's control, for the per-minute statistics."""

from __future__ import annotations

#: 2024-05-01 12:00:00 UTC, a whole minute.
NOON = 1_714_564_800.0


class FakeClock:
    """Wall-clock seconds that only move when told to."""

    def __init__(self, now: float = NOON) -> None:
        self.now = now

    def __call__(self) -> float:
        """The time now, in seconds since the epoch."""
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock on by `seconds`."""
        self.now += seconds
