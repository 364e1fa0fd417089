"""The `splitserve` command: the only place that reads argv.

splitserve serve [--host H] [--port N] [--state-dir DIR] [--model-store DIR] [--images FILE]
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import uvloop
from aiohttp import web

from splitserve.app import create_app
from splitserve.config import Settings, WorkerSettings
from splitserve.control.store import StateFileError
from splitserve.workers.images import ImageRegistryError

_DEFAULTS = Settings()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand; defaults come from `Settings`."""
    parser = argparse.ArgumentParser(prog="splitserve", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gateway (both planes and /metrics)")
    serve.add_argument("--host", default=_DEFAULTS.host)
    serve.add_argument("--port", type=int, default=_DEFAULTS.port)
    serve.add_argument("--state-dir", type=Path, default=_DEFAULTS.state_dir)
    serve.add_argument(
        "--model-store",
        type=Path,
        default=None,
        help="root that s3://bucket/key URLs resolve under (default: STATE_DIR/models)",
    )
    serve.add_argument("--images", type=Path, default=None, help="bring-your-own image registry")
    serve.add_argument(
        "--allow-pickle",
        action="store_true",
        help="let workers load pickled models (unpickling runs code from the artifact)",
    )
    serve.add_argument(
        "--worker-tcp", action="store_true", help="built-in workers listen on loopback TCP"
    )
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="allow listening on a non-loopback address with no authentication",
    )
    serve.add_argument("--log-level", default="INFO")
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The `Settings` for `splitserve serve` with the given arguments."""
    state_dir: Path = args.state_dir
    workers: WorkerSettings = replace(
        _DEFAULTS.workers,
        run_dir=state_dir / "run",
        allow_pickle=args.allow_pickle,
        use_tcp=args.worker_tcp,
    )
    return replace(
        _DEFAULTS,
        host=args.host,
        port=args.port,
        state_dir=state_dir,
        model_store=args.model_store if args.model_store is not None else state_dir / "models",
        images_file=args.images,
        workers=workers,
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(settings: Settings, *, insecure: bool) -> int:
    """Run the gateway until SIGINT or SIGTERM; return the exit code."""
    if not _is_loopback(settings.host) and not insecure:
        print(
            f"splitserve: refusing to listen on {settings.host}: anyone who can reach it could "
            "change endpoints and traffic weights. Listen on 127.0.0.1, or pass --insecure.",
            file=sys.stderr,
        )
        return 2
    settings.model_store.mkdir(parents=True, exist_ok=True)
    try:
        web.run_app(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            loop=uvloop.new_event_loop(),
            access_log=None,
            print=lambda message: print(message, flush=True),
        )
    except (StateFileError, ImageRegistryError) as error:
        print(f"splitserve: {error}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `splitserve` command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "serve":
        return serve(settings_from_args(args), insecure=args.insecure)
    return 2  # argparse refuses unknown commands before this


if __name__ == "__main__":
    raise SystemExit(main())
