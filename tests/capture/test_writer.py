"""Data capture, called directly: SageMaker's record format and layout, sampling, the bounded queue,
the disk limit and a clean close."""

from __future__ import annotations

import base64
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from scipy.stats import binom

from splitserve.capture.spec import DataCapture
from splitserve.capture.writer import CaptureSink, CaptureWriter
from splitserve.config import CaptureSettings
from splitserve.evaluation.capture_reader import read_capture
from splitserve.metrics.prometheus import REGISTRY

# 2022-02-14T17:25:49.5Z: a half second is exact in binary, so the file name's milliseconds are too.
FIXED_TIME = 1644859549.5
VARIANT = "AllTraffic"


def capture_config(tmp_path: Path, **changes: Any) -> DataCapture:
    """100 % Input and Output capture to s3://capture-bucket/prefix with the SDK's content types."""
    config = DataCapture(
        enable_capture=True,
        sampling_percentage=100,
        destination_s3_uri="s3://capture-bucket/prefix",
        destination=tmp_path / "capture-bucket" / "prefix",
        kms_key_id=None,
        capture_input=True,
        capture_output=True,
        csv_content_types=("text/csv",),
        json_content_types=("application/json",),
    )
    return replace(config, **changes)


def make_sink(
    writer: CaptureWriter,
    endpoint: str,
    config: DataCapture,
    variants: tuple[str, ...] = (VARIANT,),
) -> CaptureSink:
    sink = writer.sink(endpoint, variants, config)
    assert sink is not None
    return sink


def offer(
    sink: CaptureSink,
    body: bytes = b"1,2,3\n",
    content_type: str | None = "text/csv",
    response: bytes = b"0.5",
    response_type: bytes | None = b"text/csv; charset=utf-8",
    inference_id: str | None = None,
    variant: str = VARIANT,
) -> None:
    sink.offer(variant, content_type, inference_id, body, response, response_type)


def capture_files(root: Path) -> list[Path]:
    """Every capture file under `root`, in path order."""
    return sorted(root.rglob("*.jsonl"))


def read_records(root: Path) -> list[dict[str, Any]]:
    """Every record of every capture file under `root`."""
    return [
        json.loads(line) for path in capture_files(root) for line in path.read_text().splitlines()
    ]


def dropped(endpoint: str, variant: str = VARIANT) -> float:
    value = REGISTRY.get_sample_value(
        "splitserve_capture_dropped_total", {"endpoint_name": endpoint, "variant_name": variant}
    )
    return 0.0 if value is None else value


def ticking_clock(times: list[float]) -> Callable[[], float]:
    """A clock that returns `times` one after the other."""
    values: Iterator[float] = iter(times)
    return lambda: next(values)


def test_record_is_sagemakers_format_and_layout(tmp_path: Path) -> None:
    writer = CaptureWriter(CaptureSettings(), clock=lambda: FIXED_TIME)
    sink = make_sink(writer, "my-endpoint", capture_config(tmp_path))
    offer(sink, b"69,0,153.7\n", "text/csv", b"0.0254", b"text/csv; charset=utf-8", "inf-1")
    assert writer.close()

    [path] = capture_files(tmp_path)
    relative = path.relative_to(tmp_path).parts
    assert relative[:-1] == (
        "capture-bucket", "prefix", "my-endpoint", VARIANT, "2022", "02", "14", "17",
    )  # fmt: skip
    assert re.fullmatch(r"25-49-500-[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}\.jsonl", relative[-1])
    text = path.read_text()
    assert text.endswith("\n")
    assert text.count("\n") == 1
    record = json.loads(text)
    event_id = record["eventMetadata"]["eventId"]
    assert uuid.UUID(event_id).version == 4
    assert record == {
        "captureData": {
            "endpointInput": {
                "observedContentType": "text/csv",
                "mode": "INPUT",
                "data": "69,0,153.7\n",
                "encoding": "CSV",
            },
            "endpointOutput": {
                "observedContentType": "text/csv; charset=utf-8",
                "mode": "OUTPUT",
                "data": "0.0254",
                "encoding": "CSV",
            },
        },
        "eventMetadata": {
            "eventId": event_id,
            "inferenceId": "inf-1",
            "inferenceTime": "2022-02-14T17:25:49Z",
        },
        "eventVersion": "0",
    }
    # The key order of SageMaker's own files.
    assert list(record) == ["captureData", "eventMetadata", "eventVersion"]
    assert list(record["eventMetadata"]) == ["eventId", "inferenceId", "inferenceTime"]
    assert list(record["captureData"]["endpointInput"]) == [
        "observedContentType", "mode", "data", "encoding",
    ]  # fmt: skip


def test_no_inference_id_means_no_key_and_fresh_event_ids(tmp_path: Path) -> None:
    writer = CaptureWriter(CaptureSettings(), clock=lambda: FIXED_TIME)
    sink = make_sink(writer, "no-id", capture_config(tmp_path))
    offer(sink)
    offer(sink)
    writer.close()
    first, second = read_records(tmp_path)
    assert "inferenceId" not in first["eventMetadata"]
    assert first["eventMetadata"]["eventId"] != second["eventMetadata"]["eventId"]


@pytest.mark.parametrize(
    ("content_type", "body", "observed", "encoding", "data"),
    [
        ("text/csv", b"1,2\n", "text/csv", "CSV", "1,2\n"),
        ("Text/CSV; charset=utf-8", b"1,2", "Text/CSV; charset=utf-8", "CSV", "1,2"),
        ("application/json", b'{"a": [1]}', "application/json", "JSON", '{"a": [1]}'),
        ("application/x-npy", b"\x93NUMPY", "application/x-npy", "BASE64", "k05VTVBZ"),
        # Listed as CSV, but not text: kept exactly, as base64.
        ("text/csv", b"\xff\xfe", "text/csv", "BASE64", "//4="),
        (None, b"abc", "application/octet-stream", "BASE64", "YWJj"),
    ],
)
def test_input_encoding_follows_the_content_type_header(
    tmp_path: Path, content_type: str | None, body: bytes, observed: str, encoding: str, data: str
) -> None:
    writer = CaptureWriter(CaptureSettings())
    offer(make_sink(writer, "enc", capture_config(tmp_path)), body, content_type)
    writer.close()
    [record] = read_records(tmp_path)
    assert record["captureData"]["endpointInput"] == {
        "observedContentType": observed,
        "mode": "INPUT",
        "data": data,
        "encoding": encoding,
    }
    assert base64.b64decode(data) == body if encoding == "BASE64" else data.encode() == body


def test_without_content_type_header_everything_is_base64(tmp_path: Path) -> None:
    writer = CaptureWriter(CaptureSettings())
    config = capture_config(tmp_path, csv_content_types=(), json_content_types=())
    offer(make_sink(writer, "b64", config), b"1,2\n", "text/csv", b'{"p":1}', b"application/json")
    writer.close()
    [record] = read_records(tmp_path)
    data = record["captureData"]
    assert data["endpointInput"]["encoding"] == "BASE64"
    assert base64.b64decode(data["endpointInput"]["data"]) == b"1,2\n"
    assert data["endpointOutput"]["encoding"] == "BASE64"
    assert base64.b64decode(data["endpointOutput"]["data"]) == b'{"p":1}'


def test_output_without_content_type(tmp_path: Path) -> None:
    writer = CaptureWriter(CaptureSettings())
    offer(make_sink(writer, "no-ct", capture_config(tmp_path)), response_type=None)
    writer.close()
    [record] = read_records(tmp_path)
    assert record["captureData"]["endpointOutput"]["observedContentType"] == (
        "application/octet-stream"
    )


@pytest.mark.parametrize(
    ("capture_input", "capture_output", "halves"),
    [(True, False, {"endpointInput"}), (False, True, {"endpointOutput"})],
)
def test_input_only_or_output_only_omits_the_other_half(
    tmp_path: Path, capture_input: bool, capture_output: bool, halves: set[str]
) -> None:
    writer = CaptureWriter(CaptureSettings())
    config = capture_config(tmp_path, capture_input=capture_input, capture_output=capture_output)
    offer(make_sink(writer, "half", config))
    writer.close()
    [record] = read_records(tmp_path)
    assert set(record["captureData"]) == halves


def test_sampling_rate_matches_the_percentage(tmp_path: Path) -> None:
    total = 5000
    counts = []
    for run in range(2):
        writer = CaptureWriter(CaptureSettings(seed=1234))
        sink = make_sink(
            writer, "sampled", capture_config(tmp_path / str(run), sampling_percentage=30)
        )
        for _ in range(total):
            offer(sink, b"1", response=b"1")
        writer.close()
        counts.append(len(read_records(tmp_path / str(run))))
    low, high = binom.interval(1 - 1e-6, total, 0.3)
    assert low <= counts[0] <= high
    assert counts[0] == counts[1]  # the same seed draws the same sample


def test_sampling_all_or_nothing(tmp_path: Path) -> None:
    writer = CaptureWriter(CaptureSettings())
    assert writer.sink("zero", [VARIANT], capture_config(tmp_path, sampling_percentage=0)) is None
    assert writer.sink("off", [VARIANT], capture_config(tmp_path, enable_capture=False)) is None
    sink = make_sink(writer, "all", capture_config(tmp_path))
    for _ in range(300):
        offer(sink)
    writer.close()
    assert len(read_records(tmp_path)) == 300


def test_files_are_grouped_by_hour_of_inference_time(tmp_path: Path) -> None:
    end_of_hour = 1644861599.25  # 2022-02-14T17:59:59.25Z
    writer = CaptureWriter(
        CaptureSettings(), clock=ticking_clock([end_of_hour, end_of_hour + 1, end_of_hour + 2])
    )
    sink = make_sink(writer, "hours", capture_config(tmp_path), variants=("A", "B"))
    offer(sink, inference_id="a-17", variant="A")
    offer(sink, inference_id="a-18", variant="A")
    offer(sink, inference_id="b-18", variant="B")
    writer.close()
    by_directory = {
        path.parent.relative_to(tmp_path / "capture-bucket" / "prefix" / "hours").as_posix(): [
            json.loads(line)["eventMetadata"] for line in path.read_text().splitlines()
        ]
        for path in capture_files(tmp_path)
    }
    assert {key: [m["inferenceId"] for m in value] for key, value in by_directory.items()} == {
        "A/2022/02/14/17": ["a-17"],
        "A/2022/02/14/18": ["a-18"],
        "B/2022/02/14/18": ["b-18"],
    }
    assert by_directory["A/2022/02/14/17"][0]["inferenceTime"] == "2022-02-14T17:59:59Z"
    assert by_directory["A/2022/02/14/18"][0]["inferenceTime"] == "2022-02-14T18:00:00Z"
    # Each file is named for the moment it was started (B started a second after A's 18:00).
    names = {path.name[:9] for path in capture_files(tmp_path)}
    assert names == {"59-59-250", "00-00-250", "00-01-250"}


def test_files_rotate_on_size(tmp_path: Path) -> None:
    writer = CaptureWriter(CaptureSettings(rotate_bytes=1000))
    sink = make_sink(writer, "rotated", capture_config(tmp_path))
    for index in range(20):
        offer(sink, inference_id=str(index))
    writer.close()
    files = capture_files(tmp_path)
    assert len(files) > 3
    assert all(path.stat().st_size < 1000 + 400 for path in files)
    ids = sorted(int(r["eventMetadata"]["inferenceId"]) for r in read_records(tmp_path))
    assert ids == list(range(20))


def test_full_queue_drops_and_counts(tmp_path: Path) -> None:
    # Each record weighs 512 + 1000 + 1000 bytes; the writer is not running, so nothing drains:
    # the first two fit under 4096 queued bytes, the other eight are dropped.
    writer = CaptureWriter(CaptureSettings(max_queued_bytes=4096))
    sink = make_sink(writer, "full-queue", capture_config(tmp_path))
    for _ in range(10):
        offer(sink, b"1" * 1000, response=b"2" * 1000)
    assert dropped("full-queue") == 8
    writer.close()
    assert len(read_records(tmp_path)) == 2


def test_close_writes_everything_accepted(tmp_path: Path) -> None:
    writer = CaptureWriter(CaptureSettings())
    writer.start()
    sink = make_sink(writer, "closing", capture_config(tmp_path), variants=("A", "B"))
    for index in range(2000):
        offer(sink, inference_id=str(index), variant="AB"[index % 2])
    assert writer.close()
    assert dropped("closing", "A") == dropped("closing", "B") == 0
    records = read_records(tmp_path)
    assert sorted(int(r["eventMetadata"]["inferenceId"]) for r in records) == list(range(2000))
    # Closed: later offers are dropped (and counted), never raised.
    offer(sink, variant="A")
    assert dropped("closing", "A") == 1


def test_running_writer_flushes_promptly(tmp_path: Path) -> None:
    writer = CaptureWriter(CaptureSettings())
    writer.start()
    try:
        offer(make_sink(writer, "prompt", capture_config(tmp_path)), inference_id="soon")
        deadline = time.monotonic() + 5
        while not read_records(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.01)
        [record] = read_records(tmp_path)  # there while the file is still open
        assert record["eventMetadata"]["inferenceId"] == "soon"
    finally:
        writer.close()


def test_full_disk_stops_capture_and_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    writer = CaptureWriter(CaptureSettings(max_disk_usage=0.0))  # any use is over the limit
    sink = make_sink(writer, "full-disk", capture_config(tmp_path))
    with caplog.at_level(logging.WARNING, logger="splitserve.capture.writer"):
        for _ in range(5):
            offer(sink)
        writer.close()
    assert capture_files(tmp_path) == []
    assert dropped("full-disk") == 5
    [message] = [r.getMessage() for r in caplog.records]
    assert "data capture to" in message
    assert "stopped" in message


def test_disk_errors_are_counted_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "capture-bucket"
    blocker.write_text("a file where the destination's directory should be")
    writer = CaptureWriter(CaptureSettings())
    writer.start()
    sink = make_sink(writer, "disk-error", capture_config(tmp_path))
    with caplog.at_level(logging.ERROR, logger="splitserve.capture.writer"):
        for _ in range(3):
            offer(sink)
        assert writer.close()
    assert dropped("disk-error") == 3
    assert len([r for r in caplog.records if "cannot write capture" in r.getMessage()]) == 1


def test_a_targeted_request_is_marked_where_sagemaker_readers_ignore_it(tmp_path: Path) -> None:
    writer = CaptureWriter(CaptureSettings(), clock=lambda: FIXED_TIME)
    sink = make_sink(writer, "my-endpoint", capture_config(tmp_path))
    offer(sink, inference_id="weighted")
    sink.offer(VARIANT, "text/csv", "targeted", b"1\n", b"0.5", b"text/csv", targeted=True)
    assert writer.close()
    by_id = {r["eventMetadata"]["inferenceId"]: r["eventMetadata"] for r in read_records(tmp_path)}
    # A weighted request's record is SageMaker's exactly; a targeted one says so in its metadata.
    assert set(by_id["weighted"]) == {"eventId", "inferenceId", "inferenceTime"}
    assert by_id["targeted"]["splitserve"] == {"targeted": True}


def test_each_replica_names_its_files_and_evaluate_reads_them_all(tmp_path: Path) -> None:
    # Two gateway replicas capture the same endpoint into one destination in the same millisecond:
    # each file names its replica, so neither writes the other's, and the reader takes both.
    config = capture_config(tmp_path)
    for replica_id in ("host-a-101-0badcafe", "host-a-102-feedbeef"):
        writer = CaptureWriter(CaptureSettings(), clock=lambda: FIXED_TIME, replica_id=replica_id)
        offer(make_sink(writer, "my-endpoint", config), inference_id=replica_id)
        assert writer.close()

    names = [path.name for path in capture_files(tmp_path)]
    uuid_pattern = r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}"
    assert len(names) == 2
    assert re.fullmatch(rf"25-49-500-host-a-101-0badcafe-{uuid_pattern}\.jsonl", names[0])
    assert re.fullmatch(rf"25-49-500-host-a-102-feedbeef-{uuid_pattern}\.jsonl", names[1])
    read = read_capture(tmp_path / "capture-bucket" / "prefix", "my-endpoint")
    assert read.files == 2
    assert sorted(request.inference_id or "" for request in read.requests) == [
        "host-a-101-0badcafe", "host-a-102-feedbeef",
    ]  # fmt: skip


@pytest.mark.parametrize("replica_id", ["", "a/b", "../up", "host 1", "é"])
def test_a_replica_id_that_cannot_be_in_a_file_name_is_refused(replica_id: str) -> None:
    with pytest.raises(ValueError, match="replica id"):
        CaptureWriter(CaptureSettings(), replica_id=replica_id)
