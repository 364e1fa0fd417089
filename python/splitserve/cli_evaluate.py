"""`splitserve evaluate` and `splitserve replay` once `cli` has parsed their arguments: each builds
its request and hands it to the evaluation part, which does the work and prints (exit 2 when the
inputs cannot be used).

Part of the face, beside `cli`. Nothing here loads the gateway or the Rust router: both commands
run where the extension was never built (tests/test_architecture.py).
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from splitserve.config import EvaluationSettings, ReplaySettings
from splitserve.evaluation.command import EvaluateRequest, evaluate_command
from splitserve.evaluation.replay import ReplayRequest, replay_command


def run_evaluate(args: argparse.Namespace) -> int:
    """Print the per-variant evaluation; 2 when the inputs cannot be used."""
    request = EvaluateRequest(
        capture=args.capture,
        ground_truth=args.ground_truth,
        endpoint=args.endpoint,
        weights=args.weights,
        url=args.url,
        as_json=args.json,
        plot=args.plot,
        shadow=args.shadow,
    )
    return evaluate_command(request, replace(EvaluationSettings(), threshold=args.threshold))


def run_replay(args: argparse.Namespace) -> int:
    """Replay captured requests to a candidate and print the comparison; 2 on unusable inputs."""
    request = ReplayRequest(
        capture=args.capture,
        endpoint=args.endpoint,
        variant=args.variant,
        url=args.url,
        rate=args.rate,
        as_json=args.json,
        limit=args.limit,
    )
    return replay_command(
        request, ReplaySettings(), replace(EvaluationSettings(), threshold=args.threshold)
    )
