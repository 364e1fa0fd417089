"""`serve --placement ray` and its options, and `--pipeline-depth`: settings, refusals (no Ray
installed, bad values)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from splitserve import cli


def _args(tmp_path: Path, *extra: str) -> list[str]:
    return ["serve", "--state-dir", str(tmp_path / "state"), *extra]


def test_the_placement_options_reach_the_settings(tmp_path: Path) -> None:
    args = cli.build_parser().parse_args(
        _args(
            tmp_path,
            "--placement",
            "ray",
            "--ray-address",
            "10.0.0.5:6379",
            "--ray-namespace",
            "prod",
            "--ray-type-resource",
            "ml.c5.*=compute",
            "--ray-type-resource",
            " ml.g4dn.* = gpu ",
        )
    )
    placement = cli.settings_from_args(args).placement
    assert placement.backend == "ray"
    assert placement.ray_address == "10.0.0.5:6379"
    assert placement.ray_namespace == "prod"
    assert placement.type_resources == (("ml.c5.*", "compute"), ("ml.g4dn.*", "gpu"))


def test_local_placement_is_the_default(tmp_path: Path) -> None:
    settings = cli.settings_from_args(cli.build_parser().parse_args(_args(tmp_path)))
    assert settings.placement.backend == "local"


@pytest.mark.parametrize("value", ["compute", "=compute", "ml.c5.*=", "ml.c5.*"])
def test_a_type_resource_that_is_not_pattern_equals_resource_is_refused(
    tmp_path: Path, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.build_parser().parse_args(_args(tmp_path, "--ray-type-resource", value))
    assert exited.value.code == 2
    assert "is not PATTERN=RESOURCE" in capsys.readouterr().err


def test_placement_ray_without_ray_installed_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what find_spec sees when Ray is missing
    assert cli.main(_args(tmp_path, "--placement", "ray")) == 2
    error = capsys.readouterr().err
    assert "--placement ray needs Ray, which is not installed" in error
    assert "pip install 'splitserve[ray]'" in error
    assert not (tmp_path / "state").exists()  # refused before anything was touched


def test_an_s3_endpoint_reaches_the_placement_settings(tmp_path: Path) -> None:
    args = cli.build_parser().parse_args(
        _args(tmp_path, "--placement", "ray", "--s3-endpoint-url", "http://127.0.0.1:9000")
    )
    assert cli.settings_from_args(args).placement.s3_endpoint_url == "http://127.0.0.1:9000"


@pytest.mark.parametrize("value", ["127.0.0.1:9000", "s3://bucket", "http://", "ftp://host"])
def test_an_s3_endpoint_that_is_not_an_http_url_is_refused(
    tmp_path: Path, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.build_parser().parse_args(_args(tmp_path, "--s3-endpoint-url", value))
    assert exited.value.code == 2
    assert "is not an http:// or https:// URL" in capsys.readouterr().err


def test_an_s3_endpoint_without_ray_placement_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(_args(tmp_path, "--s3-endpoint-url", "http://127.0.0.1:9000")) == 2
    assert "--s3-endpoint-url is for --placement ray" in capsys.readouterr().err


def test_a_ray_node_dir_reaches_the_placement_settings(tmp_path: Path) -> None:
    args = cli.build_parser().parse_args(
        _args(tmp_path, "--placement", "ray", "--ray-node-dir", "/srv/splitserve")
    )
    assert cli.settings_from_args(args).placement.node_model_dir == Path("/srv/splitserve")


def test_a_relative_ray_node_dir_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.build_parser().parse_args(_args(tmp_path, "--ray-node-dir", "models"))
    assert exited.value.code == 2
    assert "'models' is not an absolute path" in capsys.readouterr().err


def test_a_ray_node_dir_without_ray_placement_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(_args(tmp_path, "--ray-node-dir", "/srv/splitserve")) == 2
    assert "--ray-node-dir is for --placement ray" in capsys.readouterr().err


def test_the_pipeline_depth_reaches_the_worker_settings(tmp_path: Path) -> None:
    parse = cli.build_parser().parse_args
    assert cli.settings_from_args(parse(_args(tmp_path))).workers.pipeline_depth == 8
    settings = cli.settings_from_args(parse(_args(tmp_path, "--pipeline-depth", "1")))
    assert settings.workers.pipeline_depth == 1


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_a_pipeline_depth_below_one_is_refused(
    tmp_path: Path, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(_args(tmp_path, "--pipeline-depth", value))
    assert "--pipeline-depth" in capsys.readouterr().err
