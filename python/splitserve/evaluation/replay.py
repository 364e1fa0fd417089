"""`splitserve replay`: yesterday's captured requests sent to a candidate variant, then compared.

The capture (read with its inputs by `capture_reader.read_capture`) holds, for each production
request, the body the caller sent and the answer production gave. Replay sends each body again to
the same endpoint with `X-Amzn-SageMaker-Target-Variant` naming the candidate (and the captured
`X-Amzn-SageMaker-Inference-Id`, so the candidate's own capture joins the same ground truth), at
most `--rate` requests a second, one at a time, with a progress bar on stderr. Each answer becomes
a record of the candidate marked as a shadow of the production variant that answered the
original, under the original's eventId, so the report is exactly `evaluate --shadow`'s
(`shadow.compare_shadows`): agreement of the predicted class, score differences, row mismatches.
The pairing is made here, by the captured record each replayed request came from (its eventId,
which unlike an InferenceId never repeats), not by reading the candidate's capture back.

The requests go out over the standard library's `http.client` on one kept-alive connection,
unsigned, like `splitserve stats` (a gateway started with `--auth` refuses them, and the report
says so): the evaluation part imports neither the data plane nor the container-contract client
(docs/architecture.md), and a replay needs one connection, not a pool.

Before anything is sent, DescribeEndpoint checks that the endpoint exists and that the variant is
one of its production variants; those, a capture with nothing to replay and a gateway that cannot
be reached are `EvaluationInputError`s (exit 2). A request that fails is counted by its error code,
with a few examples, and left out of the comparison.
"""

from __future__ import annotations

import base64
import http.client
import json
import sys
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from splitserve.config import EvaluationSettings, ReplaySettings
from splitserve.evaluation.capture_reader import (
    CapturedRequest,
    CaptureRead,
    parse_scores,
    read_capture,
)
from splitserve.evaluation.errors import EvaluationInputError
from splitserve.evaluation.shadow import compare_shadows, shadow_json, shadow_text
from splitserve.gateway_client import GatewayClient, GatewayRequestError

__all__ = ["ProgressBar", "ReplayRequest", "ReplayResult", "replay_command", "run_replay"]

_TARGET_VARIANT = "X-Amzn-SageMaker-Target-Variant"
_INFERENCE_ID = "X-Amzn-SageMaker-Inference-Id"


@dataclass(frozen=True)
class ReplayRequest:
    """The arguments of one `splitserve replay`.

    Attributes:
        capture: the capture destination (or the endpoint's directory under it).
        endpoint: the endpoint to replay to (and whose capture is read).
        variant: the candidate production variant every request is sent to.
        url: the gateway.
        rate: requests per second at most.
        as_json: print JSON instead of text.
        limit: replay at most this many requests (the first in capture order), or all.
    """

    capture: Path
    endpoint: str
    variant: str
    url: str
    rate: float
    as_json: bool = False
    limit: int | None = None


@dataclass(frozen=True)
class ReplayResult:
    """What a replay sent and got back.

    Attributes:
        capture: the capture read (production records and the candidate's answers as shadow
            records, ready for `compare_shadows`).
        candidate: the variant replayed to.
        sent: requests sent.
        answered: requests answered with scores.
        failed: failed requests by error code (or "unreadable answer", "no answer").
        failure_examples: a few failures, as messages.
        skipped: captured records not replayed, by reason.
        seconds: how long the sending took.
    """

    capture: CaptureRead
    candidate: str
    sent: int
    answered: int
    failed: Counter[str]
    failure_examples: tuple[str, ...]
    skipped: Counter[str]
    seconds: float


class _Connection:
    """One kept-alive HTTP connection to the gateway, reopened after a failure."""

    def __init__(self, url: str, timeout: float) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise EvaluationInputError(f"--url {url} is not an http:// or https:// URL")
        self._secure = parsed.scheme == "https"
        self._host = parsed.hostname
        self._port = parsed.port
        self._prefix = parsed.path.rstrip("/")
        self._timeout = timeout
        self._connection: http.client.HTTPConnection | None = None

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, str, bytes]:
        """(status, content type, body) of one POST; raises OSError/HTTPException on failure."""
        if self._connection is None:
            factory = http.client.HTTPSConnection if self._secure else http.client.HTTPConnection
            self._connection = factory(self._host, self._port, timeout=self._timeout)
        try:
            self._connection.request("POST", self._prefix + path, body=body, headers=headers)
            response = self._connection.getresponse()
            return response.status, response.getheader("Content-Type", ""), response.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise

    def close(self) -> None:
        """Close the connection (the next post opens a new one)."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def production_variants(url: str, endpoint: str, timeout: float) -> list[str]:
    """The endpoint's production variants, from DescribeEndpoint on the gateway at `url`.

    Raises:
        EvaluationInputError: the gateway cannot be reached, does not know the endpoint (its
            message is passed on), or answers without ProductionVariants.
    """
    try:
        document = GatewayClient(url, timeout).sagemaker(
            "DescribeEndpoint", {"EndpointName": endpoint}
        )
    except GatewayRequestError as error:
        if error.status is None:
            raise EvaluationInputError(error.message) from None
        raise EvaluationInputError(f"DescribeEndpoint at {url} failed: {error.message}") from None
    try:
        return [str(variant["VariantName"]) for variant in document["ProductionVariants"]]
    except (KeyError, TypeError):
        raise EvaluationInputError(
            f"DescribeEndpoint at {url} gave no ProductionVariants for {endpoint}"
        ) from None


def run_replay(
    request: ReplayRequest,
    settings: ReplaySettings,
    progress: Callable[[int, int, int], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> ReplayResult:
    """Check the inputs, send the captured requests to the candidate, collect the answers.

    Args:
        request: the command's arguments.
        settings: the replay's settings.
        progress: called as (done, total, failed) after every request.
        clock, sleep: the pacing's time source and wait (tests pass fakes).

    Raises:
        EvaluationInputError: the rate is out of range, the capture has nothing to replay, the
            gateway cannot be reached, or the endpoint or variant is unknown to it.
    """
    if not 0 < request.rate <= settings.max_rate:
        raise EvaluationInputError(
            f"--rate {request.rate:g} is not between 0 and {settings.max_rate:g} requests/s"
        )
    if request.limit is not None and request.limit < 1:
        raise EvaluationInputError(f"--limit {request.limit} is not a positive count")
    capture = read_capture(request.capture, request.endpoint, with_inputs=True)
    variants = production_variants(request.url, request.endpoint, settings.timeout_seconds)
    if request.variant not in variants:
        raise EvaluationInputError(
            f"{request.variant} is not a production variant of endpoint {request.endpoint}; "
            f"its production variants: {', '.join(variants) or 'none'}"
        )
    skipped: Counter[str] = Counter()
    chosen: list[CapturedRequest] = []
    for record in capture.requests:
        reason = _skip_reason(record, request.variant)
        if reason is not None:
            skipped[reason] += 1
        elif request.limit is not None and len(chosen) >= request.limit:
            skipped["beyond --limit"] += 1
        else:
            chosen.append(record)
    if not chosen:
        reasons = "; ".join(f"{count} {reason}" for reason, count in sorted(skipped.items()))
        raise EvaluationInputError(
            f"nothing to replay in the capture of {request.endpoint} under {request.capture} "
            f"({reasons or 'no records'}); replay needs records with both Input and Output "
            "captured"
        )
    connection = _Connection(request.url, settings.timeout_seconds)
    path = f"/endpoints/{urllib.parse.quote(request.endpoint, safe='')}/invocations"
    answers: list[CapturedRequest] = []
    failed: Counter[str] = Counter()
    examples: list[str] = []
    start = clock()
    try:
        for index, record in enumerate(chosen):
            wait = start + index / request.rate - clock()
            if wait > 0:
                sleep(wait)
            answer, failure = _send(connection, path, record, request.variant)
            if answer is not None:
                answers.append(answer)
            else:
                code, message = failure
                failed[code] += 1
                if len(examples) < settings.max_failure_examples:
                    examples.append(f"{record.source}: {message}")
            if progress is not None:
                progress(index + 1, len(chosen), sum(failed.values()))
    finally:
        connection.close()
    combined = replace(capture, requests=(*capture.requests, *answers))
    return ReplayResult(
        capture=combined,
        candidate=request.variant,
        sent=len(chosen),
        answered=len(answers),
        failed=failed,
        failure_examples=tuple(examples),
        skipped=skipped,
        seconds=clock() - start,
    )


def _skip_reason(record: CapturedRequest, candidate: str) -> str | None:
    if record.shadow_of is not None:
        return "shadow records"
    if record.variant == candidate:
        return f"answered by {candidate} itself"
    if record.input_body is None:
        return "without captured input"
    if record.scores is None or record.event_id is None:
        return "without a usable captured answer"
    return None


def _send(
    connection: _Connection, path: str, record: CapturedRequest, candidate: str
) -> tuple[CapturedRequest | None, tuple[str, str]]:
    """Send one captured request to the candidate: its answer as a shadow record, or a failure
    as (code, message)."""
    headers = {_TARGET_VARIANT: candidate}
    if record.input_content_type:
        headers["Content-Type"] = record.input_content_type
    if record.inference_id:
        headers[_INFERENCE_ID] = record.inference_id
    assert record.input_body is not None  # _skip_reason left out the others
    try:
        status, content_type, body = connection.post(path, record.input_body, headers)
    except (OSError, http.client.HTTPException) as error:
        return None, ("no answer", f"no answer from the gateway ({error})")
    if status != 200:
        return None, _error(status, body)
    payload = {
        "observedContentType": content_type,
        "encoding": "BASE64",
        "data": base64.b64encode(body).decode("ascii"),
    }
    try:
        scores = parse_scores(payload)
    except ValueError as error:
        return None, ("unreadable answer", f"answer holds no scores: {error}")
    return (
        CapturedRequest(
            variant=candidate,
            event_id=record.event_id,
            inference_id=record.inference_id,
            inference_time=None,
            scores=scores,
            problem=None,
            source=f"replay of {record.source}",
            targeted=True,
            shadow_of=record.variant,
        ),
        ("", ""),
    )


def _error(status: int, body: bytes) -> tuple[str, str]:
    """(code, message) of an error answer in the runtime's wire form."""
    try:
        document: Any = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        document = None
    if isinstance(document, dict):
        code = document.get("ErrorCode") or document.get("code") or document.get("__type")
        message = document.get("Message") or document.get("message")
        if isinstance(code, str) and isinstance(message, str):
            return code, f"{code} ({status}): {message}"
    return f"HTTP {status}", f"HTTP {status}"


class ProgressBar:
    """A one-line progress bar on a text stream (stderr), redrawn at most every `interval`."""

    def __init__(self, stream: TextIO, interval: float, width: int = 30) -> None:
        self._stream = stream
        self._interval = interval
        self._width = width
        self._last = -interval
        self._started = time.monotonic()
        self._live = stream.isatty()

    def __call__(self, done: int, total: int, failed: int) -> None:
        """Show `done` of `total` (and the failures); the last call always draws."""
        now = time.monotonic()
        if done < total and now - self._last < self._interval:
            return
        self._last = now
        filled = self._width * done // max(total, 1)
        rate = done / max(now - self._started, 1e-9)
        line = (
            f"replay [{'#' * filled}{'.' * (self._width - filled)}] {done}/{total} "
            f"{rate:.1f}/s, {failed} failed"
        )
        if self._live:
            self._stream.write("\r" + line + ("\n" if done >= total else ""))
        elif done >= total or done * 10 // max(total, 1) != (done - 1) * 10 // max(total, 1):
            self._stream.write(line + "\n")  # not a terminal: a line every tenth
        self._stream.flush()


def replay_command(
    request: ReplayRequest,
    settings: ReplaySettings,
    evaluation: EvaluationSettings,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Run `splitserve replay`: send, then print the comparison; return the exit code.

    Exit codes: 0 when the report was printed, 1 when no replayed request was answered, 2 when
    the inputs cannot be used (the reason goes to stderr).
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        result = run_replay(request, settings, ProgressBar(err, settings.progress_interval_seconds))
    except EvaluationInputError as error:
        print(f"splitserve replay: {error.message}", file=err)
        return 2
    report = compare_shadows(result.capture, evaluation)
    report = replace(
        report,
        comparisons=tuple(c for c in report.comparisons if c.shadow == result.candidate),
    )
    summary = {
        "endpoint": request.endpoint,
        "variant": result.candidate,
        "sent": result.sent,
        "answered": result.answered,
        "failed": dict(sorted(result.failed.items())),
        "failure_examples": list(result.failure_examples),
        "skipped": dict(sorted(result.skipped.items())),
        "seconds": round(result.seconds, 3),
    }
    if request.as_json:
        json.dump({"replay": summary, "shadow": shadow_json(report)}, out, indent=2)
        out.write("\n")
    else:
        out.write(_summary_text(summary))
        out.write("\n")
        out.write(shadow_text(report))
    if result.answered == 0:
        print("splitserve replay: no replayed request was answered", file=err)
        return 1
    return 0


def _summary_text(summary: dict[str, Any]) -> str:
    lines = [
        f"Replay of {summary['sent']} captured requests of {summary['endpoint']} to variant "
        f"{summary['variant']} in {summary['seconds']:.1f} s: {summary['answered']} answered"
    ]
    failed: dict[str, int] = summary["failed"]
    if failed:
        lines.append("  failed: " + ", ".join(f"{count} {code}" for code, count in failed.items()))
        lines.extend(f"    {example}" for example in summary["failure_examples"])
    skipped: dict[str, int] = summary["skipped"]
    if skipped:
        lines.append(
            "  not replayed: " + ", ".join(f"{count} {why}" for why, count in skipped.items())
        )
    return "\n".join(lines) + "\n"
