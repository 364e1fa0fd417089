"""What the control plane's background tasks share when something goes wrong: the FailureReason
of an unexpected exception (logged with an incident id, never shown to a caller) and a retirement
whose failure is only logged (a fleet left behind must not change the outcome of an update)."""

from __future__ import annotations

import logging
import uuid

from splitserve.control.deployer import Deployer

log = logging.getLogger(__name__)


def internal_reason(doing: str) -> str:
    """A FailureReason for an unexpected exception (logged here with the same incident id)."""
    incident = uuid.uuid4()
    log.exception("internal error while %s (incident %s)", doing, incident)
    return f"An internal error occurred while {doing} (incident {incident}); see the gateway log."


async def retire_quietly(deployer: Deployer, endpoint_name: str, generation: int) -> None:
    """Retire one generation of the endpoint; a failure is logged, not raised."""
    try:
        await deployer.retire(endpoint_name, generation)
    except Exception:
        log.exception("retiring generation %d of endpoint %s failed", generation, endpoint_name)
