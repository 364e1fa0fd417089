"""Reading capture files: every output form the XGBoost container gives, and every bad line."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from splitserve.evaluation.capture_reader import (
    NO_OUTPUT,
    endpoint_directories,
    parse_scores,
    read_capture,
)
from splitserve.evaluation.errors import EvaluationInputError
from tests.evaluation.records import capture_record, output_payload, write_capture

SCORES = [0.0254181120544672, 0.9700000286102295, 0.5]


@pytest.mark.parametrize("form", ["csv", "csv-joined", "json", "jsonlines"])
@pytest.mark.parametrize("base64_encoded", [False, True])
def test_every_output_form_gives_one_score_per_row(form: str, base64_encoded: bool) -> None:
    payload = output_payload(SCORES, form, base64_encoded=base64_encoded)
    assert parse_scores(payload) == pytest.approx(SCORES)


def test_a_single_score_in_each_form() -> None:
    assert parse_scores(output_payload([0.25], "csv")) == (0.25,)
    assert parse_scores(output_payload([0.25], "json")) == (0.25,)
    # Without a trailing newline, as the reference's example record has it.
    payload = {"observedContentType": "text/csv", "data": "0.0254181120544672", "encoding": "CSV"}
    assert parse_scores(payload) == (0.0254181120544672,)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"predictions": [{"probability": 0.9}, {"score": 0.1}]}', (0.9, 0.1)),
        ("[0.2, 0.4]", (0.2, 0.4)),
        ('{"score": 0.3}\n{"score": 0.6}\n', (0.3, 0.6)),
        ("0.1\n0.2\n", (0.1, 0.2)),
        ("0.7", (0.7,)),
    ],
)
def test_octet_stream_output_is_sniffed(text: str, expected: tuple[float, ...]) -> None:
    """Answers captured BASE64 as application/octet-stream (no Content-Type) are still read."""
    payload = {
        "observedContentType": "application/octet-stream",
        "data": base64.b64encode(text.encode()).decode(),
        "encoding": "BASE64",
    }
    assert parse_scores(payload) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (
            {"observedContentType": "text/csv", "data": "1,0.9\n0,0.1\n", "encoding": "CSV"},
            "several",
        ),
        ({"observedContentType": "text/csv", "data": "abc", "encoding": "CSV"}, "not a number"),
        ({"observedContentType": "text/csv", "data": "nan", "encoding": "CSV"}, "not finite"),
        ({"observedContentType": "application/json", "data": "{", "encoding": "JSON"}, "not JSON"),
        (
            {"observedContentType": "application/json", "data": '[{"x": 1}]', "encoding": "JSON"},
            "without a score",
        ),
        ({"observedContentType": "application/json", "data": "true", "encoding": "JSON"}, "number"),
        ({"observedContentType": "text/csv", "data": "!!", "encoding": "BASE64"}, "base64"),
        ({"observedContentType": "text/csv", "data": "0.1", "encoding": "XML"}, "encoding"),
        ({"observedContentType": "text/csv", "encoding": "CSV"}, "no data"),
        ({"observedContentType": "text/csv", "data": "\n", "encoding": "CSV"}, "no scores"),
    ],
)
def test_unusable_outputs_say_why(payload: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_scores(payload)


def test_read_capture_takes_the_variant_from_the_path_and_keeps_problems(tmp_path: Path) -> None:
    write_capture(
        tmp_path, "churn", "Variant1",
        [capture_record(output_payload([0.1]), inference_id="a"), capture_record(None)],
    )  # fmt: skip
    paths = write_capture(
        tmp_path, "churn", "Variant2",
        [capture_record({"observedContentType": "text/csv", "data": "x", "encoding": "CSV"})],
    )  # fmt: skip
    with paths[0].open("a") as file:
        file.write('{"captureData": {"endpointOutput": \n')  # a line cut short
        file.write(json.dumps({"eventVersion": "0"}) + "\n")
        file.write("\n")
    read = read_capture(tmp_path, None)
    assert read.endpoint == "churn"
    assert read.files == 2
    by_variant = {(r.variant, r.problem is None) for r in read.requests}
    assert by_variant == {("Variant1", True), ("Variant1", False), ("Variant2", False)}
    first = next(r for r in read.requests if r.inference_id == "a")
    assert first.scores == (0.1,)
    assert first.join_key == "a"
    assert first.inference_time is not None
    assert first.inference_time.tzinfo is not None
    problems = sorted(r.problem or "" for r in read.requests if r.problem)
    assert problems[0] == NO_OUTPUT
    assert problems[1].startswith("unparseable output")
    assert read.unreadable_lines == 2
    assert any("not JSON" in example for example in read.examples)
    assert all(str(paths[0]) in example for example in read.examples)


def test_the_join_key_falls_back_to_the_event_id(tmp_path: Path) -> None:
    write_capture(tmp_path, "e", "V", [capture_record(output_payload([0.1]), event_id="ev-1")])
    (request,) = read_capture(tmp_path, None).requests
    assert request.inference_id is None
    assert request.join_key == "ev-1"


def test_endpoint_choice(tmp_path: Path) -> None:
    for endpoint in ("first", "second"):
        write_capture(tmp_path, endpoint, "Variant1", [capture_record(output_payload([0.1]))])
    assert set(endpoint_directories(tmp_path)) == {"first", "second"}
    with pytest.raises(EvaluationInputError, match="--endpoint"):
        read_capture(tmp_path, None)
    assert read_capture(tmp_path, "second").endpoint == "second"
    with pytest.raises(EvaluationInputError, match="endpoints found: first, second"):
        read_capture(tmp_path, "third")
    # An endpoint's own directory works as DIR too.
    assert read_capture(tmp_path / "first", None).endpoint == "first"
    with pytest.raises(EvaluationInputError, match="does not exist"):
        read_capture(tmp_path / "missing", None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvaluationInputError, match="no capture files"):
        read_capture(tmp_path / "empty", None)


def test_a_variant_named_like_a_year_is_still_a_variant(tmp_path: Path) -> None:
    write_capture(tmp_path, "e", "2024", [capture_record(output_payload([0.1]))])
    assert set(endpoint_directories(tmp_path)) == {"e"}
    assert {r.variant for r in read_capture(tmp_path, None).requests} == {"2024"}
