"""What `benches/load.py` is built from: the tools it installs, the processes it starts and stops,
the load generators it drives (wrk, oha) and what it reads from /proc.

Every process started here is started by a `Processes` object, in its own session, and stopped by
it (SIGTERM to the process group, then SIGKILL), so a run leaves nothing behind. CPU time is read
from /proc/<pid>/stat (utime + stime, every thread of the process) before and after a load run; the
load generator's own comes from wait4()'s rusage when it exits.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

#: Debian packages of the tools, by command.
DEBIAN_PACKAGES = {"wrk": "wrk", "nginx": "nginx-light", "haproxy": "haproxy"}
CARGO_BIN = Path.home() / ".cargo" / "bin"
#: The percentiles every run reports.
PERCENTILES = (50.0, 90.0, 99.0, 99.9)

# wrk's report as one JSON line on stderr. `request()` picks the TargetVariant header for the
# targeted runs (70/30, like the weights) from two prebuilt requests, which costs wrk little.
# With LOAD_THREAD_RATE set, `delay()` paces each wrk thread to that many requests/s: every request
# takes the next slot of a fixed schedule (a slot already past goes at once), read from
# CLOCK_MONOTONIC through LuaJIT's FFI, as wrk's Lua has no clock of its own.
_WRK_SCRIPT = """
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } load_timespec;
int clock_gettime(int clock, load_timespec *now);
]]
local clock = ffi.new("load_timespec")
local rate = tonumber(os.getenv("LOAD_THREAD_RATE") or "0")
local interval = rate > 0 and 1000 / rate or 0
local next_slot = nil
if rate > 0 then
  delay = function()
    ffi.C.clock_gettime(1, clock)
    local now = tonumber(clock.tv_sec) * 1000 + tonumber(clock.tv_nsec) / 1e6
    next_slot = next_slot or now
    local wait = next_slot - now
    next_slot = next_slot + interval
    return wait > 0 and wait or 0
  end
end
wrk.method = "POST"
wrk.body = os.getenv("LOAD_BODY")
wrk.headers["Content-Type"] = "text/csv"
local targeted = os.getenv("LOAD_TARGETED") == "1"
local first, second
function init(args)
  if targeted then
    wrk.headers["X-Amzn-SageMaker-Target-Variant"] = "Variant1"
    first = wrk.format()
    wrk.headers["X-Amzn-SageMaker-Target-Variant"] = "Variant2"
    second = wrk.format()
  end
end
if targeted then
  request = function()
    if math.random() < 0.7 then return first end
    return second
  end
end
function done(summary, latency, requests)
  local e = summary.errors
  io.stderr:write(string.format(
    '{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, '
    .. '"timeout": %d, "non_2xx": %d, "p50": %d, "p90": %d, "p99": %d, "p99.9": %d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9)))
end
"""


class ToolMissing(RuntimeError):
    """A tool the run needs is not installed and could not be installed."""


def tool_path(command: str) -> str:
    """Where `command` is, installing it first (apt-get, or cargo for oha) when it is missing.

    Raises:
        ToolMissing: it is not installed and the install failed.
    """
    found = shutil.which(command) or shutil.which(command, path=str(CARGO_BIN))
    if found is not None:
        return found
    if command == "oha":
        # A Rust crate, compiled here: minutes of CPU, once.
        install = [shutil.which("cargo") or str(CARGO_BIN / "cargo"), "install", "oha", "--locked"]
        print("installing oha with cargo (this compiles for several minutes)", flush=True)
        subprocess.run(install, check=False)
    elif command in DEBIAN_PACKAGES:
        print(f"installing {DEBIAN_PACKAGES[command]} with apt-get", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(
            [
                "apt-get",
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
                DEBIAN_PACKAGES[command],
            ],
            check=False,
        )
    found = shutil.which(command) or shutil.which(command, path=str(CARGO_BIN))
    if found is None:
        raise ToolMissing(f"{command} is not installed and could not be installed")
    return found


def version_of(argv: Sequence[str]) -> str:
    """The first line a tool prints about its version (either stream), or "unknown"."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "unknown"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0].strip() if lines else "unknown"


# --- /proc ----------------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: fields start after the last ')'.
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds used so far by `pids` (every thread; gone processes count 0)."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])  # utime, stime (stat fields 14 and 15)
    return ticks / CLOCK_TICKS


def rss_bytes(pids: Iterable[int]) -> int:
    """Resident memory of `pids` together, in bytes."""
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE
        except OSError:
            continue
    return total


def children(pid: int) -> list[int]:
    """The live direct children of `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def process_tree(pid: int) -> list[int]:
    """`pid` and all its live descendants."""
    tree = [pid]
    for child in children(pid):
        tree += process_tree(child)
    return tree


def environment_of(pid: int) -> dict[str, str]:
    """The environment `pid` was started with."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {name: value for name, _, value in pairs}


def command_line(pid: int) -> list[str]:
    """The argv of `pid`."""
    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    return [item.decode(errors="replace") for item in raw.split(b"\0") if item]


def pin(pids: Iterable[int], cpus: set[int]) -> None:
    """Pin every thread of every process in `pids` to `cpus`."""
    for pid in pids:
        with contextlib.suppress(FileNotFoundError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                with contextlib.suppress(ProcessLookupError):
                    os.sched_setaffinity(int(task.name), cpus)


# --- processes ------------------------------------------------------------------------------------


class Processes:
    """Starts long-running processes, each in its own session, and stops all of them on close.

    Args:
        log_dir: where each process's output goes (`<name>.log`).
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._started: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cpus: set[int] | None = None,
        environment: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start `argv` (pinned to `cpus` when given), its output in `<log_dir>/<name>.log`."""
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **(environment or {})},
                # Pinned before exec, so whatever it forks (nginx's worker) inherits the CPUs.
                preexec_fn=_pinned(cpus),  # noqa: PLW1509 - async-signal-safe
            )
        self._started.append((name, process))
        return process

    def log(self, name: str) -> str:
        """What process `name` has printed so far (its last 4000 characters)."""
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self, process: subprocess.Popen[bytes], grace_seconds: float = 40.0) -> None:
        """SIGTERM the process's group, wait up to `grace_seconds`, then SIGKILL the group."""
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(grace_seconds)
        # Whatever the leader left in its group (nginx workers, a wrapper's children) goes too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        self._started = [(name, p) for name, p in self._started if p is not process]

    def close(self) -> None:
        """Stop every process still running, the last started first."""
        for _, process in reversed(list(self._started)):
            self.stop(process)

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def wait_until(check: Callable[[], object], what: str, timeout_seconds: float = 60.0) -> None:
    """Poll `check()` every 50 ms until it returns true (an OSError counts as not yet); raise
    TimeoutError naming `what` and the last error."""
    deadline = time.monotonic() + timeout_seconds
    last: OSError | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError as error:
            last = error
        time.sleep(0.05)
    raise TimeoutError(f"{what} did not come up within {timeout_seconds:.0f} s (last: {last})")


# --- load generators ------------------------------------------------------------------------------


@dataclass
class LoadResult:
    """One load run.

    Attributes:
        requests: responses received (any status).
        seconds: how long the run lasted.
        errors: connection, read, write and timeout errors plus non-2xx responses.
        error_kinds: `errors` by kind, as the load tool names them (only kinds that occurred).
        latency_us: p50, p90, p99 and p99.9 in microseconds, keyed "p50" ... "p99.9".
        cpu_us_per_request: CPU microseconds per request by role (gateway, workers, load).
        rss_bytes: resident memory by role at the end of the run.
    """

    requests: int
    seconds: float
    errors: int
    latency_us: dict[str, float]
    error_kinds: dict[str, int] = field(default_factory=dict)
    cpu_us_per_request: dict[str, float] = field(default_factory=dict)
    rss_bytes: dict[str, int] = field(default_factory=dict)

    @property
    def requests_per_second(self) -> float:
        """Throughput over the run."""
        return self.requests / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Target:
    """Where load goes: a TCP URL, or a Unix socket (oha only) with the URL's path."""

    url: str
    unix_socket: str | None = None


def _child_cpu_seconds(process: subprocess.Popen[bytes], timeout_seconds: float) -> float:
    """Wait for `process` (killing it after `timeout_seconds`) and return its CPU seconds."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid != 0:
            process.returncode = os.waitstatus_to_exitcode(status)
            return float(usage.ru_utime + usage.ru_stime)
        time.sleep(0.02)
    process.kill()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return float(usage.ru_utime + usage.ru_stime)


def measured(
    start: Callable[[], subprocess.Popen[bytes]],
    roles: Mapping[str, Sequence[int]],
    timeout_seconds: float,
) -> tuple[subprocess.Popen[bytes], dict[str, float], dict[str, int], float]:
    """Start one load-generator process with `start` and read the CPU time of `roles` around it.

    Returns:
        the finished process, CPU seconds per role (the generator under "load"), resident memory
        per role at the end, and the wall seconds it ran.
    """
    before = {role: cpu_seconds(pids) for role, pids in roles.items()}
    started = time.perf_counter()
    process = start()
    load_cpu = _child_cpu_seconds(process, timeout_seconds)
    wall = time.perf_counter() - started
    used = {role: cpu_seconds(pids) - before[role] for role, pids in roles.items()}
    used["load"] = load_cpu
    memory = {role: rss_bytes(pids) for role, pids in roles.items()}
    return process, used, memory, wall


def run_wrk(
    target: Target,
    *,
    connections: int,
    seconds: float,
    body: bytes,
    roles: Mapping[str, Sequence[int]],
    cpus: set[int] | None = None,
    threads: int = 1,
    targeted: bool = False,
    rate: float | None = None,
) -> LoadResult:
    """Load with wrk: `connections` connections, each one request at a time; closed loop (each
    connection sends its next request when the last is answered), or paced to `rate`.

    Args:
        target: a TCP URL (wrk has no Unix sockets).
        connections: concurrent connections.
        seconds: how long.
        body: the POST body (text/csv).
        roles: the processes whose CPU time and memory the result reports, by role.
        cpus: pin wrk to these CPUs.
        threads: wrk threads (at most `connections`).
        targeted: pick X-Amzn-SageMaker-Target-Variant per request, Variant1 70 % / Variant2 30 %.
        rate: requests/s over all threads; each request waits for its slot of a fixed schedule,
            then for a free connection. Latency counts from when it was sent, so give enough
            connections that one is always free (a stalled server then shows in the tail rather
            than holding requests back).
    """
    wrk = tool_path("wrk")
    threads = min(threads, connections)
    with tempfile.TemporaryDirectory(prefix="splitserve-wrk-") as directory:
        script = Path(directory) / "report.lua"
        script.write_text(_WRK_SCRIPT)
        report = Path(directory) / "report.json"
        argv = [
            wrk, "-t", str(threads), "-c", str(connections),
            "-d", f"{max(1, round(seconds))}s", "--timeout", "10s", "-s", str(script), target.url,
        ]  # fmt: skip
        environment = {
            **os.environ,
            "LOAD_BODY": body.decode(),
            "LOAD_TARGETED": "1" if targeted else "0",
        }
        if rate is not None:
            environment["LOAD_THREAD_RATE"] = f"{rate / threads:.3f}"

        with report.open("wb") as output:
            _, used, memory, _ = measured(
                lambda: subprocess.Popen(
                    argv,
                    stdout=subprocess.DEVNULL,
                    stderr=output,
                    env=environment,
                    preexec_fn=_pinned(cpus),  # noqa: PLW1509 - async-signal-safe
                ),
                roles,
                seconds + 30,
            )
        lines = [line for line in report.read_text().splitlines() if line.startswith("{")]
        if not lines:
            raise RuntimeError(f"wrk printed no report: {report.read_text()[-2000:]}")
        parsed = json.loads(lines[-1])
    requests = int(parsed["requests"])
    kinds = {kind: int(parsed[kind]) for kind in ("connect", "read", "write", "timeout", "non_2xx")}
    result = LoadResult(
        requests=requests,
        seconds=parsed["duration_us"] / 1e6,
        errors=sum(kinds.values()),
        error_kinds={kind: count for kind, count in kinds.items() if count},
        latency_us={f"p{p:g}": float(parsed[f"p{p:g}"]) for p in PERCENTILES},
        rss_bytes=memory,
    )
    result.cpu_us_per_request = _per_request(used, requests)
    return result


def run_oha(
    target: Target,
    *,
    connections: int,
    seconds: float,
    body: bytes,
    roles: Mapping[str, Sequence[int]],
    rate: float | None = None,
    cpus: set[int] | None = None,
) -> LoadResult:
    """Load with oha: closed loop, or open loop at `rate` requests/s with latency correction.

    With a rate, each request's latency is counted from when the schedule said it should have been
    sent, so a stall shows in the percentiles (no coordinated omission).
    """
    oha = tool_path("oha")
    with tempfile.TemporaryDirectory(prefix="splitserve-oha-") as directory:
        # The body goes in a file: a CSV row may start with "-", which oha would read as an option.
        body_file = Path(directory) / "body"
        body_file.write_bytes(body)
        argv = [
            oha, "--no-tui", "--output-format", "json", "-z", f"{max(1, round(seconds))}s",
            "-c", str(connections), "-m", "POST", "-T", "text/csv", "-D", str(body_file),
            "-t", "10s", "-w",
        ]  # fmt: skip
        if rate is not None:
            argv += ["-q", f"{rate:.0f}", "--latency-correction"]
        if target.unix_socket is not None:
            argv += ["--unix-socket", target.unix_socket]
        argv.append(target.url)
        with (Path(directory) / "report.json").open("w+b") as output:
            _, used, memory, _ = measured(
                lambda: subprocess.Popen(
                    argv,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    preexec_fn=_pinned(cpus),  # noqa: PLW1509 - async-signal-safe
                ),
                roles,
                seconds + 30,
            )
            output.seek(0)
            text = output.read().decode(errors="replace")
    try:
        report = json.loads(text[text.index("{") :])
    except ValueError:
        raise RuntimeError(f"oha printed no report: {text[-2000:]}") from None
    statuses = {int(code): int(count) for code, count in report["statusCodeDistribution"].items()}
    kinds = {kind: int(count) for kind, count in report.get("errorDistribution", {}).items()}
    kinds |= {f"HTTP {code}": count for code, count in statuses.items() if not 200 <= code < 300}
    requests = sum(statuses.values())
    percentiles = report["latencyPercentiles"]
    result = LoadResult(
        requests=requests,
        seconds=float(report["summary"]["total"]),
        errors=sum(kinds.values()),
        error_kinds=kinds,
        latency_us={f"p{p:g}": float(percentiles[f"p{p:g}"]) * 1e6 for p in PERCENTILES},
        rss_bytes=memory,
    )
    result.cpu_us_per_request = _per_request(used, requests)
    return result


def _pinned(cpus: set[int] | None) -> Callable[[], None] | None:
    """A preexec_fn that pins the child to `cpus` (None: no pinning)."""
    if cpus is None:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def _per_request(used: Mapping[str, float], requests: int) -> dict[str, float]:
    if requests == 0:
        return dict.fromkeys(used, 0.0)
    return {role: round(seconds * 1e6 / requests, 1) for role, seconds in used.items()}
