"""`--plot`: a PNG with ROC curves and traffic share, and a clear error without matplotlib."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from splitserve.cli import main
from tests.evaluation.records import binormal_sample, write_experiment

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _experiment(tmp_path: Path) -> list[str]:
    rng = np.random.default_rng(8)
    experiment = write_experiment(
        tmp_path,
        {"Variant1": binormal_sample(rng, 150, 1.2), "Variant2": binormal_sample(rng, 150, 1.6)},
    )
    return [
        "evaluate",
        "--capture", str(experiment.capture),
        "--ground-truth", str(experiment.ground_truth),
        "--weights", "Variant1=1,Variant2=1",
    ]  # fmt: skip


def test_plot_writes_a_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "report.png"
    assert main([*_experiment(tmp_path), "--plot", str(path)]) == 0
    assert f"Plot: {path}" in capsys.readouterr().out
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1320, 528)  # 12 x 4.8 inches at 110 dpi
    assert len(data) > 30_000  # two panels of curves, not an empty canvas


def test_plot_without_matplotlib_names_the_extra(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A None entry in sys.modules makes the import fail, as when the package is absent.
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    path = tmp_path / "report.png"
    assert main([*_experiment(tmp_path), "--plot", str(path)]) == 2
    assert "pip install splitserve[plot]" in capsys.readouterr().err
    assert not path.exists()


def test_plot_to_an_unwritable_place(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "missing-directory" / "report.png"
    assert main([*_experiment(tmp_path), "--plot", str(path)]) == 2
    assert "cannot write the plot" in capsys.readouterr().err
