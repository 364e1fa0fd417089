"""SageMaker's A/B testing walkthrough (two XGBoost churn models as production variants), on
splitserve, with an evaluation that says whether the difference is real.

Run it against a gateway you started (`make run` in another terminal, which serves on
127.0.0.1:8080 with its model store in ./.splitserve/models):

    .venv/bin/python examples/walkthrough.py

or let it start (and stop) its own gateway, as `make demo` does:

    .venv/bin/python examples/walkthrough.py --start

What it does, as the walkthrough does, with unmodified boto3:
1. Generates the synthetic telecom churn table (`splitserve.evaluation.churn`; seeded, no
   download), splits it into train and test, and trains two XGBoost models that differ as the
   walkthrough's do: Variant2 with the walkthrough's hyperparameters on all training rows,
   Variant1 with deeper trees on a fifth of them. Each is written as model.tar.gz
   (`xgboost-model` inside) into the model store, under s3://walkthrough/. Their true AUCs, on
   fresh customers, are printed to compare the evaluation's verdict with.
2. Creates two models (the SageMaker XGBoost image), an endpoint config with Variant1 and Variant2
   at weight 1 each on ml.m5.xlarge with data capture on (100%, under s3://walkthrough/capture/),
   and the endpoint; waits for InService.
3. Sends every test row with the weights (InferenceId = the row's id), then the first rows again
   with TargetVariant="Variant1" (no InferenceId: traffic outside the experiment), printing the
   split of each.
4. Writes the labels as ground truth (SageMaker's merge format, under YYYY/MM/DD/HH/) and runs
   `splitserve evaluate`: per-variant metrics with intervals, the comparison and its verdict.
5. Shifts the weights to 25/75 with UpdateEndpointWeightsAndCapacities, sends more traffic, and
   prints the per-minute invocations table (`splitserve stats`).
6. Closes the loop (README, "Closing the loop"): a second endpoint at 50/50 between Variant2 and
   an eager retrain of it that flags far more churners (scale_pos_weight 50, so its accuracy is
   lower), tagged `splitserve:experiment` = `promote 25 2`; fresh customers are sent to it and
   each batch's labels fed back with `splitserve.feedback` as they come; the live experiment is
   printed after every batch until the always-valid test declares the winner and the gateway
   promotes it by itself, in 25-point steps, then `splitserve experiment` prints the view.

Everything a run leaves goes to a directory per run under --output (default ./demo-output/):
ground truth, the evaluation's plot and, with --start, the gateway's log and model store,
which holds the data capture (under s3://walkthrough/capture/). Against a gateway of your own, the
capture is in that gateway's model store. At the end it prints commands that work after it ends
(`splitserve evaluate` with the real paths). Running it again starts afresh (it deletes its
endpoint, endpoint config and models from an earlier run first).

Its traffic is spread over --duration seconds (120 by default, so `splitserve stats` shows the
weight shift minute by minute), with a progress bar on stderr when that is a terminal and a line
per quarter otherwise; --duration 0 sends as fast as the gateway answers.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import xgboost as xgb
from botocore.config import Config

from splitserve.cli import main as splitserve
from splitserve.evaluation.churn import ChurnData, generate_churn, train_test_split
from splitserve.evaluation.stats import delong_auc
from splitserve.online.client import feedback

IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1"
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
BUCKET = "walkthrough"
SEED = 2024
# Variant2: the walkthrough's XGBoost hyperparameters (the churn notebook's) on all training rows.
# Variant1: deeper trees and a faster learning rate on a fifth of them, so it overfits a little (a
# true AUC about 0.02 lower: the kind of difference an A/B test is run to find).
VARIANT2_PARAMS = {
    "objective": "binary:logistic", "max_depth": 5, "eta": 0.2, "gamma": 4,
    "min_child_weight": 6, "subsample": 0.8, "seed": SEED, "nthread": 1,
}  # fmt: skip
VARIANT1_PARAMS = {**VARIANT2_PARAMS, "max_depth": 6, "eta": 0.3}
ROUNDS = {"Variant1": 100, "Variant2": 100}
TRAINING_SHARE = {"Variant1": 5, "Variant2": 1}  # Variant1 trains on 1/5 of the rows
# Fresh customers to measure each model's true AUC: what no A/B test can see, printed for
# comparison with the evaluation's verdict.
TRUTH_CUSTOMERS = 50_000
START_TIMEOUT_SECONDS = 30.0
CAPTURE_TIMEOUT_SECONDS = 30.0
# Two minutes of traffic: at least one whole minute before the shift and one after it.
DEFAULT_DURATION_SECONDS = 120.0
PROGRESS_BAR_WIDTH = 30
# Step 6: the eager retrain weighs every churner 50 times (scale_pos_weight), so it flags many
# customers who stay: about 7 points less accurate, which the always-valid test tells apart after
# two to three thousand labels (a minute of traffic here).
EAGER_PARAMS = {**VARIANT2_PARAMS, "scale_pos_weight": 50}
LOOP_CUSTOMERS = 5000
LOOP_BATCH = 100
LOOP_TAG = "promote 25 2"
# How long after a batch its labels are sent: past the gateway's index flush (1 s).
LOOP_INDEX_SECONDS = 1.5
# How long step 6 waits for the promotion once every customer was sent.
LOOP_SETTLE_SECONDS = 60.0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the walkthrough; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="a running gateway")
    parser.add_argument(
        "--model-store",
        type=Path,
        default=Path(".splitserve/models"),
        help="that gateway's model store (make run's is the default)",
    )
    parser.add_argument(
        "--start", action="store_true", help="start a gateway of its own (and stop it at the end)"
    )
    parser.add_argument(
        "--worker-user",
        default=None,
        help="with --start: the gateway's --worker-user (its workers' user when it runs as root)",
    )
    parser.add_argument("--customers", type=int, default=5000, help="rows of churn data")
    parser.add_argument(
        "--test-fraction", type=float, default=0.2, help="share of the rows held out for testing"
    )
    parser.add_argument("--targeted", type=int, default=200, help="rows sent to Variant1 only")
    parser.add_argument("--shifted", type=int, default=400, help="rows sent after the 25/75 shift")
    parser.add_argument(
        "--duration",
        type=_seconds,
        default=DEFAULT_DURATION_SECONDS,
        help="seconds to spread the traffic over (0: as fast as possible)",
    )
    parser.add_argument("--endpoint", default="churn-ab", help="the endpoint's name")
    parser.add_argument(
        "--loop-customers",
        type=int,
        default=LOOP_CUSTOMERS,
        help="fresh customers at most for step 6, closing the loop (0 skips it)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("demo-output"),
        help="directory for each run's ground truth, plot and (with --start) gateway state",
    )
    args = parser.parse_args(argv)
    # Each run keeps its files apart, so a second run never reads the first one's records.
    args.run = datetime.now(UTC).strftime("run-%Y%m%dT%H%M%S")
    args.run_output = (args.output / args.run).resolve()
    args.run_output.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with _gateway(args) as (url, model_store):
        capture, ground_truth = _walkthrough(args, url, model_store)
        if args.loop_customers > 0:
            _closing_the_loop(args, url, model_store)
    print(
        f"\nDone in {time.perf_counter() - started:.0f} s. Everything is under {args.run_output}."
    )
    _print_next_commands(args, url, capture, ground_truth)
    return 0


def _seconds(text: str) -> float:
    """A number of seconds, 0 or more (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds: {text!r}")
    return value


def _print_next_commands(
    args: argparse.Namespace, url: str, capture: Path, ground_truth: Path
) -> None:
    """Commands that work after the walkthrough ends, with the real paths of this run."""
    print("\nTo look again:")
    evaluate = [
        "splitserve", "evaluate", "--capture", str(capture), "--endpoint", args.endpoint,
        "--ground-truth", str(ground_truth), "--weights", "Variant1=1,Variant2=1",
    ]  # fmt: skip
    print("  " + shlex.join(evaluate))
    if args.start:
        print(f"  (the gateway it started has stopped; its log: {args.run_output / 'gateway.log'})")
    else:
        print(
            "  " + shlex.join(["splitserve", "stats", args.endpoint, "--since", "5m", "--url", url])
        )


def _walkthrough(args: argparse.Namespace, url: str, model_store: Path) -> tuple[Path, Path]:
    """The five steps; return where the capture and the ground truth are."""
    sagemaker = _client("sagemaker", url)
    runtime = _client("sagemaker-runtime", url)
    endpoint = args.endpoint
    run = args.run
    output = args.run_output

    _step(1, "churn data and two XGBoost models")
    customers = generate_churn(args.customers, seed=SEED)
    train, test = train_test_split(customers, args.test_fraction, seed=SEED)
    print(
        f"{len(customers)} customers ({customers.labels.mean():.1%} churn), "
        f"{customers.features.shape[1]} numeric features; "
        f"{len(train)} to train, {len(test)} to test"
    )
    order = np.random.default_rng(SEED).permutation(len(train))
    fresh = generate_churn(TRUTH_CUSTOMERS, seed=SEED + 1)
    for variant, params in (("Variant1", VARIANT1_PARAMS), ("Variant2", VARIANT2_PARAMS)):
        rows = train.subset(order[: len(train) // TRAINING_SHARE[variant]])
        booster = xgb.train(
            params, xgb.DMatrix(rows.features, label=rows.labels), num_boost_round=ROUNDS[variant]
        )
        path = _write_model(booster, model_store / BUCKET / variant.lower() / "model.tar.gz")
        true_auc = _auc(fresh.labels, booster.predict(xgb.DMatrix(fresh.features)))
        print(
            f"{variant}: max_depth {params['max_depth']}, eta {params['eta']}, "
            f"{ROUNDS[variant]} rounds, {len(rows)} training rows; true AUC {true_auc:.3f} "
            f"(on {len(fresh)} fresh customers) -> {path}"
        )

    _step(2, "models, endpoint config with data capture, endpoint")
    _delete_leftovers(sagemaker, endpoint)
    for variant in ("Variant1", "Variant2"):
        sagemaker.create_model(
            ModelName=f"{endpoint}-{variant.lower()}",
            ExecutionRoleArn=ROLE,
            PrimaryContainer={
                "Image": IMAGE,
                "ModelDataUrl": f"s3://{BUCKET}/{variant.lower()}/model.tar.gz",
            },
        )
    sagemaker.create_endpoint_config(
        EndpointConfigName=f"{endpoint}-config",
        ProductionVariants=[
            {
                "VariantName": variant,
                "ModelName": f"{endpoint}-{variant.lower()}",
                "InitialInstanceCount": 1,
                "InstanceType": "ml.m5.xlarge",
                "InitialVariantWeight": 1,
            }
            for variant in ("Variant1", "Variant2")
        ],
        DataCaptureConfig={
            "EnableCapture": True,
            "InitialSamplingPercentage": 100,
            "DestinationS3Uri": f"s3://{BUCKET}/capture/{run}",
            "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
            "CaptureContentTypeHeader": {
                "CsvContentTypes": ["text/csv"],
                "JsonContentTypes": ["application/json"],
            },
        },
    )
    sagemaker.create_endpoint(EndpointName=endpoint, EndpointConfigName=f"{endpoint}-config")
    _wait_in_service(sagemaker, endpoint)

    _step(3, "traffic: by weight (1:1), then pinned to Variant1")
    row_ids = [f"customer-{index}" for index in range(len(test))]
    targeted_rows = test.subset(np.arange(min(args.targeted, len(test))))
    shifted_rows = test.subset(np.arange(min(args.shifted, len(test))))
    # Half the duration before the shift, half after, so each side fills whole minutes.
    before = len(test) + len(targeted_rows)
    pace = _Pace(args.duration / 2 / max(1, before), args.duration / 2 / max(1, len(shifted_rows)))
    weighted = _send(runtime, endpoint, test, row_ids, "weighted", pace.before)
    _print_split("by weight", weighted)
    targeted = _send(
        runtime, endpoint, targeted_rows, None, "targeted", pace.before, TargetVariant="Variant1"
    )
    _print_split('TargetVariant="Variant1" (no InferenceId)', targeted)

    _step(4, "ground truth and evaluation")
    capture = model_store / BUCKET / "capture" / run
    _wait_for_capture(capture / endpoint, len(test) + len(targeted_rows))
    ground_truth = _write_ground_truth(output / "ground-truth", row_ids, test)
    plot = output / "evaluation.png"
    command = [
        "evaluate", "--capture", str(capture), "--endpoint", endpoint,
        "--ground-truth", str(ground_truth), "--weights", "Variant1=1,Variant2=1",
        "--plot", str(plot),
    ]  # fmt: skip
    print("$ splitserve " + " ".join(command) + "\n")
    if splitserve(command) != 0:
        raise SystemExit("splitserve evaluate failed")

    _step(5, "shift to 25/75, more traffic, invocations per minute")
    sagemaker.update_endpoint_weights_and_capacities(
        EndpointName=endpoint,
        DesiredWeightsAndCapacities=[
            {"VariantName": "Variant1", "DesiredWeight": 25},
            {"VariantName": "Variant2", "DesiredWeight": 75},
        ],
    )
    _wait_in_service(sagemaker, endpoint)
    shifted = _send(runtime, endpoint, shifted_rows, None, "after the shift", pace.after)
    _print_split("after UpdateEndpointWeightsAndCapacities to 25/75", shifted)
    print(f"\n$ splitserve stats {endpoint} --since 5m --url {url}\n")
    if splitserve(["stats", endpoint, "--since", "5m", "--url", url]) != 0:
        raise SystemExit("splitserve stats failed")
    return capture, ground_truth


def _closing_the_loop(args: argparse.Namespace, url: str, model_store: Path) -> None:
    """Step 6: labels fed back as they come, the live experiment watched, the winner promoted by
    the gateway itself."""
    _step(6, "closing the loop: labels fed back, the experiment watched, the winner promoted")
    started = time.perf_counter()
    sagemaker = _client("sagemaker", url)
    runtime = _client("sagemaker-runtime", url)
    endpoint = f"{args.endpoint}-live"
    customers = generate_churn(args.customers, seed=SEED)
    train, _ = train_test_split(customers, args.test_fraction, seed=SEED)
    eager = xgb.train(
        EAGER_PARAMS, xgb.DMatrix(train.features, label=train.labels), ROUNDS["Variant2"]
    )
    _write_model(eager, model_store / BUCKET / "eager" / "model.tar.gz")
    print("Eager: Variant2's parameters with scale_pos_weight 50 (flags many more churners)")
    _delete_leftovers(sagemaker, endpoint)
    sources = {"Eager": "eager", "Variant2": "variant2"}
    for variant, key in sources.items():
        sagemaker.create_model(
            ModelName=f"{endpoint}-{variant.lower()}",
            ExecutionRoleArn=ROLE,
            PrimaryContainer={"Image": IMAGE, "ModelDataUrl": f"s3://{BUCKET}/{key}/model.tar.gz"},
        )
    sagemaker.create_endpoint_config(
        EndpointConfigName=f"{endpoint}-config",
        ProductionVariants=[
            {
                "VariantName": variant,
                "ModelName": f"{endpoint}-{variant.lower()}",
                "InitialInstanceCount": 1,
                "InstanceType": "ml.m5.xlarge",
                "InitialVariantWeight": 1,
            }
            for variant in sources
        ],
    )
    arn = sagemaker.create_endpoint(
        EndpointName=endpoint,
        EndpointConfigName=f"{endpoint}-config",
        Tags=[{"Key": "splitserve:experiment", "Value": LOOP_TAG}],
    )["EndpointArn"]
    _wait_in_service(sagemaker, endpoint)
    print(f"tagged splitserve:experiment = {LOOP_TAG!r} ({arn})")
    fresh = generate_churn(args.loop_customers, seed=SEED + 2)
    sent = 0
    settle_by: float | None = None
    waiting: list[tuple[str, int]] = []  # the previous batch's labels
    waiting_since = time.monotonic()
    while True:
        if sent < len(fresh):
            batch = range(sent, min(sent + LOOP_BATCH, len(fresh)))
            labels: list[tuple[str, int]] = []
            for index in batch:
                body = ",".join(f"{value:g}" for value in fresh.features[index]) + "\n"
                answer = runtime.invoke_endpoint(
                    EndpointName=endpoint, Body=body.encode(), ContentType="text/csv"
                )
                answer["Body"].read()
                inference_id = answer["ResponseMetadata"]["HTTPHeaders"][
                    "x-splitserve-inference-id"
                ]
                labels.append((inference_id, int(fresh.labels[index])))
            sent = batch.stop
            # Each batch's labels come back once the next batch is served and the gateway has
            # indexed the answers (it writes its index every second: a label sent the same
            # instant would find none yet, and be refused as unknown).
            time.sleep(max(0.0, waiting_since + LOOP_INDEX_SECONDS - time.monotonic()))
            _feed_back(url, endpoint, waiting)
            waiting, waiting_since = labels, time.monotonic()
        elif settle_by is None:
            time.sleep(max(0.0, waiting_since + LOOP_INDEX_SECONDS - time.monotonic()))
            _feed_back(url, endpoint, waiting)
            settle_by = time.monotonic() + LOOP_SETTLE_SECONDS
        else:
            time.sleep(1.0)
        view = _experiment_view(url, endpoint)
        weights = {
            v["VariantName"]: v["CurrentWeight"]
            for v in sagemaker.describe_endpoint(EndpointName=endpoint)["ProductionVariants"]
        }
        print(f"  {sent:>5} sent  " + _loop_line(view, weights), flush=True)
        if weights.get("Variant2") and not weights.get("Eager"):
            print(
                f"Promoted by the gateway: Variant2 takes every request "
                f"({time.perf_counter() - started:.0f} s into step 6)."
            )
            break
        if settle_by is not None and time.monotonic() > settle_by:
            print("No promotion: the test has not declared a winner on these customers.")
            break
    print(f"\n$ splitserve experiment {endpoint} --url {url}\n")
    if splitserve(["experiment", endpoint, "--url", url]) != 0:
        raise SystemExit("splitserve experiment failed")


def _feed_back(url: str, endpoint: str, labels: list[tuple[str, int]]) -> None:
    """Send `labels` (`splitserve.feedback`), again for those the index had not written yet (it
    writes every second)."""
    for _ in range(30):
        if not labels:
            return
        answer = feedback(url, endpoint, labels)
        labels = [
            pair
            for pair, record in zip(labels, answer["Records"], strict=True)
            if record["Outcome"] == "unknown"
        ]
        if not labels:
            return
        time.sleep(0.5)
    raise SystemExit(f"{len(labels)} labels found no invocation to join")


def _experiment_view(url: str, endpoint: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/splitserve/experiments/{endpoint}", timeout=10) as answer:
        view: dict[str, Any] = json.load(answer)
    return view


def _loop_line(view: dict[str, Any], weights: dict[str, float]) -> str:
    """One line of the live experiment: labels and accuracy per variant, the p-value, the
    winner, the weights."""
    cells = []
    for variant, figures in view["variants"].items():
        accuracy = figures["metrics"]["accuracy"]["value"]
        shown = "-" if accuracy is None else f"{accuracy:.3f}"
        cells.append(f"{variant} {figures['n']} labels, accuracy {shown}")
    p_values = [c["p_value"] for c in view["comparisons"] if c["metric"] == "accuracy"]
    p_text = "-" if not p_values or p_values[0] is None else f"{p_values[0]:.3g}"
    total = sum(weights.values()) or 1.0
    split = "/".join(f"{weights[name] / total:.0%}" for name in weights)
    winner = view.get("winner") or "none yet"
    return f"{'; '.join(cells)}; p {p_text}; winner {winner}; split {split}"


@dataclass(frozen=True)
class _Pace:
    """Seconds between requests before and after the weight shift."""

    before: float
    after: float


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """The Mann-Whitney AUC (ties count half)."""
    estimate = delong_auc(labels, scores.astype(np.float64))
    return float("nan") if estimate is None else estimate.auc


def _step(number: int, title: str) -> None:
    print(f"\n== {number}. {title}", flush=True)


def _client(service: str, url: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="walkthrough",
        aws_secret_access_key="walkthrough",
        config=Config(retries={"mode": "standard", "max_attempts": 3}),
    )


def _write_model(booster: xgb.Booster, path: Path) -> Path:
    """Save as SageMaker's XGBoost training does: `xgboost-model` inside model.tar.gz."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = bytes(booster.save_raw(raw_format="ubj"))
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("xgboost-model")
        info.size = len(raw)
        tar.addfile(info, io.BytesIO(raw))
    return path


def _delete_leftovers(sagemaker: Any, endpoint: str) -> None:
    """Remove what an earlier run against the same gateway left, so the names are free."""
    calls = [
        ("delete_endpoint", {"EndpointName": endpoint}),
        ("delete_endpoint_config", {"EndpointConfigName": f"{endpoint}-config"}),
        ("delete_model", {"ModelName": f"{endpoint}-variant1"}),
        ("delete_model", {"ModelName": f"{endpoint}-variant2"}),
        ("delete_model", {"ModelName": f"{endpoint}-eager"}),
    ]
    for operation, arguments in calls:
        try:
            getattr(sagemaker, operation)(**arguments)
        except sagemaker.exceptions.ClientError:
            continue  # not there: nothing to delete
        if operation == "delete_endpoint":
            print(f"(deleted endpoint {endpoint} left by an earlier run)")
            sagemaker.get_waiter("endpoint_deleted").wait(
                EndpointName=endpoint, WaiterConfig={"Delay": 1, "MaxAttempts": 60}
            )


def _wait_in_service(sagemaker: Any, endpoint: str) -> None:
    started = time.perf_counter()
    sagemaker.get_waiter("endpoint_in_service").wait(
        EndpointName=endpoint, WaiterConfig={"Delay": 1, "MaxAttempts": 120}
    )
    described = sagemaker.describe_endpoint(EndpointName=endpoint)
    weights = ", ".join(
        f"{v['VariantName']} weight {v['CurrentWeight']:g}" for v in described["ProductionVariants"]
    )
    print(f"{endpoint} InService after {time.perf_counter() - started:.1f} s ({weights})")


def _send(
    runtime: Any,
    endpoint: str,
    rows: ChurnData,
    row_ids: list[str] | None,
    label: str,
    interval: float,
    **extra: Any,
) -> Counter[str]:
    """Invoke once per row (CSV, as the walkthrough does), one every `interval` seconds, showing
    progress on stderr; count variants."""
    seen: Counter[str] = Counter()
    total = len(rows)
    interactive = sys.stderr.isatty()
    step = max(1, total // 4)
    started = time.monotonic()
    for index in range(total):
        # Keep to the schedule rather than sleeping a fixed time, so slow answers are caught up.
        delay = started + index * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        body = ",".join(f"{value:g}" for value in rows.features[index]) + "\n"
        if row_ids is not None:
            extra["InferenceId"] = row_ids[index]
        response = runtime.invoke_endpoint(
            EndpointName=endpoint, Body=body.encode(), ContentType="text/csv", **extra
        )
        response["Body"].read()
        seen[response["InvokedProductionVariant"]] += 1
        done = index + 1
        if interactive:
            filled = PROGRESS_BAR_WIDTH * done // total
            bar = "#" * filled + "." * (PROGRESS_BAR_WIDTH - filled)
            print(
                f"\r  sending {label} [{bar}] {done}/{total}", end="", file=sys.stderr, flush=True
            )
        elif done % step == 0 or done == total:
            print(f"  sending {label}: {done}/{total}", file=sys.stderr, flush=True)
    if interactive:
        print(file=sys.stderr)
    return seen


def _print_split(title: str, seen: Counter[str]) -> None:
    total = sum(seen.values())
    shares = ", ".join(
        f"{name} {count} ({count / total:.0%})" for name, count in sorted(seen.items())
    )
    print(f"{title}: {shares}")


def _wait_for_capture(directory: Path, expected: int) -> None:
    """Wait until the capture files hold `expected` records (the writer flushes within moments)."""
    deadline = time.monotonic() + CAPTURE_TIMEOUT_SECONDS
    found = 0
    while time.monotonic() < deadline:
        found = sum(
            sum(1 for line in path.read_bytes().splitlines() if line.strip())
            for path in directory.rglob("*.jsonl")
        )
        if found >= expected:
            print(f"capture: {found} records under {directory}")
            return
        time.sleep(0.2)
    raise SystemExit(f"capture has {found} of {expected} records under {directory}")


def _write_ground_truth(directory: Path, row_ids: list[str], test: ChurnData) -> Path:
    """The test labels in SageMaker's merge format, under the hour they were collected."""
    hour = directory / datetime.now(UTC).strftime("%Y/%m/%d/%H")
    hour.mkdir(parents=True, exist_ok=True)
    lines = (
        json.dumps(
            {
                "groundTruthData": {"data": str(int(label)), "encoding": "CSV"},
                "eventMetadata": {"eventId": row_id},
                "eventVersion": "0",
            }
        )
        for row_id, label in zip(row_ids, test.labels, strict=True)
    )
    (hour / "labels.jsonl").write_text("\n".join(lines) + "\n")
    print(f"ground truth: {len(row_ids)} labels under {directory}")
    return directory


@contextmanager
def _gateway(args: argparse.Namespace) -> Iterator[tuple[str, Path]]:
    """The gateway to use: the one at --url, or (--start) one started here and stopped after."""
    if not args.start:
        yield args.url, args.model_store
        return
    # The model store (which holds the capture) stays in the run's directory, read after the
    # gateway stops by the commands printed at the end. The state directory is a short temporary
    # one: it holds the workers' Unix sockets, whose paths have a 107-byte limit.
    root = args.run_output
    state = Path(tempfile.mkdtemp(prefix="splitserve-demo-"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log_path = root / "gateway.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "splitserve.cli", "serve", "--port", str(port),
                "--state-dir", str(state), "--model-store", str(root / "models"),
                *(["--worker-user", args.worker_user] if args.worker_user else []),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_ping(process, url, log_path)
        print(f"started a gateway at {url} (log: {log_path})")
        yield url, root / "models"
    finally:
        process.send_signal(signal.SIGTERM)  # a clean stop also flushes the capture files
        try:
            process.wait(40)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(state, ignore_errors=True)


def _wait_for_ping(process: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the gateway exited; see {log_path}")
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"the gateway did not answer /ping; see {log_path}")


if __name__ == "__main__":
    raise SystemExit(main())
