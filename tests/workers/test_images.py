"""Image resolution: the XGBoost image pattern and the bring-your-own registry file."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from splitserve.errors import DeploymentError
from splitserve.workers.images import (
    BuiltinXGBoostImage,
    CustomImage,
    ImageRegistry,
    ImageRegistryError,
    is_xgboost_image,
    pipeline_depth,
)

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    "image",
    [
        "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1",
        "246618743249.dkr.ecr.us-west-2.amazonaws.com/sagemaker-xgboost:1.5-1",
        "720646828776.dkr.ecr.ap-south-1.amazonaws.com/sagemaker-xgboost:latest",
        "141502667606.dkr.ecr.eu-west-1.amazonaws.com/sagemaker-xgboost:1.2-2-cpu-py3",
        "226302683700.dkr.ecr.us-gov-west-1.amazonaws.com/sagemaker-xgboost:1.7-1",
        "390948362332.dkr.ecr.cn-north-1.amazonaws.com.cn/sagemaker-xgboost:1.7-1",
        "451049120500.dkr.ecr.cn-northwest-1.amazonaws.com.cn/sagemaker-xgboost:0.90-2",
        f"683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost@{DIGEST}",
        f"683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1@{DIGEST}",
        "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost",
    ],
)
def test_xgboost_images_are_recognised(image: str) -> None:
    assert is_xgboost_image(image)
    assert ImageRegistry().resolve(image) == BuiltinXGBoostImage(image)


@pytest.mark.parametrize(
    "image",
    [
        # Not 12 digits.
        "68331368837.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1",
        # Another repository.
        "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1",
        "683313688378.dkr.ecr.us-east-1.amazonaws.com/xgboost:1",
        "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost-extra:1",
        "683313688378.dkr.ecr.us-east-1.amazonaws.com/team/sagemaker-xgboost:1",
        # Another registry.
        "docker.io/sagemaker-xgboost:1.7-1",
        "683313688378.dkr.ecr.us-east-1.example.com/sagemaker-xgboost:1.7-1",
        # The China domain only serves the China regions, and the other way round.
        "683313688378.dkr.ecr.us-east-1.amazonaws.com.cn/sagemaker-xgboost:1.7-1",
        "390948362332.dkr.ecr.cn-north-1.amazonaws.com/sagemaker-xgboost:1.7-1",
        # A broken tag or digest.
        "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:",
        "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost@sha256:abc",
        " 683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1",
    ],
)
def test_other_images_are_not_xgboost(image: str) -> None:
    assert not is_xgboost_image(image)


def test_unknown_image_names_the_image_and_the_registry_file(tmp_path: Path) -> None:
    path = tmp_path / "images.toml"
    path.write_text("")
    with pytest.raises(DeploymentError, match="unknown image 'acme/model:2'") as raised:
        ImageRegistry.load(path).resolve("acme/model:2")
    assert str(path) in raised.value.message
    with pytest.raises(DeploymentError, match="no image registry file was given"):
        ImageRegistry().resolve("acme/model:2")


def test_a_full_entry_is_parsed(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    path = tmp_path / "images.toml"
    path.write_text(
        """
[images."example.com/numpy-server:1"]
command = ["{python}", "-m", "byo_server", "--model", "{model_dir}", "--port={port}",
           "--host={host}", "{registry_dir}/x", '{"json": true}']
working_directory = "lib"
python_path = ["lib", "/opt/extra"]
environment = { LOG_LEVEL = "debug", _X1 = "" }
startup_timeout_seconds = 5
pipeline_depth = 16
"""
    )
    entry = ImageRegistry.load(path).resolve("example.com/numpy-server:1")
    assert isinstance(entry, CustomImage)
    base = tmp_path.resolve()
    assert entry.working_directory == base / "lib"
    assert entry.python_path == (base / "lib", Path("/opt/extra"))
    assert dict(entry.environment) == {"LOG_LEVEL": "debug", "_X1": ""}
    assert entry.startup_timeout_seconds == 5.0
    assert entry.pipeline_depth == 16
    assert pipeline_depth(entry, builtin_depth=8) == 16
    assert pipeline_depth(BuiltinXGBoostImage("x"), builtin_depth=8) == 8
    assert entry.argv(python=sys.executable, model_dir=Path("/m"), host="10.0.0.7", port=8081) == [
        sys.executable,
        "-m",
        "byo_server",
        "--model",
        "/m",
        "--port=8081",
        "--host=10.0.0.7",
        f"{base}/x",
        '{"json": true}',
    ]


def test_a_minimal_entry_gets_defaults(tmp_path: Path) -> None:
    path = tmp_path / "images.toml"
    path.write_text('[images."a/b:1"]\ncommand = ["server"]\n')
    registry = ImageRegistry.load(path)
    entry = registry.resolve("a/b:1")
    assert isinstance(entry, CustomImage)
    assert entry.working_directory == tmp_path.resolve()
    assert entry.python_path == ()
    assert dict(entry.environment) == {}
    assert entry.startup_timeout_seconds is None
    assert entry.pipeline_depth == 1  # no pipelining unless the entry says its server can
    assert registry.names() == ["a/b:1"]
    assert registry.source == path


def test_a_registry_entry_wins_over_the_xgboost_pattern(tmp_path: Path) -> None:
    image = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1"
    path = tmp_path / "images.toml"
    path.write_text(f'[images."{image}"]\ncommand = ["my-xgboost-server"]\n')
    assert isinstance(ImageRegistry.load(path).resolve(image), CustomImage)


def test_the_example_registry_loads() -> None:
    root = Path(__file__).resolve().parents[2]
    registry = ImageRegistry.load(root / "examples" / "byo_server" / "images.toml")
    entry = registry.resolve("example.com/numpy-logistic:1")
    assert isinstance(entry, CustomImage)
    argv = entry.argv(python="py", model_dir=Path("/m"), host="127.0.0.1", port=1)
    assert Path(argv[1]).is_file()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[images\ncommand = 1", "is not valid TOML"),
        ('[images."a"]\ncommand = ["x"', "is not valid TOML"),
        ('[image."a"]\ncommand = ["x"]', r"unknown top-level key\(s\) \['image'\]"),
        ('images = ["a"]', '"images" must be a table'),
        ('[images]\na = "x"', "image 'a': must be a table"),
        ('[images."a"]\nenvironment = {}', "image 'a': \"command\" is required"),
        ('[images."a"]\ncommand = []', '"command" is required'),
        ('[images."a"]\ncommand = "server --port 1"', '"command" is required'),
        ('[images."a"]\ncommand = ["x", 1]', '"command" is required'),
        ('[images."a"]\ncommand = ["x", ""]', '"command" is required'),
        ('[images."a"]\ncommand = ["{pyhton}"]', r"unknown placeholder \{pyhton\}"),
        ('[images."a"]\ncommand = ["x"]\ncomand = ["y"]', r"unknown key\(s\) \['comand'\]"),
        ('[images."a"]\ncommand = ["x"]\nworking_directory = 1', "working_directory"),
        ('[images."a"]\ncommand = ["x"]\npython_path = "lib"', "python_path"),
        ('[images."a"]\ncommand = ["x"]\nenvironment = ["A=1"]', '"environment" must be'),
        ('[images."a"]\ncommand = ["x"]\nenvironment = { A = 1 }', "must be a string"),
        ('[images."a"]\ncommand = ["x"]\nenvironment = { "1A" = "x" }', "name '1A' is not valid"),
        ('[images."a"]\ncommand = ["x"]\nstartup_timeout_seconds = 0', "positive number"),
        ('[images."a"]\ncommand = ["x"]\nstartup_timeout_seconds = "5"', "positive number"),
        ('[images."a"]\ncommand = ["x"]\nstartup_timeout_seconds = true', "positive number"),
        ('[images."a"]\ncommand = ["x"]\npipeline_depth = 0', "from 1 to 64"),
        ('[images."a"]\ncommand = ["x"]\npipeline_depth = 65', "from 1 to 64"),
        ('[images."a"]\ncommand = ["x"]\npipeline_depth = 2.5', "from 1 to 64"),
        ('[images."a"]\ncommand = ["x"]\npipeline_depth = true', "from 1 to 64"),
    ],
)
def test_malformed_registries_are_refused_at_load(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "images.toml"
    path.write_text(text)
    with pytest.raises(ImageRegistryError, match=message) as raised:
        ImageRegistry.load(path)
    assert str(path) in str(raised.value)


def test_a_missing_or_binary_registry_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageRegistryError, match="cannot read image registry"):
        ImageRegistry.load(tmp_path / "missing.toml")
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ImageRegistryError, match="not UTF-8"):
        ImageRegistry.load(binary)
