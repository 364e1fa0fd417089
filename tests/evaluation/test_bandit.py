"""The Thompson bandit's weights: floored, summing to 1, seeded, and refusing bad arguments."""

from __future__ import annotations

import pytest

from splitserve.evaluation.bandit import ThompsonBandit


def test_weights_follow_the_posterior_and_keep_the_floor() -> None:
    bandit = ThompsonBandit(["A", "B", "C"], min_share=0.05, seed=1)
    bandit.update_many("A", 90, 10)
    bandit.update_many("B", 50, 50)
    for _ in range(5):
        bandit.update("C", False)
    weights = bandit.weights()
    assert sum(weights.values()) == pytest.approx(1.0)
    assert min(weights.values()) >= 0.05
    assert weights["A"] > 0.85
    assert bandit.posterior("C") == (0, 5)


def test_no_evidence_gives_equal_weights_and_a_seed_repeats_them() -> None:
    first = ThompsonBandit(["A", "B"], min_share=0.1, seed=7).weights()
    second = ThompsonBandit(["A", "B"], min_share=0.1, seed=7).weights()
    assert first == second
    assert first["A"] == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize(
    ("variants", "min_share", "draws", "message"),
    [
        (["A"], 0.1, 10, "at least two"),
        (["A", "A"], 0.1, 10, "repeat"),
        (["A", "B"], 0.6, 10, "min_share"),
        (["A", "B"], -0.1, 10, "min_share"),
        (["A", "B"], 0.1, 0, "draws"),
    ],
)
def test_construction_refuses_bad_arguments(
    variants: list[str], min_share: float, draws: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ThompsonBandit(variants, min_share=min_share, draws=draws)


def test_updates_refuse_unknown_variants_and_negative_counts() -> None:
    bandit = ThompsonBandit(["A", "B"], min_share=0.1)
    with pytest.raises(ValueError, match="unknown variant"):
        bandit.update("C", True)
    with pytest.raises(ValueError, match="unknown variant"):
        bandit.update_many("C", 1, 1)
    with pytest.raises(ValueError, match=">= 0"):
        bandit.update_many("A", -1, 1)
