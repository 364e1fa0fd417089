"""Model artifacts: safe extraction, bare files, directories, read-only results."""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
from pathlib import Path
from typing import Any

import pytest

from splitserve.errors import DeploymentError
from splitserve.workers.artifacts import (
    ArtifactLimits,
    ArtifactLocationError,
    ArtifactTooLargeError,
    UnsafeArchiveError,
    prepare_model_dir,
    remove_model_dir,
)


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type = kind
    member.linkname = linkname
    member.mode = 0o644
    return member


def _write_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for member, data in members:
            member.size = len(data) if member.isfile() else 0
            archive.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return path


@pytest.fixture
def limits(tmp_path: Path) -> ArtifactLimits:
    """Artifacts may come from anywhere under the test's directory; generous size limits."""
    return ArtifactLimits(roots=(tmp_path,), max_bytes=1024**2, max_files=100)


@pytest.fixture
def destination(tmp_path: Path) -> Path:
    return tmp_path / "run" / "m" / "ep.A.g1"


def _assert_read_only(root: Path) -> None:
    for directory, _dirs, files in os.walk(root):
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o555
        for name in files:
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                assert stat.S_IMODE(os.stat(path).st_mode) == 0o444


def test_a_good_archive_is_extracted_read_only(
    tmp_path: Path, destination: Path, limits: ArtifactLimits
) -> None:
    archive = _write_tar(
        tmp_path / "model.tar.gz",
        [
            (_member("xgboost-model"), b"model bytes"),
            (_member("extra", tarfile.DIRTYPE), b""),
            (_member("extra/notes.txt"), b"notes"),
            (_member("extra/link", tarfile.SYMTYPE, "notes.txt"), b""),
            (_member("extra/hard", tarfile.LNKTYPE, "extra/notes.txt"), b""),
        ],
    )
    assert prepare_model_dir(archive, destination, limits) == destination
    assert (destination / "xgboost-model").read_bytes() == b"model bytes"
    assert (destination / "extra" / "link").read_bytes() == b"notes"
    assert (destination / "extra" / "hard").read_bytes() == b"notes"
    _assert_read_only(destination)
    assert not destination.with_name(destination.name + ".partial").exists()
    remove_model_dir(destination)
    assert not destination.exists()


def test_a_gzip_tar_without_the_suffix_is_recognised(
    tmp_path: Path, destination: Path, limits: ArtifactLimits
) -> None:
    archive = _write_tar(tmp_path / "artifact", [(_member("xgboost-model"), b"m")])
    prepare_model_dir(archive, destination, limits)
    assert (destination / "xgboost-model").read_bytes() == b"m"


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (_member("/etc/cron.d/evil"), "'/etc/cron.d/evil' has an absolute path"),
        (_member("../evil"), "'../evil' contains '..'"),
        (_member("sub/../../evil"), "contains '..'"),
        (_member("link", tarfile.SYMTYPE, "/etc/passwd"), "symlink pointing outside"),
        (_member("sub/link", tarfile.SYMTYPE, "../../outside"), "symlink pointing outside"),
        (_member("hard", tarfile.LNKTYPE, "/etc/passwd"), "hard link pointing outside"),
        (_member("hard", tarfile.LNKTYPE, "../outside"), "hard link pointing outside"),
        (_member("tty", tarfile.CHRTYPE), "device file or FIFO"),
        (_member("disk", tarfile.BLKTYPE), "device file or FIFO"),
        (_member("pipe", tarfile.FIFOTYPE), "device file or FIFO"),
    ],
)
def test_unsafe_members_are_refused(
    tmp_path: Path, destination: Path, limits: ArtifactLimits, member: tarfile.TarInfo, message: str
) -> None:
    archive = _write_tar(
        tmp_path / "model.tar.gz", [(_member("xgboost-model"), b"m"), (member, b"x")]
    )
    with pytest.raises(UnsafeArchiveError, match=message) as raised:
        prepare_model_dir(archive, destination, limits)
    assert raised.value.message.startswith("model artifact model.tar.gz: member ")
    assert isinstance(raised.value, DeploymentError)
    assert not destination.exists()
    assert not destination.with_name(destination.name + ".partial").exists()
    assert not (tmp_path / "outside").exists()


def test_a_missing_artifact_is_a_deployment_error(
    tmp_path: Path, destination: Path, limits: ArtifactLimits
) -> None:
    missing = tmp_path / "nope" / "model.tar.gz"
    with pytest.raises(DeploymentError, match=f"model artifact not found: {missing}"):
        prepare_model_dir(missing, destination, limits)


def test_a_corrupt_archive_is_a_deployment_error(
    tmp_path: Path, destination: Path, limits: ArtifactLimits
) -> None:
    corrupt = tmp_path / "model.tar.gz"
    corrupt.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DeploymentError, match=r"not a readable tar\.gz archive"):
        prepare_model_dir(corrupt, destination, limits)
    assert not destination.exists()
    # A file that is not gzip at all: its first bytes are not quoted back.
    corrupt.write_bytes(gzip.compress(b"x" * 10) + b"root:$6$secret")
    with pytest.raises(DeploymentError, match="not gzip data") as raised:
        prepare_model_dir(corrupt, destination, limits)
    assert "root" not in raised.value.message.replace(str(corrupt.parent), "")


@pytest.mark.parametrize(
    ("file_name", "expected"),
    [
        ("model.json", "model.json"),
        ("booster.UBJ", "booster.UBJ"),
        ("model.bin", "xgboost-model"),
        ("model.model", "xgboost-model"),
        ("xgboost-model", "xgboost-model"),
        ("weights", "xgboost-model"),
    ],
)
def test_a_bare_file_is_copied_in(
    tmp_path: Path, destination: Path, limits: ArtifactLimits, file_name: str, expected: str
) -> None:
    source = tmp_path / file_name
    source.write_bytes(b"{}")
    prepare_model_dir(source, destination, limits)
    assert [path.name for path in destination.iterdir()] == [expected]
    assert (destination / expected).read_bytes() == b"{}"
    _assert_read_only(destination)


def test_a_directory_is_copied_and_a_link_out_of_it_refused(
    tmp_path: Path, destination: Path, limits: ArtifactLimits
) -> None:
    source = tmp_path / "model-dir"
    (source / "sub").mkdir(parents=True)
    (source / "model.json").write_text("{}")
    (source / "sub" / "link.json").symlink_to("../model.json")
    prepare_model_dir(source, destination, limits)
    assert (destination / "sub" / "link.json").read_text() == "{}"
    assert not (destination / "sub" / "link.json").is_symlink()
    _assert_read_only(destination)

    (tmp_path / "secret").write_text("s")
    (source / "escape").symlink_to(tmp_path / "secret")
    with pytest.raises(UnsafeArchiveError, match="symlink pointing outside"):
        prepare_model_dir(source, tmp_path / "other", limits)


def test_none_gives_an_empty_directory_and_a_rerun_replaces_it(
    tmp_path: Path, destination: Path, limits: ArtifactLimits
) -> None:
    source = tmp_path / "model.json"
    source.write_text("{}")
    prepare_model_dir(source, destination, limits)
    prepare_model_dir(None, destination, limits)  # replaces the previous, read-only directory
    assert list(destination.iterdir()) == []
    assert stat.S_IMODE(destination.stat().st_mode) == 0o555


# --- where artifacts may come from ----------------------------------------------------------------


def test_an_artifact_outside_the_roots_is_refused_without_quoting_it(
    tmp_path: Path, destination: Path
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$secret-hash:19000:0:99999:7:::\n")
    limits = ArtifactLimits(roots=(store,), max_bytes=1024, max_files=10)
    with pytest.raises(ArtifactLocationError, match="outside the directories") as raised:
        prepare_model_dir(secret, destination, limits)
    assert "secret-hash" not in raised.value.message
    assert not destination.exists()
    # A symlink inside the store leading out is judged by what it opens, not by its name.
    (store / "model.bin").symlink_to(secret)
    with pytest.raises(ArtifactLocationError, match=str(secret)):
        prepare_model_dir(store / "model.bin", destination, limits)
    # The same file under an allowed root is fine.
    allowed = ArtifactLimits(roots=(store, tmp_path), max_bytes=1024, max_files=10)
    prepare_model_dir(store / "model.bin", destination, allowed)
    assert (destination / "xgboost-model").exists()


def test_a_whole_root_directory_is_refused_a_model_directory_under_it_is_not(
    tmp_path: Path, destination: Path
) -> None:
    store = tmp_path / "store"
    (store / "bucket" / "model").mkdir(parents=True)
    (store / "bucket" / "model" / "model.json").write_text("{}")
    limits = ArtifactLimits(roots=(store,), max_bytes=1024, max_files=10)
    with pytest.raises(ArtifactLocationError, match="a whole artifact directory"):
        prepare_model_dir(store, destination, limits)
    prepare_model_dir(store / "bucket" / "model", destination, limits)
    assert (destination / "model.json").read_text() == "{}"


def test_a_fifo_is_refused_without_hanging(
    tmp_path: Path, destination: Path, limits: ArtifactLimits
) -> None:
    fifo = tmp_path / "model.tar.gz"
    os.mkfifo(fifo)
    with pytest.raises(ArtifactLocationError, match="neither a file nor a directory"):
        prepare_model_dir(fifo, destination, limits)


# --- size limits ----------------------------------------------------------------------------------


def _zeros_archive(path: Path, size: int) -> Path:
    """A gzip tar holding one file of `size` zero bytes, written without holding it in memory."""

    class Zeros(io.RawIOBase):
        def __init__(self) -> None:
            self.left = size

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            count = min(len(buffer), self.left)
            buffer[:count] = bytes(count)
            self.left -= count
            return count

    member = _member("xgboost-model")
    member.size = size
    with tarfile.open(path, "w:gz", compresslevel=1) as archive:
        archive.addfile(member, io.BufferedReader(Zeros()))
    return path


def test_a_zip_bomb_fails_on_the_byte_limit(tmp_path: Path, destination: Path) -> None:
    bomb = _zeros_archive(tmp_path / "model.tar.gz", 64 * 1024**2)
    assert bomb.stat().st_size < 1024**2
    limits = ArtifactLimits(roots=(tmp_path,), max_bytes=8 * 1024**2, max_files=10)
    with pytest.raises(ArtifactTooLargeError) as raised:
        prepare_model_dir(bomb, destination, limits)
    assert "more than 8388608 bytes" in raised.value.message
    assert "--max-artifact-bytes" in raised.value.message
    assert not destination.exists()
    assert not destination.with_name(destination.name + ".partial").exists()


def test_the_byte_limit_counts_every_file_of_an_archive(tmp_path: Path, destination: Path) -> None:
    archive = _write_tar(
        tmp_path / "model.tar.gz",
        [(_member(f"part{index}"), bytes(400)) for index in range(3)],
    )
    limits = ArtifactLimits(roots=(tmp_path,), max_bytes=1000, max_files=10)
    with pytest.raises(ArtifactTooLargeError, match="more than 1000 bytes"):
        prepare_model_dir(archive, destination, limits)
    prepare_model_dir(archive, destination, ArtifactLimits((tmp_path,), 1200, 10))


def test_a_huge_extended_header_fails_on_the_byte_limit(tmp_path: Path, destination: Path) -> None:
    member = _member("xgboost-model")
    member.pax_headers = {"comment": "x" * 4 * 1024**2}
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz", format=tarfile.PAX_FORMAT) as writer:
        member.size = 1
        writer.addfile(member, io.BytesIO(b"m"))
    limits = ArtifactLimits(roots=(tmp_path,), max_bytes=1024, max_files=10)
    with pytest.raises(ArtifactTooLargeError, match="more than 1024 bytes"):
        prepare_model_dir(archive, destination, limits)


def test_the_member_limit(tmp_path: Path, destination: Path) -> None:
    archive = _write_tar(
        tmp_path / "model.tar.gz", [(_member(f"f{index}"), b"") for index in range(11)]
    )
    limits = ArtifactLimits(roots=(tmp_path,), max_bytes=1024, max_files=10)
    with pytest.raises(ArtifactTooLargeError) as raised:
        prepare_model_dir(archive, destination, limits)
    assert "more than 10 files and directories" in raised.value.message
    assert "--max-artifact-files" in raised.value.message


def test_directories_and_bare_files_have_the_same_limits(tmp_path: Path, destination: Path) -> None:
    directory = tmp_path / "model-dir"
    directory.mkdir()
    for index in range(5):
        (directory / f"f{index}").write_bytes(bytes(100))
    with pytest.raises(ArtifactTooLargeError, match="more than 4 files"):
        prepare_model_dir(directory, destination, ArtifactLimits((tmp_path,), 10_000, 4))
    with pytest.raises(ArtifactTooLargeError, match="more than 450 bytes"):
        prepare_model_dir(directory, destination, ArtifactLimits((tmp_path,), 450, 10))
    bare = tmp_path / "model.json"
    bare.write_bytes(bytes(100))
    with pytest.raises(ArtifactTooLargeError, match="more than 99 bytes"):
        prepare_model_dir(bare, destination, ArtifactLimits((tmp_path,), 99, 10))


def test_a_hard_link_to_no_earlier_file_is_refused(
    tmp_path: Path, destination: Path, limits: ArtifactLimits
) -> None:
    archive = _write_tar(
        tmp_path / "model.tar.gz",
        [(_member("hard", tarfile.LNKTYPE, "later"), b""), (_member("later"), b"x")],
    )
    with pytest.raises(UnsafeArchiveError, match="not a file extracted before it"):
        prepare_model_dir(archive, destination, limits)
