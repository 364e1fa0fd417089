"""Bakes: the waits of the deployment guardrails, during which alarms are watched.

A stepped or rolling UpdateEndpoint (`guardrails.py`) and the A/B ramp (`ramp.py`) bake after
each step; an AutoRollbackConfiguration alarm (or a ramp's) in ALARM ends the bake at once, and
the caller rolls back (docs/architecture.md, "Deployment guardrails").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence

from splitserve.config import ControlSettings
from splitserve.control.deployer import AlarmStates
from splitserve.control.documents import mappings, optional_mapping, text

log = logging.getLogger(__name__)


class AlarmWatch:
    """Bakes that read the alarms' states.

    Args:
        alarms: the alarm states a bake watches (None: no alarm ever fires).
        poll_seconds: how often a bake reads them (`ControlSettings.alarm_poll_seconds`).
    """

    def __init__(
        self,
        alarms: AlarmStates | None,
        poll_seconds: float = ControlSettings.alarm_poll_seconds,
    ) -> None:
        self._alarms = alarms
        self._poll_seconds = poll_seconds

    async def bake(self, seconds: int, alarms: Sequence[str]) -> list[str]:
        """Wait `seconds` while watching `alarms`; the names found in ALARM (then at once), or
        none once the time is up. Without alarms (or a way to read them) it only waits."""
        if not alarms or self._alarms is None:
            if seconds:
                await asyncio.sleep(seconds)
            return []
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while True:
            try:
                fired = await self._alarms.in_alarm(alarms)
            except Exception:
                # An unreadable alarm store must not roll back (nor fail) a healthy update.
                log.exception("reading the states of alarms %s failed", ", ".join(alarms))
                fired = []
            if fired:
                return fired
            left = end - loop.time()
            if left <= 0:
                return []
            await asyncio.sleep(min(left, self._poll_seconds))


def alarm_names(deployment_config: Mapping[str, object] | None) -> list[str]:
    """The AlarmNames of a validated DeploymentConfig's AutoRollbackConfiguration, in order."""
    rollback = optional_mapping((deployment_config or {}).get("AutoRollbackConfiguration")) or {}
    return [text(alarm, "AlarmName") for alarm in mappings(rollback.get("Alarms"))]
