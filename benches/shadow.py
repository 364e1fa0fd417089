"""Production's latency with and without a 100 % shadow variant that sleeps 1 s per request
(docs/benchmarks.md, "Shadow variants").

Run from the repository root (needs wrk):

    .venv/bin/python -m benches.shadow [--seconds 10] [--repeats 3]

It starts one gateway with scenario X's settings (`--max-batch-rows 1`, benches/load.py's
100-tree model, one CSV row a request) and the fault server of tests/workers/fault_server.py as a
bring-your-own image, then two endpoints of one XGBoost instance each: `plain`, and `shadowed`,
the same production variant plus a shadow variant (weight 1, so every request is copied) whose
server sleeps 1 s before each answer. wrk drives each endpoint in turn (the order alternating
between repeats) at 1 and 16 connections;
the table gives requests/s, p50 and p99 for both, and the shadow's copies sent and dropped (its
queue is full almost at once: one copy a second per sender). Everything it started is stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benches.load import BODY, INSTANCE_TYPE, XGBOOST_IMAGE, free_port, write_model

FAULT_SERVER = Path(__file__).resolve().parents[1] / "tests" / "workers" / "fault_server.py"
SLEEPY_IMAGE = "local/sleepy-shadow:1"
CONNECTIONS = (1, 16)


@contextmanager
def gateway(workdir: Path, model_store: Path) -> Iterator[str]:
    """`splitserve serve` on a free port with X's settings and the sleepy image; yields its URL."""
    images = workdir / "images.toml"
    images.write_text(f'[images."{SLEEPY_IMAGE}"]\ncommand = ["{{python}}", "{FAULT_SERVER}"]\n')
    port = free_port()
    argv = [
        sys.executable, "-m", "splitserve.cli", "serve", "--port", str(port),
        "--state-dir", str(workdir / "state"), "--model-store", str(model_store),
        "--max-batch-rows", "1", "--log-level", "WARNING", "--images", str(images),
    ]  # fmt: skip
    if os.geteuid() == 0:
        argv += ["--worker-user", "root"]
    log = (workdir / "gateway.log").open("wb")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/ping", timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the gateway did not start; see {log.name}") from None
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def call(url: str, operation: str, body: dict[str, Any]) -> dict[str, Any]:
    """One SageMaker control-plane call (the gateway checks no signature by default)."""
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": f"SageMaker.{operation}",
        },
    )
    with urllib.request.urlopen(request, timeout=120) as answer:
        document: dict[str, Any] = json.loads(answer.read() or b"{}")
        return document


def variant(name: str, model: str) -> dict[str, Any]:
    return {
        "VariantName": name,
        "ModelName": model,
        "InitialInstanceCount": 1,
        "InstanceType": INSTANCE_TYPE,
        "InitialVariantWeight": 1.0,
    }


def create_endpoints(url: str, model_url: str) -> None:
    """`plain` and `shadowed` (the same production variant plus the sleeping shadow)."""
    role = "arn:aws:iam::123456789012:role/Bench"
    call(
        url,
        "CreateModel",
        {
            "ModelName": "xgb",
            "ExecutionRoleArn": role,
            "PrimaryContainer": {"Image": XGBOOST_IMAGE, "ModelDataUrl": model_url},
        },
    )
    call(
        url,
        "CreateModel",
        {
            "ModelName": "sleepy",
            "ExecutionRoleArn": role,
            "PrimaryContainer": {
                "Image": SLEEPY_IMAGE,
                "Environment": {"FAULT_INVOCATION_DELAY_SECONDS": "1"},
            },
        },
    )
    call(
        url,
        "CreateEndpointConfig",
        {"EndpointConfigName": "plain", "ProductionVariants": [variant("Prod", "xgb")]},
    )
    call(
        url,
        "CreateEndpointConfig",
        {
            "EndpointConfigName": "shadowed",
            "ProductionVariants": [variant("Prod", "xgb")],
            "ShadowProductionVariants": [variant("Sleepy", "sleepy")],
        },
    )
    for name in ("plain", "shadowed"):
        call(url, "CreateEndpoint", {"EndpointName": name, "EndpointConfigName": name})
        while call(url, "DescribeEndpoint", {"EndpointName": name})["EndpointStatus"] != (
            "InService"
        ):
            time.sleep(0.1)


def wrk(target: str, connections: int, seconds: int, workdir: Path) -> tuple[float, float, float]:
    """wrk POSTing X's body to `target`: (requests/s, p50 ms, p99 ms); raises on any error."""
    script = workdir / "post.lua"
    body = BODY.decode().replace("\n", "\\n")
    script.write_text(
        f'wrk.method = "POST"\nwrk.body = "{body}"\nwrk.headers["Content-Type"] = "text/csv"\n'
    )
    output = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), target],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    if "Non-2xx" in output or "Socket errors" in output:
        raise RuntimeError(f"wrk saw errors:\n{output}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]

    def percentile(label: str) -> float:
        found = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)", output)
        assert found is not None, output
        return float(found.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[found.group(2)]

    return rate, percentile("50"), percentile("99")


def shadow_counts(url: str) -> tuple[float, float]:
    """The shadow's copies sent (its Invocations) and dropped, from /metrics."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    figures = {}
    for name in ("splitserve_invocations_total", "splitserve_shadow_dropped_total"):
        found = re.search(
            rf'^{name}{{endpoint_name="shadowed",variant_name="Sleepy"}} (\S+)$', text, re.M
        )
        figures[name] = float(found.group(1)) if found else 0.0
    return figures["splitserve_invocations_total"], figures["splitserve_shadow_dropped_total"]


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    results: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="shadow-bench-") as directory:
        workdir = Path(directory)
        model_store = workdir / "models"
        model_url = write_model(model_store)
        with gateway(workdir, model_store) as url:
            create_endpoints(url, model_url)
            for repeat in range(args.repeats):
                # The order alternates, so that neither endpoint always runs first.
                order = ("plain", "shadowed") if repeat % 2 == 0 else ("shadowed", "plain")
                for connections in CONNECTIONS:
                    for name in order:
                        target = f"{url}/endpoints/{name}/invocations"
                        results.setdefault((name, connections), []).append(
                            wrk(target, connections, args.seconds, workdir)
                        )
            sent, dropped = shadow_counts(url)
    print("| endpoint | connections | req/s | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|---:|")
    for (name, connections), runs in sorted(results.items(), key=lambda item: item[0][::-1]):
        rate, p50, p99 = (statistics.median(run[index] for run in runs) for index in range(3))
        print(f"| {name} | {connections} | {rate:,.0f} | {p50:.2f} | {p99:.2f} |")
    print(f"\nshadow copies sent {sent:,.0f}, dropped {dropped:,.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
