"""End-to-end load tests of the gateway against nginx, HAProxy and a plain aiohttp gateway.

Run from the repository root (`make bench-load`, `make soak`):

    .venv/bin/python -m benches.load bench [--scenarios G,X,B,R,P] [--connections 1,16,64]
        [--repeats 2] [--seconds 10] [--quick] [--output .benchmarks/load.json]
    .venv/bin/python -m benches.load soak [--seconds 600]

It starts every piece itself on loopback (splitserve, its workers, nginx, HAProxy, the plain
gateway in benches/plain_gateway.py), drives load with wrk (closed loop: each connection sends
its next request when the last one is answered) and oha (open loop at a fixed rate, latency
counted from when each request was due), and stops everything it started. wrk, nginx and HAProxy
come from Debian (apt-get) and oha from `cargo install oha --locked`, installed when missing.

Scenarios (each at every connection count, `--repeats` times, gateways interleaved so that each
gets the same share of the shared machine's noise):

- G, gateway-bound: each gateway alone on CPU 0; two stand-in workers (nginx answering a fixed
  body, run by splitserve as a bring-your-own image) and wrk on CPU 1. The gateway's CPU time per
  request is what it adds to each request. With the plain gateway G also runs "aiohttp-bare",
  aiohttp's server answering at once without forwarding: the floor of any aiohttp gateway.
- X, realistic: everything shares both CPUs. splitserve's built-in XGBoost workers (one instance
  per variant, weights 70/30, a 100-tree depth-6 model, one CSV row a request) with batching off
  (`--max-batch-rows 1`), behind splitserve, nginx, HAProxy and the plain gateway, which all
  forward to the very same worker processes over their Unix sockets; untargeted, and with
  X-Amzn-SageMaker-Target-Variant (70/30 per request).
- B: X with the workers' dynamic batching on (the defaults), behind the same gateways.
- D, the floor (inside X and B): one worker invoked directly over its Unix socket with oha, and
  every gateway and the worker at one connection with oha, for the latency a gateway adds.
- P, replicas: G's stand-in workers behind splitserve with `--processes 1` and `--processes 2`,
  nothing pinned (two replicas need both CPUs), wrk on every CPU: requests/s and the gateway's CPU
  time per request (the supervisor's and every replica's) for each.
- R: splitserve's resident memory after 100,000 and after 1,000,000 requests (G's set-up).

`soak` holds splitserve (B's set-up) at 80 % of its measured maximum for a fixed time (wrk, paced
to the rate) and checks: no errors, p99 within 3x p50, and flat resident memory of the gateway and
every worker (under 5 % growth from the second to the last minute; with less than 3 minutes, from
the second to the last third).

Results: a JSON file (every run and the medians) and a Markdown table on stdout (and next to the
JSON). docs/benchmarks.md ("Load") holds the figures of a full run and the command.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import io
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from benches.load_proxies import (
    STANDIN_IMAGE,
    Upstream,
    haproxy_gateway_config,
    nginx_gateway_config,
    plain_gateway_argv,
    standin_registry,
)
from benches.load_tools import (
    LoadResult,
    Processes,
    Target,
    children,
    command_line,
    environment_of,
    pin,
    process_tree,
    rss_bytes,
    run_oha,
    run_wrk,
    tool_path,
    version_of,
    wait_until,
)

XGBOOST_IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1"
ENDPOINT = "bench"
INVOKE_PATH = f"/endpoints/{ENDPOINT}/invocations"
WEIGHTS = {"Variant1": 70.0, "Variant2": 30.0}
FEATURES = 13
#: One CSV row of FEATURES values: every request's body.
BODY = (",".join(f"{0.1 * (index + 1) - 0.6:.3f}" for index in range(FEATURES)) + "\n").encode()
INSTANCE_TYPE = "ml.m5.large"
GATEWAY_CPU = {0}
OTHER_CPU = {1}
SPLITSERVE = "splitserve"
#: G's reference floor: aiohttp's server answering at once, forwarding nothing (plain_gateway.py).
BARE = "aiohttp-bare"
GATEWAYS = ("splitserve", "plain", "nginx", "haproxy")
#: Open-loop latency runs go at this share of the slowest gateway's closed-loop maximum.
OPEN_LOOP_SHARE = 0.5
SOAK_LOAD_SHARE = 0.8
SOAK_CONNECTIONS = 256
#: The longest the soak's floor measurement (its load against the stand-in server) runs.
FLOOR_SECONDS = 15.0


@dataclass
class Gateway:
    """One gateway under test: where it listens and which processes are its own."""

    name: str
    port: int
    pids: list[int]

    @property
    def target(self) -> Target:
        """Its InvokeEndpoint URL."""
        return Target(f"http://127.0.0.1:{self.port}{INVOKE_PATH}")


@dataclass
class Worker:
    """One instance splitserve started, as the other gateways address it."""

    variant: str
    pid: int
    upstream: Upstream


@dataclass
class Fleet:
    """A running splitserve gateway with its endpoint deployed."""

    gateway: Gateway
    workers: dict[str, Worker]

    def worker_roles(self) -> dict[str, list[int]]:
        """Role name -> pids of each worker (its process tree)."""
        return {f"worker {w.variant}": process_tree(w.pid) for w in self.workers.values()}

    def upstreams(self) -> list[Upstream]:
        """The workers in variant order."""
        return [self.workers[name].upstream for name in WEIGHTS]


@dataclass
class Run:
    """One load run, as stored in the JSON file."""

    scenario: str
    gateway: str
    connections: int
    repeat: int
    tool: str
    targeted: bool
    rate: float | None
    result: LoadResult


@dataclass
class Report:
    """Everything one invocation of the script measured."""

    command: str
    machine: dict[str, Any]
    versions: dict[str, str]
    settings: dict[str, Any]
    runs: list[Run] = field(default_factory=list)
    memory: dict[str, Any] = field(default_factory=dict)
    #: P: UpdateEndpointWeightsAndCapacities round trips, per gateway: p50/p99 milliseconds.
    weight_changes: dict[str, Any] = field(default_factory=dict)
    #: X and B open loop: where splitserve's requests spent their time, from its own histograms
    #: (model latency: at the worker; overhead: in the gateway), p50/p90/p99 milliseconds per run.
    latency_split: list[dict[str, Any]] = field(default_factory=list)
    complete: bool = False


# --- set-up ---------------------------------------------------------------------------------------


def free_port() -> int:
    """A loopback TCP port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def write_model(model_store: Path) -> str:
    """A 100-tree, depth-6 binary:logistic model on FEATURES features as SageMaker's model.tar.gz
    under `model_store`; returns its s3:// URL."""
    import numpy as np
    import xgboost

    generator = np.random.default_rng(42)
    features = generator.normal(size=(2000, FEATURES)).astype(np.float32)
    label = (features[:, 0] + features[:, 1] * features[:, 2] > 0).astype(np.float32)
    parameters = {"objective": "binary:logistic", "max_depth": 6, "nthread": 1, "seed": 0}
    booster = xgboost.train(parameters, xgboost.DMatrix(features, label=label), 100)
    raw = bytes(booster.save_raw("json"))
    path = model_store / "bench" / "model.tar.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as archive:
        info = tarfile.TarInfo("xgboost-model")
        info.size = len(raw)
        archive.addfile(info, io.BytesIO(raw))
    return "s3://bench/model.tar.gz"


def post(port: int, path: str = INVOKE_PATH, headers: dict[str, str] | None = None) -> bool:
    """Whether one InvokeEndpoint to `port` is answered 200."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=BODY,
        headers={"Content-Type": "text/csv", **(headers or {})},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return bool(response.status == 200)


def start_splitserve(
    processes: Processes,
    workdir: Path,
    *,
    image: str,
    model_url: str | None,
    images_file: Path | None = None,
    max_batch_rows: int | None = None,
    replicas: int = 1,
    options: Sequence[str] = (),
) -> Fleet:
    """Start `splitserve serve`, deploy a 70/30 two-variant endpoint of `image`, find its workers.

    Each variant has one instance; the workers are found among the gateway's child processes
    (their SM_MODEL_DIR names the variant). With `replicas` > 1 it runs `--processes N`: the
    gateway's processes are the supervisor and its replicas, and the workers are children of the
    replica that controls.
    """
    import boto3
    from botocore.config import Config

    port = free_port()
    state = workdir / f"splitserve-{port}"
    argv = [
        sys.executable,
        "-m",
        "splitserve.cli",
        "serve",
        "--port",
        str(port),
        "--state-dir",
        str(state),
        "--model-store",
        str(workdir / "models"),
        "--log-level",
        "WARNING",
    ]
    if images_file is not None:
        argv += ["--images", str(images_file)]
    if max_batch_rows is not None:
        argv += ["--max-batch-rows", str(max_batch_rows)]
    if replicas > 1:
        argv += ["--processes", str(replicas)]
    argv += options
    if os.geteuid() == 0:
        # Run as root, the gateway's workers would run as nobody, who cannot reach a workdir or
        # interpreter of root's own; the load measures the gateway, not the confinement.
        argv += ["--worker-user", "root"]
    process = processes.start(f"splitserve-{port}", argv)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: urllib.request.urlopen(f"{url}/ping", timeout=1), "splitserve")
    sagemaker = boto3.client(
        "sagemaker",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        config=Config(retries={"mode": "standard", "max_attempts": 1}),
    )
    for variant in WEIGHTS:
        container: dict[str, str] = {"Image": image}
        if model_url is not None:
            container["ModelDataUrl"] = model_url
        sagemaker.create_model(
            ModelName=f"bench-{variant}",
            ExecutionRoleArn="arn:aws:iam::123456789012:role/Bench",
            PrimaryContainer=container,
        )
    sagemaker.create_endpoint_config(
        EndpointConfigName="bench",
        ProductionVariants=[
            {
                "VariantName": variant,
                "ModelName": f"bench-{variant}",
                "InitialInstanceCount": 1,
                "InstanceType": INSTANCE_TYPE,
                "InitialVariantWeight": weight,
            }
            for variant, weight in WEIGHTS.items()
        ],
    )
    sagemaker.create_endpoint(EndpointName=ENDPOINT, EndpointConfigName="bench")
    sagemaker.get_waiter("endpoint_in_service").wait(
        EndpointName=ENDPOINT, WaiterConfig={"Delay": 1, "MaxAttempts": 240}
    )
    if replicas > 1:
        replica_pids = children(process.pid)
        workers = next(
            found for pid in replica_pids if (found := find_workers(pid, missing_ok=True))
        )
        gateway = Gateway(f"{SPLITSERVE}-p{replicas}", port, [process.pid, *replica_pids])
    else:
        workers = find_workers(process.pid)
        gateway = Gateway(SPLITSERVE, port, [process.pid])
    wait_until(lambda: post(port), "splitserve's endpoint")
    return Fleet(gateway, workers)


def find_workers(gateway_pid: int, *, missing_ok: bool = False) -> dict[str, Worker]:
    """The instance processes among `gateway_pid`'s children, by variant (empty when it has
    none and `missing_ok`)."""
    workers: dict[str, Worker] = {}
    for pid in children(gateway_pid):
        environment = environment_of(pid)
        model_dir = environment.get("SM_MODEL_DIR", "")
        variant = next((v for v in WEIGHTS if f".{v}.g" in Path(model_dir).name), None)
        if variant is None:
            continue
        argv = command_line(pid)
        if "--unix" in argv:
            upstream = Upstream(variant, WEIGHTS[variant], unix_path=argv[argv.index("--unix") + 1])
        elif "--port" in argv:
            upstream = Upstream(variant, WEIGHTS[variant], port=int(argv[argv.index("--port") + 1]))
        else:
            upstream = Upstream(
                variant, WEIGHTS[variant], port=int(environment["SAGEMAKER_BIND_TO_PORT"])
            )
        workers[variant] = Worker(variant, pid, upstream)
    if not workers and missing_ok:
        return workers
    if set(workers) != set(WEIGHTS):
        raise RuntimeError(f"found workers for {sorted(workers)}, expected {sorted(WEIGHTS)}")
    return workers


def start_others(
    processes: Processes,
    workdir: Path,
    upstreams: list[Upstream],
    names: Sequence[str],
    cpus: set[int] | None,
) -> list[Gateway]:
    """Start the gateways other than splitserve named in `names` over `upstreams`."""
    gateways = []
    for name in names:
        port = free_port()
        if name == "plain":
            argv = plain_gateway_argv(sys.executable, port, upstreams)
        elif name == BARE:
            argv = [sys.executable, "-m", "benches.plain_gateway", "--port", str(port), "--bare"]
        elif name == "nginx":
            (workdir / "nginx-body").mkdir(exist_ok=True)
            config = nginx_gateway_config(workdir, port, upstreams)
            argv = [tool_path("nginx"), "-e", "stderr", "-p", str(workdir), "-c", str(config)]
        elif name == "haproxy":
            config = haproxy_gateway_config(workdir, port, upstreams)
            argv = [tool_path("haproxy"), "-db", "-f", str(config)]
        else:
            raise ValueError(f"unknown gateway {name}")
        process = processes.start(name, argv, cpus=cpus)
        try:
            wait_until(functools.partial(post, port), name)
        except TimeoutError as error:
            raise RuntimeError(f"{name} did not start: {error}\n{processes.log(name)}") from None
        gateways.append(Gateway(name, port, process_tree(process.pid)))
    return gateways


# --- scenarios ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How much load each scenario runs."""

    connections: tuple[int, ...]
    repeats: int
    seconds: float
    gateways: tuple[str, ...]
    memory_requests: tuple[int, int]
    #: Extra `splitserve serve` options for X and B (e.g. ("--pipeline-depth", "1")).
    serve_options: tuple[str, ...] = ()


def closed_loop(
    report: Report,
    scenario: str,
    gateways: list[Gateway],
    worker_roles: dict[str, list[int]],
    plan: Plan,
    *,
    wrk_cpus: set[int] | None,
    threads: int,
    targeted: bool = False,
) -> None:
    """wrk against every gateway at every connection count, `plan.repeats` times, interleaved."""
    for repeat in range(plan.repeats):
        for connections in plan.connections:
            for gateway in gateways:
                result = run_wrk(
                    gateway.target,
                    connections=connections,
                    seconds=plan.seconds,
                    body=BODY,
                    roles={"gateway": gateway.pids, **worker_roles},
                    cpus=wrk_cpus,
                    threads=threads,
                    targeted=targeted,
                )
                report.runs.append(
                    Run(scenario, gateway.name, connections, repeat, "wrk", targeted, None, result)
                )
                print(_line(scenario, gateway.name, connections, targeted, result), flush=True)


def warm_up(gateways: list[Gateway], wrk_cpus: set[int] | None) -> None:
    """Two seconds of load through each gateway: connections opened, caches and JITs warm."""
    for gateway in gateways:
        run_wrk(gateway.target, connections=16, seconds=2, body=BODY, roles={}, cpus=wrk_cpus)


def scenario_g(report: Report, plan: Plan, workdir: Path) -> None:
    """G: each gateway alone on CPU 0, nginx stand-ins and wrk on CPU 1; then R (memory)."""
    with Processes(workdir) as processes:
        registry = standin_registry(workdir, tool_path("nginx"))
        fleet = start_splitserve(
            processes, workdir, image=STANDIN_IMAGE, model_url=None, images_file=registry
        )
        pin(fleet.gateway.pids, GATEWAY_CPU)
        for worker in fleet.workers.values():
            pin(process_tree(worker.pid), OTHER_CPU)
        others = [name for name in plan.gateways if name != SPLITSERVE]
        if "plain" in others:
            others.append(BARE)  # what any gateway on aiohttp's server costs at the least
        gateways = [fleet.gateway] if SPLITSERVE in plan.gateways else []
        gateways += start_others(processes, workdir, fleet.upstreams(), others, GATEWAY_CPU)
        warm_up(gateways, OTHER_CPU)
        closed_loop(
            report, "G", gateways, fleet.worker_roles(), plan, wrk_cpus=OTHER_CPU, threads=1
        )
        if plan.memory_requests[1] > 0:
            report.memory = memory_growth(fleet, plan.memory_requests, workdir)


def scenario_p(report: Report, plan: Plan, workdir: Path) -> None:
    """P, replicas: G's stand-in workers behind splitserve with `--processes 1` and with
    `--processes 2`, nothing pinned (the replicas need both CPUs), wrk on every CPU."""
    with Processes(workdir) as processes:
        registry = standin_registry(workdir, tool_path("nginx"))
        fleets = [
            start_splitserve(
                processes,
                workdir / f"p{count}",
                image=STANDIN_IMAGE,
                model_url=None,
                images_file=registry,
                replicas=count,
            )
            for count in (1, 2)
        ]
        gateways = [fleet.gateway for fleet in fleets]
        warm_up(gateways, None)
        # The gateways' CPU only: each has workers of its own, which G already measures.
        closed_loop(report, "P", gateways, {}, plan, wrk_cpus=None, threads=2)
        for gateway in gateways:
            report.weight_changes[gateway.name] = weight_change_times(gateway.port)
            print(f"P {gateway.name} weight changes: {report.weight_changes[gateway.name]}")


#: How many weight changes P times per gateway.
WEIGHT_CHANGES = 60


def weight_change_times(port: int) -> dict[str, float]:
    """Milliseconds each UpdateEndpointWeightsAndCapacities takes to answer, p50 and p99 over
    WEIGHT_CHANGES alternating changes. Among replicas it answers once every replica routes with
    the new weights, so this bounds the time until all of them do."""
    import boto3
    from botocore.config import Config

    sagemaker = boto3.client(
        "sagemaker",
        endpoint_url=f"http://127.0.0.1:{port}",
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        config=Config(retries={"mode": "standard", "max_attempts": 1}),
    )
    variant = next(iter(WEIGHTS))
    times = []
    for change in range(WEIGHT_CHANGES):
        started = time.perf_counter()
        sagemaker.update_endpoint_weights_and_capacities(
            EndpointName=ENDPOINT,
            DesiredWeightsAndCapacities=[
                {"VariantName": variant, "DesiredWeight": float(1 + change % 2)}
            ],
        )
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {
        "p50_ms": statistics.median(times),
        "p99_ms": times[min(len(times) - 1, int(len(times) * 0.99))],
        "changes": len(times),
    }


def scenario_x(report: Report, plan: Plan, workdir: Path, *, batching: bool) -> None:
    """X (batching off) or B (on): XGBoost workers behind every gateway, all sharing both CPUs,
    then D: the worker invoked directly, and every gateway at one connection with oha."""
    scenario = "B" if batching else "X"
    model_url = write_model(workdir / "models")
    with Processes(workdir) as processes:
        fleet = start_splitserve(
            processes,
            workdir,
            image=XGBOOST_IMAGE,
            model_url=model_url,
            max_batch_rows=None if batching else 1,
            options=plan.serve_options,
        )
        others = [name for name in plan.gateways if name != SPLITSERVE]
        gateways = [fleet.gateway] if SPLITSERVE in plan.gateways else []
        gateways += start_others(processes, workdir, fleet.upstreams(), others, None)
        workers = fleet.worker_roles()
        warm_up(gateways, None)
        closed_loop(report, scenario, gateways, workers, plan, wrk_cpus=None, threads=2)
        if not batching:
            targeted = [g for g in gateways if g.name != "plain"]
            closed_loop(
                report, scenario, targeted, workers, plan, wrk_cpus=None, threads=2, targeted=True
            )
        direct(report, scenario, fleet, gateways, plan)
        open_loop(report, scenario, gateways, workers, plan)


def direct(
    report: Report, scenario: str, fleet: Fleet, gateways: list[Gateway], plan: Plan
) -> None:
    """D: oha straight to Variant1's worker at every connection count, and oha at one connection
    through every gateway and to the worker (the latency a gateway adds), interleaved."""
    worker = fleet.workers["Variant1"].upstream
    assert worker.unix_path is not None
    floor = Target("http://localhost/invocations", unix_socket=worker.unix_path)
    workers = fleet.worker_roles()
    for repeat in range(plan.repeats):
        for connections in plan.connections:
            result = run_oha(
                floor, connections=connections, seconds=plan.seconds, body=BODY, roles=workers
            )
            report.runs.append(
                Run(scenario, "direct", connections, repeat, "oha", False, None, result)
            )
            print(_line(scenario, "direct (oha)", connections, False, result), flush=True)
        for gateway in gateways:
            result = run_oha(
                gateway.target,
                connections=1,
                seconds=plan.seconds,
                body=BODY,
                roles={"gateway": gateway.pids, **workers},
            )
            report.runs.append(Run(scenario, gateway.name, 1, repeat, "oha", False, None, result))
            print(_line(scenario, f"{gateway.name} (oha)", 1, False, result), flush=True)


def open_loop(
    report: Report,
    scenario: str,
    gateways: list[Gateway],
    workers: dict[str, list[int]],
    plan: Plan,
) -> None:
    """oha at a fixed rate through every gateway: OPEN_LOOP_SHARE of the slowest one's maximum."""
    most = max(plan.connections)
    maxima = [
        statistics.median(
            run.result.requests_per_second
            for run in report.runs
            if run.scenario == scenario
            and run.gateway == gateway.name
            and run.tool == "wrk"
            and run.connections == most
            and not run.targeted
        )
        for gateway in gateways
    ]
    rate = OPEN_LOOP_SHARE * min(maxima)
    for repeat in range(plan.repeats):
        for gateway in gateways:
            before = latency_buckets(gateway.port) if gateway.name == SPLITSERVE else None
            result = run_oha(
                gateway.target,
                connections=most,
                seconds=plan.seconds,
                body=BODY,
                roles={"gateway": gateway.pids, **workers},
                rate=rate,
            )
            report.runs.append(
                Run(scenario, gateway.name, most, repeat, "oha", False, rate, result)
            )
            print(_line(scenario, f"{gateway.name} @{rate:.0f}/s", most, False, result), flush=True)
            if before is not None:
                split = latency_split(before, latency_buckets(gateway.port))
                report.latency_split.append({"scenario": scenario, "repeat": repeat} | split)
                print(f"{scenario} splitserve @{rate:.0f}/s, its own histograms: {split}")


_BUCKET = re.compile(
    r'^splitserve_(model|overhead)_latency_seconds_bucket\{[^}]*endpoint_name="bench"[^}]*'
    r'le="([^"]+)"[^}]*\} (\S+)$'
)


def latency_buckets(port: int) -> dict[str, dict[float, float]]:
    """splitserve's model and overhead latency histograms of the bench endpoint: cumulative count
    per upper bound, summed over its variants."""
    buckets: dict[str, dict[float, float]] = {"model": {}, "overhead": {}}
    for line in metrics_text(port).splitlines():
        if match := _BUCKET.match(line):
            counts = buckets[match[1]]
            bound = float(match[2])
            counts[bound] = counts.get(bound, 0.0) + float(match[3])
    return buckets


def latency_split(
    before: dict[str, dict[float, float]], after: dict[str, dict[float, float]]
) -> dict[str, dict[str, float]]:
    """p50, p90 and p99 in milliseconds of the model and overhead latencies recorded between two
    readings, interpolated inside the bucket as Prometheus' histogram_quantile does."""
    split: dict[str, dict[str, float]] = {}
    for part, counts in after.items():
        bounds = sorted(counts)
        cumulative = [counts[b] - before[part].get(b, 0.0) for b in bounds]
        if not cumulative or cumulative[-1] <= 0:
            continue
        figures: dict[str, float] = {}
        for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
            rank = q * cumulative[-1]
            index = next(i for i, count in enumerate(cumulative) if count >= rank)
            upper = bounds[index]
            lower = bounds[index - 1] if index else 0.0
            below = cumulative[index - 1] if index else 0.0
            if upper == float("inf"):
                value = lower  # past the last finite bound: the bound is all that is known
            else:
                inside = cumulative[index] - below
                value = lower + (upper - lower) * ((rank - below) / inside if inside else 1.0)
            figures[name] = round(value * 1e3, 3)
        split[part] = figures
    return split


def metrics_text(port: int) -> str:
    """splitserve's Prometheus exposition."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def invocations(port: int) -> float:
    """splitserve_invocations_total of the bench endpoint, summed over its variants."""
    text = metrics_text(port)
    pattern = re.compile(r'^splitserve_invocations_total\{[^}]*endpoint_name="bench"[^}]*\} (\S+)$')
    return sum(float(m[1]) for line in text.splitlines() if (m := pattern.match(line)))


def memory_growth(fleet: Fleet, marks: tuple[int, int], workdir: Path) -> dict[str, Any]:
    """R: the gateway's RSS once it has served marks[0] and then marks[1] requests (wrk at 64
    connections on CPU 1, as in G); wrk's run is bounded at 1 ms per request."""
    gateway = fleet.gateway
    script = workdir / "memory.lua"
    script.write_text(
        f'wrk.method = "POST"\nwrk.body = "{BODY.decode().strip()}\\n"\n'
        'wrk.headers["Content-Type"] = "text/csv"\n'
    )
    argv = [
        tool_path("wrk"),
        "-t",
        "1",
        "-c",
        "64",
        "-d",
        f"{marks[1] // 1000}s",
        "-s",
        str(script),
        gateway.target.url,
    ]
    started = invocations(gateway.port)
    wrk = subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        preexec_fn=lambda: os.sched_setaffinity(0, OTHER_CPU),  # noqa: PLW1509 - async-signal-safe
    )
    rss = []
    try:
        for mark in marks:
            while invocations(gateway.port) - started < mark:
                if wrk.poll() is not None:
                    raise RuntimeError("the memory run ended before its request count")
                time.sleep(0.5)
            rss.append(rss_bytes(gateway.pids))
    finally:
        wrk.kill()
        wrk.wait()
    growth = rss[1] / rss[0] - 1
    print(
        f"R memory: {rss[0] / 2**20:.1f} MiB after {marks[0]}, {rss[1] / 2**20:.1f} MiB after "
        f"{marks[1]} requests ({100 * growth:+.2f} %)",
        flush=True,
    )
    return {"requests": list(marks), "rss_bytes": rss, "growth": growth}


# --- soak -----------------------------------------------------------------------------------------


@dataclass
class SoakResult:
    """What a soak run measured and whether it met its criteria."""

    seconds: float
    maximum_rps: float
    rate: float
    result: LoadResult
    rss_samples: dict[str, list[tuple[float, int]]]
    window_seconds: float
    floor: LoadResult

    def floor_meets_latency(self) -> bool:
        """Whether this machine itself can meet the latency criterion at the soak's rate: the
        stand-in server (a do-nothing model server, benches/standin_server.py) under the same
        load met p99 <= 3 x p50."""
        return self.floor.latency_us["p99"] <= 3 * self.floor.latency_us["p50"]

    def growth(self) -> dict[str, float]:
        """RSS growth per process: mean of the last window over mean of the second window."""
        growth = {}
        for role, samples in self.rss_samples.items():
            end = samples[-1][0]
            second = [
                rss for t, rss in samples if self.window_seconds <= t < 2 * self.window_seconds
            ]
            last = [rss for t, rss in samples if t >= end - self.window_seconds]
            growth[role] = statistics.mean(last) / statistics.mean(second) - 1
        return growth

    def criteria(self) -> list[tuple[str, bool, str]]:
        """(criterion, met, figures) for each soak criterion."""
        latency = self.result.latency_us
        checks = [
            (
                "no errors",
                self.result.errors == 0,
                f"{self.result.errors} errors in {self.result.requests} requests"
                + (f" ({self.result.error_kinds})" if self.result.errors else ""),
            ),
            (
                "p99 <= 3 x p50",
                latency["p99"] <= 3 * latency["p50"],
                f"p50 {latency['p50'] / 1e3:.2f} ms, p99 {latency['p99'] / 1e3:.2f} ms "
                f"(this machine's floor, the stand-in server under the same load: "
                f"p50 {self.floor.latency_us['p50'] / 1e3:.2f} ms, "
                f"p99 {self.floor.latency_us['p99'] / 1e3:.2f} ms)",
            ),
        ]
        for role, growth in self.growth().items():
            checks.append((f"{role} RSS flat (< 5 %)", growth < 0.05, f"{100 * growth:+.2f} %"))
        return checks


def soak(seconds: float, workdir: Path, *, measure_seconds: float = 10.0) -> SoakResult:
    """Hold splitserve (XGBoost workers, batching on) at SOAK_LOAD_SHARE of its maximum.

    The maximum is wrk's closed-loop rate at 64 connections over `measure_seconds`. The soak is
    wrk paced to that share (a fixed schedule, see `run_wrk`) over SOAK_CONNECTIONS connections,
    so that a free one is always there, for `seconds`, while the RSS of the gateway and of each
    worker is sampled every second. wrk rather than oha: `make test` runs a 30-second soak, and
    oha would have to be compiled first.

    Then the floor: the same load (rate, connections, wrk threads) for up to FLOOR_SECONDS against
    the stand-in server, which answers at once, so the latency spread this machine and wrk add on
    their own is measured beside the gateway's.
    """
    model_url = write_model(workdir / "models")
    with Processes(workdir) as processes:
        fleet = start_splitserve(processes, workdir, image=XGBOOST_IMAGE, model_url=model_url)
        workers = fleet.worker_roles()
        roles = {"gateway": fleet.gateway.pids, **workers}
        warm_up([fleet.gateway], None)
        maximum = run_wrk(
            fleet.gateway.target,
            connections=64,
            seconds=measure_seconds,
            body=BODY,
            roles=roles,
            threads=2,
        ).requests_per_second
        rate = SOAK_LOAD_SHARE * maximum
        samples: dict[str, list[tuple[float, int]]] = {role: [] for role in roles}
        finished = threading.Event()

        def sample() -> None:
            started = time.monotonic()
            while not finished.is_set():
                now = time.monotonic() - started
                for role, pids in roles.items():
                    samples[role].append((now, rss_bytes(pids)))
                finished.wait(1.0)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            result = run_wrk(
                fleet.gateway.target,
                connections=SOAK_CONNECTIONS,
                seconds=seconds,
                body=BODY,
                roles=roles,
                threads=2,
                rate=rate,
            )
        finally:
            finished.set()
            sampler.join()
        floor = measure_floor(processes, rate, min(seconds, FLOOR_SECONDS))
    return SoakResult(seconds, maximum, rate, result, samples, min(60.0, seconds / 3), floor)


def measure_floor(processes: Processes, rate: float, seconds: float) -> LoadResult:
    """The soak's load against the stand-in server: the latency of the machine and wrk alone."""
    port = free_port()
    standin = processes.start(
        "standin-floor",
        [sys.executable, "-m", "benches.standin_server"],
        environment={"SAGEMAKER_BIND_TO_PORT": str(port)},
    )
    target = Target(f"http://127.0.0.1:{port}/invocations")
    wait_until(functools.partial(post, port, "/invocations"), "the stand-in server")
    return run_wrk(
        target,
        connections=SOAK_CONNECTIONS,
        seconds=seconds,
        body=BODY,
        roles={"stand-in": [standin.pid]},
        threads=2,
        rate=rate,
    )


# --- reporting ------------------------------------------------------------------------------------


def _line(scenario: str, name: str, connections: int, targeted: bool, result: LoadResult) -> str:
    latency = result.latency_us
    cpu = ", ".join(f"{role} {us:.0f}" for role, us in result.cpu_us_per_request.items())
    return (
        f"{scenario} {name:<22} c={connections:<3}{' targeted' if targeted else ''}: "
        f"{result.requests_per_second:9.0f} req/s  p50 {latency['p50']:7.0f} us  "
        f"p99 {latency['p99']:7.0f} us  errors {result.errors}"
        f"{f' {result.error_kinds}' if result.errors else ''}  CPU us/req: {cpu}"
    )


def summarise(runs: list[Run]) -> list[dict[str, Any]]:
    """The median of every figure over the repeats of each (scenario, gateway, connections, tool,
    targeted, rate) group."""
    groups: dict[tuple[Any, ...], list[Run]] = {}
    for run in runs:
        key = (run.scenario, run.gateway, run.connections, run.tool, run.targeted, run.rate)
        groups.setdefault(key, []).append(run)
    rows = []
    for (scenario, gateway, connections, tool, targeted, rate), group in groups.items():
        results = [run.result for run in group]
        roles = {role for result in results for role in result.cpu_us_per_request}
        rows.append(
            {
                "scenario": scenario,
                "gateway": gateway,
                "connections": connections,
                "tool": tool,
                "targeted": targeted,
                "rate": rate,
                "repeats": len(group),
                "requests_per_second": statistics.median(r.requests_per_second for r in results),
                "errors": sum(r.errors for r in results),
                "latency_us": {
                    p: statistics.median(r.latency_us[p] for r in results)
                    for p in results[0].latency_us
                },
                "cpu_us_per_request": {
                    role: statistics.median(r.cpu_us_per_request.get(role, 0.0) for r in results)
                    for role in sorted(roles)
                },
            }
        )
    return rows


def _find(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    for row in rows:
        if all(row.get(key) == value for key, value in match.items()):
            return row
    return None


def targets(rows: list[dict[str, Any]], memory: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with the figure measured, the bound and whether it was met."""
    checks: list[dict[str, Any]] = []

    def check(name: str, value: float | None, bound: float, at_most: bool, unit: str) -> None:
        if value is None:
            return
        met = value <= bound if at_most else value >= bound
        checks.append(
            {
                "target": name,
                "value": round(value, 3),
                "bound": bound,
                "at_most": at_most,
                "unit": unit,
                "met": met,
            }
        )

    def rps(scenario: str, gateway: str, connections: int, targeted: bool = False) -> float | None:
        row = _find(
            rows,
            scenario=scenario,
            gateway=gateway,
            connections=connections,
            tool="wrk",
            targeted=targeted,
        )
        return None if row is None else float(row["requests_per_second"])

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None or b == 0 else a / b

    def cpu(scenario: str, gateway: str, connections: int) -> float | None:
        row = _find(rows, scenario=scenario, gateway=gateway, connections=connections, tool="wrk")
        return None if row is None else float(row["cpu_us_per_request"]["gateway"])

    for connections in (16, 64):
        check(
            f"G c={connections}: splitserve CPU per request / aiohttp-bare's",
            ratio(cpu("G", SPLITSERVE, connections), cpu("G", BARE, connections)),
            1.35,
            True,
            "x",
        )
        check(
            f"G c={connections}: splitserve / plain aiohttp requests/s",
            ratio(rps("G", SPLITSERVE, connections), rps("G", "plain", connections)),
            2.3,
            False,
            "x",
        )
        for targeted in (False, True):
            label = " targeted" if targeted else ""
            check(
                f"X c={connections}{label}: splitserve / HAProxy requests/s",
                ratio(
                    rps("X", SPLITSERVE, connections, targeted),
                    rps("X", "haproxy", connections, targeted),
                ),
                0.95,
                False,
                "x",
            )
    floor = _find(rows, scenario="X", gateway="direct", connections=1, tool="oha")
    added: dict[str, float] = {}
    for name in (SPLITSERVE, "nginx", "haproxy"):
        through = _find(rows, scenario="X", gateway=name, connections=1, tool="oha", rate=None)
        if floor is not None and through is not None:
            added[name] = (through["latency_us"]["p50"] - floor["latency_us"]["p50"]) / 1000
    if SPLITSERVE in added and "haproxy" in added:
        check(
            "X c=1: p50 splitserve adds over the worker alone, less what HAProxy adds",
            added[SPLITSERVE] - added["haproxy"],
            0.05,
            True,
            "ms",
        )
    open_p99 = {
        row["gateway"]: float(row["latency_us"]["p99"])
        for row in rows
        if row["scenario"] == "X" and row["tool"] == "oha" and row["rate"]
    }
    check(
        "X open loop: splitserve p99 / HAProxy's",
        ratio(open_p99.get(SPLITSERVE), open_p99.get("haproxy")),
        1.5,
        True,
        "x",
    )
    check(
        "B c=64: splitserve / HAProxy requests/s",
        ratio(rps("B", SPLITSERVE, 64), rps("B", "haproxy", 64)),
        0.75,
        False,
        "x",
    )
    check(
        "B c=64: splitserve batching on / off requests/s",
        ratio(rps("B", SPLITSERVE, 64), rps("X", SPLITSERVE, 64)),
        2.0,
        False,
        "x",
    )
    if "growth" in memory:
        check(
            f"R: gateway RSS growth, {memory['requests'][0]} -> {memory['requests'][1]} requests",
            100 * abs(memory["growth"]),
            5.0,
            True,
            "%",
        )
    return checks


def markdown(rows: list[dict[str, Any]], checks: list[dict[str, Any]]) -> str:
    """The summary rows and the targets as Markdown tables."""
    out = io.StringIO()
    out.write(
        "| scenario | gateway | conns | tool | requests/s | p50 ms | p90 ms | p99 ms | p99.9 ms "
        "| errors | CPU us/request |\n|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|\n"
    )
    order = {name: index for index, name in enumerate((*GATEWAYS, BARE, "direct"))}
    for row in sorted(
        rows,
        key=lambda r: (
            r["scenario"],
            r["tool"] != "wrk",
            r["rate"] or 0,
            r["targeted"],
            r["connections"],
            order.get(r["gateway"], 9),
        ),
    ):
        latency = row["latency_us"]
        tool = row["tool"] + (f" @{row['rate']:.0f}/s" if row["rate"] else "")
        name = row["gateway"] + (" (targeted)" if row["targeted"] else "")
        cpu = ", ".join(f"{role} {us:.0f}" for role, us in row["cpu_us_per_request"].items())
        out.write(
            f"| {row['scenario']} | {name} | {row['connections']} | {tool} "
            f"| {row['requests_per_second']:.0f} | {latency['p50'] / 1e3:.2f} "
            f"| {latency['p90'] / 1e3:.2f} | {latency['p99'] / 1e3:.2f} "
            f"| {latency['p99.9'] / 1e3:.2f} | {row['errors']} | {cpu} |\n"
        )
    out.write("\n| target | measured | bound | met |\n|---|---:|---:|---|\n")
    for check in checks:
        bound = ("<= " if check["at_most"] else ">= ") + f"{check['bound']:g} {check['unit']}"
        out.write(
            f"| {check['target']} | {check['value']:.2f} {check['unit']} | {bound} "
            f"| {'yes' if check['met'] else 'NO'} |\n"
        )
    return out.getvalue()


def describe_machine() -> tuple[dict[str, Any], dict[str, str]]:
    """The machine and the versions of everything measured."""
    import aiohttp
    import xgboost

    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    machine = {
        "cpu": model,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "load_average_at_start": os.getloadavg(),
    }
    versions = {
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "uvloop": importlib.metadata.version("uvloop"),
        "xgboost": xgboost.__version__,
        "wrk": version_of([tool_path("wrk"), "-v"]),
        "oha": version_of([tool_path("oha"), "--version"]),
        "nginx": version_of([tool_path("nginx"), "-v"]),
        "haproxy": version_of([tool_path("haproxy"), "-v"]),
    }
    return machine, versions


# --- command line ---------------------------------------------------------------------------------


def bench(args: argparse.Namespace) -> int:
    """The `bench` command: run the scenarios, write the JSON and print the Markdown."""
    if args.quick:
        plan = Plan((1, 64), 1, 3.0, tuple(args.gateways.split(",")), (10_000, 100_000))
    else:
        connections = tuple(int(c) for c in args.connections.split(","))
        plan = Plan(
            connections,
            args.repeats,
            args.seconds,
            tuple(args.gateways.split(",")),
            (100_000, 1_000_000),
        )
    plan = replace(plan, serve_options=tuple(args.serve_option))
    scenarios = args.scenarios.split(",")
    if "R" not in scenarios:
        plan = replace(plan, memory_requests=(0, 0))
    machine, versions = describe_machine()
    report = Report(
        " ".join(["python -m benches.load", *sys.argv[1:]]),
        machine,
        versions,
        asdict(plan) | {"scenarios": scenarios},
    )
    stop_on_signals()
    try:
        with tempfile.TemporaryDirectory(prefix="splitserve-load-") as directory:
            workdir = Path(directory)
            for scenario in scenarios:
                scenario_dir = workdir / scenario
                scenario_dir.mkdir()
                if scenario == "G":
                    scenario_g(report, plan, scenario_dir)
                elif scenario in ("X", "B"):
                    scenario_x(report, plan, scenario_dir, batching=scenario == "B")
                elif scenario == "P":
                    scenario_p(report, plan, scenario_dir)
        report.complete = True
    finally:
        # Also after a failure or a signal: what was measured is written, and said to be partial.
        write_results(report, args.output)
    return 0


def stop_on_signals() -> None:
    """SIGTERM and SIGHUP end the run as Ctrl-C does: everything started is stopped, and what was
    measured so far is written."""

    def stop(signal_number: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signal_number}")

    for signal_number in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signal_number, stop)


def write_results(report: Report, output: Path) -> None:
    """The JSON file (every run, the medians, the targets) and the Markdown tables next to it."""
    rows = summarise(report.runs)
    checks = targets(rows, report.memory)
    table = markdown(rows, checks)
    if report.latency_split:
        table += (
            "\n| open loop, splitserve's own histograms | model p50 / p90 / p99 ms "
            "| overhead p50 / p90 / p99 ms |\n|---|---|---|\n"
        )
        for split in report.latency_split:
            cells = [
                " / ".join(f"{split[part][q]:.2f}" for q in ("p50", "p90", "p99"))
                if part in split
                else "-"
                for part in ("model", "overhead")
            ]
            table += f"| {split['scenario']} repeat {split['repeat']} | {cells[0]} | {cells[1]} |\n"
    if not report.complete:
        table = "**Partial run: stopped before every scenario had run.**\n\n" + table
    document = asdict(report) | {"summary": rows, "targets": checks}
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(document, indent=1, default=float))
    output.with_suffix(".md").write_text(table)
    print(table)
    print(f"results: {output} and {output.with_suffix('.md')}", flush=True)


def soak_command(args: argparse.Namespace) -> int:
    """The `soak` command: exit status 1 when a criterion is missed."""
    with tempfile.TemporaryDirectory(prefix="splitserve-soak-") as directory:
        outcome = soak(args.seconds, Path(directory))
    latency = outcome.result.latency_us
    print(
        f"soak: {outcome.seconds:.0f} s at {outcome.rate:.0f} req/s "
        f"({100 * SOAK_LOAD_SHARE:.0f} % of {outcome.maximum_rps:.0f}), "
        f"{outcome.result.requests} requests, p50 {latency['p50'] / 1e3:.2f} ms, "
        f"p90 {latency['p90'] / 1e3:.2f} ms, p99 {latency['p99'] / 1e3:.2f} ms, "
        f"p99.9 {latency['p99.9'] / 1e3:.2f} ms"
    )
    failed = False
    for name, met, figures in outcome.criteria():
        print(f"  {'ok  ' if met else 'FAIL'} {name}: {figures}")
        failed |= not met
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(asdict(outcome) | {"growth": outcome.growth()}, indent=1))
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run `bench` or `soak`."""
    parser = argparse.ArgumentParser(
        prog="python -m benches.load",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("bench", help="the scenarios G, X, B (with D) and R")
    run.add_argument("--scenarios", default="G,X,B,R")
    run.add_argument("--gateways", default=",".join(GATEWAYS))
    run.add_argument("--connections", default="1,16,64")
    run.add_argument("--repeats", type=int, default=2)
    run.add_argument("--seconds", type=float, default=10.0)
    run.add_argument(
        "--quick",
        action="store_true",
        help="CI size: 3 s runs, 1 repeat, 1 and 64 connections, memory at 10k/100k",
    )
    run.add_argument(
        "--serve-option",
        action="append",
        default=[],
        metavar="OPTION",
        help="pass OPTION to splitserve serve in X and B; repeat it for each word "
        "(--serve-option=--pipeline-depth --serve-option=1: pipelining off)",
    )
    run.add_argument("--output", type=Path, default=Path(".benchmarks/load.json"))
    run.set_defaults(handler=bench)
    hold = commands.add_parser("soak", help="80 %% of the maximum for a fixed time")
    hold.add_argument("--seconds", type=float, default=600.0)
    hold.add_argument("--output", type=Path, default=Path(".benchmarks/soak.json"))
    hold.set_defaults(handler=soak_command)
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
