"""The live experiment's automatic actions, run by the controller (README, "Closing the loop").

An endpoint's `splitserve:experiment` tag (AddTags, persisted with the endpoint like every tag)
chooses what its live experiment may do; without it, or with `report`, it only reports:

- `promote [StepPercent [WaitSeconds]]`: once the always-valid test declares a winner on the
  experiment's metric and the split check has not failed, the winner's share is moved to 100 %
  by the guardrails' stepped ramp: this tags the endpoint `splitserve:ramp` =
  `<winner> 100 <StepPercent> <WaitSeconds>` (control/ramp.py: steps, bakes, and the rollback a
  ramp's alarms would add);
- `bandit [MinShare]`: Thompson sampling (`evaluation.bandit.ThompsonBandit`) over the variants
  on the binary reward "the prediction was right", its weights (each at least MinShare) pushed
  through UpdateEndpointWeightsAndCapacities, so every replica follows, at most once every
  `FeedbackSettings.action_interval_seconds`.

Both go through the control plane's own operations (`ControlService.dispatch`), so they are
recorded in the weight history, refused while the endpoint is updating, and reach the replicas as
any weight change does. A failed split check blocks both. What each endpoint's action did last
is in its experiment view (`action`). Only the controller runs this (it holds the control
service); the tag survives a restart or a takeover, and the new controller carries on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from splitserve.config import FeedbackSettings
from splitserve.control.models import RAMP_TAG
from splitserve.errors import SplitserveError
from splitserve.online.service import FeedbackService

__all__ = ["EXPERIMENT_TAG", "ActionSpec", "ExperimentActions", "action_spec"]

log = logging.getLogger(__name__)

#: The endpoint tag naming the live experiment's automatic action.
EXPERIMENT_TAG = "splitserve:experiment"
# Shares closer than this are the same: a bandit's weights that would move none by more are not
# pushed, and a winner with this close to every request is promoted.
_SAME_SHARE = 0.02


class Control(Protocol):
    """The control service's dispatch (`ControlService.dispatch`)."""

    async def dispatch(self, operation: str, body: dict[str, object]) -> dict[str, object]:
        """Run one SageMaker operation."""
        ...


@dataclass(frozen=True)
class ActionSpec:
    """What an endpoint's `splitserve:experiment` tag asks for.

    Attributes:
        mode: `report`, `promote` or `bandit`.
        step_percent, wait_seconds: a promotion's steps.
        min_share: the bandit's least share per variant.
    """

    mode: str
    step_percent: float
    wait_seconds: int
    min_share: float


def action_spec(value: str | None, defaults: FeedbackSettings) -> ActionSpec:
    """The action a `splitserve:experiment` tag value asks for (None: no tag, `report`).

    Raises:
        ValueError: the value is not `report`, `promote [StepPercent [WaitSeconds]]` or
            `bandit [MinShare]` within bounds (the message says what is wrong).
    """
    spec = ActionSpec(
        "report",
        defaults.promote_step_percent,
        defaults.promote_wait_seconds,
        defaults.bandit_min_share,
    )
    if value is None:
        return spec
    mode, *parameters = value.split() or ["report"]
    usage = (
        f"the tag {EXPERIMENT_TAG} must be 'report', 'promote [StepPercent [WaitSeconds]]' or "
        f"'bandit [MinShare]', not '{value[:100]}'"
    )
    try:
        if mode == "report" and not parameters:
            return spec
        if mode == "promote" and len(parameters) <= 2:
            step = float(parameters[0]) if parameters else spec.step_percent
            wait = int(parameters[1]) if len(parameters) > 1 else spec.wait_seconds
            if 1 <= step <= 100 and 0 <= wait <= 3600:
                return ActionSpec("promote", step, wait, spec.min_share)
        if mode == "bandit" and len(parameters) <= 1:
            share = float(parameters[0]) if parameters else spec.min_share
            if 0 <= share < 0.5:
                return ActionSpec("bandit", spec.step_percent, spec.wait_seconds, share)
    except ValueError:
        pass
    raise ValueError(usage)


class ExperimentActions:
    """Runs each tagged endpoint's action every `action_interval_seconds` on the controller."""

    def __init__(
        self,
        settings: FeedbackSettings,
        feedback: FeedbackService,
        control: Callable[[], Control | None],
        endpoints: Callable[[], list[str]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Actions over `feedback`'s experiments through `control()` (None while this process
        is not the controller) for the routable endpoints `endpoints()` names."""
        self._settings = settings
        self._feedback = feedback
        self._control = control
        self._endpoints = endpoints
        self._clock = clock

    async def run(self) -> None:
        """Tick every interval until cancelled; a failed tick is logged and retried."""
        while True:
            await asyncio.sleep(self._settings.action_interval_seconds)
            try:
                await self.tick()
            except Exception:
                log.exception("live experiments: automatic actions failed; retrying next round")

    async def tick(self) -> None:
        """One round: each routable endpoint's tag read, its action taken if one is due."""
        control = self._control()
        if control is None:
            return
        for endpoint in self._endpoints():
            try:
                await self._act(control, endpoint)
            except SplitserveError as error:  # updating, gone meanwhile, ...: next round
                self._report(endpoint, None, f"not done: {error.message}")

    async def _act(self, control: Control, endpoint: str) -> None:
        described = await control.dispatch("DescribeEndpoint", {"EndpointName": endpoint})
        arn = str(described["EndpointArn"])
        tags = await _tags(control, arn)
        try:
            spec = action_spec(tags.get(EXPERIMENT_TAG), self._settings)
        except ValueError as error:
            self._report(endpoint, "report", str(error))
            return
        if spec.mode == "report":
            self._feedback.report_action(endpoint, None)
            return
        if described.get("EndpointStatus") != "InService":
            self._report(endpoint, spec.mode, "waiting: the endpoint is not InService")
            return
        view = await asyncio.to_thread(self._feedback.look, endpoint)
        srm = view.get("srm")
        if isinstance(srm, dict) and srm.get("failed"):
            self._report(endpoint, spec.mode, "blocked: the split check failed")
            return
        shares = _shares(described)
        if spec.mode == "promote":
            await self._promote(control, endpoint, arn, spec, view, tags, shares)
        else:
            await self._bandit(control, endpoint, spec, view, shares)

    async def _promote(
        self,
        control: Control,
        endpoint: str,
        arn: str,
        spec: ActionSpec,
        view: Mapping[str, Any],
        tags: Mapping[str, str],
        shares: Mapping[str, float],
    ) -> None:
        winner = view.get("winner")
        if not isinstance(winner, str):
            self._report(endpoint, "promote", "waiting for a winner")
            return
        if shares.get(winner, 0.0) >= 1.0 - _SAME_SHARE:
            self._report(endpoint, "promote", f"promoted {winner}: it takes every request")
            return
        ramp = f"{winner} 100 {spec.step_percent:g} {spec.wait_seconds}"
        if tags.get(RAMP_TAG) != ramp:
            await control.dispatch(
                "AddTags", {"ResourceArn": arn, "Tags": [{"Key": RAMP_TAG, "Value": ramp}]}
            )
            log.info(
                "endpoint %s: promoting the winner %s (%s = %s)", endpoint, winner, RAMP_TAG, ramp
            )
        self._report(endpoint, "promote", f"promoting {winner}: {RAMP_TAG} = {ramp}")

    async def _bandit(
        self,
        control: Control,
        endpoint: str,
        spec: ActionSpec,
        view: Mapping[str, Any],
        shares: Mapping[str, float],
    ) -> None:
        from splitserve.evaluation.bandit import ThompsonBandit  # noqa: PLC0415 (numpy)

        variants = list(view.get("variants") or {})
        rewards = self._feedback.rewards(endpoint)
        if len(variants) < 2:
            self._report(endpoint, "bandit", "waiting: fewer than two variants")
            return
        bandit = ThompsonBandit(variants, min_share=spec.min_share)
        for variant, (hits, misses) in rewards.items():
            if variant in variants:
                bandit.update_many(variant, hits, misses)
        weights = bandit.weights()
        shown = ", ".join(f"{name} {weight:.0%}" for name, weight in weights.items())
        if all(
            abs(shares.get(name, 0.0) - weight) < _SAME_SHARE for name, weight in weights.items()
        ):
            # No push for a change nobody would see: each push is a weight change every replica
            # waits for, a line of the weight history, and a new split for the split check.
            self._report(endpoint, "bandit", f"weights kept: {shown}")
            return
        await control.dispatch(
            "UpdateEndpointWeightsAndCapacities",
            {
                "EndpointName": endpoint,
                "DesiredWeightsAndCapacities": [
                    {"VariantName": name, "DesiredWeight": round(weight, 4)}
                    for name, weight in weights.items()
                ],
            },
        )
        self._report(endpoint, "bandit", f"weights pushed: {shown}")

    def _report(self, endpoint: str, mode: str | None, status: str) -> None:
        self._feedback.report_action(endpoint, {"mode": mode, "status": status})


def _shares(described: Mapping[str, object]) -> dict[str, float]:
    """Each production variant's share of the weights now, from a DescribeEndpoint answer."""
    variants = described.get("ProductionVariants")
    weights = {
        str(variant["VariantName"]): float(variant.get("CurrentWeight", 0.0))
        for variant in (variants if isinstance(variants, list) else [])
    }
    total = sum(weights.values())
    return {name: weight / total for name, weight in weights.items()} if total > 0 else weights


async def _tags(control: Control, arn: str) -> dict[str, str]:
    """The resource's tags (ListTags, every page)."""
    tags: dict[str, str] = {}
    body: dict[str, object] = {"ResourceArn": arn}
    while True:
        answer = await control.dispatch("ListTags", body)
        listed = answer.get("Tags")
        for tag in listed if isinstance(listed, list) else []:
            tags[str(tag["Key"])] = str(tag["Value"])
        token = answer.get("NextToken")
        if not token:
            return tags
        body = {"ResourceArn": arn, "NextToken": token}
