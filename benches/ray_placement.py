"""Local vs Ray-placed instances: scenario X's requests/s and added p50 at c=1, and the time from
CreateEndpoint to InService for 2 variants x 2 instances (docs/benchmarks.md, "Ray placement").

Run from the repository root (needs the `ray` extra and wrk):

    .venv/bin/python -m benches.ray_placement [--seconds 10] [--repeats 3]

It starts a Ray cluster on this machine (`ray.cluster_utils.Cluster`: a head running nothing and
two nodes of 4 CPUs and 32 GiB, logical), then two gateways: `--placement local --worker-tcp` and
`--placement ray`, both with X's settings (`--max-batch-rows 1`, benches/load.py's 100-tree
model, one CSV row a request). Both gateways forward over TCP to the same kind of worker process
on the same machine, so any difference is the placement's. For each placement, interleaved:

- CreateEndpoint -> InService, measured by polling DescribeEndpoint every 50 ms, for an endpoint
  of 2 variants x 2 ml.m5.large instances (deleted again afterwards);
- X's endpoint (70/30, one instance a variant) under wrk at one connection: requests/s and p50;
  the added p50 is that minus wrk's p50 straight at the same placement's Variant1 worker.

Everything it started is stopped at the end; results print as a Markdown table.
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
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benches.load import BODY, INSTANCE_TYPE, WEIGHTS, XGBOOST_IMAGE, free_port, write_model

NAMESPACE = "splitserve-bench"


@contextmanager
def ray_cluster() -> Iterator[str]:
    """A head (0 CPUs) and two 4-CPU nodes; yields the cluster's address."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False}
    )
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=4, memory=32 * 1024**3)
        cluster.wait_for_nodes()
        yield str(cluster.address)
    finally:
        cluster.shutdown()  # type: ignore[no-untyped-call]


@contextmanager
def gateway(workdir: Path, model_store: Path, *extra: str) -> Iterator[str]:
    """`splitserve serve` on a free port with X's settings; yields its URL."""
    port = free_port()
    argv = [
        sys.executable, "-m", "splitserve.cli", "serve", "--port", str(port),
        "--state-dir", str(workdir / f"state-{port}"), "--model-store", str(model_store),
        "--max-batch-rows", "1", "--log-level", "WARNING", *extra,
    ]  # fmt: skip
    if os.geteuid() == 0:
        argv += ["--worker-user", "root"]
    log = (workdir / f"gateway-{port}.log").open("wb")
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
    with urllib.request.urlopen(request, timeout=30) as answer:
        document: dict[str, Any] = json.loads(answer.read() or b"{}")
        return document


def create_endpoint(url: str, name: str, model_url: str, count: int) -> float:
    """Models, a 70/30 configuration of `count` instances a variant, the endpoint; the seconds
    from CreateEndpoint until DescribeEndpoint says InService."""
    for variant in WEIGHTS:
        call(
            url,
            "CreateModel",
            {
                "ModelName": f"{name}-{variant}",
                "ExecutionRoleArn": "arn:aws:iam::123456789012:role/Bench",
                "PrimaryContainer": {"Image": XGBOOST_IMAGE, "ModelDataUrl": model_url},
            },
        )
    call(
        url,
        "CreateEndpointConfig",
        {
            "EndpointConfigName": name,
            "ProductionVariants": [
                {
                    "VariantName": variant,
                    "ModelName": f"{name}-{variant}",
                    "InitialInstanceCount": count,
                    "InstanceType": INSTANCE_TYPE,
                    "InitialVariantWeight": weight,
                }
                for variant, weight in WEIGHTS.items()
            ],
        },
    )
    started = time.perf_counter()
    call(url, "CreateEndpoint", {"EndpointName": name, "EndpointConfigName": name})
    while True:
        status = call(url, "DescribeEndpoint", {"EndpointName": name})["EndpointStatus"]
        if status == "InService":
            return time.perf_counter() - started
        if status == "Failed":
            raise RuntimeError(f"endpoint {name} failed")
        time.sleep(0.05)


def delete_endpoint(url: str, name: str) -> None:
    """DeleteEndpoint, then wait until it is gone (its instances stopped)."""
    call(url, "DeleteEndpoint", {"EndpointName": name})
    while True:
        try:
            call(url, "DescribeEndpoint", {"EndpointName": name})
        except urllib.error.HTTPError:
            return
        time.sleep(0.1)


def local_worker(model_dir_label: str) -> str:
    """host:port of the local gateway's worker whose model directory has `model_dir_label` in
    its name (the local fleet names it after endpoint, variant and generation)."""
    import psutil

    for process in psutil.process_iter(["cmdline"]):
        argv = process.info["cmdline"] or []
        if "--port" in argv and any(model_dir_label in part for part in argv):
            return f"{argv[argv.index('--host') + 1]}:{argv[argv.index('--port') + 1]}"
    raise RuntimeError(f"no local worker of {model_dir_label}")


def wrk_c1(target: str, seconds: int, workdir: Path) -> tuple[float, float]:
    """wrk at one connection POSTing X's body to `target`: (requests/s, p50 in ms)."""
    script = workdir / "post.lua"
    body = BODY.decode().replace("\n", "\\n")
    script.write_text(
        f'wrk.method = "POST"\nwrk.body = "{body}"\nwrk.headers["Content-Type"] = "text/csv"\n'
    )
    output = subprocess.run(
        ["wrk", "-t1", "-c1", f"-d{seconds}s", "--latency", "-s", str(script), target],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    if "Non-2xx" in output:
        raise RuntimeError(f"wrk saw errors:\n{output}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", output)
    assert p50 is not None, output
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p50.group(2)]
    return rate, float(p50.group(1)) * scale


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ray-bench-") as directory:
        workdir = Path(directory)
        model_store = workdir / "models"
        model_url = write_model(model_store)
        results: dict[str, dict[str, list[float]]] = {
            "local": {"create": [], "rate": [], "p50": []},
            "ray": {"create": [], "rate": [], "p50": []},
        }
        floors: dict[str, list[float]] = {"local": [], "ray": []}
        with ray_cluster() as address:
            ray_flags = ("--placement", "ray", "--ray-address", address)
            with (
                gateway(workdir, model_store, "--worker-tcp") as local,
                gateway(workdir, model_store, *ray_flags, "--ray-namespace", NAMESPACE) as ray,
            ):
                urls = {"local": local, "ray": ray}
                for repeat in range(args.repeats):
                    for placement, url in urls.items():
                        name = f"ttis-{repeat}"
                        results[placement]["create"].append(
                            create_endpoint(url, name, model_url, 2)
                        )
                        delete_endpoint(url, name)
                for url in urls.values():
                    create_endpoint(url, "bench", model_url, 1)
                instances = call(ray, "DescribeEndpoint", {"EndpointName": "bench"})
                workers = {
                    "local": local_worker("bench.Variant1.g1"),
                    "ray": next(
                        variant["Instances"][0]["Address"]
                        for variant in instances["ProductionVariants"]
                        if variant["VariantName"] == "Variant1"
                    ),
                }
                for _ in range(args.repeats):
                    for placement, url in urls.items():
                        rate, p50 = wrk_c1(
                            f"{url}/endpoints/bench/invocations", args.seconds, workdir
                        )
                        results[placement]["rate"].append(rate)
                        results[placement]["p50"].append(p50)
                    for placement, worker in workers.items():
                        floors[placement].append(
                            wrk_c1(f"http://{worker}/invocations", args.seconds, workdir)[1]
                        )
                for url in urls.values():
                    delete_endpoint(url, "bench")
    print(
        "| placement | CreateEndpoint -> InService (2 x 2), s | X c=1 req/s | p50 ms "
        "| worker direct p50 ms | added p50 ms |"
    )
    print("|---|---|---|---|---|---|")
    for placement, figures in results.items():
        p50 = statistics.median(figures["p50"])
        direct = statistics.median(floors[placement])
        print(
            f"| {placement} | {statistics.median(figures['create']):.2f} "
            f"(min {min(figures['create']):.2f}, max {max(figures['create']):.2f}) | "
            f"{statistics.median(figures['rate']):.0f} | {p50:.3f} | {direct:.3f} | "
            f"{p50 - direct:.3f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
