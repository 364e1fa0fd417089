"""Seeded simulations of the live experiment's statistics and of the Thompson bandit.

`simulate_peeking` is the measured check of docs/statistics.md: two variants whose accuracy is
known, labels arriving in batches ("minutes"), and a look after every batch. It counts how often
each of two procedures ever declares a difference:

- the always-valid one of `splitserve.evaluation.sequential` (the normal-mixture interval of the
  accuracy difference with the plug-in variance, `min_labels` per variant before any decision,
  the running-minimum p-value at `alpha`), computed by the same functions `LiveExperiment` calls;
- the fixed-horizon pooled two-proportion z-test of `evaluate` at the same alpha, looked at
  after the same batches and stopped at its first rejection (what a dashboard watcher does).

Under equal accuracies (A/A) each rate is the chance of a false alarm over the whole watch; under
a real difference the simulation also reports how soon the always-valid verdict comes. Every
simulation is vectorised over the runs, so thousands of runs take well under a second.

`simulate_regret` routes the customers of the seeded churn generator (`churn.generate_churn`) to
two models of known quality, the Bayes rule (the true churn probability, the best any model can
do) and a noisy copy of it, either by a fixed 50/50 split or by the Thompson bandit's weights
(recomputed after every batch, as a gateway pushes weights every few seconds), with the reward
"the prediction was right". Regret counts, over the customers routed to the worse model, those
the better model would have answered right less those only the worse one answered right: the
counterfactual is known because both models score every customer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import numpy.typing as npt

from splitserve.config import SequentialSettings
from splitserve.evaluation.bandit import ThompsonBandit
from splitserve.evaluation.churn import generate_churn
from splitserve.evaluation.sequential import (
    METRICS,
    LiveExperiment,
    mixture_p_value,
    mixture_tuning,
)

__all__ = [
    "LivePeekingResult",
    "PeekingResult",
    "RegretResult",
    "simulate_live_peeking",
    "simulate_peeking",
    "simulate_regret",
]


@dataclass(frozen=True)
class PeekingResult:
    """What `simulate_peeking` measured.

    Attributes:
        simulations: runs.
        batches: looks per run (one after every batch).
        batch_labels: labels per variant per batch.
        accuracies: the two variants' true accuracies.
        always_valid_rate: share of runs where the always-valid test ever declared a difference.
        always_valid_error: its Monte Carlo standard error.
        fixed_horizon_rate: the same for the fixed-horizon z-test peeked at every batch.
        fixed_horizon_error: its Monte Carlo standard error.
        fixed_final_rate: the z-test's rejection rate when looked at once, after the last batch
            (its power, or its 5% under A/A: the reference the peeking is measured against).
        mean_batches_to_verdict: mean batches until the always-valid verdict, over the runs
            that reached one (None if none did).
        median_batches_to_verdict: their median.
    """

    simulations: int
    batches: int
    batch_labels: int
    accuracies: tuple[float, float]
    always_valid_rate: float
    always_valid_error: float
    fixed_horizon_rate: float
    fixed_horizon_error: float
    fixed_final_rate: float
    mean_batches_to_verdict: float | None
    median_batches_to_verdict: float | None


def simulate_peeking(
    *,
    simulations: int,
    batches: int,
    batch_labels: int,
    accuracies: tuple[float, float],
    seed: int,
    alpha: float | None = None,
    settings: SequentialSettings | None = None,
) -> PeekingResult:
    """Run the peeking simulation (module docstring).

    Args:
        simulations: runs.
        batches: batches of labels per run, with a look after each.
        batch_labels: labels each variant gets per batch.
        accuracies: the two variants' true accuracies.
        seed: the PRNG seed (the result is a function of the arguments).
        alpha: the error level (default: the settings').
        settings: the live experiment's settings (default: `SequentialSettings()`).

    Raises:
        ValueError: a count below 1 or an accuracy outside [0, 1].
    """
    settings = SequentialSettings() if settings is None else settings
    alpha = settings.alpha if alpha is None else alpha
    if min(simulations, batches, batch_labels) < 1:
        raise ValueError("simulations, batches and batch labels must be at least 1")
    if not all(0 <= accuracy <= 1 for accuracy in accuracies):
        raise ValueError("accuracies must be in [0, 1]")
    rng = np.random.default_rng(seed)
    tuning = mixture_tuning(alpha)
    critical = NormalDist().inv_cdf(1 - alpha / 2)
    correct = np.zeros((2, simulations), dtype=np.float64)
    running_p = np.ones(simulations)
    always_valid_at = np.full(simulations, -1, dtype=np.int64)
    fixed_rejected = np.zeros(simulations, dtype=bool)
    final_rejected = np.zeros(simulations, dtype=bool)
    for batch in range(1, batches + 1):
        correct[0] += rng.binomial(batch_labels, accuracies[0], simulations)
        correct[1] += rng.binomial(batch_labels, accuracies[1], simulations)
        labels = batch * batch_labels
        if labels < settings.min_labels:
            continue
        proportion = correct / labels
        # The variance LiveExperiment plugs in (a pseudo-observation at 1/2, see `_proportion`).
        variance = (0.25 + labels * proportion * (1 - proportion)) / (labels + 1) / labels
        difference = proportion[1] - proportion[0]
        total = variance.sum(axis=0)
        horizon = total * labels / settings.horizon_labels
        running_p = np.minimum(running_p, mixture_p_value(difference, total, horizon, tuning))
        newly = (running_p <= alpha) & (always_valid_at < 0)
        always_valid_at[newly] = batch
        pooled = correct.sum(axis=0) / (2 * labels)
        spread = np.sqrt(pooled * (1 - pooled) * 2 / labels)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(spread > 0, difference / spread, 0.0)
        fixed_rejected |= np.abs(z) > critical
        final_rejected = np.abs(z) > critical
    decided = always_valid_at[always_valid_at > 0]
    always_valid_rate = float(decided.size) / simulations
    fixed_rate = float(np.count_nonzero(fixed_rejected)) / simulations
    return PeekingResult(
        simulations=simulations,
        batches=batches,
        batch_labels=batch_labels,
        accuracies=accuracies,
        always_valid_rate=always_valid_rate,
        always_valid_error=_binomial_error(always_valid_rate, simulations),
        fixed_horizon_rate=fixed_rate,
        fixed_horizon_error=_binomial_error(fixed_rate, simulations),
        fixed_final_rate=float(np.count_nonzero(final_rejected)) / simulations,
        mean_batches_to_verdict=float(decided.mean()) if decided.size else None,
        median_batches_to_verdict=float(np.median(decided)) if decided.size else None,
    )


@dataclass(frozen=True)
class LivePeekingResult:
    """What `simulate_live_peeking` measured, per metric.

    Attributes:
        simulations: runs.
        batches: looks per run.
        batch_labels: labels per variant per batch.
        declared: share of runs in which a difference between the two (equal) variants was
            ever declared.
        missed: share of runs in which the first variant's interval ever excluded the true
            value (computed from a large sample of the same model).
        error: the Monte Carlo standard error of a rate of 5% over these runs.
    """

    simulations: int
    batches: int
    batch_labels: int
    declared: dict[str, float]
    missed: dict[str, float]
    error: float


def simulate_live_peeking(
    *,
    simulations: int,
    batches: int,
    batch_labels: int,
    seed: int,
    separation: float = 1.5,
    positive_share: float = 0.3,
    settings: SequentialSettings | None = None,
) -> LivePeekingResult:
    """A/A runs through `LiveExperiment` itself, every metric at once, a look after each batch.

    Both variants score rows of the same model: label 1 with probability `positive_share`, score
    sigmoid(separation * (2 label - 1) + N(0, 1.5)). The true values of the metrics are those
    `LiveExperiment` computes from 400,000 rows of the model (binned AUC and clipped log loss
    included), so "missed" measures the intervals, not the estimates' definitions.

    Raises:
        ValueError: a count below 1.
    """
    settings = SequentialSettings() if settings is None else settings
    if min(simulations, batches, batch_labels) < 1:
        raise ValueError("simulations, batches and batch labels must be at least 1")
    rng = np.random.default_rng(seed)

    def draw(rows: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        labels = (rng.random(rows) < positive_share).astype(np.float64)
        logits = separation * (2 * labels - 1) + rng.normal(0, 1.5, rows)
        return 1 / (1 + np.exp(-logits)), labels

    reference = LiveExperiment(["A", "B"], settings=settings)
    reference.observe_many("A", *draw(400_000))
    truth = reference.snapshot().metrics["A"]
    declared = dict.fromkeys(METRICS, 0)
    missed = dict.fromkeys(METRICS, 0)
    for _ in range(simulations):
        experiment = LiveExperiment(["A", "B"], settings=settings)
        ever_declared: set[str] = set()
        ever_missed: set[str] = set()
        for _ in range(batches):
            experiment.observe_many("A", *draw(batch_labels))
            experiment.observe_many("B", *draw(batch_labels))
            snapshot = experiment.snapshot()
            ever_declared.update(c.metric for c in snapshot.comparisons if c.decided)
            for metric, interval in snapshot.metrics["A"].items():
                true_value = truth[metric].value
                if (
                    true_value is not None
                    and interval.low is not None
                    and interval.high is not None
                    and not interval.low <= true_value <= interval.high
                ):
                    ever_missed.add(metric)
        for metric in ever_declared:
            declared[metric] += 1
        for metric in ever_missed:
            missed[metric] += 1
    return LivePeekingResult(
        simulations=simulations,
        batches=batches,
        batch_labels=batch_labels,
        declared={metric: count / simulations for metric, count in declared.items()},
        missed={metric: count / simulations for metric, count in missed.items()},
        error=_binomial_error(0.05, simulations),
    )


@dataclass(frozen=True)
class RegretResult:
    """What `simulate_regret` measured.

    Attributes:
        customers: customers routed.
        batch: customers per batch (the bandit's weights change between batches only).
        accuracies: each model's accuracy over all the customers ("better", "worse").
        checkpoints: customers routed at each checkpoint.
        bandit_regret: the bandit's cumulative regret at each checkpoint.
        fixed_regret: the fixed 50/50 split's cumulative regret at each checkpoint.
        bandit_share: the share of customers the bandit sent to the better model in all.
        final_weights: the bandit's last weights.
    """

    customers: int
    batch: int
    accuracies: dict[str, float]
    checkpoints: tuple[int, ...]
    bandit_regret: tuple[int, ...]
    fixed_regret: tuple[int, ...]
    bandit_share: float
    final_weights: dict[str, float]


def simulate_regret(
    *,
    customers: int,
    batch: int,
    min_share: float,
    seed: int,
    noise: float = 1.5,
    checkpoints: int = 10,
) -> RegretResult:
    """Route churn customers by a Thompson bandit and by 50/50, and count the regret of each.

    Args:
        customers: customers to generate and route.
        batch: customers per batch (weights are recomputed after each).
        min_share: the bandit's floor per model.
        seed: seeds the customers, the routing and the bandit's draws.
        noise: the standard deviation of the normal noise added to the true logit to make the
            worse model.
        checkpoints: how many evenly spaced points of the regret curves to report.

    Raises:
        ValueError: a count below 1, or a min_share the bandit refuses.
    """
    if min(customers, batch, checkpoints) < 1:
        raise ValueError("customers, batch and checkpoints must be at least 1")
    data = generate_churn(customers, seed)
    rng = np.random.default_rng(seed + 1)
    truth = data.churn_probability
    logit = np.log(truth / (1 - truth))
    noisy = 1 / (1 + np.exp(-(logit + rng.normal(0, noise, customers))))
    rewards: dict[str, npt.NDArray[np.bool_]] = {
        "better": (truth >= 0.5) == (data.labels == 1),
        "worse": (noisy >= 0.5) == (data.labels == 1),
    }
    bandit = ThompsonBandit(("better", "worse"), min_share=min_share, seed=seed + 2)
    bandit_loss = np.zeros(customers, dtype=np.int64)
    fixed_loss = np.zeros(customers, dtype=np.int64)
    to_better = 0
    for start in range(0, customers, batch):
        stop = min(customers, start + batch)
        weights = bandit.weights()
        draws = rng.random(stop - start)
        better = draws < weights["better"]
        fixed_better = rng.random(stop - start) < 0.5
        best = rewards["better"][start:stop].astype(np.int64)
        worse = rewards["worse"][start:stop].astype(np.int64)
        # Regret against the better model: a customer it answers right and the routed one not.
        bandit_loss[start:stop] = np.where(better, 0, best - worse)
        fixed_loss[start:stop] = np.where(fixed_better, 0, best - worse)
        to_better += int(np.count_nonzero(better))
        for name, routed in (("better", better), ("worse", ~better)):
            hits = int(np.count_nonzero(rewards[name][start:stop][routed]))
            bandit.update_many(name, hits, int(np.count_nonzero(routed)) - hits)
    marks = tuple(
        sorted({max(1, round(customers * (i + 1) / checkpoints)) for i in range(checkpoints)})
    )
    bandit_curve = np.cumsum(bandit_loss)
    fixed_curve = np.cumsum(fixed_loss)
    return RegretResult(
        customers=customers,
        batch=batch,
        accuracies={name: float(values.mean()) for name, values in rewards.items()},
        checkpoints=marks,
        bandit_regret=tuple(int(bandit_curve[mark - 1]) for mark in marks),
        fixed_regret=tuple(int(fixed_curve[mark - 1]) for mark in marks),
        bandit_share=to_better / customers,
        final_weights=bandit.weights(),
    )


def _binomial_error(rate: float, trials: int) -> float:
    return math.sqrt(rate * (1 - rate) / trials)
