"""Read ground-truth labels: SageMaker's merge format, or a plain CSV of inference id and label.

`PATH` is a file or a directory; a directory is read recursively (SageMaker puts ground truth under
YYYY/MM/DD/HH/ directories, the hour the labels were collected), in sorted path order so that
later hours come later. Each file is sniffed: a first non-blank character `{` means JSON Lines in
SageMaker's merge format (docs/sagemaker-api.md, section 6), one record per line:

    {"groundTruthData": {"data": "1", "encoding": "CSV"}, "eventMetadata": {"eventId": "<id>"},
     "eventVersion": "0"}

anything else is CSV: `inference_id,label` rows, with or without a header row.

Labels are binary. `1`, `true`, `yes` (and `True.`, the churn data's spelling) are positive; `0`,
`false`, `no` negative; case does not matter. A captured request of k rows needs k labels, one per
row in order: `data` (or the CSV's label fields) may hold several labels separated by commas or
newlines (`"1,0,1"`, or CSV `id,1,0,1`). The join counts a request whose label count differs from
its row count as a mismatch.

An id given twice with different labels is a conflict: the later one wins and the conflict is
counted. Records that cannot be used are counted as invalid, with examples.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from splitserve.evaluation.capture_reader import MAX_EXAMPLES
from splitserve.evaluation.errors import EvaluationInputError

_POSITIVE = frozenset({"1", "true", "yes"})
_NEGATIVE = frozenset({"0", "false", "no"})
_WORDS = _POSITIVE | _NEGATIVE
_SEPARATORS = re.compile(r"[,\r\n]+")


@dataclass(frozen=True)
class GroundTruth:
    """Labels by inference id (or event id), and what could not be read.

    Attributes:
        labels: one label per row of the request the id names.
        files: files read.
        records: label records read (valid ones, repeats included).
        invalid: records that could not be used (no id, no label, a label that is not binary).
        conflicts: ids given again with other labels (the later record wins).
        examples: up to MAX_EXAMPLES messages about invalid records and conflicts.
    """

    labels: Mapping[str, tuple[int, ...]]
    files: int
    records: int
    invalid: int
    conflicts: int
    examples: tuple[str, ...]


def parse_label(text: str) -> int:
    """One binary label.

    Raises:
        ValueError: `text` is not one of the spellings the module docstring lists.
    """
    word = text.strip().strip('"').lower()
    if word.endswith(".") and word[:-1] in _WORDS:  # "True." and "False." (the churn table)
        word = word[:-1]
    if word in _POSITIVE:
        return 1
    if word in _NEGATIVE:
        return 0
    try:
        value = float(word)
    except ValueError:
        raise ValueError(f"label {text.strip()[:40]!r} is not 0/1 or true/false") from None
    if value in (0.0, 1.0):
        return int(value)
    raise ValueError(f"label {text.strip()[:40]!r} is not 0 or 1")


def parse_labels(text: str) -> tuple[int, ...]:
    """One or more labels separated by commas or newlines.

    Raises:
        ValueError: no label, or one that is not binary.
    """
    parts = [part for part in _SEPARATORS.split(text) if part.strip()]
    if not parts:
        raise ValueError("no label")
    return tuple(parse_label(part) for part in parts)


def load_ground_truth(path: Path) -> GroundTruth:
    """Read every label under `path` (a file or a directory tree).

    Raises:
        EvaluationInputError: `path` does not exist, or holds no file.
    """
    if path.is_dir():
        files = [p for p in sorted(path.rglob("*")) if p.is_file() and not _hidden(p, path)]
    elif path.is_file():
        files = [path]
    else:
        raise EvaluationInputError(f"ground truth {path} does not exist")
    if not files:
        raise EvaluationInputError(f"no ground-truth files under {path}")
    reader = _Reader()
    for file in files:
        reader.read_file(file)
    return GroundTruth(
        reader.labels, len(files), reader.records, reader.invalid, reader.conflicts,
        tuple(reader.examples),
    )  # fmt: skip


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


class _Reader:
    """Accumulates labels and counts across files."""

    def __init__(self) -> None:
        self.labels: dict[str, tuple[int, ...]] = {}
        self.records = 0
        self.invalid = 0
        self.conflicts = 0
        self.examples: list[str] = []

    def read_file(self, path: Path) -> None:
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError:
            self._refuse(f"{path}", "not UTF-8 text")
            return
        entries = _json_lines(text) if text.lstrip()[:1] == "{" else _csv_rows(text)
        for line_number, entry in entries:
            source = f"{path}:{line_number}"
            if isinstance(entry, str):
                self._refuse(source, entry)
            else:
                self._add(source, *entry)

    def _add(self, source: str, key: str, labels: tuple[int, ...]) -> None:
        self.records += 1
        previous = self.labels.get(key)
        if previous is not None and previous != labels:
            self.conflicts += 1
            self._example(f"{source}: id {key!r} given again with other labels; the later wins")
        self.labels[key] = labels

    def _refuse(self, source: str, reason: str) -> None:
        self.invalid += 1
        self._example(f"{source}: {reason}")

    def _example(self, message: str) -> None:
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(message)


# Each reader yields (line number, (id, labels)) or (line number, why the record is invalid).
_Entry = tuple[int, tuple[str, tuple[int, ...]] | str]


def _json_lines(text: str) -> Iterator[_Entry]:
    for line_number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield line_number, _merge_record(line)


def _merge_record(line: str) -> tuple[str, tuple[int, ...]] | str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return "not JSON"
    if not isinstance(record, dict):
        return "not a ground-truth record"
    data = record.get("groundTruthData")
    metadata = record.get("eventMetadata")
    if not isinstance(data, dict) or not isinstance(metadata, dict):
        return "not a ground-truth record (groundTruthData and eventMetadata objects)"
    key = metadata.get("eventId")
    if not isinstance(key, str) or not key:
        return "no eventMetadata.eventId"
    encoding = data.get("encoding", "CSV")
    if encoding != "CSV":
        return f"groundTruthData encoding {encoding!r}: only CSV is supported"
    value = data.get("data")
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return "groundTruthData.data is not text"
    try:
        return key, parse_labels(str(value))
    except ValueError as error:
        return str(error)


def _csv_rows(text: str) -> Iterator[_Entry]:
    rows = csv.reader(io.StringIO(text, newline=""))
    first = True
    for row in rows:
        if not any(field.strip() for field in row):
            continue
        line_number = rows.line_num
        is_first, first = first, False
        label_fields = [field for field in row[1:] if field.strip()]
        try:
            if not row[0].strip() or not label_fields:
                raise ValueError("a CSV row needs an inference id and a label")
            labels = tuple(label for field in label_fields for label in parse_labels(field))
        except ValueError as error:
            if not is_first:  # a first row without a usable label is a header
                yield line_number, str(error)
            continue
        yield line_number, (row[0].strip(), labels)
