"""Data capture (SageMaker's DataCaptureConfig): sampled requests and answers as JSON Lines files.

The layout and the record format are SageMaker's (docs/sagemaker-api.md, section 6),
so tools written for SageMaker's capture read these files unchanged:

    <destination>/<EndpointName>/<VariantName>/YYYY/MM/DD/HH/<MM>-<SS>-<mmm>-<replica>-<uuid>.jsonl

one line per captured invocation, `YYYY/MM/DD/HH` being the UTC hour of its `inferenceTime`, and the
file name the minute, second and millisecond the file was started, the id of the gateway replica
that writes it (`cluster.view.new_replica_id`: several replicas capture into one destination, and
each writes only files of its own) and a random UUID. SageMaker's names end in a UUID too; readers
take every `*.jsonl` file, whatever its name (`splitserve evaluate` included).

Capture never slows or fails a request. The request path (`CaptureSink.offer`) draws one random
number, builds one tuple and appends it to the `CaptureWriter`'s bounded queue; nothing there
blocks, encodes or touches the disk. A record that finds the queue full is dropped and counted in
`splitserve_capture_dropped_total`. The writer's own thread encodes the records (base64 or text),
appends them to the hour's file and flushes after every batch it takes from the queue, so what a
request handed over is in the file within moments. Disk errors, and a destination whose file system
is fuller than `CaptureSettings.max_disk_usage`, are logged and counted the same way and never reach
a request. `CaptureWriter.close` writes everything still queued and closes the files.

Choices where SageMaker's documentation is silent:
- A payload is captured as text (encoding CSV or JSON) when its media type, without parameters and
  compared case-insensitively, is listed in CaptureContentTypeHeader and the bytes are valid UTF-8;
  otherwise, and always without CaptureContentTypeHeader, it is captured BASE64.
- A request without Content-Type, or an answer without one, is recorded as
  `application/octet-stream`, the type the gateway's answer then carries.
- Only successful invocations are captured (the caller of `offer` decides; see
  `runtime.service`): a failed one has no model output to monitor.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from prometheus_client import Counter

from splitserve.capture.spec import DataCapture
from splitserve.config import CaptureSettings
from splitserve.metrics.prometheus import CAPTURE_DROPPED

log = logging.getLogger(__name__)

#: What a request without Content-Type (or an answer without one) is recorded as.
DEFAULT_CONTENT_TYPE = "application/octet-stream"

# What a replica id may hold to be part of a file name (`cluster.view.new_replica_id` makes them).
_REPLICA_ID = re.compile(r"[A-Za-z0-9.-]{1,200}")
# What a queued record costs besides its payloads (the tuple, its strings), for the queue's bound.
_RECORD_OVERHEAD_BYTES = 512
# How often the writer thread wakes with nothing queued, to close idle files.
_TICK_SECONDS = 1.0
# The same failure (per destination) is logged at most this often.
_ERROR_LOG_INTERVAL_SECONDS = 60.0

# One queued record, a plain tuple so the request path builds it cheaply:
# (target, inference time (epoch seconds), request Content-Type, InferenceId, request body or None
#  when input is not captured, response body or None when output is not captured, response
#  Content-Type, weight in bytes for the queue's bound, whether the caller named the variant,
#  the eventId when the record shares it with a shadow's (None: a new one), splitserve's extra
#  eventMetadata for a request copied to shadows (None: none)).
_Record = tuple[
    "_VariantTarget",
    float,
    str | None,
    str | None,
    bytes | None,
    bytes | None,
    bytes | None,
    int,
    bool,
    str | None,
    Mapping[str, object] | None,
]


@dataclass(frozen=True, slots=True)
class _VariantTarget:
    """Where and how one variant of one endpoint generation captures."""

    endpoint_name: str
    variant_name: str
    destination: Path
    directory: Path
    capture_input: bool
    capture_output: bool
    csv_content_types: frozenset[str]
    json_content_types: frozenset[str]
    dropped: Counter


class CaptureSink:
    """One endpoint generation's capture: samples its successful invocations into the writer."""

    __slots__ = ("_clock", "_draw", "_fraction", "_targets", "_writer")

    def __init__(
        self,
        writer: CaptureWriter,
        targets: Mapping[str, _VariantTarget],
        sampling_percentage: int,
        draw: Callable[[], float],
        clock: Callable[[], float],
    ) -> None:
        self._writer = writer
        self._targets = dict(targets)
        self._fraction = sampling_percentage / 100.0
        self._draw = draw
        self._clock = clock

    @property
    def sampling_percentage(self) -> float:
        """The share of invocations captured, in percent."""
        return self._fraction * 100.0

    def offer(
        self,
        variant: str,
        content_type: str | None,
        inference_id: str | None,
        body: bytes,
        response_body: bytes,
        response_content_type: bytes | None,
        targeted: bool = False,
        event_id: str | None = None,
        shadowed: Mapping[str, object] | None = None,
    ) -> bool:
        """Capture one successful invocation if the sampling draw selects it. Never blocks, never
        raises: a record the writer's queue has no room for is dropped and counted.

        Args:
            variant: the variant that answered.
            content_type: the request's Content-Type, if it had one.
            inference_id: the request's X-Amzn-SageMaker-Inference-Id, if it had one.
            body: the request payload.
            response_body: the model's answer.
            response_content_type: the answer's Content-Type header, if it had one.
            targeted: the caller chose the variant (TargetVariant), so the weights did not; the
                record says so (`encode_record`) and `splitserve evaluate` leaves it out of the
                split check.
            event_id: the record's eventId, shared with the records of its shadow copies
                (`runtime.shadow`); None draws a new one.
            shadowed: splitserve's eventMetadata for a request copied to shadows (the model
                latency, which `splitserve evaluate --shadow` compares).

        Returns:
            Whether the draw selected the invocation (its shadows' answers are captured too).
        """
        if self._fraction < 1.0 and self._draw() >= self._fraction:
            return False
        self.offer_selected(
            variant,
            content_type,
            inference_id,
            body,
            response_body,
            response_content_type,
            targeted,
            event_id,
            shadowed,
        )
        return True

    def offer_selected(
        self,
        variant: str,
        content_type: str | None,
        inference_id: str | None,
        body: bytes,
        response_body: bytes,
        response_content_type: bytes | None,
        targeted: bool = False,
        event_id: str | None = None,
        shadowed: Mapping[str, object] | None = None,
    ) -> None:
        """Capture one invocation without a sampling draw: a shadow's answer to a copy of a
        request whose production answer was selected. Arguments as `offer`'s; never raises."""
        target = self._targets.get(variant)
        if target is None:
            return
        captured_body = body if target.capture_input else None
        captured_response = response_body if target.capture_output else None
        weight = _RECORD_OVERHEAD_BYTES
        if captured_body is not None:
            weight += len(captured_body)
        if captured_response is not None:
            weight += len(captured_response)
        record: _Record = (
            target,
            self._clock(),
            content_type,
            inference_id,
            captured_body,
            captured_response,
            response_content_type,
            weight,
            targeted,
            event_id,
            shadowed,
        )
        if not self._writer.enqueue(record):
            target.dropped.inc()


class CaptureWriter:
    """The bounded queue of capture records and the thread that writes them to their files.

    One per gateway: started in the app's cleanup context and closed after the HTTP server has
    stopped and the control service has closed, so a clean stop writes everything accepted.
    """

    def __init__(
        self,
        settings: CaptureSettings,
        *,
        clock: Callable[[], float] = time.time,
        replica_id: str | None = None,
    ) -> None:
        """A writer that is not yet running.

        Args:
            settings: queue bound, file rotation, disk limit and sampling seed.
            clock: the wall clock that stamps `inferenceTime` (tests pass a fixed one).
            replica_id: the gateway replica's id, put in every file name (letters, digits, '-'
                and '.'); None leaves it out (a writer outside a gateway).

        Raises:
            ValueError: `replica_id` is empty or holds other characters (it is part of a path).
        """
        if replica_id is not None and not _REPLICA_ID.fullmatch(replica_id):
            raise ValueError(
                f"a replica id in capture file names must be letters, digits, '-' or '.': "
                f"{replica_id!r}"
            )
        self._replica_id = replica_id
        self._settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._items: list[_Record] = []
        self._queued_bytes = 0
        self._closing = False
        self._thread: threading.Thread | None = None

    def sink(
        self, endpoint_name: str, variant_names: Iterable[str], config: DataCapture
    ) -> CaptureSink | None:
        """The capture sink of one endpoint generation, or None when it captures nothing
        (EnableCapture false or InitialSamplingPercentage 0).

        Args:
            endpoint_name: the EndpointName (a validated name: it is a directory name).
            variant_names: the generation's production variants (validated names).
            config: the generation's DataCaptureConfig, its destination already resolved and
                checked by the control plane's `LocalPathResolver`.
        """
        if not config.enable_capture or config.sampling_percentage <= 0:
            return None
        if not (config.capture_input or config.capture_output):
            return None
        csv_types = frozenset(t.lower() for t in config.csv_content_types)
        json_types = frozenset(t.lower() for t in config.json_content_types)
        targets = {
            name: _VariantTarget(
                endpoint_name=endpoint_name,
                variant_name=name,
                destination=config.destination,
                directory=config.destination / endpoint_name / name,
                capture_input=config.capture_input,
                capture_output=config.capture_output,
                csv_content_types=csv_types,
                json_content_types=json_types,
                dropped=CAPTURE_DROPPED.labels(endpoint_name, name),
            )
            for name in variant_names
        }
        draw = random.Random(self._settings.seed).random  # sampling, not secrets
        return CaptureSink(self, targets, config.sampling_percentage, draw, self._clock)

    def enqueue(self, record: _Record) -> bool:
        """Queue one record for the writer; False (and nothing queued) when the queue is full
        or the writer is closing. Called by sinks on the event loop; never blocks for long."""
        with self._lock:
            if self._closing or self._queued_bytes >= self._settings.max_queued_bytes:
                return False
            self._queued_bytes += record[7]
            self._items.append(record)
        if not self._ready.is_set():
            self._ready.set()
        return True

    def start(self) -> None:
        """Start the writer thread (records queued before this are written once it runs)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="capture-writer", daemon=True)
            self._thread.start()

    def close(self) -> bool:
        """Stop taking records, write everything queued, flush and close every file. Blocks (run it
        off the event loop). Returns False when the writer did not finish within
        `close_timeout_seconds` (it is a daemon thread, so it does not hold the process)."""
        with self._lock:
            self._closing = True
        self._ready.set()
        thread = self._thread
        if thread is None:
            self._run()  # never started: write what was queued on this thread
            return True
        thread.join(self._settings.close_timeout_seconds)
        if thread.is_alive():
            log.error(
                "data capture writer did not finish within %.0f s; records still queued are lost",
                self._settings.close_timeout_seconds,
            )
            return False
        return True

    def _run(self) -> None:
        files = _CaptureFiles(self._settings, self._replica_id)
        try:
            while True:
                self._ready.wait(_TICK_SECONDS)
                self._ready.clear()
                with self._lock:
                    batch, self._items = self._items, []
                    closing = self._closing
                if batch:
                    files.write(batch)
                    with self._lock:
                        self._queued_bytes -= sum(record[7] for record in batch)
                files.close_idle()
                if closing:
                    return
        finally:
            files.close_all()


@dataclass
class _OpenFile:
    path: Path
    handle: BinaryIO
    target: _VariantTarget
    size: int = 0
    unflushed: int = 0
    last_write: float = 0.0


class _CaptureFiles:
    """The writer thread's open files, one per variant directory and hour; only that thread uses
    this object."""

    def __init__(self, settings: CaptureSettings, replica_id: str | None) -> None:
        self._settings = settings
        self._name_part = "" if replica_id is None else f"{replica_id}-"
        self._open: dict[tuple[Path, tuple[int, int, int, int]], _OpenFile] = {}
        self._disk_checked: dict[Path, tuple[float, bool]] = {}
        self._logged: dict[tuple[str, Path], float] = {}

    def write(self, batch: list[_Record]) -> None:
        """Append each record to its file, then flush every file written to."""
        touched: dict[tuple[Path, tuple[int, int, int, int]], _OpenFile] = {}
        for record in batch:
            target = record[0]
            key = None
            try:
                if not self._disk_allows(target.destination):
                    target.dropped.inc()
                    continue
                line = encode_record(record)
                key, file = self._file_for(target, record[1])
                file.handle.write(line)
            except OSError as error:
                self._log_once("write", target.destination, "cannot write capture: %s", error)
                target.dropped.inc()
                if key is not None:  # the next record starts a new file
                    touched.pop(key, None)
                    self._close(key)
                continue
            except Exception:  # a bug must not stop the writer thread: later records still count
                log.exception(
                    "capture record for %s/%s failed", target.endpoint_name, target.variant_name
                )
                target.dropped.inc()
                continue
            file.size += len(line)
            file.unflushed += 1
            touched[key] = file
            if file.size >= self._settings.rotate_bytes:
                self._close(key)
                touched.pop(key)
        now = time.monotonic()
        for key, file in touched.items():
            file.last_write = now
            self._flush(key, file)

    def close_idle(self) -> None:
        """Close the files nothing was written to for `idle_close_seconds` (past hours, mostly)."""
        deadline = time.monotonic() - self._settings.idle_close_seconds
        for key in [key for key, file in self._open.items() if file.last_write < deadline]:
            self._close(key)

    def close_all(self) -> None:
        """Flush and close every open file."""
        for key in list(self._open):
            self._close(key)

    def _file_for(
        self, target: _VariantTarget, when: float
    ) -> tuple[tuple[Path, tuple[int, int, int, int]], _OpenFile]:
        moment = time.gmtime(when)
        hour = (moment.tm_year, moment.tm_mon, moment.tm_mday, moment.tm_hour)
        key = (target.directory, hour)
        file = self._open.get(key)
        if file is not None:
            return key, file
        directory = target.directory.joinpath(
            f"{hour[0]:04d}", f"{hour[1]:02d}", f"{hour[2]:02d}", f"{hour[3]:02d}"
        )
        directory.mkdir(parents=True, exist_ok=True)
        millisecond = int(when * 1000) % 1000
        name = (
            f"{moment.tm_min:02d}-{moment.tm_sec:02d}-{millisecond:03d}-"
            f"{self._name_part}{uuid.uuid4()}.jsonl"
        )
        path = directory / name
        file = _OpenFile(path, path.open("xb"), target, last_write=time.monotonic())
        self._open[key] = file
        return key, file

    def _flush(self, key: tuple[Path, tuple[int, int, int, int]], file: _OpenFile) -> None:
        try:
            file.handle.flush()
        except OSError as error:
            self._log_once("write", file.target.destination, "cannot write capture: %s", error)
            file.target.dropped.inc(file.unflushed)
            file.unflushed = 0
            self._close(key)
            return
        file.unflushed = 0

    def _close(self, key: tuple[Path, tuple[int, int, int, int]]) -> None:
        file = self._open.pop(key, None)
        if file is None:
            return
        try:
            file.handle.close()  # flushes what is buffered
        except OSError as error:
            self._log_once("write", file.target.destination, "cannot write capture: %s", error)
            file.target.dropped.inc(file.unflushed)

    def _disk_allows(self, destination: Path) -> bool:
        """Whether the destination's file system has room; measured at most once per interval."""
        now = time.monotonic()
        checked = self._disk_checked.get(destination)
        if checked is not None and now - checked[0] < self._settings.disk_check_interval_seconds:
            return checked[1]
        destination.mkdir(parents=True, exist_ok=True)
        usage = shutil.disk_usage(destination)
        # As df reports it: blocks reserved for root count as neither used nor available.
        fraction = usage.used / max(usage.used + usage.free, 1)
        allowed = fraction <= self._settings.max_disk_usage
        if checked is None or checked[1] != allowed:
            if not allowed:
                log.warning(
                    "data capture to %s stopped: its disk is %.0f%% full (limit %.0f%%)",
                    destination,
                    fraction * 100,
                    self._settings.max_disk_usage * 100,
                )
            elif checked is not None:
                log.info(
                    "data capture to %s resumed: its disk is %.0f%% full",
                    destination,
                    fraction * 100,
                )
        self._disk_checked[destination] = (now, allowed)
        return allowed

    def _log_once(self, kind: str, destination: Path, message: str, error: OSError) -> None:
        now = time.monotonic()
        last = self._logged.get((kind, destination))
        if last is None or now - last >= _ERROR_LOG_INTERVAL_SECONDS:
            self._logged[kind, destination] = now
            log.error(message, error)


def encode_record(record: _Record) -> bytes:
    """One capture record as its JSON line (with the newline), in SageMaker's format.

    A request that named its variant (TargetVariant) also has `"splitserve": {"targeted": true}`
    in its eventMetadata: SageMaker's records have no such field, so readers of its format ignore
    it, and records of weighted requests are exactly SageMaker's (README, "Data capture"). A
    request copied to shadow variants shares its eventId with the copies' records, and both carry
    `"splitserve": {"modelLatencyMicros": ...}` (a copy's also `"shadowOf": <production variant>`).
    """
    (target, when, content_type, inference_id, body, response_body, response_type) = record[:7]
    targeted, event_id, shadowed = record[8:11]
    capture_data: dict[str, dict[str, str]] = {}
    if body is not None:
        capture_data["endpointInput"] = _payload(
            "INPUT", content_type or DEFAULT_CONTENT_TYPE, body, target
        )
    if response_body is not None:
        observed = (
            DEFAULT_CONTENT_TYPE if response_type is None else response_type.decode("latin-1")
        )
        capture_data["endpointOutput"] = _payload("OUTPUT", observed, response_body, target)
    metadata: dict[str, object] = {"eventId": event_id or str(uuid.uuid4())}
    if inference_id is not None:
        metadata["inferenceId"] = inference_id
    metadata["inferenceTime"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
    if targeted or shadowed:
        extra: dict[str, object] = {"targeted": True} if targeted else {}
        if shadowed:
            extra.update(shadowed)
        metadata["splitserve"] = extra
    document = {"captureData": capture_data, "eventMetadata": metadata, "eventVersion": "0"}
    return json.dumps(document, separators=(",", ":")).encode() + b"\n"


def _payload(mode: str, observed: str, data: bytes, target: _VariantTarget) -> dict[str, str]:
    """endpointInput or endpointOutput: text for listed CSV/JSON types, else base64."""
    media_type = observed.partition(";")[0].strip().lower()
    encoding = (
        "CSV"
        if media_type in target.csv_content_types
        else "JSON"
        if media_type in target.json_content_types
        else "BASE64"
    )
    if encoding != "BASE64":
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:  # not text after all: keep the bytes exactly
            encoding = "BASE64"
    if encoding == "BASE64":
        text = base64.b64encode(data).decode("ascii")
    return {"observedContentType": observed, "mode": mode, "data": text, "encoding": encoding}
