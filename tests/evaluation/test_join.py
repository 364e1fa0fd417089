"""The join: inferenceId first, eventId otherwise; every record and label accounted for."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from splitserve.evaluation.capture_reader import read_capture
from splitserve.evaluation.ground_truth import load_ground_truth
from splitserve.evaluation.join import join
from tests.evaluation.records import START, capture_record, output_payload, write_capture


def test_join_counts_every_record_and_label(tmp_path: Path) -> None:
    later = START + timedelta(seconds=5)
    write_capture(
        tmp_path / "capture",
        "churn",
        "Variant1",
        [
            capture_record(output_payload([0.9]), inference_id="a"),
            # The same InferenceId again, later (a retry): counted, not used twice.
            capture_record(output_payload([0.1]), inference_id="a", when=later),
            # No InferenceId: joins on the eventId.
            capture_record(output_payload([0.2]), event_id="ev-b"),
            # Three rows, three labels.
            capture_record(output_payload([0.8, 0.3, 0.6]), inference_id="multi"),
            # Two rows, one label.
            capture_record(output_payload([0.8, 0.3]), inference_id="short"),
            capture_record(output_payload([0.4]), inference_id="unlabelled"),
            capture_record(None, inference_id="input-only"),
        ],
    )
    write_capture(
        tmp_path / "capture",
        "churn",
        "Variant2",
        [
            capture_record(
                {"observedContentType": "text/csv", "data": "?", "encoding": "CSV"},
                inference_id="bad",
            ),
            capture_record(output_payload([0.7], "json"), inference_id="c"),
        ],
    )
    labels = tmp_path / "labels.csv"
    labels.write_text(
        'inference_id,label\na,1\nev-b,0\nmulti,"1,0,1"\nshort,1\nc,1\nbad,0\ninput-only,1\n'
        "orphan,1\n"
    )
    joined = join(read_capture(tmp_path / "capture", None), load_ground_truth(labels))
    accounting = joined.accounting
    assert accounting.captured_requests == 9
    assert accounting.duplicates == 1
    assert accounting.label_count_mismatch == 1
    assert accounting.unlabelled == 1
    assert accounting.without_output == 1
    assert accounting.unparseable_output == 1
    assert accounting.labelled_requests == 4
    assert accounting.labelled_rows == 6
    assert accounting.unmatched_ground_truth == 1  # "orphan"
    assert accounting.captured_by_variant == {"Variant1": 7, "Variant2": 2}
    assert accounting.labelled_by_variant == {"Variant1": 3, "Variant2": 1}
    # Every captured record is in exactly one bucket.
    assert accounting.captured_requests == (
        accounting.labelled_requests
        + accounting.duplicates
        + accounting.label_count_mismatch
        + accounting.unlabelled
        + accounting.without_output
        + accounting.unparseable_output
    )
    first, second = joined.samples
    assert first.variant == "Variant1"
    assert first.scores.tolist() == [0.9, 0.2, 0.8, 0.3, 0.6]  # the first "a" (0.9) is kept
    assert first.labels.tolist() == [1, 0, 1, 0, 1]
    assert second.scores.tolist() == [0.7]
    assert len(joined.traffic) == 9
    assert joined.traffic[-1] == (later, "Variant1")
    messages = "\n".join(accounting.examples)
    for expected in ("seen before", "2 rows but 1 labels", "no ground truth", "no endpointOutput"):
        assert expected in messages
