"""The walkthrough's pacing, progress and options, without a gateway (the whole run is
tests/e2e/test_demo.py)."""

from __future__ import annotations

import importlib.util
import io
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from splitserve.evaluation.churn import generate_churn

WALKTHROUGH = Path(__file__).resolve().parents[2] / "examples" / "walkthrough.py"


@pytest.fixture(scope="module")
def walkthrough() -> Iterator[ModuleType]:
    """examples/walkthrough.py as a module (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location("walkthrough", WALKTHROUGH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Its dataclasses look their module up by name while the class is made.
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


class _Body:
    def read(self) -> bytes:
        return b"0.5\n"


class _Runtime:
    """Answers every invocation from Variant1 and keeps what it was sent."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def invoke_endpoint(self, **call: Any) -> dict[str, Any]:
        self.calls.append(call)
        return {"Body": _Body(), "InvokedProductionVariant": "Variant1"}


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_bar_at_a_terminal(
    walkthrough: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    rows = generate_churn(8, seed=1)
    runtime = _Runtime()
    seen = walkthrough._send(runtime, "e", rows, None, "weighted", 0.0)
    assert seen == Counter({"Variant1": 8})
    shown = terminal.getvalue()
    width = walkthrough.PROGRESS_BAR_WIDTH
    assert f"\r  sending weighted [{'#' * width}] 8/8\n" in shown
    assert f"[{'#' * (width // 2)}{'.' * (width - width // 2)}] 4/8" in shown
    assert capsys.readouterr().out == ""  # stdout keeps only the walkthrough's results


def test_progress_is_a_line_per_quarter_otherwise(
    walkthrough: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = generate_churn(8, seed=1)
    ids = [f"row-{index}" for index in range(8)]
    runtime = _Runtime()
    walkthrough._send(runtime, "e", rows, ids, "weighted", 0.0)
    printed = capsys.readouterr()
    assert printed.err.splitlines() == [f"  sending weighted: {n}/8" for n in (2, 4, 6, 8)]
    assert [call["InferenceId"] for call in runtime.calls] == ids
    assert np.all([call["ContentType"] == "text/csv" for call in runtime.calls])


@pytest.mark.parametrize("duration", ["-1", "soon", "inf"])
def test_a_bad_duration_is_refused_by_name(
    walkthrough: ModuleType, duration: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        walkthrough.main(["--duration", duration])
    assert exited.value.code == 2
    assert "--duration" in capsys.readouterr().err
