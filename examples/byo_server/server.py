"""A bring-your-own model server for splitserve: logistic regression in numpy, CSV in and out.

It speaks the SageMaker container contract, so splitserve (or SageMaker itself) can run it:

- listens on 127.0.0.1:$SAGEMAKER_BIND_TO_PORT (8080 when unset; `BYO_SERVER_HOST` sets the host);
- `GET /ping` answers 200 once the model is loaded (it loads before listening);
- `POST /invocations` takes `text/csv` rows of features (no header, no label column) and answers
  `text/csv`, one probability of class 1 per line, newline-terminated, like SageMaker's XGBoost;
- SIGTERM stops accepting connections, lets requests in flight finish, then exits.

The model, read from the directory in `$SM_MODEL_DIR` (`/opt/ml/model` when unset), is either

- `model.json`: `{"coefficients": [w1, w2, ...], "intercept": b}`, or
- `model.npy`: a 1-D float array `[w1, w2, ..., b]` (the intercept last).

The prediction of a row x is `1 / (1 + exp(-(w . x + b)))`. A model that cannot be loaded ends
the process with status 2 and a message on stderr (which splitserve puts in the FailureReason).

To serve it from splitserve, register it in an image registry file (`images.toml`, next to this
file, is one), then start the gateway with
`splitserve serve --images examples/byo_server/images.toml` and create a model whose `Image`
is `example.com/numpy-logistic:1` and whose `ModelDataUrl` points at a `model.tar.gz` holding
`model.json`. To try it by hand::

    mkdir -p /tmp/byo
    echo '{"coefficients": [0.5, -0.25], "intercept": 0.1}' > /tmp/byo/model.json
    SM_MODEL_DIR=/tmp/byo SAGEMAKER_BIND_TO_PORT=8081 python examples/byo_server/server.py &
    curl -s --data-binary $'1,2\n3,4\n' -H 'Content-Type: text/csv' localhost:8081/invocations

Only the standard library and numpy are used.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

#: SageMaker's InvokeEndpoint body limit.
MAX_BODY_BYTES = 6 * 1024 * 1024


class ModelLoadError(Exception):
    """The model directory holds no usable model."""


class LogisticModel:
    """A logistic-regression model: coefficients and an intercept.

    Args:
        coefficients: one weight per feature.
        intercept: the bias.
    """

    def __init__(self, coefficients: NDArray[np.float64], intercept: float) -> None:
        self.coefficients = coefficients
        self.intercept = intercept

    @classmethod
    def load(cls, model_dir: Path) -> LogisticModel:
        """Load `model.json` or `model.npy` from `model_dir` (see the module docstring).

        Raises:
            ModelLoadError: neither file is there, or the one there is malformed.
        """
        json_path = model_dir / "model.json"
        npy_path = model_dir / "model.npy"
        try:
            if json_path.is_file():
                document = json.loads(json_path.read_text(encoding="utf-8"))
                coefficients = np.asarray(document["coefficients"], dtype=np.float64)
                intercept = float(document.get("intercept", 0.0))
            elif npy_path.is_file():
                vector = np.load(npy_path, allow_pickle=False).astype(np.float64)
                if vector.ndim != 1 or vector.size < 2:
                    raise ModelLoadError(f"{npy_path} must be a 1-D array [w1, ..., wn, b]")
                coefficients, intercept = vector[:-1], float(vector[-1])
            else:
                raise ModelLoadError(f"no model.json or model.npy in {model_dir}")
        except ModelLoadError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ModelLoadError(f"cannot load the model from {model_dir}: {error!r}") from error
        if coefficients.ndim != 1 or coefficients.size == 0:
            raise ModelLoadError("the coefficients must be a non-empty list of numbers")
        return cls(coefficients, intercept)

    @property
    def feature_count(self) -> int:
        """How many features a row must have."""
        return int(self.coefficients.size)

    def predict(self, rows: NDArray[np.float64]) -> NDArray[np.float64]:
        """The probability of class 1 for each row."""
        scores = rows @ self.coefficients + self.intercept
        probabilities: NDArray[np.float64] = 1.0 / (1.0 + np.exp(-scores))
        return probabilities


def parse_csv(body: bytes, feature_count: int) -> NDArray[np.float64]:
    """Rows of comma-separated numbers -> a 2-D array.

    Raises:
        ValueError: a value is not a number, or a row has the wrong number of features.
    """
    rows = np.loadtxt(io.StringIO(body.decode("utf-8")), delimiter=",", ndmin=2, dtype=np.float64)
    if rows.shape[1] != feature_count:
        raise ValueError(
            f"Feature size of csv inference data {rows.shape[1]} is not consistent with"
            f" feature size of trained model {feature_count}."
        )
    return rows


class Handler(BaseHTTPRequestHandler):
    """The contract's two routes."""

    protocol_version = "HTTP/1.1"
    #: An idle keep-alive connection is closed after this many seconds, so a SIGTERM is not held
    #: up by a client (the gateway's connection pool) that keeps a connection open.
    timeout = 5.0
    server: ModelServer

    def do_GET(self) -> None:
        """GET /ping: 200 with an empty body (the model loaded before the server listened)."""
        if self.path == "/ping":
            self._answer(HTTPStatus.OK, b"", "text/plain")
        else:
            self._answer(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

    def do_POST(self) -> None:
        """POST /invocations: CSV rows in, one probability per line out."""
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self._answer(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, b"payload too large\n", "text/plain")
            self.close_connection = True
            return
        body = self.rfile.read(length)
        if self.path != "/invocations":
            self._answer(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
            return
        if not body:
            self._answer(HTTPStatus.NO_CONTENT, b"", "text/plain")
            return
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != "text/csv":
            message = f"Content-type {content_type or '(none)'} is not supported.\n"
            self._answer(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, message.encode(), "text/plain")
            return
        accept = (self.headers.get("Accept") or "*/*").split(";")[0].strip().lower()
        if accept not in ("*/*", "text/csv", "text/*"):
            message = f"Accept {accept} is not supported; use text/csv.\n"
            self._answer(HTTPStatus.NOT_ACCEPTABLE, message.encode(), "text/plain")
            return
        model = self.server.model
        try:
            rows = parse_csv(body, model.feature_count)
        except (ValueError, UnicodeDecodeError) as error:
            message = f"Unable to evaluate payload provided: {error}\n"
            self._answer(HTTPStatus.BAD_REQUEST, message.encode(), "text/plain")
            return
        lines = "".join(f"{float(value)!r}\n" for value in model.predict(rows))
        self._answer(HTTPStatus.OK, lines.encode(), "text/csv; charset=utf-8")

    def _answer(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Access log lines go to stderr (the supervisor keeps the last ones); pings are not."""
        if getattr(self, "path", "") != "/ping":
            sys.stderr.write(f"byo_server: {format % args}\n")


class ModelServer(ThreadingHTTPServer):
    """A threading HTTP server that holds the model and lets requests finish on shutdown."""

    daemon_threads = False  # server_close() joins the request threads: in-flight requests finish
    block_on_close = True

    def __init__(self, address: tuple[str, int], model: LogisticModel) -> None:
        super().__init__(address, Handler)
        self.model = model


def main() -> int:
    """Load the model, listen, serve until SIGTERM or SIGINT; the exit status."""
    model_dir = Path(os.environ.get("SM_MODEL_DIR", "/opt/ml/model"))
    try:
        model = LogisticModel.load(model_dir)
    except ModelLoadError as error:
        print(f"byo_server: {error}", file=sys.stderr)
        return 2
    host = os.environ.get("BYO_SERVER_HOST", "127.0.0.1")
    port = int(os.environ.get("SAGEMAKER_BIND_TO_PORT", "8080"))
    server = ModelServer((host, port), model)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
    signal.signal(signal.SIGINT, lambda _signum, _frame: stop.set())
    serving = threading.Thread(target=server.serve_forever, name="serve", daemon=True)
    serving.start()
    print(
        f"byo_server: serving {model.feature_count}-feature model on {host}:{port}",
        file=sys.stderr,
    )
    stop.wait()
    server.shutdown()  # stop accepting; then wait for the requests in flight
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
