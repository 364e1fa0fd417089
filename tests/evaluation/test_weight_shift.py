"""The split check after a weight change: the weights in force when each request was served,
targeted requests left out, requests without an inference id counted, `--weights` checked."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from splitserve.cli import main
from splitserve.config import EvaluationSettings
from splitserve.evaluation.capture_reader import read_capture
from splitserve.evaluation.command import (
    EvaluateRequest,
    parse_weight_history,
    run_evaluation,
)
from splitserve.evaluation.errors import EvaluationInputError
from splitserve.evaluation.ground_truth import load_ground_truth
from splitserve.evaluation.join import JoinedData, join
from splitserve.evaluation.render import report_text
from splitserve.evaluation.report import TrafficWeights, evaluate
from tests.evaluation.records import (
    START,
    capture_record,
    merge_record,
    output_payload,
    write_capture,
)
from tests.support.http import Answer, Received, answering_server

#: The shift: 50/50 for the first 2,000 requests, then 25/75 for the next 2,000.
_SHIFT = START + timedelta(seconds=2000)
_HISTORY = (
    (START - timedelta(minutes=5), {"Variant1": 1.0, "Variant2": 1.0}),
    (_SHIFT - timedelta(milliseconds=500), {"Variant1": 1.0, "Variant2": 3.0}),
)


def _write_shift(
    tmp_path: Path, *, targeted: int = 0, anonymous: int = 0, seed: int = 15
) -> tuple[Path, Path]:
    """Capture and ground truth of 4,000 weighted requests across the shift, plus `targeted`
    requests pinned to Variant1 and `anonymous` unlabelled requests without an inference id."""
    rng = np.random.default_rng(seed)
    records: dict[str, list[dict[str, object]]] = {"Variant1": [], "Variant2": []}
    truth = []
    for index in range(4000):
        share_2 = 0.5 if index < 2000 else 0.75
        variant = "Variant2" if rng.random() < share_2 else "Variant1"
        when = START + timedelta(seconds=index)
        key = f"r-{index}"
        records[variant].append(
            capture_record(output_payload([float(rng.random())]), inference_id=key, when=when)
        )
        truth.append(merge_record(key, str(int(rng.random() < 0.3))))
    for index in range(targeted):
        key = f"t-{index}"
        record = capture_record(
            output_payload([0.5]), inference_id=key, when=START + timedelta(seconds=index)
        )
        record["eventMetadata"]["splitserve"] = {"targeted": True}
        records["Variant1"].append(record)
        truth.append(merge_record(key, "1"))
    for index in range(anonymous):
        records["Variant2"].append(
            capture_record(output_payload([0.5]), when=START + timedelta(seconds=index))
        )
    capture = tmp_path / "capture"
    for variant, variant_records in records.items():
        write_capture(capture, "churn", variant, variant_records)
    ground_truth = tmp_path / "truth.jsonl"
    ground_truth.write_text("\n".join(truth) + "\n")
    return capture, ground_truth


def _joined(capture: Path, ground_truth: Path) -> JoinedData:
    return join(read_capture(capture, None), load_ground_truth(ground_truth))


def test_a_50_50_to_25_75_shift_raises_no_false_mismatch(tmp_path: Path) -> None:
    joined = _joined(*_write_shift(tmp_path))
    settings = EvaluationSettings()
    history = TrafficWeights(_HISTORY[-1][1], "history", _HISTORY)
    report = evaluate(joined, settings, history)
    assert report.sample_ratio is not None
    assert not report.sample_ratio.mismatch
    assert report.sample_ratio.weight_changes == 1
    # Expected share of Variant2 over the whole capture: half the requests at 0.5, half at 0.75.
    assert report.sample_ratio.expected_share["Variant2"] == pytest.approx(0.625)
    assert "the weights in force when each request was served (1 weight change" in report_text(
        report
    )
    # Today's weights across the whole capture: the false alarm the history avoids.
    today = evaluate(joined, settings, TrafficWeights(_HISTORY[-1][1], "today"))
    assert today.sample_ratio is not None
    assert today.sample_ratio.mismatch


def test_a_real_mismatch_is_still_found_with_the_history(tmp_path: Path) -> None:
    joined = _joined(*_write_shift(tmp_path))
    # A history claiming the shift happened at the very start: the first half does not follow it.
    wrong = ((START - timedelta(minutes=5), {"Variant1": 1.0, "Variant2": 3.0}),)
    report = evaluate(joined, EvaluationSettings(), TrafficWeights(wrong[0][1], "h", wrong))
    assert report.sample_ratio is not None
    assert report.sample_ratio.mismatch


def test_weights_in_force_at_each_moment() -> None:
    weights = TrafficWeights(_HISTORY[-1][1], "history", _HISTORY)
    assert weights.at(START) == {"Variant1": 1.0, "Variant2": 1.0}
    assert weights.at(_SHIFT) == {"Variant1": 1.0, "Variant2": 3.0}
    # Before the first recorded change (an older state file) and without a time: the first ones.
    assert weights.at(START - timedelta(days=1)) == {"Variant1": 1.0, "Variant2": 1.0}
    assert weights.at(None) == {"Variant1": 1.0, "Variant2": 1.0}
    pieces = weights.segments(START, START + timedelta(hours=1))
    assert [(low, high, shares["Variant2"]) for low, high, shares in pieces] == [
        (START, _HISTORY[1][0], 0.5),
        (_HISTORY[1][0], START + timedelta(hours=1), 0.75),
    ]
    constant = TrafficWeights({"A": 0.0, "B": 0.0}, "--weights")
    assert constant.segments(START, _SHIFT) == [(START, _SHIFT, {"A": 0.0, "B": 0.0})]


def test_targeted_requests_are_left_out_and_counted(tmp_path: Path) -> None:
    joined = _joined(*_write_shift(tmp_path, targeted=400))
    assert joined.accounting.targeted == 400
    assert joined.accounting.labelled_by_variant["Variant1"] == (
        joined.accounting.split_by_variant["Variant1"] + 400
    )
    assert len(joined.traffic) == 4000  # the plot's traffic share leaves them out too
    report = evaluate(
        joined, EvaluationSettings(), TrafficWeights(_HISTORY[-1][1], "history", _HISTORY)
    )
    assert report.sample_ratio is not None
    assert report.sample_ratio.excluded_targeted == 400
    assert not report.sample_ratio.mismatch  # 400 extra on Variant1 would be a mismatch
    text = report_text(report)
    assert "400 targeted requests (TargetVariant) left out" in text
    assert "400 targeted (TargetVariant, left out of the traffic split)" in text


def test_only_targeted_requests_skip_the_check_saying_why(tmp_path: Path) -> None:
    capture = tmp_path / "capture"
    record = capture_record(output_payload([0.5]), inference_id="t", when=START)
    record["eventMetadata"]["splitserve"] = {"targeted": True}
    write_capture(capture, "churn", "Variant1", [record])
    truth = tmp_path / "truth.jsonl"
    truth.write_text(merge_record("t", "1") + "\n")
    report = evaluate(
        _joined(capture, truth),
        EvaluationSettings(),
        TrafficWeights({"Variant1": 1.0, "Variant2": 1.0}, "--weights"),
    )
    assert report.sample_ratio is None
    assert report.sample_ratio_note == (
        "skipped: no labelled requests that followed the weights (1 targeted)"
    )


def test_requests_without_an_inference_id_are_a_count_not_examples(tmp_path: Path) -> None:
    joined = _joined(*_write_shift(tmp_path, anonymous=30))
    accounting = joined.accounting
    assert accounting.without_inference_id == 30
    assert accounting.unlabelled == 0
    assert not any("no ground truth" in example for example in accounting.examples)
    text = report_text(evaluate(joined, EvaluationSettings(), None))
    assert "30 without an inference id (nothing to join them on)" in text
    assert "Examples:" not in text


def test_weights_naming_a_variant_the_capture_lacks_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capture, truth = _write_shift(tmp_path)
    with pytest.raises(EvaluationInputError) as raised:
        run_evaluation(
            EvaluateRequest(capture, truth, weights="Variant1=1,Variant3=1"), EvaluationSettings()
        )
    assert raised.value.message == (
        "--weights names Variant3, which the capture of churn does not have; its variants: "
        "Variant1, Variant2"
    )
    code = main(
        ["evaluate", "--capture", str(capture), "--ground-truth", str(truth),
         "--weights", "Varaint2=1,Variant1=1"]
    )  # fmt: skip
    assert code == 2
    assert "--weights names Varaint2" in capsys.readouterr().err


def _history_document() -> dict[str, object]:
    return {
        "EndpointName": "churn",
        "WeightChanges": [
            {
                "Time": when.timestamp(),
                "Cause": "UpdateEndpointWeightsAndCapacities",
                "Weights": [{"VariantName": n, "Weight": w} for n, w in weights.items()],
            }
            for when, weights in _HISTORY
        ],
    }


def _gateway(request: Received) -> Answer:
    """The weight-history route as the gateway answers it (an unknown endpoint is a 400)."""
    if request.method == "GET" and request.path == "/splitserve/endpoints/churn/weights":
        return Answer(200, json.dumps(_history_document()).encode())
    body = {"__type": "ValidationException", "Message": 'Could not find endpoint "x".'}
    return Answer(400, json.dumps(body).encode())


@pytest.fixture
def history_gateway() -> Iterator[str]:
    with answering_server(_gateway) as server:
        yield server.url


def test_url_reads_the_weight_history(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], history_gateway: str
) -> None:
    capture, truth = _write_shift(tmp_path)
    code = main(
        ["evaluate", "--capture", str(capture), "--ground-truth", str(truth),
         "--url", history_gateway, "--json"]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    split = json.loads(out)["sample_ratio"]
    assert split["source"] == f"the weight history at {history_gateway}"
    assert split["weight_changes"] == 1
    assert split["mismatch"] is False


def test_url_for_an_endpoint_the_gateway_lacks(tmp_path: Path, history_gateway: str) -> None:
    capture, truth = _write_shift(tmp_path)
    # The capture is of "churn"; rename its directory so the endpoint asked for is another.
    capture.joinpath("churn").rename(capture / "gone")
    with pytest.raises(EvaluationInputError, match="Could not find endpoint"):
        run_evaluation(EvaluateRequest(capture, truth, url=history_gateway), EvaluationSettings())


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "no readable weight history"),
        ({"WeightChanges": [{"Time": "x", "Weights": []}]}, "no readable weight history"),
        ({"WeightChanges": [{"Time": 1.0}]}, "no readable weight history"),
        (
            {"WeightChanges": [{"Time": 1.0, "Weights": [{"VariantName": "A", "Weight": -1}]}]},
            "not a number >= 0",
        ),
    ],
)
def test_an_unreadable_history_is_refused(document: object, message: str) -> None:
    with pytest.raises(EvaluationInputError, match=message):
        parse_weight_history(document, "http://gateway")


def test_history_is_put_in_time_order() -> None:
    late, early = 2000.0, 1000.0
    document = {
        "WeightChanges": [
            {"Time": late, "Weights": [{"VariantName": "A", "Weight": 2}]},
            {"Time": early, "Weights": [{"VariantName": "A", "Weight": 1}]},
        ]
    }
    assert parse_weight_history(document, "u") == [
        (datetime.fromtimestamp(early, UTC), {"A": 1.0}),
        (datetime.fromtimestamp(late, UTC), {"A": 2.0}),
    ]


def test_plot_draws_the_weights_in_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], history_gateway: str
) -> None:
    pytest.importorskip("matplotlib")
    capture, truth = _write_shift(tmp_path, targeted=10)
    path = tmp_path / "shift.png"
    code = main(
        ["evaluate", "--capture", str(capture), "--ground-truth", str(truth),
         "--url", history_gateway, "--plot", str(path)]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
