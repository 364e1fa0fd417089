"""`splitserve replay` against a stand-in gateway (a stdlib HTTP server in a thread): the requests
it sends, its pacing, the comparison it prints, and every refusal. The real gateway's run is in
tests/e2e/test_replay.py."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from splitserve.cli import main
from splitserve.config import EvaluationSettings, ReplaySettings
from splitserve.evaluation.errors import EvaluationInputError
from splitserve.evaluation.replay import ProgressBar, ReplayRequest, replay_command, run_replay
from tests.evaluation.records import capture_record, output_payload, write_capture
from tests.support.http import free_port


class _StandIn(BaseHTTPRequestHandler):
    """DescribeEndpoint for endpoint "ab" (variants A, B) and InvokeEndpoint answering 0.9 from
    B, a ModelError for a body "fail", and the runtime's 400 for any other variant."""

    seen: list[dict[str, Any]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path == "/":
            document = json.loads(body)
            if document.get("EndpointName") != "ab":
                self._answer(
                    400, {"__type": "ValidationException", "message": "Could not find endpoint"}
                )
                return
            self._answer(200, {"ProductionVariants": [{"VariantName": "A"}, {"VariantName": "B"}]})
            return
        self.seen.append({"path": self.path, "headers": dict(self.headers), "body": body})
        if body == b"drop\n":  # the connection closed with no answer at all
            self.close_connection = True
            return
        if body == b"fail\n":
            self._answer(424, {"ErrorCode": "ModelError", "Message": "Received server error (500)"})
        elif self.headers.get("X-Amzn-SageMaker-Target-Variant") == "B":
            self._reply(200, b"0.9\n", "text/csv")
        else:
            self._answer(400, {"ErrorCode": "ValidationError", "Message": "unknown variant"})

    def _answer(self, status: int, document: dict[str, Any]) -> None:
        self._reply(status, json.dumps(document).encode(), "application/json")

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test reads what was sent from `seen`."""


@pytest.fixture
def stand_in() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []
    handler = type("Handler", (_StandIn,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _capture(root: Path, *, fail: int = 0, drop: int = 0) -> Path:
    records = [
        capture_record(output_payload([0.2]), inference_id=f"id-{index}") for index in range(4)
    ]
    for record in records[:fail]:
        record["captureData"]["endpointInput"]["data"] = "fail\n"
    for record in records[fail : fail + drop]:
        record["captureData"]["endpointInput"]["data"] = "drop\n"
    no_input = capture_record(output_payload([0.3]))
    del no_input["captureData"]["endpointInput"]
    write_capture(root, "ab", "A", [*records, no_input])
    write_capture(root, "ab", "B", [capture_record(output_payload([0.7]))])
    return root


def _request(root: Path, url: str, **changes: Any) -> ReplayRequest:
    arguments: dict[str, Any] = {"endpoint": "ab", "variant": "B", "rate": 1000.0, **changes}
    return ReplayRequest(capture=root, url=url, **arguments)


def test_replay_sends_each_captured_request_to_the_candidate_and_compares(
    tmp_path: Path, stand_in: tuple[str, list[dict[str, Any]]]
) -> None:
    url, seen = stand_in
    out, err = io.StringIO(), io.StringIO()
    code = replay_command(
        _request(_capture(tmp_path), url, as_json=True),
        ReplaySettings(),
        EvaluationSettings(bootstrap_resamples=50),
        out,
        err,
    )
    assert code == 0, err.getvalue()
    assert len(seen) == 4
    assert {request["headers"]["X-Amzn-SageMaker-Target-Variant"] for request in seen} == {"B"}
    assert {request["headers"]["X-Amzn-SageMaker-Inference-Id"] for request in seen} == {
        f"id-{index}" for index in range(4)
    }
    assert {request["headers"]["Content-Type"] for request in seen} == {"text/csv"}
    assert all(request["path"] == "/endpoints/ab/invocations" for request in seen)
    document = json.loads(out.getvalue())
    assert document["replay"]["answered"] == 4
    assert document["replay"]["skipped"] == {
        "answered by B itself": 1,
        "without captured input": 1,
    }
    (comparison,) = document["shadow"]["shadows"]
    assert (comparison["shadow"], comparison["production"]) == ("B", "A")
    assert comparison["pairs"] == 4
    assert comparison["agreement"]["value"] == 0.0  # 0.2 against 0.9: every class differs
    assert comparison["score_difference"]["value"] == pytest.approx(0.7)
    assert "4/4" in err.getvalue()


def test_replay_counts_failures_and_prints_the_text_report(
    tmp_path: Path, stand_in: tuple[str, list[dict[str, Any]]]
) -> None:
    url, _ = stand_in
    out, err = io.StringIO(), io.StringIO()
    code = replay_command(
        _request(_capture(tmp_path, fail=1), url), ReplaySettings(), EvaluationSettings(), out, err
    )
    assert code == 0
    text = out.getvalue()
    assert "Replay of 4 captured requests of ab to variant B" in text
    assert "3 answered" in text
    assert "failed: 1 ModelError" in text
    assert "B (shadow of A):" in text


def test_every_failed_request_exits_1(
    tmp_path: Path, stand_in: tuple[str, list[dict[str, Any]]]
) -> None:
    url, _ = stand_in
    out, err = io.StringIO(), io.StringIO()
    code = replay_command(
        _request(_capture(tmp_path, fail=4), url), ReplaySettings(), EvaluationSettings(), out, err
    )
    assert code == 1
    assert "no replayed request was answered" in err.getvalue()


def test_the_rate_bounds_the_sending(
    tmp_path: Path, stand_in: tuple[str, list[dict[str, Any]]]
) -> None:
    url, _ = stand_in
    now = [0.0]
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    result = run_replay(
        _request(_capture(tmp_path), url, rate=2.0), ReplaySettings(), None, lambda: now[0], sleep
    )
    assert result.sent == 4
    # Request i goes out at i / rate seconds after the first: 0, 0.5, 1.0, 1.5.
    assert waits == pytest.approx([0.5, 0.5, 0.5])


def test_limit_replays_only_the_first_requests(
    tmp_path: Path, stand_in: tuple[str, list[dict[str, Any]]]
) -> None:
    url, seen = stand_in
    result = run_replay(_request(_capture(tmp_path), url, limit=2), ReplaySettings())
    assert (result.sent, len(seen), result.skipped["beyond --limit"]) == (2, 2, 2)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"rate": 0.0}, "--rate 0 is not between 0 and 1000"),
        ({"rate": float("nan")}, "--rate nan"),
        ({"rate": 1e9}, "is not between"),
        ({"endpoint": "nope"}, "no capture files for endpoint nope"),
        (
            {"variant": "C"},
            "C is not a production variant of endpoint ab; its production variants: A, B",
        ),
    ],
)
def test_refusals(
    tmp_path: Path,
    stand_in: tuple[str, list[dict[str, Any]]],
    changes: dict[str, Any],
    message: str,
) -> None:
    url, seen = stand_in
    with pytest.raises(EvaluationInputError, match=message):
        run_replay(_request(_capture(tmp_path), url, **changes), ReplaySettings())
    assert seen == []


def test_an_endpoint_the_gateway_does_not_know_is_refused(
    tmp_path: Path, stand_in: tuple[str, list[dict[str, Any]]]
) -> None:
    url, _ = stand_in
    write_capture(tmp_path, "other", "A", [capture_record(output_payload([0.2]))])
    request = ReplayRequest(capture=tmp_path, endpoint="other", variant="B", url=url, rate=5)
    with pytest.raises(EvaluationInputError, match="Could not find endpoint"):
        run_replay(request, ReplaySettings())


def test_a_capture_without_inputs_has_nothing_to_replay(
    tmp_path: Path, stand_in: tuple[str, list[dict[str, Any]]]
) -> None:
    url, _ = stand_in
    record = capture_record(output_payload([0.2]))
    del record["captureData"]["endpointInput"]
    write_capture(tmp_path, "ab", "A", [record])
    with pytest.raises(EvaluationInputError, match=r"nothing to replay.*1 without captured input"):
        run_replay(_request(tmp_path, url), ReplaySettings())


def test_cli_exits_2_with_the_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing"
    args = ["replay", "--capture", str(missing), "--endpoint", "ab", "--variant", "B"]
    assert main(args) == 2
    assert f"capture directory {missing} does not exist" in capsys.readouterr().err
    assert main([*args, "--rate", "-1"]) == 2
    assert "--rate -1 is not between" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main([*args, "--rate", "fast"])
    assert exited.value.code == 2


def test_cli_names_a_gateway_that_does_not_answer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _capture(tmp_path)
    url = f"http://127.0.0.1:{free_port()}"
    code = main(
        ["replay", "--capture", str(tmp_path), "--endpoint", "ab", "--variant", "B", "--url", url]
    )
    assert code == 2
    assert url.removeprefix("http://") in capsys.readouterr().err


def test_a_request_with_no_answer_is_counted_and_the_next_one_reconnects(
    tmp_path: Path, stand_in: tuple[str, list[dict[str, Any]]]
) -> None:
    url, seen = stand_in
    result = run_replay(_request(_capture(tmp_path, drop=2), url), ReplaySettings())
    assert result.failed == {"no answer": 2}
    assert result.answered == 2
    assert len(seen) == 4
    assert "no answer from the gateway" in result.failure_examples[0]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_bar_redraws_one_line_on_a_terminal() -> None:
    stream = _Terminal()
    bar = ProgressBar(stream, interval=0.0, width=10)
    for done in range(1, 5):
        bar(done, 4, done // 4)
    text = stream.getvalue()
    assert text.count("\r") == 4
    assert "[##########] 4/4 " in text
    assert text.rstrip("\n").endswith("1 failed")
    assert text.count("\n") == 1  # the last draw ends the line
