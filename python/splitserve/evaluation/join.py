"""Join captured requests with their ground truth, counting everything that does not join.

The join key is the captured record's inferenceId when it has one, else its eventId, matched
against the ground truth's id (SageMaker's model-quality merge does the same). A request of k rows
joins when its id has exactly k labels; row i's score goes with label i.

Records are taken in inference-time order; a join key seen again (a retried request, a replayed
file) is counted as a duplicate and only its first record is used, so no row is counted twice.

A record without an inferenceId can only join on its eventId, which the gateway drew itself; when
nothing joins it, it is counted (`without_inference_id`) rather than listed among the examples of
missing ground truth, since no label could have been sent for it. Targeted records (the caller
named the variant) join like the others but are left out of the traffic the weights explain
(`JoinedData.split`, `JoinedData.traffic`), and counted (`targeted`). So are a shadow variant's
records (answers to copies of production's requests, which share production's ids): they join and
are scored as their own variant, but no weight chose them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

from splitserve.evaluation.capture_reader import MAX_EXAMPLES, NO_OUTPUT, CaptureRead
from splitserve.evaluation.ground_truth import GroundTruth

_LAST = datetime.max.replace(tzinfo=UTC)


@dataclass(frozen=True)
class VariantSample:
    """One variant's labelled rows.

    Attributes:
        variant: the variant's name.
        requests: labelled requests.
        labels: one 0/1 label per row.
        scores: the model's score for each row.
    """

    variant: str
    requests: int
    labels: npt.NDArray[np.int8]
    scores: npt.NDArray[np.float64]

    @property
    def rows(self) -> int:
        """Labelled rows (as many as requests unless requests carry several rows)."""
        return int(self.labels.size)


@dataclass(frozen=True)
class JoinAccounting:
    """Where every captured record and every label went.

    Attributes:
        capture_files: capture files read.
        captured_requests: capture records read.
        unreadable_lines: capture lines that were not records.
        without_output: records with no endpointOutput (Input-only capture).
        unparseable_output: records whose output holds no scores that could be read.
        duplicates: records whose join key an earlier record had (not used).
        unlabelled: records with an inferenceId and scores, and no ground truth for that id.
        without_inference_id: records with scores but no inferenceId, and no ground truth for
            their eventId (counted only: a label could not have been sent for them).
        targeted: records of requests that named their variant (TargetVariant).
        label_count_mismatch: records whose ground truth has another number of labels than rows.
        labelled_requests: records that joined.
        labelled_rows: rows of those records.
        ground_truth_files, ground_truth_records, ground_truth_invalid, ground_truth_conflicts:
            see `GroundTruth`.
        unmatched_ground_truth: ground-truth ids that no captured record has.
        captured_by_variant: capture records per variant.
        labelled_by_variant: joined records per variant.
        split_by_variant: joined records per variant that were not targeted: those the weights
            chose a variant for, which the sample-ratio check counts.
        examples: up to MAX_EXAMPLES messages for each kind of problem, capture first.
    """

    capture_files: int
    captured_requests: int
    unreadable_lines: int
    without_output: int
    unparseable_output: int
    duplicates: int
    unlabelled: int
    label_count_mismatch: int
    labelled_requests: int
    labelled_rows: int
    ground_truth_files: int
    ground_truth_records: int
    ground_truth_invalid: int
    ground_truth_conflicts: int
    unmatched_ground_truth: int
    captured_by_variant: Mapping[str, int]
    labelled_by_variant: Mapping[str, int]
    examples: tuple[str, ...] = field(default=())
    without_inference_id: int = 0
    targeted: int = 0
    split_by_variant: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class JoinedData:
    """The joined samples of one endpoint, and the traffic seen.

    Attributes:
        endpoint: the endpoint's name.
        samples: one per variant that has capture, sorted by variant name.
        traffic: (inferenceTime, variant) of every untargeted capture record that has a time, in
            time order.
        accounting: the counts.
        split: (inferenceTime or None, variant) of every joined untargeted record, in time order:
            the requests the sample-ratio check counts, with when each was served.
    """

    endpoint: str
    samples: tuple[VariantSample, ...]
    traffic: tuple[tuple[datetime, str], ...]
    accounting: JoinAccounting
    split: tuple[tuple[datetime | None, str], ...] = ()


def join(capture: CaptureRead, truth: GroundTruth) -> JoinedData:
    """Join `capture` with `truth`; see the module docstring for the rules."""
    ordered = sorted(capture.requests, key=lambda r: _aware(r.inference_time) or _LAST)
    seen: set[str] = set()
    # A shadow's answer to a copy shares its production record's ids: it is deduplicated
    # among its own variant's records only.
    seen_shadow: set[tuple[str, str]] = set()
    scores: dict[str, list[float]] = {}
    labels: dict[str, list[int]] = {}
    labelled_requests: Counter[str] = Counter()
    split: list[tuple[datetime | None, str]] = []
    problems: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}

    def note(kind: str, message: str) -> None:
        problems[kind] += 1
        kept = examples.setdefault(kind, [])
        if len(kept) < MAX_EXAMPLES:
            kept.append(message)

    for request in ordered:
        scores.setdefault(request.variant, [])
        labels.setdefault(request.variant, [])
        key = request.join_key
        assert key is not None  # the reader refuses records with neither id
        if request.shadow_of is not None:
            if (request.variant, key) in seen_shadow:
                note("duplicates", f"{request.source}: id {key!r} seen before; not used again")
                continue
            seen_shadow.add((request.variant, key))
        else:
            if key in seen:
                note("duplicates", f"{request.source}: id {key!r} seen before; not used again")
                continue
            seen.add(key)
        if request.scores is None:
            kind = "without_output" if request.problem == NO_OUTPUT else "bad"
            note(kind, f"{request.source}: {request.problem}")
            continue
        row_labels = truth.labels.get(key)
        if row_labels is None and not request.inference_id:
            problems["without_inference_id"] += 1
            continue
        if row_labels is None:
            note("unlabelled", f"{request.source}: no ground truth for id {key!r}")
            continue
        if len(row_labels) != len(request.scores):
            note(
                "mismatch",
                f"{request.source}: {len(request.scores)} rows but {len(row_labels)} labels "
                f"for id {key!r}",
            )
            continue
        scores[request.variant].extend(request.scores)
        labels[request.variant].extend(row_labels)
        labelled_requests[request.variant] += 1
        if not request.targeted and request.shadow_of is None:
            split.append((_aware(request.inference_time), request.variant))

    samples = tuple(
        VariantSample(
            variant,
            labelled_requests[variant],
            np.asarray(labels[variant], dtype=np.int8),
            np.asarray(scores[variant], dtype=np.float64),
        )
        for variant in sorted(scores)
    )
    traffic = tuple(
        (when, request.variant)
        for request in ordered
        if not request.targeted
        and request.shadow_of is None
        and (when := _aware(request.inference_time)) is not None
    )
    accounting = JoinAccounting(
        capture_files=capture.files,
        captured_requests=len(capture.requests),
        unreadable_lines=capture.unreadable_lines,
        without_output=problems["without_output"],
        unparseable_output=problems["bad"],
        duplicates=problems["duplicates"],
        unlabelled=problems["unlabelled"],
        label_count_mismatch=problems["mismatch"],
        labelled_requests=sum(labelled_requests.values()),
        labelled_rows=sum(sample.rows for sample in samples),
        ground_truth_files=truth.files,
        ground_truth_records=truth.records,
        ground_truth_invalid=truth.invalid,
        ground_truth_conflicts=truth.conflicts,
        unmatched_ground_truth=len(truth.labels.keys() - seen),
        captured_by_variant=dict(sorted(Counter(r.variant for r in capture.requests).items())),
        labelled_by_variant={sample.variant: sample.requests for sample in samples},
        examples=(
            *capture.examples,
            *(message for kept in examples.values() for message in kept),
            *truth.examples,
        ),
        without_inference_id=problems["without_inference_id"],
        targeted=sum(1 for request in capture.requests if request.targeted),
        split_by_variant=dict(sorted(Counter(variant for _, variant in split).items())),
    )
    return JoinedData(capture.endpoint, samples, traffic, accounting, tuple(split))


def _aware(moment: datetime | None) -> datetime | None:
    """`moment` as UTC-aware (capture times are UTC; a naive one is taken as UTC)."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)
