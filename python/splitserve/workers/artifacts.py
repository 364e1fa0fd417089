"""Model artifacts: turn a resolved local artifact into a read-only model directory.

SageMaker extracts `ModelDataUrl` (a `model.tar.gz`) into `/opt/ml/model` before a container starts.
Here the gateway has already resolved the URL to a local path; `prepare_model_dir` makes the
equivalent directory for one variant under `WorkerSettings.run_dir`:

- the artifact must lie under one of `ArtifactLimits.roots` (the model store and every
  `--allow-artifact-path`). The control plane refuses other locations at CreateModel; this is the
  check at deploy time, made on what was actually opened (the real path of the open descriptor,
  symbolic links resolved), so a link swapped in since CreateModel, or between check and read,
  changes nothing. A directory must be a model directory *under* a root, never a root itself;
- a tar archive (`.tar.gz`, `.tgz`, `.tar`, or any gzip file holding a tar) is extracted safely:
  absolute member names, `..` components, links that point outside the directory, device files and
  FIFOs are refused (our own checks, then `tarfile`'s `data` filter as a second line);
- a bare model file keeps its name when XGBoost recognises its format by extension (`.json`,
  `.ubj`), and is otherwise named `xgboost-model`, where the XGBoost container looks for it;
- a directory is copied (a symlink inside it must point inside it).

Whatever its form, an artifact may unpack to at most `ArtifactLimits.max_bytes` bytes and
`max_files` files and directories (`--max-artifact-bytes`, `--max-artifact-files`): a 1 MB archive
of zeros must not fill the disk. The limits are checked as the archive is read, on the sizes
actually written and the bytes actually decompressed, not on a declared total. Error messages name
paths, members and limits, never the artifact's contents: they become an endpoint's FailureReason.

The result is made read-only (files 0444, directories 0555) so a worker cannot alter the model
another instance of the same variant is reading. Everything here blocks: call it from a thread.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import shutil
import stat
import tarfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, BinaryIO, Protocol

from splitserve.errors import DeploymentError

#: Extensions from which XGBoost's `load_model` picks the format; other files are renamed.
XGBOOST_EXTENSIONS = frozenset({".json", ".ubj"})

#: What the SageMaker XGBoost container calls its model file.
XGBOOST_MODEL_NAME = "xgboost-model"

_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_GZIP_MAGIC = b"\x1f\x8b"
_BZIP2_MAGIC = b"BZh"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_COPY_CHUNK_BYTES = 1024 * 1024

#: What a tar stream may hold beyond its members' data: each member's header blocks, padding and
#: extended (PAX, long name) headers. Bounds the decompressed stream, so a huge extended header
#: fails as "too large" instead of being read into memory.
_TAR_OVERHEAD_PER_MEMBER = 8 * 1024
_TAR_OVERHEAD_BYTES = 1024 * 1024


class UnsafeArchiveError(DeploymentError):
    """A model archive holds a member that would land outside its directory, or a device file."""


class ArtifactLocationError(DeploymentError):
    """The artifact is outside the directories artifacts may come from, or is a whole one."""


class ArtifactTooLargeError(DeploymentError):
    """The artifact unpacks to more bytes, or more files, than the limits allow."""


@dataclass(frozen=True)
class ArtifactLimits:
    """Where model artifacts may come from and how large they may be.

    Attributes:
        roots: the directories artifacts must lie under (symbolic links resolved).
        max_bytes: the most bytes an artifact may unpack to.
        max_files: the most files and directories it may unpack to.
    """

    roots: tuple[Path, ...]
    max_bytes: int
    max_files: int


@dataclass(frozen=True)
class S3Object:
    """A model artifact in an S3-compatible store, fetched where it is unpacked.

    Attributes:
        endpoint_url: the store's endpoint, `http(s)://HOST[:PORT]`.
        bucket: the bucket.
        key: the object's key.
    """

    endpoint_url: str
    bucket: str
    key: str

    @property
    def url(self) -> str:
        """`s3://bucket/key`."""
        return f"s3://{self.bucket}/{self.key}"


def s3_object_under(store: Path, artifact: Path, endpoint_url: str) -> S3Object | None:
    """The object `artifact` stands for when it lies in the model store `store`, where
    `s3://bucket/key` resolves to `store/bucket/key`; None when it lies elsewhere."""
    try:
        parts = artifact.relative_to(store).parts
    except ValueError:
        return None
    if len(parts) < 2:
        return None
    return S3Object(endpoint_url, parts[0], "/".join(parts[1:]))


def fetch_s3_object(source: S3Object, destination: Path, max_bytes: int) -> None:
    """Download `source` to the new file `destination`, at most `max_bytes` bytes; with boto3
    and the credentials it finds (environment, shared files, instance role). Blocking.

    Raises:
        ArtifactTooLargeError: the object is larger than `max_bytes`.
        DeploymentError: boto3 is missing, or the object cannot be fetched (no such bucket or
            key, access denied, no credentials, the endpoint does not answer): the message
            names the URL, the endpoint and the store's reason.
    """
    try:
        import boto3  # noqa: PLC0415 (only nodes that fetch from S3 need it)
        from botocore.config import Config  # noqa: PLC0415
        from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415
    except ImportError:
        raise DeploymentError(
            f"model artifact {source.url}: fetching it from {source.endpoint_url} needs boto3 "
            "on the node (pip install 'splitserve[ray]')"
        ) from None
    where = f"model artifact {source.url} could not be fetched from {source.endpoint_url}"
    try:
        client = boto3.client(
            "s3",
            endpoint_url=source.endpoint_url,
            config=Config(s3={"addressing_style": "path"}, retries={"mode": "standard"}),
        )
        answer = client.get_object(Bucket=source.bucket, Key=source.key)
        size = int(answer.get("ContentLength", 0))
        if size > max_bytes:
            raise ArtifactTooLargeError(
                f"model artifact {source.url} is {size} bytes, over the {max_bytes}-byte limit"
            )
        body = answer["Body"]
        written = 0
        with open(destination, "xb") as file:
            while chunk := body.read(_COPY_CHUNK_BYTES):
                written += len(chunk)
                if written > max_bytes:  # a store that sent more than it announced
                    raise ArtifactTooLargeError(
                        f"model artifact {source.url} is over the {max_bytes}-byte limit"
                    )
                file.write(chunk)
    except ClientError as error:
        details = error.response.get("Error", {})
        reason = f"{details.get('Code', 'error')}: {details.get('Message', '')}".rstrip(": ")
        raise DeploymentError(f"{where}: {reason}") from None
    except BotoCoreError as error:
        raise DeploymentError(f"{where}: {error}") from None


def prepare_model_dir(source: Path | None, destination: Path, limits: ArtifactLimits) -> Path:
    """Build the read-only model directory `destination` from the artifact at `source`.

    Anything already at `destination` (a previous run's directory) is removed first.

    Args:
        source: the resolved local artifact: a tar archive, a bare model file or a directory;
            None gives an empty directory (a server that needs no artifact).
        destination: the directory to create; its parent is created when missing.
        limits: where the artifact may come from, and how large it may be.

    Returns:
        `destination`.

    Raises:
        DeploymentError: the artifact is missing or unreadable, outside `limits.roots`
            (`ArtifactLocationError`), over a limit (`ArtifactTooLargeError`), or the archive is
            unsafe (`UnsafeArchiveError`) or corrupt.
    """
    remove_model_dir(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = destination.with_name(destination.name + ".partial")
    remove_model_dir(staging)
    staging.mkdir()
    try:
        if source is not None:
            _unpack(source, staging, limits)
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


def _unpack(source: Path, staging: Path, limits: ArtifactLimits) -> None:
    """Open `source`, check where it really is, and unpack it into `staging`."""
    try:
        # O_NONBLOCK: a FIFO planted as the artifact must not hang the deploy (it is refused
        # below); regular files and directories ignore the flag.
        descriptor = os.open(source, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise DeploymentError(f"model artifact not found: {source}") from None
    try:
        real = _opened_path(descriptor)
        root = _root_holding(real, limits.roots)
        if root is None:
            raise ArtifactLocationError(
                f"model artifact {source}: {real} is outside the directories model artifacts may"
                " come from (the model store and each --allow-artifact-path)"
            )
        mode = os.fstat(descriptor).st_mode
        if stat.S_ISDIR(mode):
            if real == root:
                raise ArtifactLocationError(
                    f"model artifact {source}: {real} is a whole artifact directory, not a model"
                    " directory under it"
                )
            _copy_directory(source, real, staging, limits)
        elif stat.S_ISREG(mode):
            with os.fdopen(os.dup(descriptor), "rb") as stream:
                if _is_tar(source, stream):
                    _extract_tar(source, stream, staging, limits)
                else:
                    _copy_counted(source, stream, staging / _bare_file_name(source), limits, 0)
        else:
            raise ArtifactLocationError(f"model artifact {source}: neither a file nor a directory")
    finally:
        os.close(descriptor)


def _opened_path(descriptor: int) -> Path:
    """The real path of what `descriptor` refers to (what was opened, not what a path says)."""
    return Path(os.readlink(f"/proc/self/fd/{descriptor}"))


def _root_holding(real: Path, roots: Sequence[Path]) -> Path | None:
    """The (resolved) root `real` lies in or is, or None."""
    for root in roots:
        resolved = Path(os.path.realpath(root))
        if real.is_relative_to(resolved):
            return resolved
    return None


def _too_many_bytes(source: Path, limits: ArtifactLimits) -> ArtifactTooLargeError:
    return ArtifactTooLargeError(
        f"model artifact {source.name}: unpacks to more than {limits.max_bytes} bytes, the limit"
        " (--max-artifact-bytes)"
    )


def _too_many_files(source: Path, limits: ArtifactLimits) -> ArtifactTooLargeError:
    return ArtifactTooLargeError(
        f"model artifact {source.name}: holds more than {limits.max_files} files and"
        " directories, the limit (--max-artifact-files)"
    )


def _copy_counted(
    source: Path, stream: IO[bytes], target: Path, limits: ArtifactLimits, used: int
) -> int:
    """Copy `stream` to a new file `target`, refusing to pass `limits.max_bytes` in total;
    returns the total so far (`used` plus what was copied)."""
    with open(target, "xb") as out:
        while chunk := stream.read(_COPY_CHUNK_BYTES):
            used += len(chunk)
            if used > limits.max_bytes:
                raise _too_many_bytes(source, limits)
            out.write(chunk)
    return used


def _bare_file_name(source: Path) -> str:
    if source.suffix.lower() in XGBOOST_EXTENSIONS:
        return source.name
    return XGBOOST_MODEL_NAME


def _is_tar(source: Path, stream: BinaryIO) -> bool:
    if source.name.lower().endswith(_TAR_SUFFIXES):
        return True
    is_gzip = stream.read(2) == _GZIP_MAGIC
    stream.seek(0)
    if not is_gzip:
        return False
    try:
        return tarfile.is_tarfile(stream)
    finally:
        stream.seek(0)


class _Seekable(Protocol):
    """What tarfile needs of the stream it reads (a file, or a decompressing reader of one)."""

    def read(self, size: int = -1, /) -> bytes: ...
    def seek(self, offset: int, whence: int = os.SEEK_SET, /) -> int: ...
    def tell(self) -> int: ...


class _BoundedStream:
    """A decompressed stream that refuses to be read or skipped past `limit` bytes."""

    def __init__(self, inner: _Seekable, limit: int, too_large: ArtifactTooLargeError) -> None:
        self._inner = inner
        self._limit = limit
        self._too_large = too_large

    def read(self, size: int = -1) -> bytes:
        position = self._inner.tell()
        if size < 0 or position + size > self._limit:
            size = self._limit - position + 1
        data = self._inner.read(size)
        if position + len(data) > self._limit:
            raise self._too_large
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        target = offset if whence == os.SEEK_SET else self._inner.tell() + offset
        if whence not in (os.SEEK_SET, os.SEEK_CUR) or target > self._limit:
            raise self._too_large
        return self._inner.seek(target)

    def tell(self) -> int:
        return self._inner.tell()


def _decompressed(stream: BinaryIO) -> _Seekable:
    magic = stream.read(6)
    stream.seek(0)
    if magic.startswith(_GZIP_MAGIC):
        return gzip.GzipFile(fileobj=stream, mode="rb")
    if magic.startswith(_BZIP2_MAGIC):
        return bz2.BZ2File(stream)
    if magic.startswith(_XZ_MAGIC):
        return lzma.LZMAFile(stream)
    return stream


def _extract_tar(source: Path, stream: BinaryIO, destination: Path, limits: ArtifactLimits) -> None:
    """Extract member by member, counting files and bytes as they are written."""
    too_large = _too_many_bytes(source, limits)
    bounded = _BoundedStream(
        _decompressed(stream),
        limits.max_bytes + limits.max_files * _TAR_OVERHEAD_PER_MEMBER + _TAR_OVERHEAD_BYTES,
        too_large,
    )
    members = 0
    written = 0
    try:
        # Read as a stream of members (never the whole listing first: it could be millions).
        with tarfile.open(fileobj=bounded, mode="r:") as archive:  # type: ignore[call-overload]
            for member in archive:
                members += 1
                if members > limits.max_files:
                    raise _too_many_files(source, limits)
                _check_member(source, member)
                if member.isfile() and written + member.size > limits.max_bytes:
                    raise too_large
                if member.islnk():
                    # Linked by hand: tarfile would look the target up in the whole listing.
                    _hard_link(source, member, destination)
                    continue
                archive.extract(member, destination, set_attrs=False, filter="data")
                if member.isfile():
                    written += os.lstat(destination / member.name).st_size
                    if written > limits.max_bytes:
                        raise too_large
    except tarfile.FilterError as error:
        raise UnsafeArchiveError(f"model artifact {source.name}: refused: {error}") from error
    except (tarfile.TarError, EOFError, OSError, lzma.LZMAError, zlib.error) as error:
        if isinstance(error, OSError) and error.filename is not None:
            raise  # a write into the staging directory failed: not the archive's fault
        # gzip's message quotes the file's first bytes: a failure reason never shows contents.
        reason = "not gzip data" if isinstance(error, gzip.BadGzipFile) else str(error)
        raise DeploymentError(
            f"model artifact {source.name} is not a readable tar.gz archive: {reason}"
        ) from error


def _hard_link(source: Path, member: tarfile.TarInfo, destination: Path) -> None:
    """Make a hard-link member: a second name for a regular file extracted before it."""
    target = destination / member.linkname
    if not target.is_file() or target.is_symlink():
        raise UnsafeArchiveError(
            f"model artifact {source.name}: member {member.name!r} is a hard link to"
            f" {member.linkname!r}, which is not a file extracted before it"
        )
    link = destination / member.name
    link.parent.mkdir(parents=True, exist_ok=True)
    os.link(target, link, follow_symlinks=False)


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


def _copy_directory(source: Path, real: Path, destination: Path, limits: ArtifactLimits) -> None:
    """Copy the directory `real` (what `source` named), counting files and bytes.

    Links inside are copied as the files they point to; each file is opened first and its real
    path checked, so nothing outside the directory is read, whatever changes meanwhile.
    """
    entries = 0
    written = 0
    for directory, dirs, files in os.walk(real, followlinks=True):
        relative = Path(directory).relative_to(real)
        if not Path(os.path.realpath(directory)).is_relative_to(real):
            raise UnsafeArchiveError(
                f"model artifact {source}: {relative} is a symlink pointing outside the model"
                " directory"
            )
        entries += len(dirs) + len(files)
        if entries > limits.max_files:
            raise _too_many_files(source, limits)
        (destination / relative).mkdir(exist_ok=True)
        for name in files:
            path = Path(directory) / name
            descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            with os.fdopen(descriptor, "rb") as stream:
                if not _opened_path(descriptor).is_relative_to(real):
                    raise UnsafeArchiveError(
                        f"model artifact {source}: {relative / name} is a symlink pointing"
                        " outside the model directory"
                    )
                if not stat.S_ISREG(os.fstat(descriptor).st_mode):
                    raise UnsafeArchiveError(
                        f"model artifact {source}: {relative / name} is not a regular file"
                    )
                written = _copy_counted(
                    source, stream, destination / relative / name, limits, written
                )


def _make_read_only(root: Path) -> None:
    read_only_file = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
    for directory, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                os.chmod(path, read_only_file)
        os.chmod(directory, 0o555)
