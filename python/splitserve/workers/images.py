"""Image resolution: which server a model's `Image` runs as.

Two kinds of image are served:

- SageMaker's XGBoost algorithm image, in any account, region (including the `.amazonaws.com.cn`
  partition), tag or digest, e.g.
  `683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1`. It runs the built-in
  server, `python -m splitserve.workers.xgboost_server`.
- Bring-your-own images, listed in an image registry file (`splitserve serve --images FILE`). Each
  entry names a command that starts any server speaking the SageMaker container contract.

An entry of the registry file wins over the XGBoost pattern, so an operator may map an XGBoost image
name to a server of their own.

The registry file is TOML::

    # One table per image name, exactly as CreateModel's PrimaryContainer.Image gives it.
    [images."example.com/numpy-server:1"]
    # Required: the argv, a non-empty list of strings. Placeholders, replaced at spawn time:
    #   {python}        the gateway's interpreter (sys.executable)
    #   {registry_dir}  the directory holding this file
    #   {model_dir}     the prepared, read-only model directory (also in $SM_MODEL_DIR)
    #   {port}          the port to listen on (also in $SAGEMAKER_BIND_TO_PORT)
    #   {host}          the address to listen on: loopback for local instances, the node's
    #                   address with --placement ray (a server that ignores it must then
    #                   listen on all addresses, 0.0.0.0, as a SageMaker container does)
    command = ["{python}", "{registry_dir}/server.py"]
    # Optional: the working directory, relative to this file's directory (default: that directory).
    working_directory = "."
    # Optional: directories put on PYTHONPATH, relative to this file's directory (default: none).
    python_path = []
    # Optional: extra environment variables; the model's Environment from CreateModel wins,
    # except over what the gateway sets (see below).
    environment = { LOG_LEVEL = "info" }
    # Optional: how long the server may take to pass its first /ping
    # (default: WorkerSettings.startup_timeout_seconds).
    startup_timeout_seconds = 60
    # Optional: how many requests the gateway may send on one connection before the first is
    # answered (HTTP/1.1 pipelining; default 1: none). Set it above 1 only for a server that
    # answers a connection's pipelined requests concurrently and in order; one that answers them
    # one by one loses its concurrency. A failed exchange fails those queued behind it.
    pipeline_depth = 1

The server is started with a minimal environment, never the gateway's own: PYTHONPATH when
`python_path` is set, the entry's `environment`, the model's Environment (less its `LD_*` and
`PYTHON*` variables), then what the gateway sets, which nothing overrides: PATH, LANG, LC_ALL,
HOME and TMPDIR (the instance's private directory), OMP_NUM_THREADS (its CPU count),
PYTHONUNBUFFERED and the contract's `SAGEMAKER_BIND_TO_PORT` and `SM_MODEL_DIR`. When the gateway
runs as root, the server runs as the worker user (`--worker-user`), so the command, its working
directory and its files must be readable by that user.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from splitserve.errors import DeploymentError

#: SageMaker's XGBoost algorithm image: `<account>.dkr.ecr.<region>.amazonaws.com[.cn]/
#: sagemaker-xgboost`, with an optional tag and an optional digest.
XGBOOST_IMAGE_PATTERN = re.compile(
    r"(?P<account>[0-9]{12})\.dkr\.ecr\.(?P<region>[a-z]{2}(?:-[a-z]+)+-[0-9]+)"
    r"\.amazonaws\.com(?P<china>\.cn)?"
    r"/sagemaker-xgboost"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?"
)

#: The placeholders a registry command may use.
COMMAND_PLACEHOLDERS = frozenset({"python", "registry_dir", "model_dir", "host", "port"})

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_ENVIRONMENT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ENTRY_KEYS = frozenset(
    {
        "command",
        "working_directory",
        "python_path",
        "environment",
        "startup_timeout_seconds",
        "pipeline_depth",
    }
)
#: The most a registry entry's pipeline_depth may be.
MAX_PIPELINE_DEPTH = 64


def is_xgboost_image(image: str) -> bool:
    """Whether `image` names SageMaker's XGBoost algorithm image (any account, region, tag)."""
    match = XGBOOST_IMAGE_PATTERN.fullmatch(image)
    if match is None:
        return False
    # The .cn domain serves exactly the China regions.
    return (match["china"] is not None) == match["region"].startswith("cn-")


class ImageRegistryError(ValueError):
    """The image registry file cannot be read, is not valid TOML, or has an invalid entry."""


@dataclass(frozen=True)
class BuiltinXGBoostImage:
    """An image served by the built-in XGBoost server."""

    image: str


@dataclass(frozen=True)
class CustomImage:
    """A bring-your-own image: the command that starts a server speaking the contract.

    Attributes:
        image: the image name, as CreateModel gives it.
        command: the argv, placeholders not yet replaced.
        working_directory: where the command runs (absolute).
        python_path: directories for PYTHONPATH (absolute); empty means PYTHONPATH is not set.
        environment: extra variables for the server.
        startup_timeout_seconds: overrides `WorkerSettings.startup_timeout_seconds` when set.
        registry_dir: the directory of the registry file (the `{registry_dir}` placeholder).
        pipeline_depth: requests the gateway may have outstanding on one connection (1: no
            pipelining).
    """

    image: str
    command: tuple[str, ...]
    working_directory: Path
    python_path: tuple[Path, ...] = ()
    environment: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    startup_timeout_seconds: float | None = None
    registry_dir: Path = Path()
    pipeline_depth: int = 1

    def argv(self, *, python: str, model_dir: Path, host: str, port: int) -> list[str]:
        """The command with its placeholders replaced."""
        values = {
            "python": python,
            "registry_dir": str(self.registry_dir),
            "model_dir": str(model_dir),
            "host": host,
            "port": str(port),
        }
        return [
            _PLACEHOLDER.sub(lambda match: values[match[1]], argument) for argument in self.command
        ]


#: What an image resolves to.
ImageSpec = BuiltinXGBoostImage | CustomImage


def pipeline_depth(image: ImageSpec | None, builtin_depth: int) -> int:
    """How many requests the gateway may pipeline on one connection to an instance of `image`
    (None: the built-in server): its registry entry's `pipeline_depth`, else `builtin_depth`
    (`WorkerSettings.pipeline_depth`)."""
    return image.pipeline_depth if isinstance(image, CustomImage) else builtin_depth


class ImageRegistry:
    """Maps image names to the server that runs them.

    Args:
        images: the bring-your-own entries, by image name.
        source: the file they came from (named in errors); None when there is none.
    """

    def __init__(
        self, images: Mapping[str, CustomImage] | None = None, source: Path | None = None
    ) -> None:
        self._images = dict(images or {})
        self._source = source

    @classmethod
    def load(cls, path: Path) -> ImageRegistry:
        """Read a registry file (see the module docstring for the format).

        Raises:
            ImageRegistryError: the file is missing or unreadable, not TOML, or an entry is
                invalid; the message names the file and the entry.
        """
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise ImageRegistryError(
                f"cannot read image registry {path}: {error.strerror or error}"
            ) from error
        except UnicodeDecodeError as error:
            raise ImageRegistryError(f"image registry {path} is not UTF-8 text") from error
        return cls.parse(text, path)

    @classmethod
    def parse(cls, text: str, source: Path) -> ImageRegistry:
        """Parse registry TOML `text`; relative paths resolve against `source`'s directory.

        Raises:
            ImageRegistryError: as for `load`.
        """
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise ImageRegistryError(
                f"image registry {source} is not valid TOML: {error}"
            ) from None
        unknown = set(document) - {"images"}
        if unknown:
            raise ImageRegistryError(
                f"image registry {source}: unknown top-level key(s) {sorted(unknown)};"
                ' entries go under [images."<image name>"]'
            )
        tables = document.get("images", {})
        if not isinstance(tables, dict):
            raise ImageRegistryError(
                f'image registry {source}: "images" must be a table of [images."<image name>"]'
            )
        base = source.parent.resolve()
        images = {name: _parse_entry(source, base, name, entry) for name, entry in tables.items()}
        return cls(images, source)

    @property
    def source(self) -> Path | None:
        """The registry file, if any."""
        return self._source

    def names(self) -> list[str]:
        """The bring-your-own image names, sorted."""
        return sorted(self._images)

    def resolve(self, image: str) -> ImageSpec:
        """What runs `image`: its registry entry, else the built-in XGBoost server.

        Raises:
            DeploymentError: the image is neither registered nor an XGBoost image.
        """
        entry = self._images.get(image)
        if entry is not None:
            return entry
        if is_xgboost_image(image):
            return BuiltinXGBoostImage(image)
        where = (
            f"not registered in the image registry {self._source}"
            if self._source is not None
            else "and no image registry file was given (splitserve serve --images FILE)"
        )
        raise DeploymentError(
            f"unknown image {image!r}: it is not a SageMaker XGBoost image"
            f" (<account>.dkr.ecr.<region>.amazonaws.com/sagemaker-xgboost:<tag>) {where}"
        )


def _parse_entry(source: Path, base: Path, name: str, entry: Any) -> CustomImage:
    def fail(why: str) -> ImageRegistryError:
        return ImageRegistryError(f"image registry {source}: image {name!r}: {why}")

    if not isinstance(entry, dict):
        raise fail('must be a table: [images."<image name>"] with a command')
    unknown = set(entry) - _ENTRY_KEYS
    if unknown:
        raise fail(f"unknown key(s) {sorted(unknown)}; allowed: {sorted(_ENTRY_KEYS)}")

    command = entry.get("command")
    if (
        not isinstance(command, list)
        or not command
        or not all(isinstance(argument, str) and argument for argument in command)
    ):
        raise fail('"command" is required: a non-empty list of non-empty strings')
    for argument in command:
        for placeholder in _PLACEHOLDER.findall(argument):
            if placeholder not in COMMAND_PLACEHOLDERS:
                raise fail(
                    f"unknown placeholder {{{placeholder}}} in command;"
                    f" known: {', '.join(f'{{{known}}}' for known in sorted(COMMAND_PLACEHOLDERS))}"
                )

    working_directory = entry.get("working_directory", ".")
    if not isinstance(working_directory, str):
        raise fail('"working_directory" must be a string')

    python_path = entry.get("python_path", [])
    if not isinstance(python_path, list) or not all(isinstance(p, str) for p in python_path):
        raise fail('"python_path" must be a list of strings')

    environment = entry.get("environment", {})
    if not isinstance(environment, dict):
        raise fail('"environment" must be a table of strings, e.g. { KEY = "value" }')
    for key, value in environment.items():
        if not _ENVIRONMENT_NAME.fullmatch(key):
            raise fail(f"environment variable name {key!r} is not valid")
        if not isinstance(value, str):
            raise fail(f'environment variable {key} must be a string (write it as "{value}")')

    timeout = entry.get("startup_timeout_seconds")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
    ):
        raise fail('"startup_timeout_seconds" must be a positive number')
    depth = entry.get("pipeline_depth", 1)
    whole = isinstance(depth, int) and not isinstance(depth, bool)
    if not whole or not 1 <= depth <= MAX_PIPELINE_DEPTH:
        raise fail(f'"pipeline_depth" must be a whole number from 1 to {MAX_PIPELINE_DEPTH}')

    return CustomImage(
        image=name,
        command=tuple(command),
        working_directory=base / working_directory,
        python_path=tuple(base / directory for directory in python_path),
        environment=MappingProxyType(dict(environment)),
        startup_timeout_seconds=float(timeout) if timeout is not None else None,
        registry_dir=base,
        pipeline_depth=depth,
    )
