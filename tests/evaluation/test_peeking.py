"""The measured check of the always-valid statistics (docs/statistics.md, "The measured check").

Seeded A/A simulations looked at after every batch of labels: the always-valid test's rate of ever
declaring a difference stays under 5% (plus three Monte Carlo standard errors), while the
fixed-horizon z-test watched the same way declares one far more often. Under a real difference the
always-valid test reaches its verdict. Deterministic (seeded) and well under a second.
"""

from __future__ import annotations

import numpy as np
import pytest

from splitserve.config import SequentialSettings
from splitserve.evaluation.sequential import LiveExperiment, mixture_p_value, mixture_tuning
from splitserve.evaluation.simulation import (
    simulate_live_peeking,
    simulate_peeking,
    simulate_regret,
)

ALPHA = 0.05


def test_a_a_peeking_keeps_the_always_valid_rate_under_alpha() -> None:
    result = simulate_peeking(
        simulations=2000, batches=60, batch_labels=50, accuracies=(0.85, 0.85), seed=1
    )
    assert result.always_valid_rate <= ALPHA + 3 * result.always_valid_error
    assert result.fixed_horizon_rate > ALPHA + 3 * result.fixed_horizon_error


def test_a_real_difference_reaches_a_verdict() -> None:
    result = simulate_peeking(
        simulations=500, batches=60, batch_labels=50, accuracies=(0.85, 0.90), seed=2
    )
    assert result.always_valid_rate > 0.9
    assert result.mean_batches_to_verdict is not None
    assert result.mean_batches_to_verdict < 60


def test_the_simulation_computes_what_live_experiment_decides() -> None:
    """The vectorised simulation's p-value is LiveExperiment's for the same counts."""
    settings = SequentialSettings()
    rng = np.random.default_rng(3)
    experiment = LiveExperiment(["A", "B"])
    correct = np.zeros(2)
    tuning = mixture_tuning(ALPHA)
    for batch in range(1, 8):
        for index, (variant, accuracy) in enumerate((("A", 0.8), ("B", 0.85))):
            hits = rng.random(50) < accuracy
            correct[index] += hits.sum()
            # label 1 and a score of 1 for a hit, 0 for a miss: accuracy is the hit rate.
            experiment.observe_many(variant, hits.astype(float), np.ones(50))
        labels = batch * 50
        proportion = correct / labels
        variance = (0.25 + labels * proportion * (1 - proportion)) / (labels + 1) / labels
        expected = float(
            mixture_p_value(
                proportion[1] - proportion[0],
                variance.sum(),
                variance.sum() * labels / settings.horizon_labels,
                tuning,
            )
        )
        comparison = next(c for c in experiment.snapshot().comparisons if c.metric == "accuracy")
        if labels < settings.min_labels:
            assert comparison.p_value == pytest.approx(expected)
        else:
            assert comparison.p_value is not None
            assert comparison.p_value <= expected + 1e-12


def test_the_bandit_has_less_regret_than_a_fixed_split() -> None:
    result = simulate_regret(customers=8000, batch=200, min_share=0.05, seed=1)
    assert result.accuracies["better"] > result.accuracies["worse"]
    assert result.bandit_regret[-1] < result.fixed_regret[-1] / 2
    assert result.bandit_share > 0.8
    assert min(result.final_weights.values()) >= 0.05


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"simulations": 0}, "at least 1"),
        ({"accuracies": (0.5, 1.5)}, r"\[0, 1\]"),
    ],
)
def test_simulate_peeking_refuses_bad_arguments(arguments: dict[str, object], message: str) -> None:
    base: dict[str, object] = {
        "simulations": 10,
        "batches": 2,
        "batch_labels": 10,
        "accuracies": (0.5, 0.5),
        "seed": 0,
    }
    with pytest.raises(ValueError, match=message):
        simulate_peeking(**{**base, **arguments})  # type: ignore[arg-type]


def test_simulate_regret_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        simulate_regret(customers=0, batch=1, min_share=0.1, seed=0)
    with pytest.raises(ValueError, match="min_share"):
        simulate_regret(customers=10, batch=1, min_share=0.9, seed=0)


def test_live_experiment_itself_keeps_every_metric_under_alpha() -> None:
    """A/A through LiveExperiment: no metric's difference is declared, nor does the first
    variant's interval miss its true value, in more than 5% (+ 3 standard errors) of runs."""
    result = simulate_live_peeking(simulations=100, batches=15, batch_labels=50, seed=1)
    for metric in result.declared:
        assert result.declared[metric] <= ALPHA + 3 * result.error, metric
        assert result.missed[metric] <= ALPHA + 3 * result.error, metric
