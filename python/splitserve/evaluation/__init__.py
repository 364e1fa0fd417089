"""Per-variant model evaluation from data capture and ground truth (`splitserve evaluate`).

capture_reader reads the capture files, ground_truth the labels, join pairs them (counting what
does not pair), stats holds the statistics, report builds the per-variant metrics, comparisons and
verdicts, render prints them, plot draws them (optional extra), and churn generates the synthetic
customer-churn data of the A/B walkthrough.
"""

from splitserve.evaluation.command import EvaluateRequest, evaluate_command, run_evaluation
from splitserve.evaluation.errors import EvaluationInputError
from splitserve.evaluation.report import EvaluationReport, TrafficWeights, evaluate

__all__ = [
    "EvaluateRequest",
    "EvaluationInputError",
    "EvaluationReport",
    "TrafficWeights",
    "evaluate",
    "evaluate_command",
    "run_evaluation",
]
