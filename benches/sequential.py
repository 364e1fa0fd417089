"""The live experiment's statistics and the Thompson bandit, measured by seeded simulation
(docs/benchmarks.md, "Always-valid statistics" and "Thompson bandit").

Run from the repository root:

    .venv/bin/python -m benches.sequential [--simulations 10000] [--plot regret.png]

Prints markdown tables: (1) A/A runs looked at after every batch ("minute") of labels, the rate of
ever declaring a difference for the always-valid test and for the fixed-horizon z-test watched the
same way, each with its Monte Carlo standard error; (2) runs with a real accuracy difference, the
share reaching a verdict within the watch and how many batches (and labels per variant) it took;
(3) the bandit's cumulative regret against a fixed 50/50 split on the seeded churn generator. With
--plot (the `plot` extra), the regret curves are drawn to a PNG too. Pure computation, seconds.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from splitserve.config import SequentialSettings
from splitserve.evaluation.simulation import (
    simulate_live_peeking,
    simulate_peeking,
    simulate_regret,
)

BATCHES = 60
BATCH_LABELS = 50
A_A = (0.5, 0.85, 0.98)
DIFFERENCES = ((0.85, 0.86), (0.85, 0.87), (0.85, 0.88), (0.85, 0.90))


def main() -> None:
    """Run the simulations and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--simulations", type=int, default=10_000)
    parser.add_argument("--customers", type=int, default=50_000)
    parser.add_argument("--live-simulations", type=int, default=1000)
    parser.add_argument("--plot", type=Path, metavar="FILE.png")
    args = parser.parse_args()
    started = time.perf_counter()

    print(
        f"A/A, {args.simulations} runs, {BATCHES} looks of {BATCH_LABELS} labels per variant "
        f"(alpha 0.05):\n"
    )
    print(
        "| accuracy (both) | always-valid: ever declared | fixed-horizon z-test peeked "
        "| z-test, one look at the end |"
    )
    print("|---|---:|---:|---:|")
    for accuracy in A_A:
        result = simulate_peeking(
            simulations=args.simulations,
            batches=BATCHES,
            batch_labels=BATCH_LABELS,
            accuracies=(accuracy, accuracy),
            seed=1,
        )
        print(
            f"| {accuracy:.2f} | {result.always_valid_rate:.2%} ± "
            f"{result.always_valid_error:.2%} | {result.fixed_horizon_rate:.1%} ± "
            f"{result.fixed_horizon_error:.1%} | {result.fixed_final_rate:.1%} |"
        )

    defaults = SequentialSettings()
    watch = replace(defaults, horizon_labels=BATCHES * BATCH_LABELS)
    print(f"\nA real difference, {args.simulations} runs, the same looks:\n")
    print(
        "| accuracies | horizon_labels | always-valid: verdict within the watch "
        "| mean (median) batches to it | labels per variant | z-test, one look at the end |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for accuracies in DIFFERENCES:
        for settings in (defaults, watch):
            result = simulate_peeking(
                simulations=args.simulations,
                batches=BATCHES,
                batch_labels=BATCH_LABELS,
                accuracies=accuracies,
                seed=2,
                settings=settings,
            )
            mean, median = result.mean_batches_to_verdict, result.median_batches_to_verdict
            timing = "-" if mean is None or median is None else f"{mean:.1f} ({median:.0f})"
            labels = "-" if mean is None else f"{mean * BATCH_LABELS:,.0f}"
            print(
                f"| {accuracies[0]:.2f} vs {accuracies[1]:.2f} | {settings.horizon_labels:,} | "
                f"{result.always_valid_rate:.1%} | {timing} | {labels} | "
                f"{result.fixed_final_rate:.1%} |"
            )

    live = simulate_live_peeking(
        simulations=args.live_simulations, batches=BATCHES, batch_labels=BATCH_LABELS, seed=3
    )
    print(
        f"\nA/A through LiveExperiment itself, {live.simulations} runs, the same looks "
        f"(Monte Carlo standard error at 5%: {live.error:.1%}):\n"
    )
    print("| metric | difference ever declared | first variant's interval ever missed its truth |")
    print("|---|---:|---:|")
    for metric in live.declared:
        print(f"| {metric} | {live.declared[metric]:.1%} | {live.missed[metric]:.1%} |")

    regret = simulate_regret(customers=args.customers, batch=200, min_share=0.05, seed=1)
    print(
        f"\nThompson bandit (min share 5%, weights after every 200 customers) against 50/50, "
        f"{regret.customers:,} churn customers; accuracy of the better model "
        f"{regret.accuracies['better']:.3f}, of the worse {regret.accuracies['worse']:.3f}:\n"
    )
    print("| customers | regret, bandit | regret, 50/50 |")
    print("|---:|---:|---:|")
    for mark, bandit, fixed in zip(
        regret.checkpoints, regret.bandit_regret, regret.fixed_regret, strict=True
    ):
        print(f"| {mark:,} | {bandit} | {fixed} |")
    print(
        f"\nThe bandit sent {regret.bandit_share:.1%} of the customers to the better model; its "
        f"last weights: {', '.join(f'{k} {v:.3f}' for k, v in regret.final_weights.items())}."
    )
    if args.plot is not None:
        _plot(args.plot, regret.checkpoints, regret.bandit_regret, regret.fixed_regret)
        print(f"Plot: {args.plot}")
    print(f"\n({time.perf_counter() - started:.1f} s)")


def _plot(
    path: Path, marks: tuple[int, ...], bandit: tuple[int, ...], fixed: tuple[int, ...]
) -> None:
    import matplotlib  # the optional `plot` extra, needed only with --plot

    matplotlib.use("Agg")
    from matplotlib import pyplot  # after choosing the backend

    figure, axes = pyplot.subplots(figsize=(6, 3.5))
    axes.plot((0, *marks), (0, *fixed), label="fixed 50/50")
    axes.plot((0, *marks), (0, *bandit), label="Thompson bandit (min share 5%)")
    axes.set_xlabel("customers routed")
    axes.set_ylabel("cumulative regret (customers)")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
