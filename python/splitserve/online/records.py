"""The body of POST /splitserve/feedback/<endpoint>: label records in SageMaker's ground-truth
format (docs/sagemaker-api.md, '6. Data capture'), the format `splitserve evaluate` reads
offline (`evaluation.ground_truth`):

    {"groundTruthData": {"data": "1", "encoding": "CSV"},
     "eventMetadata": {"eventId": "<inference id>"}, "eventVersion": "0"}

The body is one such object (a single record: its refusal is the answer's error), or several:
a JSON array of them, or JSON Lines, one per line (a batch: every record gets an outcome of its
own). `data` holds one label per row of the request the id names (`"1,0,1"` for three rows),
spelled as `evaluate` reads them (`evaluation.ground_truth.parse_labels`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from splitserve.errors import MalformedFeedback
from splitserve.evaluation.ground_truth import parse_labels

__all__ = ["FeedbackBody", "parse_body"]

# An inference id's constraint (InvokeEndpoint's InferenceId: 1 to 64 printable characters).
_MAX_ID_CHARS = 64
# How much of a record's own text a refusal quotes.
_QUOTED_CHARS = 64


@dataclass(frozen=True)
class FeedbackBody:
    """A parsed feedback body.

    Attributes:
        single: the body was one record (not an array or JSON Lines).
        records: per record in order, (inference id, labels), or why it is malformed.
    """

    single: bool
    records: tuple[tuple[str, tuple[int, ...]] | MalformedFeedback, ...]


def parse_body(body: bytes, max_records: int) -> FeedbackBody:
    """The records of a feedback body.

    Raises:
        MalformedFeedback: the body is not UTF-8 JSON (or JSON Lines) of records, holds none, or
            more than `max_records`.
    """
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise MalformedFeedback("The feedback body is not UTF-8 text.") from None
    if not text.strip():
        raise MalformedFeedback(
            "The feedback body is empty: send a ground-truth record, an array of them, or JSON "
            "Lines."
        )
    try:
        document: object = json.loads(text)
        single = isinstance(document, dict)
        items = [document] if single else document
    except json.JSONDecodeError:
        # Not one JSON document: JSON Lines, one record per non-blank line.
        single = False
        items = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError:
                raise MalformedFeedback(
                    f"The feedback body is neither JSON nor JSON Lines (line {number} is not JSON)."
                ) from None
    if not isinstance(items, list):
        raise MalformedFeedback(
            "The feedback body must be a ground-truth record, an array of them, or JSON Lines."
        )
    if not items:
        raise MalformedFeedback("The feedback body holds no record.")
    if len(items) > max_records:
        raise MalformedFeedback(
            f"The feedback body holds {len(items)} records; at most {max_records} per request."
        )
    return FeedbackBody(single, tuple(_record(index, item) for index, item in enumerate(items)))


def _record(index: int, item: object) -> tuple[str, tuple[int, ...]] | MalformedFeedback:
    """One record's (inference id, labels), or why it is malformed (naming the record)."""
    where = f"Record {index}"
    if not isinstance(item, dict):
        return MalformedFeedback(f"{where} is not a JSON object.")
    data = item.get("groundTruthData")
    metadata = item.get("eventMetadata")
    if not isinstance(data, dict) or not isinstance(metadata, dict):
        return MalformedFeedback(
            f"{where} is not a ground-truth record: it needs groundTruthData and eventMetadata "
            "objects."
        )
    version = item.get("eventVersion", "0")
    if version != "0":
        return MalformedFeedback(f"{where} has eventVersion {_quoted(version)}; only 0 is known.")
    key = metadata.get("eventId")
    if not isinstance(key, str) or not key:
        return MalformedFeedback(f"{where} has no eventMetadata.eventId (the inference id).")
    if len(key) > _MAX_ID_CHARS or not key.isprintable():
        return MalformedFeedback(
            f"{where}'s eventMetadata.eventId is not an inference id (1 to {_MAX_ID_CHARS} "
            "printable characters)."
        )
    encoding = data.get("encoding", "CSV")
    if encoding != "CSV":
        return MalformedFeedback(
            f"{where} has groundTruthData.encoding {_quoted(encoding)}; only CSV is supported."
        )
    value = data.get("data")
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return MalformedFeedback(f"{where}'s groundTruthData.data is not text.")
    try:
        return key, parse_labels(str(value))
    except ValueError as error:
        return MalformedFeedback(f"{where} ({key}): {error}.")


def _quoted(value: object) -> str:
    return json.dumps(value)[:_QUOTED_CHARS]
