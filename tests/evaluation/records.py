"""Capture and ground-truth files in SageMaker's formats (reference section 6), for the tests."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from splitserve.evaluation.join import JoinAccounting, JoinedData, VariantSample

START = datetime(2024, 3, 5, 17, 58, 0, tzinfo=UTC)


def output_payload(
    scores: Sequence[float], form: str = "csv", *, base64_encoded: bool = False
) -> dict[str, str]:
    """An endpointOutput holding `scores` as the XGBoost container answers in `form`.

    Forms: "csv" (one per line), "csv-joined" (the old comma-joined line), "json"
    ({"predictions": [{"score": p}]}), "jsonlines" (one {"score": p} per line).
    """
    if form == "csv":
        text, content_type = "".join(f"{s!r}\n" for s in scores), "text/csv; charset=utf-8"
    elif form == "csv-joined":
        text, content_type = ",".join(repr(s) for s in scores), "text/csv"
    elif form == "json":
        text = json.dumps({"predictions": [{"score": s} for s in scores]})
        content_type = "application/json"
    elif form == "jsonlines":
        text = "".join(json.dumps({"score": s}) + "\n" for s in scores)
        content_type = "application/jsonlines"
    else:
        raise ValueError(form)
    if base64_encoded:
        return {
            "observedContentType": content_type,
            "mode": "OUTPUT",
            "data": base64.b64encode(text.encode()).decode(),
            "encoding": "BASE64",
        }
    encoding = "CSV" if form.startswith("csv") else "JSON"
    return {
        "observedContentType": content_type,
        "mode": "OUTPUT",
        "data": text,
        "encoding": encoding,
    }


def capture_record(
    output: dict[str, str] | None,
    *,
    inference_id: str | None = None,
    event_id: str | None = None,
    when: datetime = START,
) -> dict[str, Any]:
    """One capture line's document (input omitted unless it matters; output may be absent)."""
    capture_data: dict[str, Any] = {
        "endpointInput": {
            "observedContentType": "text/csv",
            "mode": "INPUT",
            "data": "1.0,2.0\n",
            "encoding": "CSV",
        }
    }
    if output is not None:
        capture_data["endpointOutput"] = output
    metadata: dict[str, str] = {"eventId": event_id or str(uuid.uuid4())}
    if inference_id is not None:
        metadata["inferenceId"] = inference_id
    metadata["inferenceTime"] = when.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"captureData": capture_data, "eventMetadata": metadata, "eventVersion": "0"}


def write_capture(
    root: Path, endpoint: str, variant: str, records: Iterable[dict[str, Any]]
) -> list[Path]:
    """Write records under root/endpoint/variant/YYYY/MM/DD/HH/, one file per hour."""
    by_hour: dict[Path, list[str]] = {}
    for record in records:
        when = datetime.fromisoformat(record["eventMetadata"]["inferenceTime"])
        directory = root / endpoint / variant / when.strftime("%Y/%m/%d/%H")
        by_hour.setdefault(directory, []).append(json.dumps(record))
    paths = []
    for directory, lines in by_hour.items():
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{uuid.uuid4()}.jsonl"
        path.write_text("".join(line + "\n" for line in lines))
        paths.append(path)
    return paths


def merge_record(key: str, labels: str) -> str:
    """One ground-truth line in SageMaker's merge format."""
    return json.dumps(
        {
            "groundTruthData": {"data": labels, "encoding": "CSV"},
            "eventMetadata": {"eventId": key},
            "eventVersion": "0",
        }
    )


@dataclass(frozen=True)
class Experiment:
    """A captured A/B experiment on disk: capture root, ground-truth file, what was written."""

    capture: Path
    ground_truth: Path
    labels: dict[str, npt.NDArray[np.int8]]
    scores: dict[str, npt.NDArray[np.float64]]


def write_experiment(
    tmp_path: Path,
    samples: dict[str, tuple[npt.NDArray[np.int8], npt.NDArray[np.float64]]],
    *,
    endpoint: str = "churn",
    form: str = "csv",
    seconds_apart: float = 1.0,
) -> Experiment:
    """Capture one single-row request per (label, score) of each variant, with InferenceIds
    `<variant>-<i>`, interleaved in time, and a merge-format ground-truth file for them all."""
    capture = tmp_path / "capture"
    truth_lines = []
    for offset, (variant, (labels, scores)) in enumerate(sorted(samples.items())):
        records = []
        for index, (label, score) in enumerate(zip(labels, scores, strict=True)):
            key = f"{variant}-{index}"
            when = START + timedelta(seconds=(index * len(samples) + offset) * seconds_apart)
            records.append(
                capture_record(output_payload([float(score)], form), inference_id=key, when=when)
            )
            truth_lines.append(merge_record(key, str(int(label))))
        write_capture(capture, endpoint, variant, records)
    ground_truth = tmp_path / "ground-truth.jsonl"
    ground_truth.write_text("\n".join(truth_lines) + "\n")
    return Experiment(
        capture,
        ground_truth,
        {variant: labels for variant, (labels, _) in samples.items()},
        {variant: scores for variant, (_, scores) in samples.items()},
    )


def binormal_sample(
    rng: np.random.Generator, rows: int, separation: float, prevalence: float = 0.3
) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float64]]:
    """Labels ~ Bernoulli(prevalence); scores = sigmoid(latent), latent ~ N(separation * label, 1).

    The true AUC is Phi(separation / sqrt(2)) (the sigmoid keeps the order).
    """
    labels = (rng.random(rows) < prevalence).astype(np.int8)
    latent = rng.normal(separation * labels, 1.0)
    return labels, 1 / (1 + np.exp(-latent))


def joined_from_samples(
    samples: dict[str, tuple[npt.NDArray[np.int8], npt.NDArray[np.float64]]],
    endpoint: str = "churn",
) -> JoinedData:
    """Joined data of single-row requests straight from arrays (no files), for simulations."""
    counts = {variant: int(labels.size) for variant, (labels, _) in sorted(samples.items())}
    total = sum(counts.values())
    accounting = JoinAccounting(
        capture_files=0,
        captured_requests=total,
        unreadable_lines=0,
        without_output=0,
        unparseable_output=0,
        duplicates=0,
        unlabelled=0,
        label_count_mismatch=0,
        labelled_requests=total,
        labelled_rows=total,
        ground_truth_files=0,
        ground_truth_records=total,
        ground_truth_invalid=0,
        ground_truth_conflicts=0,
        unmatched_ground_truth=0,
        captured_by_variant=counts,
        labelled_by_variant=counts,
        split_by_variant=counts,
    )
    return JoinedData(
        endpoint,
        tuple(
            VariantSample(variant, int(labels.size), labels, scores)
            for variant, (labels, scores) in sorted(samples.items())
        ),
        (),
        accounting,
        tuple((None, variant) for variant, count in counts.items() for _ in range(count)),
    )
