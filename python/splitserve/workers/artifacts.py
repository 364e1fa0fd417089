"""Model artifacts: turn a resolved local artifact into a read-only model directory.

SageMaker extracts `ModelDataUrl` (a `model.tar.gz`) into `/opt/ml/model` before a container starts.
Here the gateway has already resolved the URL to a local path; `prepare_model_dir` makes the
equivalent directory for one variant under `WorkerSettings.run_dir`:

- a tar archive (`.tar.gz`, `.tgz`, `.tar`, or any gzip file holding a tar) is extracted safely:
  absolute member names, `..` components, links that point outside the directory, device files and
  FIFOs are refused (our own checks, then `tarfile`'s `data` filter as a second line);
- a bare model file keeps its name when XGBoost recognises its format by extension (`.json`,
  `.ubj`), and is otherwise named `xgboost-model`, where the XGBoost container looks for it;
- a directory is copied (a symlink inside it must point inside it).

The result is made read-only (files 0444, directories 0555) so a worker cannot alter the model
another instance of the same variant is reading. Everything here blocks: call it from a thread.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
from pathlib import Path, PurePosixPath

from splitserve.errors import DeploymentError

#: Extensions from which XGBoost's `load_model` picks the format; other files are renamed.
XGBOOST_EXTENSIONS = frozenset({".json", ".ubj"})

#: What the SageMaker XGBoost container calls its model file.
XGBOOST_MODEL_NAME = "xgboost-model"

_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_GZIP_MAGIC = b"\x1f\x8b"


class UnsafeArchiveError(DeploymentError):
    """A model archive holds a member that would land outside its directory, or a device file."""


def prepare_model_dir(source: Path | None, destination: Path) -> Path:
    """Build the read-only model directory `destination` from the artifact at `source`.

    Anything already at `destination` (a previous run's directory) is removed first.

    Args:
        source: the resolved local artifact: a tar archive, a bare model file or a directory;
            None gives an empty directory (a server that needs no artifact).
        destination: the directory to create; its parent is created when missing.

    Returns:
        `destination`.

    Raises:
        DeploymentError: the artifact is missing or unreadable, or the archive is unsafe
            (`UnsafeArchiveError`) or corrupt.
    """
    if source is not None and not source.exists():
        raise DeploymentError(f"model artifact not found: {source}")
    remove_model_dir(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = destination.with_name(destination.name + ".partial")
    remove_model_dir(staging)
    staging.mkdir()
    try:
        if source is None:
            pass
        elif source.is_dir():
            _copy_directory(source, staging)
        elif _is_tar(source):
            _extract_tar(source, staging)
        else:
            shutil.copyfile(source, staging / _bare_file_name(source))
        _make_read_only(staging)
        staging.rename(destination)
    except DeploymentError:
        remove_model_dir(staging)
        raise
    except OSError as error:
        remove_model_dir(staging)
        raise DeploymentError(
            f"could not prepare model artifact {source}: {error.strerror or error}"
        ) from error
    return destination


def remove_model_dir(path: Path) -> None:
    """Delete a (read-only) model directory made by `prepare_model_dir`; missing is fine."""
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir() or path.is_symlink():
        path.unlink()
        return
    # Directories are 0555: give the owner write access back before removing their entries.
    for root, dirs, _files in os.walk(path):
        os.chmod(root, 0o755)
        for name in dirs:
            child = os.path.join(root, name)
            if not os.path.islink(child):
                os.chmod(child, 0o755)
    shutil.rmtree(path)


def _bare_file_name(source: Path) -> str:
    if source.suffix.lower() in XGBOOST_EXTENSIONS:
        return source.name
    return XGBOOST_MODEL_NAME


def _is_tar(source: Path) -> bool:
    if source.name.lower().endswith(_TAR_SUFFIXES):
        return True
    with source.open("rb") as stream:
        if stream.read(2) != _GZIP_MAGIC:
            return False
    return tarfile.is_tarfile(source)


def _extract_tar(source: Path, destination: Path) -> None:
    try:
        with tarfile.open(source, "r:*") as archive:
            members = archive.getmembers()
            for member in members:
                _check_member(source, member)
            if hasattr(tarfile, "data_filter"):
                archive.extractall(destination, members=members, filter="data")
            else:  # pragma: no cover - Python builds without PEP 706 filters
                archive.extractall(destination, members=members)
    except tarfile.FilterError as error:
        raise UnsafeArchiveError(f"model artifact {source.name}: refused: {error}") from error
    except (tarfile.TarError, EOFError) as error:
        raise DeploymentError(
            f"model artifact {source.name} is not a readable tar.gz archive: {error}"
        ) from error


def _check_member(source: Path, member: tarfile.TarInfo) -> None:
    """Refuse a member that could write outside the directory or make a device file."""

    def refuse(why: str) -> UnsafeArchiveError:
        return UnsafeArchiveError(f"model artifact {source.name}: member {member.name!r} {why}")

    name = PurePosixPath(member.name)
    if name.is_absolute():
        raise refuse("has an absolute path; archive members must be relative")
    if ".." in name.parts:
        raise refuse("contains '..'; archive members must stay inside the model directory")
    if member.isdev() or member.isfifo():
        raise refuse("is a device file or FIFO; a model archive holds only files and directories")
    if member.issym():
        target = PurePosixPath(member.linkname)
        # A symlink's target is relative to the directory holding the link.
        if target.is_absolute() or not _stays_inside(name.parent / target):
            raise refuse(f"is a symlink pointing outside the model directory ({member.linkname})")
    elif member.islnk():
        # A hard link's target is a member name, relative to the archive root.
        target = PurePosixPath(member.linkname)
        if target.is_absolute() or not _stays_inside(target):
            raise refuse(f"is a hard link pointing outside the model directory ({member.linkname})")
    elif not (member.isfile() or member.isdir()):
        raise refuse("is neither a file, a directory nor a link")


def _stays_inside(relative: PurePosixPath) -> bool:
    """Whether a relative path, with its `..` applied, stays at or below its root."""
    depth = 0
    for part in relative.parts:
        if part == "..":
            depth -= 1
            if depth < 0:
                return False
        elif part not in (".", ""):
            depth += 1
    return True


def _copy_directory(source: Path, destination: Path) -> None:
    root = source.resolve()
    for path in source.rglob("*"):
        if path.is_symlink() and not path.resolve().is_relative_to(root):
            raise UnsafeArchiveError(
                f"model artifact {source}: {path.relative_to(source)} is a symlink pointing"
                " outside the model directory"
            )
    # Links inside the directory are copied as the files they point to.
    shutil.copytree(source, destination, symlinks=False, dirs_exist_ok=True)


def _make_read_only(root: Path) -> None:
    read_only_file = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
    for directory, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                os.chmod(path, read_only_file)
        os.chmod(directory, 0o555)
