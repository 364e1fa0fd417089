"""`splitserve --help`, `serve --help` and `--version`: written for users, every option explained
with its default."""

from __future__ import annotations

import argparse
import importlib.metadata
import subprocess
from pathlib import Path

import pytest

from splitserve.cli import DESCRIPTION, build_parser, main


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (commands,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(commands.choices)


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"splitserve {importlib.metadata.version('splitserve')}\n"


def test_help_describes_the_command_for_users(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    printed = capsys.readouterr().out
    assert DESCRIPTION.split(". ")[0].split()[0] in printed
    # Not the module docstring, which is written for the code's readers.
    assert "the only place that reads argv" not in printed
    for command in ("serve", "stats", "weights", "evaluate"):
        assert f"    {command}" in printed


def test_serve_help_has_a_description(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    printed = capsys.readouterr().out
    assert "Run the gateway" in printed
    assert "--metrics-created" in printed


@pytest.mark.parametrize("command", ["serve", "stats", "weights", "evaluate"])
def test_every_option_has_help_and_its_default(command: str) -> None:
    """Each option says what it does, and each one with a default says what the default is."""
    parser = _subcommands(build_parser())[command]
    for action in parser._actions:
        if action.dest == "help":
            continue
        name = "/".join(action.option_strings) or action.dest
        assert action.help, f"{command} {name} has no help"
        if action.option_strings and action.default not in (None, False, [], ()):
            assert "default" in action.help, f"{command} {name} does not say its default"


def test_make_help_lists_run_test_and_demo_first() -> None:
    """`make help` puts what a newcomer wants first, then the rest."""
    root = Path(__file__).resolve().parents[1]
    listed = subprocess.run(
        ["make", "--no-print-directory", "-s", "help"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    targets = [line.split()[0] for line in listed]
    assert targets[:3] == ["run", "test", "demo"]
    assert sorted(targets[3:]) == targets[3:]
    assert "apt-get" in listed[1]
