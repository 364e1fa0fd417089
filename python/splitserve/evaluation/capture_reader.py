"""Read data-capture files (SageMaker's format, which the gateway writes) into scored requests.

Layout (docs/sagemaker-api.md, section 6):

    <destination>/<EndpointName>/<VariantName>/YYYY/MM/DD/HH/<file>.jsonl

one JSON object per line, one line per captured request. The variant is taken from the path (the
record does not name it). Every `*.jsonl` file under a variant's directory is read, whatever the
subdirectories, so files copied out of their hour directories still count.

The model's scores come from `captureData.endpointOutput`, decoded by its `encoding` (CSV and JSON
carry the text itself, BASE64 the bytes) and parsed by its `observedContentType`:
- `text/csv`: one score per line (one line per input row, as the XGBoost container answers); a
  single line of comma-separated values is the older containers' comma-joined form, one score per
  row as well. Several values on each of several lines (selectable output) is refused as ambiguous.
- `application/json`: `{"predictions": [{"score": p}, ...]}` (or `"probability"` in place of
  `"score"`, or bare numbers), a list of those, or a bare number.
- `application/jsonlines`: one JSON value per line, each as above.
- any other type (`application/octet-stream` when the answer had none): JSON if the text parses
  as JSON, else JSON Lines if every line does, else CSV.
A request of k rows thus has k scores, one per row, in order.

Nothing is dropped silently: a line that is not a capture record is counted as unreadable (with
its file and line number among the examples), and a record without output, or whose output cannot
be parsed, is kept with the reason, for the join to count.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from splitserve.evaluation.errors import EvaluationInputError

#: How many problem examples a read keeps (the counts are always complete).
MAX_EXAMPLES = 10
#: `CapturedRequest.problem` of a record captured without its output (Input-only capture).
NO_OUTPUT = "no endpointOutput captured"

_YEAR = re.compile(r"\d{4}")
_MONTH = re.compile(r"\d{2}")
_JSON_LINES_TYPES = frozenset(
    {"application/jsonlines", "application/x-jsonlines", "application/jsonl"}
)


@dataclass(frozen=True)
class CapturedRequest:
    """One captured invocation.

    Attributes:
        variant: the variant that answered (from the file's path).
        event_id: eventMetadata.eventId.
        inference_id: eventMetadata.inferenceId, present when the caller sent InferenceId.
        inference_time: eventMetadata.inferenceTime (UTC), None if missing or unreadable.
        scores: one model score per input row; None when there is no usable output.
        problem: why `scores` is None.
        source: "file:line", for messages.
        targeted: the caller named the variant (TargetVariant), so the weights did not choose
            it: the gateway marks such records with eventMetadata.splitserve.targeted = true.
        shadow_of: for a shadow variant's answer to a copied request, the production variant
            that answered the caller (eventMetadata.splitserve.shadowOf); None otherwise.
        model_latency_micros: the model's latency, which the gateway records on the records of
            copied requests (eventMetadata.splitserve.modelLatencyMicros); None otherwise.
        input_body: the request's body as sent, decoded from endpointInput (only when read with
            `with_inputs`, and None when the input was not captured or cannot be decoded).
        input_content_type: endpointInput's observedContentType (with `with_inputs` only).
    """

    variant: str
    event_id: str | None
    inference_id: str | None
    inference_time: datetime | None
    scores: tuple[float, ...] | None
    problem: str | None
    source: str
    targeted: bool = False
    shadow_of: str | None = None
    model_latency_micros: float | None = None
    input_body: bytes | None = None
    input_content_type: str | None = None

    @property
    def join_key(self) -> str | None:
        """What ground truth joins on: the inferenceId when present, else the eventId."""
        return self.inference_id if self.inference_id else self.event_id


@dataclass(frozen=True)
class CaptureRead:
    """Everything read from one endpoint's capture files.

    Attributes:
        endpoint: the endpoint's name.
        directory: the endpoint's capture directory.
        files: capture files read.
        requests: the records, in file order.
        unreadable_lines: lines that were not capture records (bad JSON, wrong shape).
        examples: up to MAX_EXAMPLES messages about unreadable lines.
    """

    endpoint: str
    directory: Path
    files: int
    requests: tuple[CapturedRequest, ...]
    unreadable_lines: int
    examples: tuple[str, ...]


def endpoint_directories(capture: Path) -> dict[str, Path]:
    """The endpoints with capture files under `capture`, by name.

    `capture` is a capture destination (holding one directory per endpoint) or one endpoint's
    directory (holding one directory per variant, each holding YYYY/ directories).

    Raises:
        EvaluationInputError: `capture` is not a directory.
    """
    if not capture.is_dir():
        raise EvaluationInputError(f"capture directory {capture} does not exist")
    if _is_endpoint_directory(capture):
        return {capture.name: capture}
    found = {}
    for child in sorted(capture.iterdir()):
        if child.is_dir() and not child.name.startswith(".") and _has_capture_files(child):
            found[child.name] = child
    return found


def read_capture(capture: Path, endpoint: str | None, *, with_inputs: bool = False) -> CaptureRead:
    """Read every capture file of one endpoint.

    Args:
        capture: the capture destination, or one endpoint's directory under it.
        endpoint: the endpoint to read; None when `capture` holds exactly one.
        with_inputs: keep each request's body too (`splitserve replay`; off for `evaluate`,
            which needs only the answers, so that its memory does not grow with the inputs).

    Raises:
        EvaluationInputError: no capture files, an unknown endpoint, or several endpoints and
            none chosen.
    """
    endpoints = endpoint_directories(capture)
    if endpoint is None:
        if not endpoints:
            raise EvaluationInputError(f"no capture files (*.jsonl) under {capture}")
        if len(endpoints) > 1:
            raise EvaluationInputError(
                f"{capture} holds capture for several endpoints ({', '.join(endpoints)}); "
                "choose one with --endpoint"
            )
        endpoint = next(iter(endpoints))
    directory = endpoints.get(endpoint)
    if directory is None:
        known = ", ".join(endpoints) or "none"
        raise EvaluationInputError(
            f"no capture files for endpoint {endpoint} under {capture} (endpoints found: {known})"
        )
    requests: list[CapturedRequest] = []
    examples: list[str] = []
    unreadable = 0
    files = 0
    for variant_directory in sorted(p for p in directory.iterdir() if p.is_dir()):
        for path in _capture_files(variant_directory):
            files += 1
            for line_number, line in enumerate(path.read_bytes().splitlines(), start=1):
                if not line.strip():
                    continue
                source = f"{path}:{line_number}"
                try:
                    requests.append(
                        _parse_record(line, variant_directory.name, source, with_inputs)
                    )
                except ValueError as error:
                    unreadable += 1
                    if len(examples) < MAX_EXAMPLES:
                        examples.append(f"{source}: {error}")
    return CaptureRead(endpoint, directory, files, tuple(requests), unreadable, tuple(examples))


def parse_scores(payload: Mapping[str, object]) -> tuple[float, ...]:
    """The scores in one captured endpointOutput (one per input row).

    Raises:
        ValueError: the payload cannot be decoded or holds no scores (the message says why).
    """
    encoding = payload.get("encoding")
    data = payload.get("data")
    if not isinstance(data, str):
        raise ValueError("output has no data")
    if encoding == "BASE64":
        try:
            text = base64.b64decode(data, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as error:
            raise ValueError(f"output is not base64 of UTF-8 text ({error})") from None
    elif encoding in ("CSV", "JSON"):
        text = data
    else:
        raise ValueError(f"unknown output encoding {encoding!r}")
    observed = payload.get("observedContentType")
    media_type = observed.partition(";")[0].strip().lower() if isinstance(observed, str) else ""
    if media_type == "text/csv":
        scores = _csv_scores(text)
    elif media_type == "application/json":
        scores = _json_scores(_load_json(text))
    elif media_type in _JSON_LINES_TYPES:
        scores = _json_lines_scores(text)
    else:
        scores = _sniffed_scores(text)
    if not scores:
        raise ValueError("output holds no scores")
    return scores


def _is_endpoint_directory(directory: Path) -> bool:
    """Whether `directory`'s subdirectories are variants: they hold YYYY/MM/ directories (a
    variant may itself be named like a year, but then its YYYY/ holds YYYY/, not MM/)."""
    for child in directory.iterdir():
        if not child.is_dir():
            continue
        for year in child.iterdir():
            if (
                year.is_dir()
                and _YEAR.fullmatch(year.name)
                and any(month.is_dir() and _MONTH.fullmatch(month.name) for month in year.iterdir())
            ):
                return True
    return False


def _has_capture_files(directory: Path) -> bool:
    return any(True for _ in _capture_files(directory))


def _capture_files(directory: Path) -> Iterator[Path]:
    for path in sorted(directory.rglob("*.jsonl")):
        if path.is_file() and not path.name.startswith("."):
            yield path


def _parse_record(
    line: bytes, variant: str, source: str, with_inputs: bool = False
) -> CapturedRequest:
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError("not JSON (a partly written line?)") from None
    if not isinstance(record, dict) or not isinstance(record.get("captureData"), dict):
        raise ValueError("not a capture record (no captureData object)")
    metadata = record.get("eventMetadata")
    if not isinstance(metadata, dict):
        raise ValueError("not a capture record (no eventMetadata object)")
    event_id = _optional_text(metadata.get("eventId"))
    inference_id = _optional_text(metadata.get("inferenceId"))
    if event_id is None and inference_id is None:
        raise ValueError("record has neither eventId nor inferenceId")
    output = record["captureData"].get("endpointOutput")
    scores: tuple[float, ...] | None = None
    problem: str | None = None
    if not isinstance(output, dict):
        problem = NO_OUTPUT
    else:
        try:
            scores = parse_scores(output)
        except ValueError as error:
            problem = f"unparseable output: {error}"
    return CapturedRequest(
        variant=variant,
        event_id=event_id,
        inference_id=inference_id,
        inference_time=_parse_time(metadata.get("inferenceTime")),
        scores=scores,
        problem=problem,
        source=source,
        targeted=_targeted(metadata.get("splitserve")),
        shadow_of=_shadow_of(metadata.get("splitserve")),
        model_latency_micros=_latency(metadata.get("splitserve")),
        **(_input(record["captureData"].get("endpointInput")) if with_inputs else {}),
    )


def _input(payload: object) -> dict[str, Any]:
    """input_body and input_content_type from a captured endpointInput (None where unusable)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), str):
        return {}
    data, encoding = payload["data"], payload.get("encoding")
    body: bytes | None = None
    if encoding == "BASE64":
        try:
            body = base64.b64decode(data, validate=True)
        except binascii.Error:
            body = None
    elif encoding in ("CSV", "JSON"):
        body = data.encode("utf-8")
    content_type = payload.get("observedContentType")
    return {
        "input_body": body,
        "input_content_type": content_type if isinstance(content_type, str) else None,
    }


def _targeted(marker: object) -> bool:
    """Whether eventMetadata's "splitserve" object says the request named its variant."""
    return isinstance(marker, dict) and marker.get("targeted") is True


def _shadow_of(marker: object) -> str | None:
    """The production variant a shadow's record answered a copy for, if it is one."""
    if not isinstance(marker, dict):
        return None
    value = marker.get("shadowOf")
    return value if isinstance(value, str) and value else None


def _latency(marker: object) -> float | None:
    """The model latency (microseconds) the gateway recorded on a copied request's record."""
    if not isinstance(marker, dict):
        return None
    value = marker.get("modelLatencyMicros")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value) if value >= 0 else None


def _optional_text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _csv_scores(text: str) -> tuple[float, ...]:
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) == 1:
        return tuple(_number(value) for value in lines[0].split(","))
    if any("," in line for line in lines):
        raise ValueError("CSV output with several values on several lines (one score per row?)")
    return tuple(_number(line) for line in lines)


def _load_json(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise ValueError("output is not JSON") from None


def _json_lines_scores(text: str) -> tuple[float, ...]:
    scores: list[float] = []
    for line in text.splitlines():
        if line.strip():
            scores.extend(_json_scores(_load_json(line)))
    return tuple(scores)


def _sniffed_scores(text: str) -> tuple[float, ...]:
    stripped = text.strip()
    if stripped[:1] in ("{", "["):
        try:
            return _json_scores(json.loads(stripped))
        except json.JSONDecodeError:
            return _json_lines_scores(stripped)
    return _csv_scores(text)


def _json_scores(document: object) -> tuple[float, ...]:
    if isinstance(document, dict) and "predictions" in document:
        document = document["predictions"]
    if isinstance(document, list):
        return tuple(_json_score(entry) for entry in document)
    return (_json_score(document),)


def _json_score(entry: object) -> float:
    if isinstance(entry, dict):
        for key in ("score", "probability"):
            if key in entry:
                return _json_score(entry[key])
        raise ValueError("JSON prediction without a score or probability")
    if isinstance(entry, bool) or not isinstance(entry, int | float):
        raise ValueError(f"JSON prediction {entry!r} is not a number")
    return _finite(float(entry))


def _number(text: str) -> float:
    try:
        value = float(text.strip().strip('"'))
    except ValueError:
        raise ValueError(f"{text.strip()[:40]!r} is not a number") from None
    return _finite(value)


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError(f"score {value} is not finite")
    return value
