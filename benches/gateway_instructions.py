"""Instructions per InvokeEndpoint in a live gateway, counted by valgrind's callgrind.

The live benchmark's times vary by +-25 % from run to run on a shared machine; the instructions the
gateway process executes per request vary by about 1 %. This starts `splitserve serve` under
callgrind with instrumentation off (so start-up runs at near native speed), deploys the live
benchmark's endpoint over two stand-in workers, sends a warm-up batch, counts the idle gateway's
instructions a second (its timers: the minute ring, flushes), then counts the instructions of
BATCH requests (32 in flight) and prints their mean with the idle rate over the batch's duration
taken out. Health checks are spaced 600 s apart so they stay out of the count, and request heads
may take as long (under callgrind a head can wait in the socket for seconds while the gateway is
busy, and the slow-head sweep would close its connection). Run from a tree's root:

    .venv/bin/python -m benches.gateway_instructions [requests [serve options...]]

(serve options, e.g. `--no-feedback-index`, are passed to `splitserve serve`.)

To compare with another tree, run it from that tree's root with PYTHONPATH=<tree>/python:<tree>
(docs/benchmarks.md, 'The live gateway before and after the architecture and hardening work').
Needs valgrind (callgrind_control); not part of `make bench`.
"""

from __future__ import annotations

import argparse
import glob
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop

from benches import bench_gateway, load
from benches.bench_gateway import STANDIN_IMAGE, _push_batch
from benches.load import BODY, INVOKE_PATH
from benches.load_tools import Processes

WARM_UP = 300
IN_FLIGHT = 32
DEFAULT_REQUESTS = 2000
# How long the idle loop's own rate is counted for.
IDLE_SECONDS = 10.0
# valgrind runs the gateway ~5x slower even with instrumentation off: give it time to come up.
START_TIMEOUT_SECONDS = 900.0


def _request_count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of requests >= 1")
    return int(text)


def main(argv: list[str]) -> int:
    """Print the gateway's mean instructions per request; 1 when valgrind is missing."""
    parser = argparse.ArgumentParser(
        prog="python -m benches.gateway_instructions",
        description="Instructions per InvokeEndpoint in a live gateway, counted by callgrind.",
    )
    parser.add_argument(
        "requests",
        nargs="?",
        type=_request_count,
        default=DEFAULT_REQUESTS,
        help=f"requests to count (default {DEFAULT_REQUESTS})",
    )
    parser.add_argument(
        "serve_options",
        nargs=argparse.REMAINDER,
        help="options for `splitserve serve`, after the request count (e.g. --no-feedback-index)",
    )
    args = parser.parse_args(argv)
    requests: int = args.requests
    serve_options = " ".join(shlex.quote(option) for option in args.serve_options)
    if shutil.which("callgrind_control") is None:
        print("valgrind's callgrind_control is not installed", file=sys.stderr)
        return 1
    original_wait = load.wait_until  # type: ignore[attr-defined]

    def patient_wait(check: object, what: str, timeout_seconds: float = 60.0) -> None:
        original_wait(check, what, START_TIMEOUT_SECONDS)  # type: ignore[arg-type]

    load.wait_until = patient_wait  # type: ignore[attr-defined]
    # Under callgrind on a busy machine a batch can take minutes: its answers are what counts.
    bench_gateway.ROUND_TIMEOUT_SECONDS = START_TIMEOUT_SECONDS
    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="splitserve-instructions-") as directory:
        workdir = Path(directory)
        wrapper = workdir / "python-under-callgrind"
        wrapper.write_text(
            "#!/bin/sh\nexec valgrind --tool=callgrind --instr-atstart=no --trace-children=no "
            f'--callgrind-out-file={workdir}/callgrind.%p {python} "$@" '
            f"--health-check-interval 600 --header-read-timeout 600 {serve_options}\n"
        )
        wrapper.chmod(0o755)
        registry = workdir / "images.toml"
        registry.write_text(
            f'[images."{STANDIN_IMAGE}"]\n'
            f'command = ["{{python}}", "{Path(__file__).with_name("standin_server.py")}"]\n'
            "startup_timeout_seconds = 600\n"
        )
        request = (
            f"POST {INVOKE_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/csv\r\n"
            f"Content-Length: {len(BODY)}\r\n\r\n"
        ).encode() + BODY
        with Processes(workdir) as processes:
            sys.executable = str(wrapper)  # start_splitserve starts `sys.executable -m ...`
            try:
                fleet = load.start_splitserve(
                    processes, workdir, image=STANDIN_IMAGE, model_url=None, images_file=registry
                )
            finally:
                sys.executable = python
            loop = uvloop.new_event_loop()
            port, pid = fleet.gateway.port, str(fleet.gateway.pids[0])
            loop.run_until_complete(_push_batch(port, request, WARM_UP, IN_FLIGHT))
            _control("-i", "on", pid)
            # The gateway's timers (the slow-head sweep, the minute ring, flushes) run whether
            # requests come or not; under callgrind on a busy machine a batch takes 10 to 40 s,
            # which moved the raw figure by several thousand instructions a request. Their rate,
            # counted while idle, is taken out of the batch's count for its duration.
            idle_started = time.perf_counter()
            time.sleep(IDLE_SECONDS)
            idle = _dump(pid, workdir) / (time.perf_counter() - idle_started)
            started = time.perf_counter()
            refused: list[bytes] = []
            answered = loop.run_until_complete(
                _push_batch(port, request, requests, IN_FLIGHT, refused)
            )
            seconds = time.perf_counter() - started
            _control("-i", "off", pid)
            total = _dump(pid, workdir)
            loop.close()
    if answered != requests:
        print(f"{requests - answered} requests failed; the first answer:", file=sys.stderr)
        print(refused[0].decode("latin-1") if refused else "(none)", file=sys.stderr)
        return 1
    net = total - idle * seconds
    print(
        f"{net / requests:.0f} instructions per request ({requests} requests in {seconds:.1f} s; "
        f"{total / requests:.0f} before taking out the idle loop's {idle / 1e3:.0f}k a second)"
    )
    return 0


def _control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, capture_output=True)


def _dump(pid: str, workdir: Path) -> int:
    """Dump the gateway's counts (which zeroes them) and return the instructions counted."""
    before = set(glob.glob(f"{workdir}/callgrind.{pid}*"))
    _control("-d", pid)
    total = 0
    for path in set(glob.glob(f"{workdir}/callgrind.{pid}*")) - before:
        with open(path) as dump:
            for line in dump:
                if line.startswith("totals:"):
                    total = max(total, int(line.split()[1]))
    return total


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
