"""Reading ground truth: SageMaker's merge format in hour directories, and plain CSV."""

from __future__ import annotations

from pathlib import Path

import pytest

from splitserve.evaluation.errors import EvaluationInputError
from splitserve.evaluation.ground_truth import load_ground_truth, parse_label, parse_labels
from tests.evaluation.records import merge_record


@pytest.mark.parametrize(
    ("text", "label"),
    [("1", 1), ("0", 0), ("1.0", 1), ("0.", 0), ("True.", 1), ("False.", 0), ("yes", 1),
     ("NO", 0), (' "1" ', 1)],
)  # fmt: skip
def test_label_spellings(text: str, label: int) -> None:
    assert parse_label(text) == label


@pytest.mark.parametrize("text", ["2", "0.5", "maybe", "", "nan"])
def test_labels_that_are_not_binary_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="label"):
        parse_label(text)


def test_several_labels_for_a_multi_row_request() -> None:
    assert parse_labels("1,0,1") == (1, 0, 1)
    assert parse_labels("1\n0\n") == (1, 0)
    with pytest.raises(ValueError, match="no label"):
        parse_labels(" \n")


def test_merge_format_in_hour_directories(tmp_path: Path) -> None:
    earlier = tmp_path / "2024" / "03" / "05" / "17"
    later = tmp_path / "2024" / "03" / "05" / "18"
    earlier.mkdir(parents=True)
    later.mkdir(parents=True)
    (earlier / "labels.jsonl").write_text(
        "\n".join([merge_record("a", "1"), merge_record("b", "0"), merge_record("m", "1,0,1")])
    )
    (later / "labels.jsonl").write_text(
        "\n".join(
            [
                merge_record("b", "1"),  # a correction: later hours win, and it is counted
                '{"groundTruthData": {"data": "1", "encoding": "BASE64"}, '
                '"eventMetadata": {"eventId": "c"}}',
                '{"groundTruthData": {"data": "1"}}',
                merge_record("d", "2"),
                "not json",
            ]
        )
        + "\n"
    )
    (tmp_path / ".hidden").write_text("ignored")
    truth = load_ground_truth(tmp_path)
    assert truth.files == 2
    assert truth.labels == {"a": (1,), "b": (1,), "m": (1, 0, 1)}
    assert truth.records == 4
    assert truth.conflicts == 1
    assert truth.invalid == 4
    messages = "\n".join(truth.examples)
    for expected in ("the later wins", "only CSV", "eventMetadata", "not 0 or 1", "not JSON"):
        assert expected in messages


@pytest.mark.parametrize("header", ["", "inference_id,label\n"])
def test_plain_csv_with_or_without_header(tmp_path: Path, header: str) -> None:
    path = tmp_path / "labels.csv"
    path.write_text(header + 'r1,1\nr2,False.\nr3,1,0\n"r4","1,1"\n\nr5\nr6,7\n')
    truth = load_ground_truth(path)
    assert truth.labels == {"r1": (1,), "r2": (0,), "r3": (1, 0), "r4": (1, 1)}
    assert truth.invalid == 2
    assert truth.files == 1


def test_missing_ground_truth(tmp_path: Path) -> None:
    with pytest.raises(EvaluationInputError, match="does not exist"):
        load_ground_truth(tmp_path / "nothing.csv")
    with pytest.raises(EvaluationInputError, match="no ground-truth files"):
        load_ground_truth(tmp_path)
