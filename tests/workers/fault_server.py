"""A contract server that misbehaves on purpose; tests pick its faults with environment variables.

It answers `GET /ping`, `POST /invocations` (echoes the body) and `GET /info` (JSON: pid, cpus,
nthread, pings, invocations). It listens on `--unix PATH`, `--host H --port N`, or
127.0.0.1:$SAGEMAKER_BIND_TO_PORT; other arguments (the built-in server's) are ignored.

Faults, all off unless set:

- FAULT_EXIT_AT_START=N: print FAULT_EXIT_MESSAGE to stderr and exit with status N at once.
- FAULT_EXIT_IF_FILE_EXISTS=PATH: the same (status 4) while the file PATH exists.
- FAULT_NEVER_LISTEN=1: never open the socket (sleeps forever).
- FAULT_STARTUP_DELAY_SECONDS=S: sleep S seconds before listening.
- FAULT_PING_HANG_AFTER=N: answer N pings, then let every later /ping hang forever.
- FAULT_INVOCATION_DELAY_SECONDS=S: each /invocations sleeps S seconds before answering.
- FAULT_INVOCATION_STATUS=N: /invocations answers with status N.
- FAULT_CRASH_ON_REQUEST=N: the Nth /invocations ends the process (status 3) without answering.
- FAULT_IGNORE_SIGTERM=1: ignore SIGTERM (only SIGKILL stops it).
- FAULT_DIE_ON_SIGTERM=1: die at once on SIGTERM, dropping requests in flight (by default it
  stops gracefully, finishing them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import web


def _int_env(name: str, default: int = 0) -> int:
    return int(os.environ.get(name, default))


def _float_env(name: str, default: float = 0.0) -> float:
    return float(os.environ.get(name, default))


def build_app() -> web.Application:
    """The application, its faults read from the environment."""
    # Imported here, so the start-up faults happen as fast as an interpreter starts.
    from aiohttp import web

    counts = {"pings": 0, "invocations": 0}
    hang_after = _int_env("FAULT_PING_HANG_AFTER")
    crash_on = _int_env("FAULT_CRASH_ON_REQUEST")
    delay = _float_env("FAULT_INVOCATION_DELAY_SECONDS")
    status = _int_env("FAULT_INVOCATION_STATUS", 200)

    async def ping(_request: web.Request) -> web.Response:
        counts["pings"] += 1
        if hang_after and counts["pings"] > hang_after:
            await asyncio.Event().wait()
        return web.Response(status=200)

    async def invocations(request: web.Request) -> web.Response:
        body = await request.read()
        counts["invocations"] += 1
        if crash_on and counts["invocations"] >= crash_on:
            os._exit(3)
        if delay:
            await asyncio.sleep(delay)
        return web.Response(status=status, body=body, content_type="text/csv")

    async def info(_request: web.Request) -> web.Response:
        cpus = sorted(os.sched_getaffinity(0))
        document = {"pid": os.getpid(), "cpus": cpus, "nthread": len(cpus), **counts}
        return web.Response(text=json.dumps(document), content_type="application/json")

    app = web.Application()
    app.router.add_get("/ping", ping)
    app.router.add_post("/invocations", invocations)
    app.router.add_get("/info", info)
    return app


def main(argv: list[str] | None = None) -> int:
    """Run the server as the environment configures; the exit status."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--unix")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int)
    arguments, _ignored = parser.parse_known_args(argv)

    exit_status = _int_env("FAULT_EXIT_AT_START")
    exit_file = os.environ.get("FAULT_EXIT_IF_FILE_EXISTS")
    if exit_file and os.path.exists(exit_file):
        exit_status = 4
    if exit_status:
        message = os.environ.get("FAULT_EXIT_MESSAGE", "fault_server: could not load the model")
        print(message, file=sys.stderr, flush=True)
        return exit_status
    ignore_sigterm = bool(os.environ.get("FAULT_IGNORE_SIGTERM"))
    # aiohttp's handlers make SIGTERM graceful; without them SIGTERM keeps its default: death.
    handle_signals = not ignore_sigterm and not os.environ.get("FAULT_DIE_ON_SIGTERM")
    if ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if os.environ.get("FAULT_NEVER_LISTEN"):
        while True:
            time.sleep(3600)
    time.sleep(_float_env("FAULT_STARTUP_DELAY_SECONDS"))

    from aiohttp import web

    app = build_app()
    print(f"fault_server: pid {os.getpid()} listening", file=sys.stderr, flush=True)
    if arguments.unix:
        web.run_app(app, path=arguments.unix, print=None, handle_signals=handle_signals)
    else:
        port = arguments.port or int(os.environ["SAGEMAKER_BIND_TO_PORT"])
        web.run_app(app, host=arguments.host, port=port, print=None, handle_signals=handle_signals)
    return 0


if __name__ == "__main__":
    sys.exit(main())
