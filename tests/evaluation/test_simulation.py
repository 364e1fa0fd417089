"""The report's intervals and verdict checked by simulation: A/A false alarms, coverage, power.

Each simulation draws two variants from a binormal model with a known AUC and accuracy (see
`binormal_sample`) and runs the report exactly as `splitserve evaluate` does, with fewer bootstrap
resamples (the verdict and the AUC and accuracy intervals do not use them). Seeded, so the
figures below are what the tests see on every run; a few seconds in all.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from scipy import stats as scipy_stats

from splitserve.config import EvaluationSettings
from splitserve.evaluation.report import EvaluationReport, evaluate
from tests.evaluation.records import binormal_sample, joined_from_samples

SIMULATIONS = 400
ROWS = 200
SEPARATION = 1.2
SETTINGS = replace(EvaluationSettings(), bootstrap_resamples=50)


def _run(rng: np.random.Generator, rows: int, separations: tuple[float, float]) -> EvaluationReport:
    joined = joined_from_samples(
        {
            "Variant1": binormal_sample(rng, rows, separations[0]),
            "Variant2": binormal_sample(rng, rows, separations[1]),
        }
    )
    return evaluate(joined, SETTINGS, None)


def test_a_a_false_positive_rate_is_at_most_nominal() -> None:
    """Same distribution on both variants: the verdict calls a difference in about 5% of runs.

    Under a correct 5% test the number of false alarms in 400 runs is Binomial(400, 0.05): mean
    20, sd 4.4. The bound, 8% (32 runs), is 2.8 sd above the mean; a correct test exceeds it with
    probability binom.sf(32, 400, 0.05) = 0.3%, while a test that really fires 10% of the time
    stays under it with probability binom.cdf(32, 400, 0.10) = 9%. The lower bound (1%) only
    catches a test that never fires.
    """
    rng = np.random.default_rng(20240305)
    reports = [_run(rng, ROWS, (SEPARATION, SEPARATION)) for _ in range(SIMULATIONS)]
    alarms = sum(report.comparisons[0].detected for report in reports)
    assert scipy_stats.binom.sf(32, SIMULATIONS, 0.05) < 0.004  # the margin the docstring states
    assert SIMULATIONS * 0.01 <= alarms <= SIMULATIONS * 0.08, f"{alarms}/{SIMULATIONS}"
    # The verdict rests on AUC; accuracy's own test, taken alone, is also near 5%.
    accuracy_alarms = sum(
        (report.comparisons[0].differences["accuracy"].p_value or 1.0) < 0.05 for report in reports
    )
    assert accuracy_alarms <= SIMULATIONS * 0.08, f"{accuracy_alarms}/{SIMULATIONS}"


def test_intervals_cover_the_true_values() -> None:
    """Each variant's 95% intervals contain the true value in about 95% of 800 samples (binomial
    sd 0.8%; the bound is 92%): DeLong for AUC, Wilson for accuracy, the percentile bootstrap for
    F1 and log loss (measured: 95.0%, 94.8%, 95.1%, 93.9%; the bootstrap of a skewed mean runs a
    little short of nominal at n=200, as expected)."""
    settings = replace(SETTINGS, bootstrap_resamples=500)
    rng = np.random.default_rng(7)
    true_auc = scipy_stats.norm.cdf(SEPARATION / math.sqrt(2))
    # Positive when latent >= 0 (score >= 0.5): positives right w.p. Phi(d), negatives w.p. 1/2.
    true_positive = 0.3 * scipy_stats.norm.cdf(SEPARATION)
    true_accuracy = true_positive + 0.7 * 0.5
    true_f1 = 2 * true_positive / (2 * true_positive + 0.7 * 0.5 + (0.3 - true_positive))
    # Log loss has no closed form here: a seeded Monte Carlo mean over 2 million rows (sd 0.0005).
    labels, scores = binormal_sample(np.random.default_rng(99), 2_000_000, SEPARATION)
    true_log_loss = float(np.mean(np.where(labels == 1, -np.log(scores), -np.log1p(-scores))))
    truth = {"auc": true_auc, "accuracy": true_accuracy, "f1": true_f1, "log_loss": true_log_loss}
    covered = dict.fromkeys(truth, 0)
    intervals = 0
    for _ in range(SIMULATIONS):
        joined = joined_from_samples(
            {
                "Variant1": binormal_sample(rng, ROWS, SEPARATION),
                "Variant2": binormal_sample(rng, ROWS, SEPARATION),
            }
        )
        for variant in evaluate(joined, settings, None).variants:
            intervals += 1
            for metric, value in truth.items():
                estimate = variant.metrics[metric]
                assert estimate.low is not None
                assert estimate.high is not None
                covered[metric] += estimate.low <= value <= estimate.high
    rates = {metric: count / intervals for metric, count in covered.items()}
    assert all(rate >= 0.92 for rate in rates.values()), rates


def test_traffic_estimate_gives_the_promised_power() -> None:
    """A pilot of 1000 rows per variant with a true AUC difference of 0.05 (0.80 against 0.85)
    asks for k more rows to detect 0.05 with 80% power (the true answer, from the exact variances,
    is about 1240 rows in all). Experiments of 1000 + k rows then detect the difference in about
    80% of 300 runs. The bounds, 70% to 90%, allow for the simulation's binomial sd (2.3%) and for
    the pilot's error in the variance (about 9% at 1000 rows, moving the power by about 4%)."""
    settings = replace(SETTINGS, detectable_auc_difference=0.05)
    baseline = 1.2  # AUC 0.80
    challenger = math.sqrt(2) * scipy_stats.norm.ppf(0.85)
    rng = np.random.default_rng(11)
    pilot = evaluate(
        joined_from_samples(
            {
                "Variant1": binormal_sample(rng, 1000, baseline),
                "Variant2": binormal_sample(rng, 1000, challenger),
            }
        ),
        settings,
        None,
    )
    needed = pilot.comparisons[0].traffic_needed[0]
    assert needed.metric == "auc"
    assert needed.additional_per_variant is not None
    rows = 1000 + needed.additional_per_variant
    detected = sum(
        _run(rng, rows, (baseline, challenger)).comparisons[0].detected for _ in range(300)
    )
    assert 0.70 <= detected / 300 <= 0.90, (rows, detected)
