"""Per-variant model evaluation from data capture and ground truth (`splitserve evaluate`).

capture_reader reads the capture files, ground_truth the labels, join pairs them (counting what
does not pair), stats holds the statistics, report builds the per-variant metrics, comparisons and
verdicts, render prints them, plot draws them (optional extra), and churn generates the synthetic
customer-churn data of the A/B walkthrough. sequential holds the always-valid statistics of a live
experiment, bandit the Thompson-sampling weights, simulation their seeded checks, and replay
`splitserve replay` (docs/statistics.md).

The names below are loaded on first use: the package's own modules import from the module that
defines a name, never from here, so importing one of them does not pull in all the others (and
no module of the package imports itself back through this file).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from splitserve.evaluation.bandit import ThompsonBandit
    from splitserve.evaluation.command import EvaluateRequest, evaluate_command, run_evaluation
    from splitserve.evaluation.errors import EvaluationInputError
    from splitserve.evaluation.report import EvaluationReport, TrafficWeights, evaluate
    from splitserve.evaluation.sequential import ExperimentSnapshot, LiveExperiment

#: Each public name and the module that defines it.
_DEFINED_IN = {
    "EvaluateRequest": "splitserve.evaluation.command",
    "evaluate_command": "splitserve.evaluation.command",
    "run_evaluation": "splitserve.evaluation.command",
    "EvaluationInputError": "splitserve.evaluation.errors",
    "EvaluationReport": "splitserve.evaluation.report",
    "TrafficWeights": "splitserve.evaluation.report",
    "evaluate": "splitserve.evaluation.report",
    "ExperimentSnapshot": "splitserve.evaluation.sequential",
    "LiveExperiment": "splitserve.evaluation.sequential",
    "ThompsonBandit": "splitserve.evaluation.bandit",
}

__all__ = [
    "EvaluateRequest",
    "EvaluationInputError",
    "EvaluationReport",
    "ExperimentSnapshot",
    "LiveExperiment",
    "ThompsonBandit",
    "TrafficWeights",
    "evaluate",
    "evaluate_command",
    "run_evaluation",
]


def __getattr__(name: str) -> Any:
    """Load a public name from its defining module when first asked for.

    Raises:
        AttributeError: a name the package does not export (a submodule is imported by the
            import system after this).
    """
    module = _DEFINED_IN.get(name)
    if module is None:
        raise AttributeError(f"module 'splitserve.evaluation' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The package's names, the lazily loaded ones included."""
    return sorted({*globals(), *__all__})
