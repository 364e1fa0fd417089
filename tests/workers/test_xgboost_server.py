"""The built-in XGBoost server as the supervisor runs it: a real process, real models, real sockets.

Models are trained here with fixed seeds; every server is stopped in `finally`.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import numpy.typing as npt
import pytest
import xgboost

from tests.support.http import free_port

SERVER_MODULE = "splitserve.workers.xgboost_server"
FEATURES = 13
MAX_BODY_BYTES = 6 * 1024 * 1024
STARTUP_TIMEOUT_SECONDS = 60.0

Matrix = npt.NDArray[np.float32]


# --- models -------------------------------------------------------------------------------------


def training_data(seed: int, rows: int = 300) -> tuple[Matrix, npt.NDArray[np.float64]]:
    """Features (with some missing values) and a continuous target, from a fixed seed."""
    generator = np.random.default_rng(seed)
    features = generator.normal(size=(rows, FEATURES)).astype(np.float32)
    target = features[:, 0] * 2 + features[:, 1] - features[:, 2] ** 2
    features[generator.random(features.shape) < 0.05] = np.nan
    return features, target.astype(np.float64)


def train(objective: str, **parameters: Any) -> Any:
    """A small booster for `objective`, trained deterministically."""
    features, target = training_data(seed=11)
    if objective.startswith("binary:"):
        label = (target > 0).astype(np.float64)
    elif objective.startswith("multi:"):
        label = np.digitize(target, [-1.0, 1.0]).astype(np.float64)
        parameters["num_class"] = 3
    else:
        label = target
    parameters |= {"objective": objective, "max_depth": 3, "nthread": 1, "seed": 0}
    return xgboost.train(parameters, xgboost.DMatrix(features, label=label), num_boost_round=8)


@dataclass(frozen=True)
class Model:
    """A trained booster and a directory holding it as SageMaker's `xgboost-model`."""

    booster: Any
    directory: Path

    def reference(self, rows: Matrix) -> Matrix:
        """Booster.predict's values for `rows`, what the server must answer."""
        predictions: Matrix = self.booster.predict(xgboost.DMatrix(rows, missing=np.nan))
        return predictions


def model_directory(root: Path, name: str, booster: Any, file_name: str = "xgboost-model") -> Path:
    """A directory holding `booster` saved as JSON under `file_name`."""
    directory = root / name
    directory.mkdir()
    (directory / file_name).write_bytes(bytes(booster.save_raw("json")))
    return directory


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Model]:
    """binary:logistic, multi:softprob (3 classes), multi:softmax and reg:squarederror."""
    root = tmp_path_factory.mktemp("models")
    boosters = {
        "binary": train("binary:logistic"),
        "softprob": train("multi:softprob"),
        "softmax": train("multi:softmax"),
        "regression": train("reg:squarederror"),
    }
    return {
        name: Model(booster, model_directory(root, name, booster))
        for name, booster in boosters.items()
    }


def query_rows(seed: int = 5, rows: int = 9) -> Matrix:
    """Rows to predict, different from the training rows, with missing values."""
    features, _ = training_data(seed, rows)
    return features


# --- server processes ---------------------------------------------------------------------------


@dataclass
class Server:
    """A running server process and how to reach it."""

    process: subprocess.Popen[bytes]
    log_path: Path
    unix_path: Path | None
    port: int | None

    def url(self, path: str) -> str:
        """The URL of `path` on this server."""
        if self.port is not None:
            return f"http://127.0.0.1:{self.port}{path}"
        return f"http://worker{path}"

    def session(self) -> aiohttp.ClientSession:
        """A client session that reaches this server."""
        connector: aiohttp.BaseConnector
        if self.unix_path is not None:
            connector = aiohttp.UnixConnector(path=str(self.unix_path))
        else:
            connector = aiohttp.TCPConnector()
        return aiohttp.ClientSession(connector=connector)

    def log(self) -> str:
        """What the server wrote to stderr so far."""
        return self.log_path.read_text(errors="replace")


def server_argv(
    model_dir: Path,
    address: list[str],
    *extra: str,
    max_batch_rows: int = 64,
    max_batch_wait_us: int = 500,
) -> list[str]:
    """The supervisor's command line for the server."""
    return [
        sys.executable,
        "-m",
        SERVER_MODULE,
        "--model-dir",
        str(model_dir),
        *address,
        "--max-batch-rows",
        str(max_batch_rows),
        "--max-batch-wait-us",
        str(max_batch_wait_us),
        *extra,
    ]


def ping_once(server: Server) -> bool:
    """Whether GET /ping answers 200 right now."""
    request = b"GET /ping HTTP/1.1\r\nHost: worker\r\nConnection: close\r\n\r\n"
    family = socket.AF_UNIX if server.unix_path is not None else socket.AF_INET
    address: Any = str(server.unix_path) if server.unix_path else ("127.0.0.1", server.port)
    try:
        with socket.socket(family, socket.SOCK_STREAM) as connection:
            connection.settimeout(2)
            connection.connect(address)
            connection.sendall(request)
            return connection.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it does not exit within 10 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@contextlib.contextmanager
def running_server(
    tmp_path: Path,
    model_dir: Path,
    *extra: str,
    tcp: bool = False,
    preexec_fn: Callable[[], None] | None = None,
    environment: dict[str, str] | None = None,
    max_batch_rows: int = 64,
    max_batch_wait_us: int = 500,
) -> Iterator[Server]:
    """Start the server, wait until /ping answers, and stop it on exit."""
    port = free_port() if tcp else None
    unix_path = None if tcp else tmp_path / f"worker-{time.monotonic_ns()}.sock"
    address = ["--host", "127.0.0.1", "--port", str(port)] if tcp else ["--unix", str(unix_path)]
    log_path = tmp_path / f"worker-{time.monotonic_ns()}.log"
    argv = server_argv(
        model_dir,
        address,
        *extra,
        max_batch_rows=max_batch_rows,
        max_batch_wait_us=max_batch_wait_us,
    )
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv,
            stdout=log,
            stderr=log,
            preexec_fn=preexec_fn,  # noqa: PLW1509 - only sched_setaffinity, async-signal-safe
            env={**os.environ, **(environment or {})},
        )
    server = Server(process, log_path, unix_path, port)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while not ping_once(server):
            if process.poll() is not None:
                pytest.fail(f"the server exited with {process.returncode}:\n{server.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not answer /ping:\n{server.log()}")
            time.sleep(0.05)
        yield server
    finally:
        stop(process)


def start_failure(model_dir: Path, *extra: str) -> tuple[int, str]:
    """Run a server expected to fail at start-up: its exit code and stderr."""
    argv = server_argv(model_dir, ["--unix", str(model_dir / ".unused.sock")], *extra)
    try:
        completed = subprocess.run(argv, capture_output=True, timeout=60, check=False)
    finally:
        with contextlib.suppress(FileNotFoundError):
            (model_dir / ".unused.sock").unlink()
    return completed.returncode, completed.stderr.decode(errors="replace")


@pytest.fixture(scope="module")
def servers(
    models: dict[str, Model], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Server]]:
    """One Unix-socket server per model, shared by the module's tests."""
    root = tmp_path_factory.mktemp("servers")
    with contextlib.ExitStack() as stack:
        yield {
            name: stack.enter_context(running_server(root, model.directory))
            for name, model in models.items()
        }


def payload(body: bytes) -> bytes | io.BytesIO:
    """The body as aiohttp wants it: large bodies as a stream (raw bytes would warn)."""
    return io.BytesIO(body) if len(body) > 1024 * 1024 else body


async def invoke(
    server: Server,
    body: bytes,
    content_type: str | None = "text/csv",
    accept: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """POST /invocations: status, headers and body."""
    request_headers = dict(headers or {})
    if content_type is not None:
        request_headers["Content-Type"] = content_type
    if accept is not None:
        request_headers["Accept"] = accept
    async with (
        server.session() as session,
        session.post(
            server.url("/invocations"),
            data=payload(body),
            headers=request_headers,
            skip_auto_headers=["Content-Type"],
        ) as response,
    ):
        return response.status, dict(response.headers), await response.read()


# --- encoders of the test rows ------------------------------------------------------------------


def as_csv(rows: Matrix) -> bytes:
    """CSV with missing values as empty cells and nan alternately."""
    lines = []
    for index, row in enumerate(rows):
        missing = "" if index % 2 else "nan"
        lines.append(",".join(missing if np.isnan(v) else repr(float(v)) for v in row))
    return ("\n".join(lines) + "\n").encode()


def as_libsvm(rows: Matrix) -> bytes:
    """libsvm with a label on even rows only, missing values left out."""
    lines = []
    for index, row in enumerate(rows):
        pairs = [f"{column + 1}:{float(v)!r}" for column, v in enumerate(row) if not np.isnan(v)]
        lines.append(" ".join((["0"] if index % 2 == 0 else []) + pairs))
    return "\n".join(lines).encode()


def as_npy(rows: Matrix) -> bytes:
    """.npy bytes of the float32 rows."""
    buffer = io.BytesIO()
    np.save(buffer, rows)
    return buffer.getvalue()


def as_json(rows: Matrix) -> bytes:
    """{"instances": rows} with null for missing values."""
    instances = [[None if np.isnan(v) else float(v) for v in row] for row in rows]
    return json.dumps({"instances": instances}).encode()


ENCODERS: dict[str, Callable[[Matrix], bytes]] = {
    "text/csv": as_csv,
    "text/libsvm": as_libsvm,
    "application/x-npy": as_npy,
    "application/json": as_json,
}


def parse_predictions(body: bytes, accept: str) -> Matrix:
    """The predictions of a response body, whatever the Accept."""
    text = body.decode()
    if accept == "text/csv":
        assert text.endswith("\n")
        values: list[Any] = [
            [float(cell) for cell in line.split(",")] if "," in line else float(line)
            for line in text.splitlines()
        ]
    elif accept == "application/json":
        values = [entry["score"] for entry in json.loads(text)["predictions"]]
    else:
        assert text.endswith("\n")
        values = [json.loads(line)["score"] for line in text.splitlines()]
    return np.array(values, dtype=np.float32)


RESPONSE_TYPES = {
    "text/csv": "text/csv; charset=utf-8",
    "application/json": "application/json",
    "application/jsonlines": "application/jsonlines",
}


# --- predictions --------------------------------------------------------------------------------


@pytest.mark.parametrize("model_name", ["binary", "softprob", "softmax", "regression"])
@pytest.mark.parametrize("content_type", list(ENCODERS))
@pytest.mark.parametrize("accept", list(RESPONSE_TYPES))
async def test_predictions_equal_booster_predict(
    models: dict[str, Model],
    servers: dict[str, Server],
    model_name: str,
    content_type: str,
    accept: str,
) -> None:
    rows = query_rows()
    status, headers, body = await invoke(
        servers[model_name], ENCODERS[content_type](rows), content_type, accept
    )
    assert status == 200, body
    assert headers["Content-Type"] == RESPONSE_TYPES[accept]
    expected = models[model_name].reference(rows)
    predictions = parse_predictions(body, accept)
    assert predictions.shape == expected.shape
    np.testing.assert_allclose(predictions, expected, rtol=0, atol=1e-6)


async def test_csv_output_prints_float32_values_as_the_container(
    models: dict[str, Model], servers: dict[str, Server]
) -> None:
    rows = query_rows()
    _, _, body = await invoke(servers["binary"], as_csv(rows), "text/csv", "text/csv")
    expected = models["binary"].reference(rows)
    assert body.decode() == "".join(f"{float(value)!r}\n" for value in expected)


async def test_multiclass_shapes(servers: dict[str, Server]) -> None:
    rows = query_rows()
    _, _, softprob_csv = await invoke(servers["softprob"], as_csv(rows), "text/csv")
    assert all(len(line.split(",")) == 3 for line in softprob_csv.decode().splitlines())
    _, _, softprob_json = await invoke(servers["softprob"], as_csv(rows), accept="application/json")
    assert all(len(entry["score"]) == 3 for entry in json.loads(softprob_json)["predictions"])
    _, _, softmax_csv = await invoke(servers["softmax"], as_csv(rows), "text/csv")
    assert {float(line) for line in softmax_csv.decode().splitlines()} <= {0.0, 1.0, 2.0}


@pytest.mark.parametrize("accept", [None, "", "*/*", "image/png, */*;q=0.5"])
async def test_missing_content_type_and_wildcard_accept_mean_csv(
    models: dict[str, Model], servers: dict[str, Server], accept: str | None
) -> None:
    rows = query_rows()
    status, headers, body = await invoke(servers["binary"], as_csv(rows), None, accept)
    assert status == 200, body
    assert headers["Content-Type"] == "text/csv; charset=utf-8"
    expected = models["binary"].reference(rows)
    np.testing.assert_allclose(parse_predictions(body, "text/csv"), expected, atol=1e-6)


async def test_concurrent_requests_each_get_their_own_predictions(
    models: dict[str, Model], servers: dict[str, Server]
) -> None:
    server = servers["binary"]
    batches = [query_rows(seed=100 + index, rows=1 + index % 4) for index in range(40)]
    async with server.session() as session:

        async def one(rows: Matrix) -> Matrix:
            async with session.post(
                server.url("/invocations"), data=as_csv(rows), headers={"Content-Type": "text/csv"}
            ) as response:
                assert response.status == 200
                return parse_predictions(await response.read(), "text/csv")

        results = await asyncio.gather(*(one(rows) for rows in batches))
    for rows, predictions in zip(batches, results, strict=True):
        np.testing.assert_allclose(predictions, models["binary"].reference(rows), atol=1e-6)


def read_response(stream: io.BufferedReader) -> tuple[int, bytes]:
    """One response with a Content-Length from a socket's file: status and body."""
    status = int(stream.readline().split()[1])
    length = 0
    while (line := stream.readline()) != b"\r\n":
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, stream.read(length)


def test_pipelined_requests_on_one_connection_are_answered_in_order(
    models: dict[str, Model], servers: dict[str, Server]
) -> None:
    server = servers["binary"]
    batches = [query_rows(seed=200 + index, rows=1 + index % 3) for index in range(8)]
    requests = b"".join(
        b"POST /invocations HTTP/1.1\r\nHost: worker\r\nContent-Type: text/csv\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(as_csv(rows)), as_csv(rows))
        for rows in batches
    )
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(30)
        connection.connect(str(server.unix_path))
        connection.sendall(requests)  # all 8 in one write, before any answer is read
        with connection.makefile("rb") as stream:
            answers = [read_response(stream) for _ in batches]
    for rows, (status, body) in zip(batches, answers, strict=True):
        assert status == 200, body
        expected = models["binary"].reference(rows)
        np.testing.assert_allclose(parse_predictions(body, "text/csv"), expected, atol=1e-6)


async def test_custom_attributes_are_echoed(servers: dict[str, Server]) -> None:
    body = as_csv(query_rows(rows=1))
    attributes = "trace=abc-123,c000b4f9-df62-4c85-a0bf-7c525f9104a4"
    header = "X-Amzn-SageMaker-Custom-Attributes"
    _, echoed, _ = await invoke(servers["binary"], body, headers={header.lower(): attributes})
    assert echoed.get(header) == attributes
    _, plain, _ = await invoke(servers["binary"], body)
    assert header not in plain


# --- /ping and /info ----------------------------------------------------------------------------


async def test_ping_is_200_with_an_empty_body(servers: dict[str, Server]) -> None:
    server = servers["binary"]
    async with server.session() as session, session.get(server.url("/ping")) as response:
        assert response.status == 200
        assert await response.read() == b""


async def test_info_describes_the_model_and_the_process(servers: dict[str, Server]) -> None:
    server = servers["softprob"]
    async with server.session() as session, session.get(server.url("/info")) as response:
        info = await response.json()
    assert info["pid"] == server.process.pid
    assert info["cpus"] == sorted(os.sched_getaffinity(0))
    assert info["nthread"] == len(os.sched_getaffinity(0))
    assert info["num_features"] == FEATURES
    assert info["objective"] == "multi:softprob"
    assert info["batching"] == {"max_rows": 64, "max_wait_us": 500}
    assert info["predictor"] == "c-api"


def test_the_affinity_set_before_exec_sets_cpus_and_nthread(
    models: dict[str, Model], tmp_path: Path
) -> None:
    def pin_to_cpu_zero() -> None:
        os.sched_setaffinity(0, {0})

    with running_server(tmp_path, models["binary"].directory, preexec_fn=pin_to_cpu_zero) as server:
        info = asyncio.run(read_info(server))
    assert info["cpus"] == [0]
    assert info["nthread"] == 1


async def read_info(server: Server) -> dict[str, Any]:
    """GET /info."""
    async with server.session() as session, session.get(server.url("/info")) as response:
        info: dict[str, Any] = await response.json()
        return info


async def test_tcp(models: dict[str, Model], tmp_path: Path) -> None:
    with running_server(tmp_path, models["regression"].directory, tcp=True) as server:
        rows = query_rows()
        status, _, body = await invoke(server, as_json(rows), "application/json")
    assert status == 200
    expected = models["regression"].reference(rows)
    np.testing.assert_allclose(parse_predictions(body, "text/csv"), expected, atol=1e-6)


async def test_ping_answers_while_a_large_request_is_handled(servers: dict[str, Server]) -> None:
    server = servers["binary"]
    rows = np.tile(query_rows(rows=100), (200, 1))  # 20,000 rows, ~5 MiB of CSV
    body = as_csv(rows)
    assert len(body) < MAX_BODY_BYTES
    answered: list[str] = []  # the order answers came in: no clock, so no load makes it flaky
    async with server.session() as session:

        async def large() -> int:
            async with session.post(
                server.url("/invocations"), data=payload(body), headers={"Content-Type": "text/csv"}
            ) as response:
                await response.read()
                answered.append("invocations")
                return response.status

        async def pings() -> None:
            for _ in range(10):
                async with session.get(server.url("/ping")) as response:
                    assert response.status == 200
                answered.append("ping")
                await asyncio.sleep(0.02)

        status, _ = await asyncio.gather(large(), pings())
    assert status == 200
    # The contract wants /ping answered within 2 s even while the server works: a ping sent with
    # the large request is answered before it, so the request does not hold up the server.
    assert answered.count("ping") == 10
    assert answered[0] == "ping", answered


# --- bad requests -------------------------------------------------------------------------------

ROW = query_rows(rows=1)


@pytest.mark.parametrize(
    ("body", "content_type", "accept", "status", "message"),
    [
        (b"1,2,3\n", "text/csv", None, 400, "row 1 has 3 features, the model expects 13"),
        (b"", "text/csv", None, 400, "empty request body"),
        (b"\xff\xfe", "text/csv", None, 400, "not valid UTF-8"),
        (as_csv(ROW).replace(b"\n", b",x\n"), "text/csv", None, 400, "row 1 has 14 features"),
        (b"1,2", "application/x-recordio-protobuf", None, 415, "application/x-recordio-protobuf"),
        (as_csv(ROW), "text/csv", "image/png", 406, "image/png"),
        (b"\x93NUMPY garbage", "application/x-npy", None, 400, "not a valid .npy array"),
        (b"[1, 2", "application/json", None, 400, "not valid JSON"),
        (b"1 0:1", "text/libsvm", None, 400, "libsvm indices start at 1"),
    ],
)
async def test_bad_requests_are_4xx_and_the_server_lives_on(
    servers: dict[str, Server],
    body: bytes,
    content_type: str,
    accept: str | None,
    status: int,
    message: str,
) -> None:
    server = servers["binary"]
    answer_status, _, answer = await invoke(server, body, content_type, accept)
    assert answer_status == status
    assert message in answer.decode()
    assert server.process.poll() is None
    assert ping_once(server)


async def test_a_body_over_6_mib_is_413(servers: dict[str, Server]) -> None:
    server = servers["binary"]
    status, _, body = await invoke(server, b"1" * (MAX_BODY_BYTES + 1), "text/csv")
    assert status == 413
    assert b"6291456" in body
    status, _, _ = await invoke(server, as_csv(ROW), "text/csv")
    assert status == 200


async def test_the_default_accept_comes_from_the_environment(
    models: dict[str, Model], tmp_path: Path
) -> None:
    environment = {"SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": "application/jsonlines"}
    with running_server(tmp_path, models["binary"].directory, environment=environment) as server:
        status, headers, _ = await invoke(server, as_csv(ROW), accept="*/*")
    assert status == 200
    assert headers["Content-Type"] == "application/jsonlines"


# --- start-up failures --------------------------------------------------------------------------


def test_a_file_that_is_not_a_model_exits_2_naming_it(tmp_path: Path) -> None:
    (tmp_path / "xgboost-model").write_bytes(b"this is not a model")
    code, stderr = start_failure(tmp_path)
    assert code == 2
    assert str(tmp_path / "xgboost-model") in stderr
    assert "not an XGBoost model" in stderr
    assert "Traceback" not in stderr


def test_a_load_failure_never_quotes_the_file(tmp_path: Path) -> None:
    # Were the artifact any file of the host, its contents must not reach a FailureReason.
    (tmp_path / "xgboost-model").write_bytes(b"root:$6$secret-hash:19000:0:99999:7:::\n")
    code, stderr = start_failure(tmp_path)
    assert code == 2
    assert "not an XGBoost model" in stderr
    assert "secret" not in stderr
    assert "root:" not in stderr
    (tmp_path / "xgboost-model").write_bytes(b'{"learner": "hunter2"')
    code, stderr = start_failure(tmp_path)
    assert code == 2
    assert "hunter2" not in stderr


def test_an_empty_or_missing_model_directory_exits_2(tmp_path: Path) -> None:
    (tmp_path / ".hidden").write_bytes(b"dot files are not models")
    code, stderr = start_failure(tmp_path)
    assert code == 2
    assert "no model file (expected xgboost-model)" in stderr
    code, stderr = start_failure(tmp_path / "absent")
    assert code == 2
    assert "does not exist" in stderr


def test_several_model_files_are_refused(models: dict[str, Model], tmp_path: Path) -> None:
    booster = models["binary"].booster
    (tmp_path / "model-a.json").write_bytes(bytes(booster.save_raw("json")))
    (tmp_path / "model-b.ubj").write_bytes(bytes(booster.save_raw("ubj")))
    code, stderr = start_failure(tmp_path)
    assert code == 2
    assert "several model files (model-a.json, model-b.ubj)" in stderr
    assert "SAGEMAKER_INFERENCE_ENSEMBLE" in stderr


async def test_xgboost_model_is_preferred_among_several_files(
    models: dict[str, Model], tmp_path: Path
) -> None:
    model_dir = model_directory(tmp_path, "model", models["regression"].booster)
    (model_dir / "model-b.json").write_bytes(bytes(models["binary"].booster.save_raw("json")))
    with running_server(tmp_path, model_dir) as server:
        info = await read_info(server)
        log = server.log()
    assert info["objective"] == "reg:squarederror"
    assert "ignoring model-b.json" in log


async def test_a_single_file_of_another_name_in_ubjson_is_served(
    models: dict[str, Model], tmp_path: Path
) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.ubj").write_bytes(bytes(models["softprob"].booster.save_raw("ubj")))
    rows = query_rows()
    with running_server(tmp_path, model_dir) as server:
        status, _, body = await invoke(server, as_npy(rows), "application/x-npy", "text/csv")
    assert status == 200
    expected = models["softprob"].reference(rows)
    np.testing.assert_allclose(parse_predictions(body, "text/csv"), expected, atol=1e-6)


def test_a_pickle_is_refused_without_allow_pickle(models: dict[str, Model], tmp_path: Path) -> None:
    (tmp_path / "xgboost-model").write_bytes(pickle.dumps(models["binary"].booster))
    code, stderr = start_failure(tmp_path)
    assert code == 2
    assert str(tmp_path / "xgboost-model") in stderr
    assert "pickle" in stderr
    assert "runs code" in stderr
    assert "--allow-pickle" in stderr


@pytest.mark.parametrize("kind", ["booster", "sklearn"])
async def test_a_pickle_is_served_with_allow_pickle(
    models: dict[str, Model], tmp_path: Path, kind: str
) -> None:
    model = models["binary"]
    pickled: Any = model.booster
    if kind == "sklearn":
        features, target = training_data(seed=11)
        pickled = xgboost.XGBClassifier(n_estimators=5, max_depth=2, n_jobs=1)
        pickled.fit(features, (target > 0).astype(int))
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "xgboost-model").write_bytes(pickle.dumps(pickled))
    rows = query_rows()
    with running_server(tmp_path, model_dir, "--allow-pickle") as server:
        status, _, body = await invoke(server, as_csv(rows), "text/csv")
    assert status == 200
    booster = model.booster if kind == "booster" else pickled.get_booster()
    expected = booster.predict(xgboost.DMatrix(rows, missing=np.nan))
    np.testing.assert_allclose(parse_predictions(body, "text/csv"), expected, atol=1e-6)


def test_an_unsupported_default_accept_exits_2(models: dict[str, Model]) -> None:
    argv = server_argv(models["binary"].directory, ["--unix", "/nonexistent/unused.sock"])
    environment = {**os.environ, "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": "image/png"}
    completed = subprocess.run(argv, capture_output=True, timeout=60, check=False, env=environment)
    assert completed.returncode == 2
    assert b"SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT" in completed.stderr


def test_an_address_that_cannot_be_bound_exits_2(models: dict[str, Model], tmp_path: Path) -> None:
    socket_path = tmp_path / "no-such-directory" / "worker.sock"
    argv = server_argv(models["binary"].directory, ["--unix", str(socket_path)])
    completed = subprocess.run(argv, capture_output=True, timeout=60, check=False)
    assert completed.returncode == 2
    assert b"cannot listen on" in completed.stderr
    assert str(socket_path).encode() in completed.stderr


# --- shutdown -----------------------------------------------------------------------------------


def test_sigterm_exits_0_and_removes_the_socket(models: dict[str, Model], tmp_path: Path) -> None:
    with running_server(tmp_path, models["binary"].directory) as server:
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(20) == 0
        assert server.unix_path is not None
        assert not server.unix_path.exists()


def test_sigterm_finishes_the_request_in_flight(models: dict[str, Model], tmp_path: Path) -> None:
    rows = np.tile(query_rows(rows=100), (200, 1))
    body = as_csv(rows)
    request = (
        b"POST /invocations HTTP/1.1\r\nHost: worker\r\nContent-Type: text/csv\r\n"
        b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
    ) + body
    with running_server(tmp_path, models["binary"].directory) as server:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(30)
            connection.connect(str(server.unix_path))
            # sendall returns once the server has read all but a socket buffer of the body:
            # its handler is running when the signal arrives.
            connection.sendall(request)
            server.process.send_signal(signal.SIGTERM)
            response = bytearray()
            while chunk := connection.recv(1 << 16):
                response.extend(chunk)
        assert server.process.wait(20) == 0
    head, _, answer = bytes(response).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert len(answer.decode().splitlines()) == len(rows)
