"""One log line per failed invocation, at most a few per variant and second.

The runtime service calls `FailureLog.failed` only on its failure paths (a worker's non-2xx
answer, a timeout, a broken or refused connection), so a successful request pays nothing. Each
line names the endpoint, variant, instance, status and the worker's message (cut); the request id
is added by the log's filter (`wiring.logs`), which reads the id the error boundary set for the
request. A storm of failures is limited per variant: past `per_second` lines in one wall-clock
second the rest are counted, and the variant's next line is preceded by one "suppressed K" line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from time import monotonic

log = logging.getLogger("splitserve.invocations")


@dataclass
class _Window:
    """One variant's budget: the second it counts in, lines used, lines suppressed since."""

    second: int = -1
    used: int = 0
    suppressed: int = 0


class FailureLog:
    """Logs failed invocations, rate-limited per (endpoint, variant).

    Args:
        per_second: lines per variant and second before the rest are only counted.
        message_chars: how much of a worker's message a line quotes.
    """

    def __init__(self, per_second: int, message_chars: int) -> None:
        self._per_second = per_second
        self._message_chars = message_chars
        self._windows: dict[tuple[str, str], _Window] = {}

    def failed(
        self, endpoint: str, variant: str, instance: str, status: int | str, message: str
    ) -> None:
        """Log one failed invocation of `instance` (a variant's) that ended with `status` (the
        worker's HTTP status, or what happened when it gave none) and the worker's `message`."""
        window = self._windows.get((endpoint, variant))
        if window is None:
            window = self._windows[endpoint, variant] = _Window()
        second = int(monotonic())
        if second != window.second:
            window.second = second
            window.used = 0
        if window.used >= self._per_second:
            window.suppressed += 1
            return
        window.used += 1
        if window.suppressed:
            log.warning(
                "endpoint %s variant %s: suppressed %d failed invocations (over %d a second)",
                endpoint,
                variant,
                window.suppressed,
                self._per_second,
            )
            window.suppressed = 0
        cut = message if len(message) <= self._message_chars else message[: self._message_chars]
        log.warning(
            "invocation failed: endpoint %s variant %s instance %s status %s: %s%s",
            endpoint,
            variant,
            instance,
            status,
            cut.replace("\n", "\\n"),
            "…" if len(cut) < len(message) else "",
        )
