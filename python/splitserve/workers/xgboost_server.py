"""The built-in XGBoost model server: one process per instance, started by the supervisor.

Command line (the supervisor's contract)::

    python -m splitserve.workers.xgboost_server --model-dir DIR (--unix PATH | --host H --port N)
        --max-batch-rows N --max-batch-wait-us N [--allow-pickle]

The server speaks the SageMaker container contract (reference section 5.1) and answers
/invocations as the SageMaker XGBoost container does (section 5.2); `codecs` holds the formats and
the decisions where we differ (JSON input accepted, a missing Content-Type read as CSV unless the
body is libsvm, an empty body is a 400). Routes:

- `GET /ping`: 200, empty body. The model is loaded before the server listens, so answering at
  all means ready; predict never runs on the event loop, so a long predict never delays it.
- `POST /invocations`: rows in, predictions out; bodies over 6 MiB get a 413.
- `GET /info`: JSON {"pid", "cpus", "nthread", "num_features", "objective", "batching"}, plus
  "model_file" and "predictor" (which predict path `load_model` chose).

Start-up fails fast with exit code 2 and one line on stderr naming the file and the reason:
- The model directory is read as the container reads /opt/ml/model: every regular non-dot file.
  `xgboost-model` is used when present (other files are ignored, with a warning). Otherwise there
  must be exactly one file: with several we refuse, where the container would load them all and
  silently average their predictions (SAGEMAKER_INFERENCE_ENSEMBLE).
- Booster.load_model reads the file: XGBoost JSON and UBJSON (and the legacy binary format, for
  as long as the installed XGBoost reads it; 3.x no longer writes it). A Python pickle (a pickled
  Booster or scikit-learn XGBModel) loads only with --allow-pickle: unpickling runs code.
- SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT, when set, is the Accept for `*/*` and must be supported.
- The address cannot be bound.

XGBoost runs with nthread = the number of CPUs in this process's affinity (the supervisor pins the
process before exec), OpenMP threads wait passively, and predictions go through XGBoost's C API
(`xgboost_model.DensePredictor`) once it is shown to match Booster.predict (`load_model` there
loads the model and chooses). Predict calls run in one dedicated thread (XGBoost releases the
GIL), fed by `batching.DynamicBatcher`: measured against predicting
on the event loop, the loop costs ~10% less CPU per request on an idle CPU, but on a CPU shared
with other processes the thread answers 1.5-2x more requests at the median, with far shorter
tails (docs/benchmarks.md, "Worker batching").

HTTP is served by `http_server`, not aiohttp: the gateway pipelines requests on a kept-alive
connection (HTTP/1.1 pipelining, contract/upstream.py), and aiohttp runs a connection's requests
one after another, so requests that share a connection would never share a batch. There they run
concurrently and are answered in order. Its limits (header sizes, timeouts, 100-continue) are
listed in its docstring; a body over 6 MiB is answered 413 there, before /invocations sees it.

X-Amzn-SageMaker-Custom-Attributes is echoed back when the request has it, as a container that
sets it would, so the header's pass-through through the gateway can be tested (not on a 413 for a
body over the limit, which is answered before any handler runs). SIGTERM (or SIGINT): stop
accepting, finish the requests in flight (at most 25 s), exit 0.

Unexpected errors answer 500 with a generic message; the details go to stderr under an error
number that the message quotes. A bad request never ends the process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from splitserve.workers import codecs, http_server
from splitserve.workers.batching import DynamicBatcher
from splitserve.workers.http_server import (
    Routes,
    WorkerRequest,
    WorkerResponse,
    text_response,
)
from splitserve.workers.xgboost_model import LoadedModel, ModelLoadError, load_model

#: Exit code of a start-up failure (bad model, bad option).
EXIT_STARTUP_FAILURE: Final = 2

#: Bodies larger than this are decoded and encoded off the event loop, so /ping stays prompt.
_OFFLOAD_BODY_BYTES: Final = 256 * 1024

#: How long SIGTERM waits for requests in flight (the contract's SIGKILL comes 30 s after).
_SHUTDOWN_TIMEOUT_SECONDS: Final = 25.0
#: Connections the kernel queues while the event loop is busy predicting (aiohttp's default was
#: 128). A Unix socket refuses a connect to a full queue at once, so a burst of new clients (more
#: gateways, or a load generator invoking the worker directly) would see errors, not a short wait.
_LISTEN_BACKLOG: Final = 1024

_CUSTOM_ATTRIBUTES: Final = "X-Amzn-SageMaker-Custom-Attributes"

_log = logging.getLogger("splitserve.workers.xgboost_server")


@dataclass(frozen=True)
class ServerOptions:
    """The parsed command line.

    Attributes:
        model_dir: the unpacked model artifact (the container's /opt/ml/model).
        unix_path: listen on this Unix socket; None means TCP on host:port.
        host: the TCP address (with `port`).
        port: the TCP port.
        max_batch_rows: the most rows one predict call coalesces.
        max_batch_wait_us: how long a batch waits for more rows.
        allow_pickle: load a pickled model (unpickling runs code).
    """

    model_dir: Path
    unix_path: Path | None
    host: str | None
    port: int | None
    max_batch_rows: int
    max_batch_wait_us: int
    allow_pickle: bool


def parse_args(argv: Sequence[str] | None = None) -> ServerOptions:
    """Parse the command line; exits with status 2 and a usage message when it is invalid."""
    parser = argparse.ArgumentParser(
        prog="python -m splitserve.workers.xgboost_server",
        description="Serve one XGBoost model over the SageMaker container contract.",
    )
    parser.add_argument("--model-dir", type=Path, required=True, help="the model directory")
    parser.add_argument("--unix", type=Path, help="listen on this Unix socket path")
    parser.add_argument("--host", help="listen on this TCP address (with --port)")
    parser.add_argument("--port", type=int, help="listen on this TCP port (with --host)")
    parser.add_argument("--max-batch-rows", type=int, required=True)
    parser.add_argument("--max-batch-wait-us", type=int, required=True)
    parser.add_argument("--allow-pickle", action="store_true", help="load pickled models")
    arguments = parser.parse_args(argv)
    if (arguments.unix is None) == (arguments.host is None and arguments.port is None):
        parser.error("give either --unix PATH or --host H --port N")
    if arguments.unix is None and (arguments.host is None or arguments.port is None):
        parser.error("--host and --port go together")
    if arguments.max_batch_rows < 0 or arguments.max_batch_wait_us < 0:
        parser.error("--max-batch-rows and --max-batch-wait-us must not be negative")
    return ServerOptions(
        model_dir=arguments.model_dir,
        unix_path=arguments.unix,
        host=arguments.host,
        port=arguments.port,
        max_batch_rows=arguments.max_batch_rows,
        max_batch_wait_us=arguments.max_batch_wait_us,
        allow_pickle=arguments.allow_pickle,
    )


class InvocationHandler:
    """The /invocations handler: negotiate, decode, predict through the batcher, encode.

    Args:
        model: the loaded model.
        batcher: where predictions are made.
        default_accept: the Accept for `*/*` and a missing header.
    """

    def __init__(self, model: LoadedModel, batcher: DynamicBatcher, default_accept: str) -> None:
        self._model = model
        self._batcher = batcher
        self._default_accept = default_accept
        self._error_numbers = itertools.count(1)

    async def __call__(self, request: WorkerRequest) -> WorkerResponse:
        """Answer one POST /invocations."""
        try:
            response = await self._invoke(request)
        except codecs.PayloadError as error:
            response = text_response(error.status, error.message)
        except Exception:
            number = next(self._error_numbers)
            _log.exception("internal error %d", number)
            response = text_response(
                500, f"internal error while predicting; the worker log has error {number}"
            )
        attributes = request.header(_CUSTOM_ATTRIBUTES)
        if attributes is not None:
            headers = (*response.headers, (_CUSTOM_ATTRIBUTES, attributes))
            response = WorkerResponse(response.status, response.body, headers)
        return response

    async def _invoke(self, request: WorkerRequest) -> WorkerResponse:
        body = request.body
        input_format = codecs.request_format(request.header("Content-Type"), body)
        accept = codecs.negotiate_accept(request.header("Accept"), self._default_accept)
        num_features = self._model.num_features
        offload = len(body) > _OFFLOAD_BODY_BYTES
        if offload:
            rows = await asyncio.to_thread(codecs.decode_rows, body, input_format, num_features)
        else:
            rows = codecs.decode_rows(body, input_format, num_features)
        predictions = await self._batcher.predict(rows)
        if offload:
            payload = await asyncio.to_thread(codecs.encode_predictions, predictions, accept)
        else:
            payload = codecs.encode_predictions(predictions, accept)
        # Written verbatim, e.g. "text/csv; charset=utf-8".
        return WorkerResponse(200, payload, (("Content-Type", codecs.ACCEPT_TYPES[accept]),))


_PING_RESPONSE: Final = WorkerResponse(200)


async def _ping(_request: WorkerRequest) -> WorkerResponse:
    return _PING_RESPONSE


def create_routes(
    model: LoadedModel, batcher: DynamicBatcher, info: dict[str, Any], default_accept: str
) -> Routes:
    """The route table of one worker, for `http_server.start`.

    Args:
        model: the loaded model.
        batcher: the batcher predictions go through.
        info: the document GET /info answers.
        default_accept: the Accept for `*/*` and a missing header.
    """
    info_response = WorkerResponse(
        200, json.dumps(info).encode(), (("Content-Type", "application/json"),)
    )

    async def info_handler(_request: WorkerRequest) -> WorkerResponse:
        return info_response

    return {
        ("GET", "/ping"): _ping,
        ("POST", "/invocations"): InvocationHandler(model, batcher, default_accept),
        ("GET", "/info"): info_handler,
    }


def _default_accept() -> str:
    configured = os.environ.get("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", "").strip()
    if not configured:
        return codecs.DEFAULT_ACCEPT
    try:
        return codecs.negotiate_accept(configured, codecs.DEFAULT_ACCEPT)
    except codecs.PayloadError:
        supported = ", ".join(codecs.ACCEPT_TYPES)
        raise ModelLoadError(
            f"SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT={configured!r} is not supported; "
            f"use one of: {supported}"
        ) from None


async def serve(options: ServerOptions, model: LoadedModel, default_accept: str) -> int:
    """Listen until SIGTERM or SIGINT, then finish the requests in flight.

    Returns:
        the exit code: 0, or 2 when the address cannot be bound.
    """
    cpus = sorted(os.sched_getaffinity(0))
    # One thread: predict calls are serialized (batches grow while one runs) and the event loop
    # keeps accepting, parsing and answering /ping meanwhile.
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="predict")
    batcher = DynamicBatcher(
        model.predict,
        max_rows=options.max_batch_rows,
        max_wait_us=options.max_batch_wait_us,
        executor=executor,
    )
    info = {
        "pid": os.getpid(),
        "cpus": cpus,
        "nthread": model.nthread,
        "num_features": model.num_features,
        "objective": model.objective,
        "model_file": model.path.name,
        "predictor": model.predict.name,
        "batching": {"max_rows": options.max_batch_rows, "max_wait_us": options.max_batch_wait_us},
    }
    routes = create_routes(model, batcher, info, default_accept)
    if options.unix_path is not None:
        with contextlib.suppress(FileNotFoundError):
            options.unix_path.unlink()  # a stale socket of an earlier process
        address = f"unix:{options.unix_path}"
    else:
        address = f"http://{options.host}:{options.port}"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop.set)
    try:
        try:
            server = await http_server.start(
                routes,
                unix_path=options.unix_path,
                host=options.host,
                port=options.port,
                backlog=_LISTEN_BACKLOG,
                server_name="splitserve-xgboost",
            )
        except OSError as error:
            print(f"xgboost_server: cannot listen on {address}: {error}", file=sys.stderr)
            return EXIT_STARTUP_FAILURE
        _log.info(
            "serving %s (%s, %d features) on %s with nthread=%d on CPUs %s",
            model.path,
            model.objective,
            model.num_features,
            address,
            model.nthread,
            cpus,
        )
        await stop.wait()
        _log.info("stopping: finishing the requests in flight")
        await server.shutdown(_SHUTDOWN_TIMEOUT_SECONDS)
        return 0
    finally:
        await batcher.aclose()
        executor.shutdown(wait=True)
        if options.unix_path is not None:
            with contextlib.suppress(FileNotFoundError):
                options.unix_path.unlink()


def _exit_on_signal(signal_number: int, _frame: object) -> None:
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server; returns the process exit code (0 after SIGTERM, 2 on a start-up failure)."""
    options = parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s xgboost_server[%(process)d] %(levelname)s %(message)s",
    )
    # Stopped while loading: nothing is in flight, so leave at once, and cleanly.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    nthread = len(os.sched_getaffinity(0))
    try:
        default_accept = _default_accept()
        model = load_model(options.model_dir, allow_pickle=options.allow_pickle, nthread=nthread)
    except ModelLoadError as error:
        print(f"xgboost_server: {error}", file=sys.stderr, flush=True)
        return EXIT_STARTUP_FAILURE
    import uvloop  # noqa: PLC0415 - only the server process runs on it

    return uvloop.run(serve(options, model, default_accept))


if __name__ == "__main__":
    sys.exit(main())
