"""The live experiment's automatic actions (`wiring.actions`) over a stand-in control plane: the
tag's forms, promotion through the `splitserve:ramp` tag once a winner is declared, the bandit's
weights through UpdateEndpointWeightsAndCapacities, and a failed split check blocking both."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from pathlib import Path

import pytest

from splitserve.config import FeedbackSettings
from splitserve.database import open_database
from splitserve.online.service import FeedbackService
from splitserve.online.store import FeedbackStore
from splitserve.wiring.actions import EXPERIMENT_TAG, ActionSpec, ExperimentActions, action_spec

NOW = 1_750_000_000.0
DEFAULTS = FeedbackSettings()


class Endpoints:
    def known(self, endpoint: str) -> bool:
        return endpoint == "ab"

    def weights(self, endpoint: str) -> Mapping[str, float] | None:
        return {"A": 1.0, "B": 1.0} if endpoint == "ab" else None

    def names(self) -> list[str]:
        return ["ab"]


class Control:
    """The control plane's dispatch for endpoint `ab`, keeping its tags and the calls."""

    def __init__(self, tags: dict[str, str], weights: Mapping[str, float] | None = None) -> None:
        self.tags = tags
        self.weights = dict(weights or {"A": 1.0, "B": 1.0})
        self.calls: list[tuple[str, dict[str, object]]] = []

    async def dispatch(self, operation: str, body: dict[str, object]) -> dict[str, object]:
        self.calls.append((operation, body))
        if operation == "DescribeEndpoint":
            return {
                "EndpointArn": "arn:aws:sagemaker:r:1:endpoint/ab",
                "EndpointStatus": "InService",
                "ProductionVariants": [
                    {"VariantName": name, "CurrentWeight": weight}
                    for name, weight in self.weights.items()
                ],
            }
        if operation == "ListTags":
            return {"Tags": [{"Key": k, "Value": v} for k, v in self.tags.items()]}
        if operation == "AddTags":
            for tag in body["Tags"]:  # type: ignore[attr-defined]
                self.tags[tag["Key"]] = tag["Value"]
        return {}

    def changes(self) -> list[tuple[str, dict[str, object]]]:
        return [call for call in self.calls if call[0] not in ("DescribeEndpoint", "ListTags")]


def _feedback(tmp_path: Path, right: Mapping[str, float], labels: int = 150) -> FeedbackService:
    """A service whose endpoint `ab` has `labels` labels per variant, each variant right with the
    share `right` says."""
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "state.sqlite3"
    sqlite3.connect(path).close()
    store = FeedbackStore.open(open_database(f"sqlite://{path}"), owned=True)
    service = FeedbackService(DEFAULTS, store, Endpoints(), lambda: NOW)
    rows = []
    records = []
    for variant, share in right.items():
        for number in range(labels):
            inference_id = f"{variant}{number}"
            rows.append(("ab", inference_id, variant, False, NOW, "text/csv", b"0.9"))
            label = 1 if number < share * labels else 0
            records.append((inference_id, (label,)))
    store.write_index(rows)
    for first in range(0, len(records), 500):
        store.join("ab", records[first : first + 500], service._decide, NOW)
    return service


def _actions(service: FeedbackService, control: Control) -> ExperimentActions:
    return ExperimentActions(DEFAULTS, service, lambda: control, lambda: ["ab"])


def test_the_tag_forms() -> None:
    assert action_spec(None, DEFAULTS).mode == "report"
    assert action_spec("promote", DEFAULTS) == ActionSpec("promote", 25.0, 10, 0.1)
    assert action_spec("promote 10 60", DEFAULTS) == ActionSpec("promote", 10.0, 60, 0.1)
    assert action_spec("bandit 0.2", DEFAULTS).min_share == 0.2
    for value in ("promote 0", "promote 10 x", "bandit 0.5", "bandit 1 2", "shift", "report 1"):
        with pytest.raises(ValueError, match="must be 'report'"):
            action_spec(value, DEFAULTS)


async def test_promote_waits_for_a_winner_then_ramps_it_once(tmp_path: Path) -> None:
    even = _feedback(tmp_path / "even", {"A": 0.8, "B": 0.8})
    control = Control({EXPERIMENT_TAG: "promote 50 0"})
    await _actions(even, control).tick()
    assert control.changes() == []
    assert even.look("ab")["action"] == {"mode": "promote", "status": "waiting for a winner"}

    clear = _feedback(tmp_path / "clear", {"A": 0.5, "B": 1.0})
    control = Control({EXPERIMENT_TAG: "promote 50 0"})
    actions = _actions(clear, control)
    await actions.tick()
    await actions.tick()
    assert control.changes() == [
        (
            "AddTags",
            {
                "ResourceArn": "arn:aws:sagemaker:r:1:endpoint/ab",
                "Tags": [{"Key": "splitserve:ramp", "Value": "B 100 50 0"}],
            },
        )
    ]
    assert "promoting B" in str(clear.look("ab")["action"])
    # Once the ramp has moved every request to it: nothing more to do.
    done = Control({EXPERIMENT_TAG: "promote 50 0"}, {"A": 0.0, "B": 2.0})
    await _actions(clear, done).tick()
    assert done.changes() == []
    assert clear.look("ab")["action"] == {
        "mode": "promote",
        "status": "promoted B: it takes every request",
    }


async def test_the_bandit_pushes_floored_weights(tmp_path: Path) -> None:
    service = _feedback(tmp_path, {"A": 0.5, "B": 0.9})
    control = Control({EXPERIMENT_TAG: "bandit 0.1"})
    await _actions(service, control).tick()
    ((operation, body),) = control.changes()
    assert operation == "UpdateEndpointWeightsAndCapacities"
    weights = {
        entry["VariantName"]: entry["DesiredWeight"]
        for entry in body["DesiredWeightsAndCapacities"]  # type: ignore[attr-defined]
    }
    assert set(weights) == {"A", "B"}
    assert weights["B"] > weights["A"] >= 0.1 - 1e-9
    assert service.rewards("ab") == {"A": (75, 75), "B": (135, 15)}
    # Weights that would move no share by 2 points or more are not pushed again.
    again = Control({EXPERIMENT_TAG: "bandit 0.1"}, weights)
    await _actions(service, again).tick()
    assert again.changes() == []
    assert "weights kept" in str(service.look("ab")["action"])


async def test_no_tag_report_or_a_bad_tag_changes_nothing(tmp_path: Path) -> None:
    service = _feedback(tmp_path, {"A": 0.5, "B": 1.0})
    for tags in ({}, {EXPERIMENT_TAG: "report"}, {EXPERIMENT_TAG: "promote soon"}):
        control = Control(dict(tags))
        await _actions(service, control).tick()
        assert control.changes() == []
    assert "must be 'report'" in str(service.look("ab")["action"])


async def test_a_failed_split_check_blocks_any_action(tmp_path: Path) -> None:
    service = _feedback(tmp_path, {"A": 0.5, "B": 1.0})
    # 50/50 weights, but since the split began the index saw A far more often than B.
    store = FeedbackStore(service._store.database)
    service.look("ab")  # the experiment's split begins now
    store.write_index(
        [
            ("ab", f"x{n}", "A" if n % 20 else "B", False, NOW, "text/csv", b"0.9")
            for n in range(4000)
        ]
    )
    for mode in ("promote", "bandit"):
        control = Control({EXPERIMENT_TAG: mode})
        await _actions(service, control).tick()
        assert control.changes() == []
        assert service.look("ab")["action"] == {
            "mode": mode,
            "status": "blocked: the split check failed",
        }
