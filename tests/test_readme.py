"""The README's commands work as written: its quick start and SageMaker SDK block run against a
real gateway, and its table of `serve` options lists every option the parser has."""

from __future__ import annotations

import argparse
import ast
import os
import re
import subprocess
from pathlib import Path

import pytest

from splitserve.cli import build_parser
from splitserve.config import FeedbackSettings
from splitserve.control.ramp import ramp_spec
from splitserve.control.shapes import INPUT_SHAPES
from splitserve.control.validation import check_deployment_config, validate_request
from splitserve.wiring.actions import action_spec
from splitserve.workers.images import ImageRegistry
from tests.support.gateway import start_gateway

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def section(title: str) -> str:
    """The README's text under the `## title` heading, up to the next `## ` heading."""
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def fenced_blocks(text: str, language: str) -> list[str]:
    """The bodies of the ```language blocks in `text`."""
    return re.findall(rf"^```{language}\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)


def _serve_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    (commands,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    serve: argparse.ArgumentParser = commands.choices["serve"]
    return serve


def test_the_options_table_lists_every_serve_option() -> None:
    listed = set(re.findall(r"^\| `(--[a-z0-9-]+)", section("Serving options"), flags=re.MULTILINE))
    options = {
        action.option_strings[-1]
        for action in _serve_parser()._actions
        # Suppressed options are set by `serve --processes N` on its replicas, never by hand.
        if action.option_strings and action.dest != "help" and action.help != argparse.SUPPRESS
    }
    assert options - listed == set(), "README's Serving options misses these"
    assert listed - options == set(), "README's Serving options lists options serve does not have"


def test_the_readme_says_make_test_installs_debian_packages() -> None:
    two_commands = section("Two commands")
    assert "apt-get" in two_commands
    assert "wrk" in two_commands
    assert "Prometheus" in two_commands


@pytest.mark.e2e
def test_the_quick_start_runs_as_written(tmp_path: Path) -> None:
    """The quick start's bash block, as written, against a gateway started here (its URL and
    model store given by the variables the block reads with make run's defaults)."""
    quick_start = section("Quick start")
    (block,) = fenced_blocks(quick_start, "bash")
    (sdk_block,) = fenced_blocks(quick_start, "python")
    models = tmp_path / "models"
    gateway = start_gateway(tmp_path / "state", models)
    environment = {
        **os.environ,
        "SPLITSERVE_URL": gateway.url,
        "MODEL_STORE": str(models),
        "SAGEMAKER_SUPPRESS_V2_WARNING": "1",
    }
    try:
        finished = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block],
            cwd=ROOT,
            env=environment,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        sdk = subprocess.run(
            [str(ROOT / ".venv" / "bin" / "python"), "-c", sdk_block],
            cwd=ROOT,
            env=environment,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        gateway.stop()
    assert finished.returncode == 0, f"{finished.stdout}\n{finished.stderr}\n{gateway.log()}"
    printed = finished.stdout
    assert (models / "quickstart" / "a" / "model.tar.gz").is_file()
    before = re.search(r"^1:1 -> \{'(A|B)': \d+, '(A|B)': \d+\}$", printed, flags=re.MULTILINE)
    assert before is not None, printed
    after = re.search(r"^1:3 -> \{.*'B': (\d+).*\}$", printed, flags=re.MULTILINE)
    assert after is not None, printed
    assert "time (UTC)" in printed  # the stats table
    # The SageMaker SDK's Session, wired to the same gateway, waits and predicts.
    assert sdk.returncode == 0, f"{sdk.stdout}\n{sdk.stderr}"
    # (wait_for_endpoint prints a "!" without a newline when the endpoint is in service.)
    assert re.search(r"SDK -> b'0\.\d+", sdk.stdout), sdk.stdout


def test_the_images_format_block_is_a_registry_the_gateway_reads() -> None:
    """The README's `--images` example parses with the gateway's own reader, as the worked
    example in examples/byo_server does."""
    (block,) = fenced_blocks(section("Quick start"), "toml")
    example = ROOT / "examples" / "byo_server" / "images.toml"
    shown = ImageRegistry.parse(block, example).resolve("example.com/numpy-logistic:1")
    worked = ImageRegistry.load(example).resolve("example.com/numpy-logistic:1")
    assert shown == worked


def test_the_shadow_tests_block_calls_operations_the_gateway_serves() -> None:
    """Every `sm.<method>(` of "Shadow tests" is a boto3 method of an operation the control
    plane dispatches, and the block is valid Python."""
    (block,) = fenced_blocks(section("Shadow tests"), "python")
    compile(block, "README.md", "exec")
    called = set(re.findall(r"\bsm\.([a-z_]+)\(", block))
    served = {re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower() for name in INPUT_SHAPES}
    assert called - served == set()
    assert {
        "create_inference_experiment",
        "start_inference_experiment",
        "update_inference_experiment",
        "stop_inference_experiment",
    } <= called


def test_the_deployment_guardrails_blocks_call_what_the_gateway_serves() -> None:
    """README, "Deployment guardrails": its blocks are valid Python, each `sm.<method>(` is an
    operation the control plane dispatches, the DeploymentConfig passes its validation, and the
    ramp tag's example value is one the gateway takes."""
    guardrails, ramp = fenced_blocks(section("Deployment guardrails"), "python")
    for block in (guardrails, ramp):
        compile(block, "README.md", "exec")
    called = set(re.findall(r"\bsm\.([a-z_]+)\(", guardrails + ramp))
    served = {re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower() for name in INPUT_SHAPES}
    assert called - served == {"get_waiter"}  # boto3's own, polling DescribeEndpoint
    assert {"update_endpoint", "describe_endpoint", "add_tags"} <= called
    start = guardrails.index("DeploymentConfig=") + len("DeploymentConfig=")
    deployment_config = ast.literal_eval(guardrails[start : guardrails.index(")\npending")])
    check_deployment_config(deployment_config)
    validate_request(
        "UpdateEndpoint",
        {
            "EndpointName": "churn",
            "EndpointConfigName": "v2",
            "DeploymentConfig": deployment_config,
        },
    )
    (value,) = re.findall(r'"Value": "([^"]+)"', ramp)
    spec = ramp_spec((("splitserve:ramp", value),))
    assert spec is not None
    assert (spec.variant, spec.target_percent, spec.alarms) == ("Variant2", 50, ("churn-5xx",))


def test_closing_the_loop_names_what_exists() -> None:
    closing = section("Closing the loop")
    blocks = fenced_blocks(closing, "python")
    assert len(blocks) == 2
    for block in blocks:
        compile(block, "README.md", "exec")
    # Every splitserve:experiment value shown is one the actions take.
    values = re.findall(r'"Key": "splitserve:experiment", "Value": "([^"]+)"', closing)
    assert len(values) == 2
    for value in values:
        action_spec(value, FeedbackSettings())
    parser = build_parser()
    (commands,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    experiment: argparse.ArgumentParser = commands.choices["experiment"]
    options = {option for action in experiment._actions for option in action.option_strings}
    command = re.search(r"^splitserve experiment .*$", closing, flags=re.MULTILINE)
    assert command is not None
    assert set(re.findall(r"--[a-z-]+", command.group())) <= options
    outcomes = set(re.findall(r"^\| `([a-z_]+)` \|", closing, flags=re.MULTILINE))
    assert outcomes == {
        "malformed", "unknown", "late", "duplicate", "wrong_endpoint", "unscorable",
    }  # fmt: skip
