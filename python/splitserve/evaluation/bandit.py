"""Thompson sampling over an endpoint's variants on a binary reward, with a floor per variant.

Each variant's reward rate has a Beta(1, 1) prior (uniform); a reward (a correct prediction, a
click: whatever the feedback calls success) adds one to its first parameter, a miss one to its
second. Thompson sampling (Thompson 1933; Russo, Van Roy, Kazerouni, Osband & Wen 2018, "A
tutorial on Thompson sampling") sends each request to a variant with the posterior probability
that it is the best one; a router that takes weights instead of a draw per request gets exactly
those probabilities as weights. They are estimated by seeded Monte Carlo draws from the
posteriors (`SequentialSettings.bandit_draws`), then floored: every variant keeps at least
`min_share` of the traffic, so none starves and the experiment's statistics keep learning about
all of them. The floor is applied as min_share + (1 - k min_share) * probability, which keeps
every share at or above it and the sum at 1.

`simulate_regret` measures what the bandit saves against a fixed 50/50 split on the seeded churn
generator (docs/benchmarks.md, "Thompson bandit").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from splitserve.config import SequentialSettings

__all__ = ["ThompsonBandit"]

_DEFAULTS = SequentialSettings()


@dataclass
class _Posterior:
    successes: int = 0
    failures: int = 0


class ThompsonBandit:
    """Beta-Bernoulli Thompson sampling turned into routing weights.

    Args:
        variants: the variants (two or more, distinct).
        min_share: the least share of traffic each variant keeps, in [0, 1/len(variants)].
        seed: the Monte Carlo draws' seed (None: fresh entropy).
        draws: Monte Carlo draws per weights() call.

    Raises:
        ValueError: fewer than two variants, a repeated name, a min_share outside
            [0, 1/len(variants)], or fewer than one draw.
    """

    def __init__(
        self,
        variants: Sequence[str],
        *,
        min_share: float,
        seed: int | None = None,
        draws: int = _DEFAULTS.bandit_draws,
    ) -> None:
        names = [str(name) for name in variants]
        if len(names) < 2:
            raise ValueError("a bandit needs at least two variants")
        if len(set(names)) != len(names):
            raise ValueError(f"variants repeat a name: {', '.join(names)}")
        limit = 1 / len(names)
        if not (isinstance(min_share, int | float) and 0 <= min_share <= limit):
            raise ValueError(
                f"min_share must be between 0 and 1/{len(names)} (= {limit:g}), not {min_share!r}"
            )
        if draws < 1:
            raise ValueError(f"draws must be at least 1, not {draws}")
        self.variants = tuple(names)
        self.min_share = float(min_share)
        self._draws = draws
        self._rng = np.random.default_rng(seed)
        self._posteriors = {name: _Posterior() for name in names}

    def update(self, variant: str, reward: bool) -> None:
        """Count one reward (True) or miss (False) of `variant`.

        Raises:
            ValueError: an unknown variant.
        """
        posterior = self._posteriors.get(variant)
        if posterior is None:
            raise ValueError(
                f"unknown variant {variant!r}; the bandit's: {', '.join(self.variants)}"
            )
        if reward:
            posterior.successes += 1
        else:
            posterior.failures += 1

    def update_many(self, variant: str, rewards: int, misses: int) -> None:
        """Count `rewards` rewards and `misses` misses of `variant` at once.

        Raises:
            ValueError: an unknown variant or a negative count.
        """
        if rewards < 0 or misses < 0:
            raise ValueError("reward and miss counts must be >= 0")
        posterior = self._posteriors.get(variant)
        if posterior is None:
            raise ValueError(
                f"unknown variant {variant!r}; the bandit's: {', '.join(self.variants)}"
            )
        posterior.successes += rewards
        posterior.failures += misses

    def posterior(self, variant: str) -> tuple[int, int]:
        """(rewards, misses) counted for `variant`: its posterior is Beta(1 + rewards, 1 + misses).

        Raises:
            KeyError: an unknown variant.
        """
        posterior = self._posteriors[variant]
        return posterior.successes, posterior.failures

    def probability_best(self) -> dict[str, float]:
        """Each variant's posterior probability of having the highest reward rate (Monte Carlo;
        ties in a draw, which have probability 0, go to the first variant)."""
        alphas = np.array([1 + p.successes for p in self._posteriors.values()], dtype=np.float64)
        betas = np.array([1 + p.failures for p in self._posteriors.values()], dtype=np.float64)
        samples = self._rng.beta(alphas, betas, size=(self._draws, len(alphas)))
        wins = np.bincount(samples.argmax(axis=1), minlength=len(alphas))
        return {
            name: float(count) / self._draws
            for name, count in zip(self.variants, wins, strict=True)
        }

    def weights(self) -> dict[str, float]:
        """Routing weights: the probability of being best, floored at min_share, summing to 1."""
        best = self.probability_best()
        spread = 1 - self.min_share * len(self.variants)
        weights = {name: self.min_share + spread * share for name, share in best.items()}
        total = math.fsum(weights.values())
        return {name: weight / total for name, weight in weights.items()}
