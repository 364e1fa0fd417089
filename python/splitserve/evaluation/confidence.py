"""The live experiment's maths: confidence sequences (the always-valid intervals and p-values it
draws), its always-valid sample-ratio test, and each metric's estimate with the variance those
plug in (`sequential.LiveExperiment` keeps the counts and calls these; docs/statistics.md has the
plain-words account).

The one construction used throughout is the two-sided normal mixture (Robbins 1970; Howard,
Ramdas, McAuliffe & Sekhon 2021, "Time-uniform, nonparametric, nonasymptotic confidence
sequences", Annals of Statistics 49(2), the normal-mixture boundary): for an estimate with
variance V, in "intrinsic time" I = 1/V, the mixture martingale

    Lambda = sqrt(rho / (I + rho)) * exp((estimate - truth)^2 * I^2 / (2 (I + rho)))

exceeds 1/alpha at some time with probability at most alpha (Ville's inequality). Its interval is
estimate +- sqrt((I + rho) log((I + rho) / (rho alpha^2))) / I, and 1/Lambda at truth 0, kept as
a running minimum over the looks, is the always-valid p-value of Johari, Koomen, Pekelis & Walsh
(2022, "Always valid inference: continuous monitoring of A/B tests", Operations Research 70(3)):
the mixture sequential probability ratio test. rho is tuned so that the interval is narrowest at
`SequentialSettings.horizon_labels` labels per variant (Howard et al. 2021, section 3.5).

The live sample-ratio check is the Dirichlet-multinomial mixture test of Lindon & Malek (2022,
"Anytime-valid inference for multinomial count data", NeurIPS): the Bayes factor of the observed
assignment counts under a Dirichlet prior centred on the expected shares against the expected
shares themselves is a martingale under the null, so 1/(its running maximum) is an always-valid
p-value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "Estimate",
    "auc_estimate",
    "f1_estimate",
    "harmonic_mean",
    "mixture_half_width",
    "mixture_p_value",
    "mixture_tuning",
    "proportion_estimate",
    "scalar_half_width",
    "scalar_p_value",
    "srm_p_value",
]

# A variance below this is treated as none at all (no interval can be drawn from it).
_TINY_VARIANCE = 1e-300


def mixture_tuning(alpha: float) -> float:
    """x solving x = -2 log(alpha) + log(1 + x): the mixture's rho is (horizon information) / x.

    With rho = m / x, the normal-mixture boundary is narrowest at intrinsic time m (Howard et al.
    2021, section 3.5).
    """
    target = -2 * math.log(alpha)
    value = target
    for _ in range(50):  # a contraction: converges to machine precision in a few steps
        value = target + math.log1p(value)
    return value


def mixture_half_width(
    variance: npt.ArrayLike, horizon_variance: npt.ArrayLike, alpha: float, tuning: float
) -> npt.NDArray[np.float64]:
    """The half-width of the two-sided normal-mixture confidence sequence (module docstring).

    Args:
        variance: the estimate's variance now (its inverse is the intrinsic time I).
        horizon_variance: the variance the estimate would have at the horizon rho is tuned for.
        alpha: the error level of the whole sequence.
        tuning: `mixture_tuning(alpha_of_the_tuning)`: rho = 1 / (tuning * horizon_variance).

    Returns:
        The half-widths (inf where the variance is 0 or not finite).
    """
    variance = np.asarray(variance, dtype=np.float64)
    horizon = np.asarray(horizon_variance, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        information = 1.0 / variance
        rho = 1.0 / (tuning * horizon)
        total = information + rho
        width = np.sqrt(total * np.log(total / (rho * alpha * alpha))) / information
    return np.where((variance > _TINY_VARIANCE) & np.isfinite(width), width, np.inf).astype(
        np.float64
    )


def mixture_p_value(
    estimate: npt.ArrayLike,
    variance: npt.ArrayLike,
    horizon_variance: npt.ArrayLike,
    tuning: float,
) -> npt.NDArray[np.float64]:
    """1 / Lambda at truth 0, capped at 1: the mixture SPRT's p-value at one look.

    Its running minimum over the looks is the always-valid p-value; it is at most alpha exactly
    when the interval of `mixture_half_width` (with the same rho) excludes 0.
    """
    estimate = np.asarray(estimate, dtype=np.float64)
    variance = np.asarray(variance, dtype=np.float64)
    horizon = np.asarray(horizon_variance, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        information = 1.0 / variance
        rho = 1.0 / (tuning * horizon)
        total = information + rho
        statistic = estimate * information
        log_lambda = 0.5 * np.log(rho / total) + statistic * statistic / (2 * total)
        p_value = np.exp(-np.maximum(log_lambda, 0.0))
    return np.where(variance > _TINY_VARIANCE, p_value, 1.0).astype(np.float64)


def scalar_half_width(
    variance: float, horizon_variance: float, alpha: float, tuning: float
) -> float:
    """`mixture_half_width` for one value, in plain floats (a look computes dozens)."""
    if not variance > _TINY_VARIANCE or not horizon_variance > 0:
        return math.inf
    information = 1.0 / variance
    rho = 1.0 / (tuning * horizon_variance)
    total = information + rho
    width = math.sqrt(total * math.log(total / (rho * alpha * alpha))) / information
    return width if math.isfinite(width) else math.inf


def scalar_p_value(
    estimate: float, variance: float, horizon_variance: float, tuning: float
) -> float:
    """`mixture_p_value` for one value, in plain floats."""
    if not variance > _TINY_VARIANCE or not horizon_variance > 0:
        return 1.0
    information = 1.0 / variance
    rho = 1.0 / (tuning * horizon_variance)
    total = information + rho
    statistic = estimate * information
    log_lambda = 0.5 * math.log(rho / total) + statistic * statistic / (2 * total)
    return math.exp(-max(log_lambda, 0.0))


def srm_p_value(counts: Sequence[int], shares: Sequence[float], prior_strength: float) -> float:
    """1 / Bayes factor (capped at 1) of the Dirichlet-multinomial mixture test of the shares.

    The Bayes factor is the marginal likelihood of the assignment sequence under a
    Dirichlet(prior_strength * shares) prior over its probabilities, divided by its likelihood
    under `shares` (Lindon & Malek 2022). Variants with share 0 are left out; one of them with
    assignments is a certain mismatch (p-value 0).

    Raises:
        ValueError: lengths differ, a count is negative, or the shares are not finite, >= 0,
            with a positive sum.
    """
    if len(counts) != len(shares):
        raise ValueError("need one expected share per assignment count")
    if any(count < 0 for count in counts):
        raise ValueError("assignment counts must be >= 0")
    if not all(math.isfinite(share) and share >= 0 for share in shares) or sum(shares) <= 0:
        raise ValueError("expected shares must be finite, >= 0, with a positive sum")
    total_share = sum(shares)
    live = [(count, share / total_share) for count, share in zip(counts, shares, strict=True)]
    if any(count > 0 and share == 0 for count, share in live):
        return 0.0
    live = [(count, share) for count, share in live if share > 0]
    prior = [prior_strength * share for _, share in live]
    observed = sum(count for count, _ in live)
    log_marginal = (
        math.lgamma(sum(prior))
        - math.lgamma(sum(prior) + observed)
        + sum(
            math.lgamma(weight + count) - math.lgamma(weight)
            for weight, (count, _) in zip(prior, live, strict=True)
        )
    )
    log_null = sum(count * math.log(share) for count, share in live)
    return min(1.0, math.exp(min(0.0, log_null - log_marginal)))


@dataclass(frozen=True)
class Estimate:
    """A point estimate with the variance the differences plug in.

    Attributes:
        value: the estimate, or None when there is nothing to estimate from yet.
        variance: its (plug-in) variance, or None when it cannot be had.
        labels: how many labels it is drawn from.
    """

    value: float | None
    variance: float | None
    labels: int


def proportion_estimate(successes: int, trials: int) -> Estimate:
    """A proportion, with its Bernoulli variance kept off 0 by a pseudo-observation at 1/2."""
    if trials == 0:
        return Estimate(None, None, 0)
    value = successes / trials
    variance = (0.25 + trials * value * (1 - value)) / (trials + 1) / trials
    return Estimate(value, variance, trials)


def f1_estimate(
    true_positives: int, false_positives: int, false_negatives: int, labels: int
) -> Estimate:
    """F1 = 2TP / (2TP + FP + FN) and its delta-method variance (a ratio of two row means).

    Per row, a = 2[TP] and b = 2[TP] + [FP] + [FN]; F1 = mean(a) / mean(b), and its variance is
    Var(a - F1 b) / (n mean(b)^2) with Var(a - F1 b) = p_TP (2 - 2 F1)^2 + (p_FP + p_FN) F1^2.
    """
    n = labels
    denominator = 2 * true_positives + false_positives + false_negatives
    if n == 0 or denominator == 0:
        return Estimate(None, None, n)
    value = 2 * true_positives / denominator
    share_tp = true_positives / n
    share_wrong = (false_positives + false_negatives) / n
    spread = share_tp * (2 - 2 * value) ** 2 + share_wrong * value * value
    # A pseudo-observation of the largest spread (a - F1 b lies in a range of 2, so at most 1)
    # keeps the variance off 0 while few labels are in, as for proportions.
    spread = (1.0 + n * spread) / (n + 1)
    return Estimate(value, spread / (n * (denominator / n) ** 2), n)


def auc_estimate(positive: npt.NDArray[np.int64], negative: npt.NDArray[np.int64]) -> Estimate:
    """AUC from the binned scores, with DeLong's variance from the bins' placement values."""
    positives, negatives = int(positive.sum()), int(negative.sum())
    labels = positives + negatives
    if positives == 0 or negatives == 0:
        return Estimate(None, None, labels)
    negative_below = np.cumsum(negative) - negative
    positive_above = positives - np.cumsum(positive)
    # Placement values: the share of the other class each row outranks, a tie counting half.
    positive_placement = (negative_below + 0.5 * negative) / negatives
    negative_placement = (positive_above + 0.5 * positive) / positives
    value = float((positive * positive_placement).sum() / positives)
    variance = None
    if positives > 1 and negatives > 1:
        positive_spread = float((positive * (positive_placement - value) ** 2).sum())
        negative_spread = float((negative * (negative_placement - value) ** 2).sum())
        variance = (
            positive_spread / (positives - 1) / positives
            + negative_spread / (negatives - 1) / negatives
        )
        # A pseudo-observation, as for proportions, keeps it off 0 when every score ties.
        variance = max(variance, 0.25 / (min(positives, negatives) + 1) ** 2)
    return Estimate(value, variance, labels)


def harmonic_mean(precision: float, recall: float) -> float:
    """F1 from a precision and a recall (0 when both are 0)."""
    return 0.0 if precision + recall <= 0 else 2 * precision * recall / (precision + recall)
