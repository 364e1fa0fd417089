"""Feedback and the live experiment: labels joined by inference id, and the view of them.

No aiohttp here (`online.routes` is the thin HTTP side). `FeedbackService.submit` parses a
feedback body, joins its records in one write transaction of the state database
(`FeedbackStore.join`: exactly once, whichever replica the label reaches) and counts every
outcome in `splitserve_feedback_total`. `FeedbackService.look` is the live experiment of an
endpoint: each replica keeps one `evaluation.sequential.LiveExperiment` per endpoint, fed with
the labels every replica joined, read forward from the state database by their `seq`, so the
view is the same on every replica and is rebuilt from the stored labels after a restart.

The live split check (SRM) compares the invocations the index holds per variant since the
current weights began (as this replica saw them; TargetVariant ones left out) with those weights;
it is skipped while labels name a variant the endpoint no longer routes to. A change of the
variants starts the experiment over from the stored labels; a change of their weights starts only
the split check over (it assumes one split throughout), and the statistics with the decisions
they made are kept.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from prometheus_client import Gauge

from splitserve.config import FeedbackSettings
from splitserve.errors import (
    FeedbackRefused,
    LateFeedback,
    MalformedFeedback,
    UnknownInferenceId,
    UnscorableFeedback,
    ValidationException,
    WrongEndpointFeedback,
)
from splitserve.evaluation.capture_reader import parse_scores
from splitserve.metrics.prometheus import (
    EXPERIMENT_LABELS,
    EXPERIMENT_METRIC,
    EXPERIMENT_P_VALUE,
    EXPERIMENT_SRM_FAILED,
    EXPERIMENT_WINNER,
    FEEDBACK,
)
from splitserve.online.records import parse_body
from splitserve.online.store import FeedbackStore, IndexedAnswer, JoinedLabel, StoredLabel

if TYPE_CHECKING:
    from splitserve.evaluation.sequential import ExperimentSnapshot, LiveExperiment

__all__ = ["EndpointWeights", "FeedbackAnswer", "FeedbackService", "uuid7_seconds"]

# One gauge series: the gauge and its label values.
_Series = tuple[Gauge, tuple[str, ...]]
_UUID7 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


class EndpointWeights(Protocol):
    """What feedback needs of the endpoints (the face reads it from the data plane's registry)."""

    def known(self, endpoint: str) -> bool:
        """Whether endpoint `endpoint` exists (routable, pending or failed)."""
        ...

    def weights(self, endpoint: str) -> Mapping[str, float] | None:
        """The weights endpoint `endpoint` routes with now, by variant in its order; None when
        it is not routable."""
        ...

    def names(self) -> list[str]:
        """The routable endpoints' names."""
        ...


@dataclass(frozen=True)
class FeedbackAnswer:
    """The outcome of one feedback request.

    Attributes:
        single: the body was one record (a refusal is then the request's error).
        outcomes: per record in order, (eventId or None when there was none, outcome, message
            or None when joined).
    """

    single: bool
    outcomes: tuple[tuple[str | None, str, str | None], ...]

    def to_json(self) -> dict[str, object]:
        """{"Joined": n, "Refused": n, "Records": [{"EventId", "Outcome", "Message"?}]}."""
        records: list[dict[str, object]] = []
        for event_id, outcome, message in self.outcomes:
            record: dict[str, object] = {"EventId": event_id, "Outcome": outcome}
            if message is not None:
                record["Message"] = message
            records.append(record)
        joined = sum(1 for _, outcome, _ in self.outcomes if outcome == "joined")
        return {"Joined": joined, "Refused": len(self.outcomes) - joined, "Records": records}


def uuid7_seconds(inference_id: str) -> float | None:
    """When a UUIDv7 inference id was drawn (epoch seconds); None for any other id."""
    if len(inference_id) != 36 or not _UUID7.fullmatch(inference_id):
        return None
    return int(inference_id[:8] + inference_id[9:13], 16) / 1000.0


@dataclass
class _Experiment:
    """One endpoint's live experiment on this replica."""

    variants: tuple[str, ...]
    shares: tuple[float, ...] | None
    statistics: LiveExperiment | None
    started: float = 0.0
    seq: int = 0
    labels: dict[str, int] = field(default_factory=dict)
    rewards: dict[str, list[int]] = field(default_factory=dict)  # variant: [hits, misses]
    gauges: set[_Series] = field(default_factory=set)


class FeedbackService:
    """Joins labels to answered invocations and keeps each endpoint's live experiment."""

    def __init__(
        self,
        settings: FeedbackSettings,
        store: FeedbackStore,
        endpoints: EndpointWeights,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Feedback over `store` for the endpoints `endpoints` knows."""
        self._settings = settings
        self._store = store
        self._endpoints = endpoints
        self._clock = clock
        self._experiments: dict[str, _Experiment] = {}
        self._actions: dict[str, dict[str, object]] = {}
        self._lock = threading.Lock()  # looks run in worker threads: one at a time

    # --- feedback -------------------------------------------------------------------------------

    def submit(self, endpoint: str, body: bytes) -> FeedbackAnswer:
        """Join the label records of `body` to `endpoint`'s invocations (blocks).

        Raises:
            ValidationException: no endpoint has that name.
            MalformedFeedback: the body is not ground-truth records (or a single record is
                malformed).
            FeedbackRefused: the body was a single record, refused (its subclass names why).
            DatabaseUnavailable: the state database cannot be reached.
        """
        if not self._endpoints.known(endpoint):
            raise ValidationException(f"Endpoint {endpoint} not found.")
        try:
            if len(body) > self._settings.max_body_bytes:
                raise MalformedFeedback(
                    f"The feedback body is {len(body)} bytes; at most "
                    f"{self._settings.max_body_bytes} per request."
                )
            parsed = parse_body(body, self._settings.max_records)
        except MalformedFeedback:
            FEEDBACK.labels(endpoint, "malformed").inc()
            self._store.join(endpoint, [], self._decide, self._clock(), malformed=1)
            raise
        valid = [record for record in parsed.records if isinstance(record, tuple)]
        malformed = len(parsed.records) - len(valid)
        joined = self._store.join(endpoint, valid, self._decide, self._clock(), malformed=malformed)
        outcomes: list[tuple[str | None, str, str | None]] = []
        results = iter(joined)
        for record in parsed.records:
            if isinstance(record, MalformedFeedback):
                outcomes.append((None, record.outcome, record.message))
                FEEDBACK.labels(endpoint, record.outcome).inc()
                continue
            result = next(results)
            if isinstance(result, FeedbackRefused):
                outcomes.append((record[0], result.outcome, result.message))
                FEEDBACK.labels(endpoint, result.outcome).inc()
            else:
                outcomes.append((record[0], "joined", None))
                FEEDBACK.labels(endpoint, "joined").inc()
        if parsed.single:
            refusal = (
                parsed.records[0]
                if isinstance(parsed.records[0], MalformedFeedback)
                else joined[0]
                if isinstance(joined[0], FeedbackRefused)
                else None
            )
            if refusal is not None:
                raise refusal
        return FeedbackAnswer(parsed.single, tuple(outcomes))

    def _decide(
        self,
        inference_id: str,
        answer: IndexedAnswer | None,
        other_endpoint: str | None,
        labels: tuple[int, ...],
    ) -> JoinedLabel:
        """The label `labels` for `inference_id` as it will be stored, or the refusal (called by
        `FeedbackStore.join` inside its transaction)."""
        retention = self._settings.retention_seconds
        oldest = self._clock() - retention
        if answer is None:
            if other_endpoint is not None:
                raise WrongEndpointFeedback(
                    f"Inference id {inference_id!r} is an invocation of endpoint "
                    f"{other_endpoint}, not of this endpoint."
                )
            drawn = uuid7_seconds(inference_id)
            if drawn is not None and drawn < oldest:
                raise LateFeedback(_late(inference_id, retention))
            raise UnknownInferenceId(
                f"No answered invocation has inference id {inference_id!r} (or it is older "
                f"than the {_hours(retention)} the gateway keeps them)."
            )
        if answer.time < oldest:
            raise LateFeedback(_late(inference_id, retention))
        try:
            scores = _scores(answer)
        except ValueError as error:
            raise UnscorableFeedback(
                f"The answer to inference id {inference_id!r} holds no usable scores: {error}."
            ) from None
        if len(scores) != len(labels):
            raise UnscorableFeedback(
                f"Inference id {inference_id!r} was answered with {len(scores)} scores (one per "
                f"row); the record has {len(labels)} labels."
            )
        return JoinedLabel(inference_id, answer.variant, scores, labels)

    # --- the live experiment --------------------------------------------------------------------

    def look(self, endpoint: str) -> dict[str, object]:
        """The live experiment of `endpoint` now (blocks; one look of its sequential tests):
        `ExperimentSnapshot.to_dict()` with the endpoint's name and its label counts.

        Raises:
            ValidationException: no endpoint has that name.
            DatabaseUnavailable: the state database cannot be reached.
        """
        if not self._endpoints.known(endpoint):
            raise ValidationException(f"Endpoint {endpoint} not found.")
        with self._lock:
            experiment, snapshot = self._look(endpoint)
            refusals = self._store.refusals(endpoint)
        document: dict[str, object] = {"EndpointName": endpoint}
        if snapshot is None:
            document.update(
                {
                    "metric": self._settings.metric,
                    "alpha": self._settings.alpha,
                    "variants": {
                        name: {"n": experiment.labels.get(name, 0)} for name in experiment.variants
                    },
                    "comparisons": [],
                    "winner": None,
                    "srm": None,
                    "message": f"Endpoint {endpoint} has fewer than two variants: nothing to "
                    "compare.",
                }
            )
        else:
            document.update(snapshot.to_dict())
        document["labels"] = {
            "joined": sum(experiment.labels.values()),
            "refused": dict(sorted(refusals.items())),
        }
        action = self._actions.get(endpoint)
        if action is not None:
            document["action"] = dict(action)
        return document

    def forget(self, endpoint: str) -> None:
        """Forget everything of `endpoint`, stored and here (it was deleted; blocks)."""
        with self._lock:
            self._forget(endpoint)
            self._actions.pop(endpoint, None)
            self._store.clear(endpoint)

    def report_action(self, endpoint: str, status: Mapping[str, object] | None) -> None:
        """What the automatic action of `endpoint` did last (the view shows it as `action`);
        None forgets it (the endpoint has none)."""
        if status is None:
            self._actions.pop(endpoint, None)
        else:
            self._actions[endpoint] = dict(status)

    def refresh(self) -> None:
        """Look at every experiment here and at every routable endpoint with labels (blocks):
        what keeps the experiment gauges current between requests for the view."""
        with self._lock:
            for endpoint in sorted(self._experiments):
                if not self._endpoints.known(endpoint):
                    self._forget(endpoint)
            for endpoint in sorted(set(self._experiments) | set(self._endpoints.names())):
                if endpoint in self._experiments or self._store.has_labels(endpoint):
                    self._look(endpoint)

    def _look(self, endpoint: str) -> tuple[_Experiment, ExperimentSnapshot | None]:
        weights = self._endpoints.weights(endpoint)
        experiment = self._experiments.get(endpoint)
        routed = tuple(weights or ())
        shares = _shares(weights)
        if experiment is None or (
            weights is not None and experiment.variants[: len(routed)] != routed
        ):
            experiment = self._start(endpoint, routed, shares)
        elif weights is not None and experiment.shares != shares:
            # New weights, same variants: only the split check starts over (its counts must
            # come from one split); the statistics and their decisions stay, so a winner
            # declared before a promotion's step is still the winner after it.
            experiment.shares = shares
            experiment.started = self._clock()
            if experiment.statistics is not None:
                experiment.statistics.expect(_expected(experiment.variants, shares))
        new = self._store.labels_after(endpoint, experiment.seq)
        unknown = [label.variant for label in new if label.variant not in experiment.variants]
        if unknown:
            # Labels of variants no longer routed (an UpdateEndpoint removed them) stay in the
            # experiment, after the routed ones.
            variants = dict.fromkeys((*routed, *experiment.variants, *unknown))
            experiment = self._start(endpoint, tuple(variants), shares)
            new = self._store.labels_after(endpoint, 0)
        self._observe(experiment, new)
        statistics = experiment.statistics
        if statistics is None:
            return experiment, None
        assignments = None
        if weights is not None and set(experiment.variants) <= set(weights):
            # Counted from when this split began here: the weights before it expected others.
            assignments = self._store.assignments(endpoint, since=experiment.started)
            assignments = {name: count for name, count in assignments.items() if name in weights}
        snapshot = statistics.snapshot(assignments)
        self._set_gauges(endpoint, experiment, snapshot)
        return experiment, snapshot

    def _start(
        self, endpoint: str, variants: Sequence[str], shares: tuple[float, ...] | None
    ) -> _Experiment:
        """A new experiment over `variants` (the stored labels are read into it next)."""
        from splitserve.evaluation.sequential import LiveExperiment  # noqa: PLC0415 (numpy)

        self._forget(endpoint)
        names = tuple(variants)
        statistics = None
        if len(names) >= 2:
            statistics = LiveExperiment(
                names,
                alpha=self._settings.alpha,
                threshold=self._settings.threshold,
                metric=self._settings.metric,
                expected_shares=_expected(names, shares),
            )
        experiment = _Experiment(names, shares, statistics, started=self._clock())
        self._experiments[endpoint] = experiment
        return experiment

    def rewards(self, endpoint: str) -> dict[str, tuple[int, int]]:
        """Per variant of `endpoint`'s experiment here, its rows predicted right and wrong (a
        score at or above the threshold for a positive label): the bandit's binary reward. As
        of the last look."""
        with self._lock:
            experiment = self._experiments.get(endpoint)
            if experiment is None:
                return {}
            return {name: (counts[0], counts[1]) for name, counts in experiment.rewards.items()}

    def _observe(self, experiment: _Experiment, labels: Sequence[StoredLabel]) -> None:
        threshold = self._settings.threshold
        by_variant: dict[str, tuple[list[float], list[int]]] = {}
        for label in labels:
            scores, truths = by_variant.setdefault(label.variant, ([], []))
            scores.extend(label.scores)
            truths.extend(label.labels)
            counts = experiment.rewards.setdefault(label.variant, [0, 0])
            for score, truth in zip(label.scores, label.labels, strict=True):
                counts[(score >= threshold) != bool(truth)] += 1
            experiment.labels[label.variant] = experiment.labels.get(label.variant, 0) + 1
            experiment.seq = max(experiment.seq, label.seq)
        if experiment.statistics is not None:
            for variant, (scores, truths) in by_variant.items():
                experiment.statistics.observe_many(variant, scores, truths)

    def _set_gauges(
        self, endpoint: str, experiment: _Experiment, snapshot: ExperimentSnapshot
    ) -> None:
        """Replace the endpoint's experiment gauges with `snapshot`'s figures."""
        values: dict[_Series, float] = {}
        for variant, metrics in snapshot.metrics.items():
            values[EXPERIMENT_LABELS, (endpoint, variant)] = snapshot.labels[variant]
            values[EXPERIMENT_WINNER, (endpoint, variant)] = float(snapshot.winner == variant)
            for name, interval in metrics.items():
                for bound, value in (
                    ("value", interval.value),
                    ("low", interval.low),
                    ("high", interval.high),
                ):
                    if value is not None:
                        values[EXPERIMENT_METRIC, (endpoint, variant, name, bound)] = value
        for comparison in snapshot.comparisons:
            if comparison.p_value is not None:
                key = (endpoint, comparison.a, comparison.b, comparison.metric)
                values[EXPERIMENT_P_VALUE, key] = comparison.p_value
        values[EXPERIMENT_SRM_FAILED, (endpoint,)] = float(snapshot.srm_failed)
        for (gauge, labels), value in values.items():
            gauge.labels(*labels).set(value)
        _remove(experiment.gauges - values.keys())
        experiment.gauges = set(values)

    def _forget(self, endpoint: str) -> None:
        experiment = self._experiments.pop(endpoint, None)
        if experiment is not None:
            _remove(experiment.gauges)


def _remove(series: Iterable[_Series]) -> None:
    for gauge, labels in series:
        with contextlib.suppress(KeyError):
            gauge.remove(*labels)


def _expected(variants: Sequence[str], shares: tuple[float, ...] | None) -> dict[str, float] | None:
    """The split check's expected share per variant; None (equal shares) when the weights do not
    cover every variant (labels of one no longer routed) or are all 0."""
    if shares is None or len(shares) != len(variants) or sum(shares) <= 0:
        return None
    return dict(zip(variants, shares, strict=True))


def _shares(weights: Mapping[str, float] | None) -> tuple[float, ...] | None:
    return None if weights is None else tuple(float(weight) for weight in weights.values())


def _scores(answer: IndexedAnswer) -> tuple[float, ...]:
    """The scores of an indexed answer, one per row, each in [0, 1].

    Raises:
        ValueError: the answer is not text, holds no scores, or one outside [0, 1].
    """
    try:
        text = answer.answer.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("the answer is not UTF-8 text") from None
    scores = parse_scores(
        {"encoding": "CSV", "data": text, "observedContentType": answer.content_type or ""}
    )
    if not all(0.0 <= score <= 1.0 for score in scores):
        raise ValueError("a score is outside [0, 1] (the live experiment scores probabilities)")
    return scores


def _late(inference_id: str, retention: int) -> str:
    return (
        f"Inference id {inference_id!r} was answered more than {_hours(retention)} ago: the "
        "gateway no longer keeps it, so the label cannot join."
    )


def _hours(seconds: int) -> str:
    return f"{seconds / 3600:g} h" if seconds >= 3600 else f"{seconds} s"
