"""What the import contracts (pyproject's [tool.importlinter], run by `make lint`) cannot see.

The compiled router (`splitserve._router`) has no Python source for the import checker, so that
`splitserve evaluate`, `splitserve.config` and `splitserve.errors` never load it is checked here:
in a fresh interpreter where importing it fails, as on a machine where it was never built.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import splitserve
from tests.evaluation.records import binormal_sample, write_experiment

REPOSITORY = Path(__file__).resolve().parent.parent

# Runs in the child. A meta-path finder in front of every other one refuses the extension and
# notes each attempt, so an import of it anywhere (however indirect) fails loudly and is counted.
_WITHOUT_THE_EXTENSION = textwrap.dedent(
    """
    import contextlib, io, json, sys

    attempts = []

    class RefuseTheRouter:
        def find_spec(self, name, path=None, target=None):
            if name == "splitserve._router":
                attempts.append(name)
                raise ImportError("splitserve._router is not built here")
            return None

    sys.meta_path.insert(0, RefuseTheRouter())

    import splitserve.config
    import splitserve.errors
    from splitserve import cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(sys.argv[1:])
    try:
        from splitserve import Router  # noqa: F401
        router_error = None
    except ImportError as error:
        router_error = str(error)
    print(json.dumps({
        "code": code,
        "report": out.getvalue(),
        "attempts_before_router": attempts[:-1] if router_error else attempts,
        "router_error": router_error,
        "loaded": sorted(name for name in sys.modules if name.startswith("splitserve")),
    }))
    """
)


@pytest.mark.timeout(60)
def test_evaluate_config_and_errors_run_without_the_rust_extension(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    experiment = write_experiment(
        tmp_path,
        {"Variant1": binormal_sample(rng, 40, 1.5), "Variant2": binormal_sample(rng, 40, 1.0)},
    )
    arguments = [
        "evaluate",
        "--capture", str(experiment.capture),
        "--ground-truth", str(experiment.ground_truth),
        "--weights", "Variant1=1,Variant2=1",
        "--json",
    ]  # fmt: skip
    child = subprocess.run(
        [sys.executable, "-c", _WITHOUT_THE_EXTENSION, *arguments],
        capture_output=True,
        text=True,
        cwd=REPOSITORY,
        timeout=50,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    outcome = json.loads(child.stdout.splitlines()[-1])
    assert outcome["code"] == 0, child.stderr
    report = json.loads(outcome["report"])
    assert report["endpoint"] == "churn"
    assert sorted(variant["variant"] for variant in report["variants"]) == ["Variant1", "Variant2"]
    # Nothing tried to load the extension until the test asked for Router itself...
    assert outcome["attempts_before_router"] == []
    assert "splitserve._router" not in outcome["loaded"]
    # ...and then the package's lazy attribute reached for it and said why it failed.
    assert outcome["router_error"] is not None
    assert "not built here" in outcome["router_error"]
    # Nor the gateway: no plane, no workers, no wiring (the CLI imports them only to serve).
    gateway_parts = (
        "splitserve.app", "splitserve.runtime", "splitserve.control", "splitserve.workers",
        "splitserve.wiring", "splitserve.contract", "splitserve.capture",
    )  # fmt: skip
    assert [name for name in outcome["loaded"] if name.startswith(gateway_parts)] == []


def test_the_public_names_still_come_from_the_extension() -> None:
    from splitserve import Router, VariantSpec, __version__, _router

    assert (Router, VariantSpec, __version__) == (
        _router.Router,
        _router.VariantSpec,
        _router.__version__,
    )
    assert set(splitserve.__all__) <= set(dir(splitserve))
    with pytest.raises(AttributeError, match="no attribute 'Routr'"):
        _ = splitserve.Routr


def test_the_evaluation_package_loads_its_names_on_first_use() -> None:
    from splitserve import evaluation
    from splitserve.evaluation import EvaluationInputError, evaluate
    from splitserve.evaluation.errors import EvaluationInputError as defined_error
    from splitserve.evaluation.report import evaluate as defined_evaluate

    assert (evaluate, EvaluationInputError) == (defined_evaluate, defined_error)
    assert set(evaluation.__all__) <= set(dir(evaluation))
    with pytest.raises(AttributeError, match="no attribute 'evaluat'"):
        _ = evaluation.evaluat
