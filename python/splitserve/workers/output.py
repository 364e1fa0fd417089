"""A worker's output: every line its processes print, kept three ways.

- `OutputRing`: the last `OUTPUT_LINES` lines, for a deployment's FailureReason;
- `OutputRelay`: to the `splitserve.workers.output` log, at most
  `WorkerSettings.output_log_lines_per_second` lines per second per instance (a worker printing a
  traceback per bad request must not flood the gateway's log; the ring keeps every line);
- `OutputFile`: the instance's own log file (size-bounded, rotated, kept across the instance's
  restarts), which is what a ModelError's LogStreamArn names.

`process.WorkerProcess` reads the merged stdout and stderr and hands each line to all three.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from pathlib import Path
from typing import BinaryIO

_logger = logging.getLogger(__name__)

#: Where worker output is logged, one record per line, prefixed by the instance name.
output_logger = logging.getLogger("splitserve.workers.output")

#: How many lines of a worker's output are kept for failure reasons.
OUTPUT_LINES = 64

#: Longer lines are cut (a worker printing a huge line must not hold the memory).
OUTPUT_LINE_CHARS = 2000


class OutputRing:
    """The last lines a worker printed.

    Args:
        max_lines: how many lines to keep.
        max_line_chars: lines are cut to this length.
    """

    def __init__(self, max_lines: int = OUTPUT_LINES, max_line_chars: int = OUTPUT_LINE_CHARS):
        self._lines: deque[str] = deque(maxlen=max_lines)
        self._max_line_chars = max_line_chars

    def append(self, line: str) -> None:
        """Keep `line` (cut to the maximum length), dropping the oldest when full."""
        if len(line) > self._max_line_chars:
            line = line[: self._max_line_chars] + "…"
        self._lines.append(line)

    def lines(self) -> list[str]:
        """The kept lines, oldest first."""
        return list(self._lines)

    def tail(self, max_chars: int) -> str:
        """The newest lines that fit in `max_chars`, newline-joined (a cut line starts with …)."""
        kept: list[str] = []
        size = 0
        for line in reversed(self._lines):
            if size + len(line) + 1 > max_chars:
                room = max_chars - size - 2
                if room > 0 and not kept:
                    kept.append("…" + line[-room:])
                break
            kept.append(line)
            size += len(line) + 1
        return "\n".join(reversed(kept))


class OutputFile:
    """An instance's output log file: every line its processes print, rotated by size.

    The file is `path`; once it reaches `max_bytes` it becomes `path.1` (`path.1` becomes
    `path.2`, ...), keeping `backups` old files, so an instance holds at most
    `(backups + 1) * max_bytes` bytes of log. Writes are buffered and flushed once per chunk of
    output read (small appends to the page cache: cheap enough for the event loop's thread).
    A write that fails (disk full) is logged once and the file is closed: the worker keeps
    running and its lines still reach the ring and the relay.

    Args:
        path: the current file; its directory is created (mode 0700: worker output may hold
            secrets, such as a model's Environment printed at start).
        max_bytes: the size at which the file is rotated.
        backups: how many rotated files are kept.

    Raises:
        OSError: the directory or the file cannot be created (blocking: open it off the loop).
    """

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = path
        self._max_bytes = max_bytes
        self._backups = backups
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._file: BinaryIO | None = self._open()
        self._size = self._file.tell()

    def _open(self) -> BinaryIO:
        descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        return os.fdopen(descriptor, "ab")

    def write(self, line: bytes) -> None:
        """Append one line (a newline is added), rotating first when the file is full."""
        file = self._file
        if file is None:
            return
        try:
            if self._size + len(line) + 1 > self._max_bytes and self._size > 0:
                file = self._rotate()
            file.write(line + b"\n")
            self._size += len(line) + 1
        except OSError as error:
            self._fail(error)

    def flush(self) -> None:
        """Write the buffered lines to the file."""
        if self._file is not None:
            try:
                self._file.flush()
            except OSError as error:
                self._fail(error)

    def close(self) -> None:
        """Flush and close the file (idempotent)."""
        if self._file is not None:
            file, self._file = self._file, None
            with contextlib.suppress(OSError):
                file.close()

    def _rotate(self) -> BinaryIO:
        if self._file is not None:
            self._file.close()
        name = self.path.name
        # path.N-1 -> path.N, ..., path -> path.1; os.replace drops the oldest on the way.
        for number in range(self._backups, 0, -1):
            source = self.path if number == 1 else self.path.with_name(f"{name}.{number - 1}")
            if source.exists():
                source.replace(self.path.with_name(f"{name}.{number}"))
        if self._backups == 0:
            self.path.unlink(missing_ok=True)
        self._file = self._open()
        self._size = 0
        return self._file

    def _fail(self, error: OSError) -> None:
        _logger.warning("stopped writing %s: %s", self.path, error.strerror or error)
        self.close()


class OutputRelay:
    """Relays a worker's lines to the log, at most `lines_per_second` per wall-clock second.

    Lines over the budget are counted, not logged; the next line logged after them is preceded
    by one "suppressed K lines" record (so is the end of the output).
    """

    def __init__(self, name: str, lines_per_second: int) -> None:
        self._name = name
        self._budget = lines_per_second
        self._window = -1
        self._used = 0
        self._suppressed = 0

    def line(self, line: str) -> None:
        """Log `line`, or count it when this second's budget is spent."""
        # Logged output is shown to people per second; a monotonic clock would do as well.
        window = int(time.monotonic())
        if window != self._window:
            self._window = window
            self._used = 0
        if self._used >= self._budget:
            self._suppressed += 1
            return
        self.flush()
        self._used += 1
        output_logger.info("%s | %s", self._name, line)

    def flush(self) -> None:
        """Log how many lines were suppressed since the last record, if any."""
        if self._suppressed:
            output_logger.warning(
                "%s | (suppressed %d lines of output over %d per second; the last %d are kept for"
                " the failure reason)",
                self._name,
                self._suppressed,
                self._budget,
                OUTPUT_LINES,
            )
            self._suppressed = 0
