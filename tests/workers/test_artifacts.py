"""Model artifacts: safe extraction, bare files, directories, read-only results."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from splitserve.errors import DeploymentError
from splitserve.workers.artifacts import (
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
def destination(tmp_path: Path) -> Path:
    return tmp_path / "run" / "m" / "ep.A.g1"


def _assert_read_only(root: Path) -> None:
    for directory, _dirs, files in os.walk(root):
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o555
        for name in files:
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                assert stat.S_IMODE(os.stat(path).st_mode) == 0o444


def test_a_good_archive_is_extracted_read_only(tmp_path: Path, destination: Path) -> None:
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
    assert prepare_model_dir(archive, destination) == destination
    assert (destination / "xgboost-model").read_bytes() == b"model bytes"
    assert (destination / "extra" / "link").read_bytes() == b"notes"
    assert (destination / "extra" / "hard").read_bytes() == b"notes"
    _assert_read_only(destination)
    assert not destination.with_name(destination.name + ".partial").exists()
    remove_model_dir(destination)
    assert not destination.exists()


def test_a_gzip_tar_without_the_suffix_is_recognised(tmp_path: Path, destination: Path) -> None:
    archive = _write_tar(tmp_path / "artifact", [(_member("xgboost-model"), b"m")])
    prepare_model_dir(archive, destination)
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
    tmp_path: Path, destination: Path, member: tarfile.TarInfo, message: str
) -> None:
    archive = _write_tar(
        tmp_path / "model.tar.gz", [(_member("xgboost-model"), b"m"), (member, b"x")]
    )
    with pytest.raises(UnsafeArchiveError, match=message) as raised:
        prepare_model_dir(archive, destination)
    assert raised.value.message.startswith("model artifact model.tar.gz: member ")
    assert isinstance(raised.value, DeploymentError)
    assert not destination.exists()
    assert not destination.with_name(destination.name + ".partial").exists()
    assert not (tmp_path / "outside").exists()


def test_a_missing_artifact_is_a_deployment_error(tmp_path: Path, destination: Path) -> None:
    missing = tmp_path / "nope" / "model.tar.gz"
    with pytest.raises(DeploymentError, match=f"model artifact not found: {missing}"):
        prepare_model_dir(missing, destination)


def test_a_corrupt_archive_is_a_deployment_error(tmp_path: Path, destination: Path) -> None:
    corrupt = tmp_path / "model.tar.gz"
    corrupt.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DeploymentError, match=r"not a readable tar\.gz archive"):
        prepare_model_dir(corrupt, destination)
    assert not destination.exists()


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
    tmp_path: Path, destination: Path, file_name: str, expected: str
) -> None:
    source = tmp_path / file_name
    source.write_bytes(b"{}")
    prepare_model_dir(source, destination)
    assert [path.name for path in destination.iterdir()] == [expected]
    assert (destination / expected).read_bytes() == b"{}"
    _assert_read_only(destination)


def test_a_directory_is_copied_and_a_link_out_of_it_refused(
    tmp_path: Path, destination: Path
) -> None:
    source = tmp_path / "model-dir"
    (source / "sub").mkdir(parents=True)
    (source / "model.json").write_text("{}")
    (source / "sub" / "link.json").symlink_to("../model.json")
    prepare_model_dir(source, destination)
    assert (destination / "sub" / "link.json").read_text() == "{}"
    assert not (destination / "sub" / "link.json").is_symlink()
    _assert_read_only(destination)

    (tmp_path / "secret").write_text("s")
    (source / "escape").symlink_to(tmp_path / "secret")
    with pytest.raises(UnsafeArchiveError, match="symlink pointing outside"):
        prepare_model_dir(source, tmp_path / "other")


def test_none_gives_an_empty_directory_and_a_rerun_replaces_it(
    tmp_path: Path, destination: Path
) -> None:
    source = tmp_path / "model.json"
    source.write_text("{}")
    prepare_model_dir(source, destination)
    prepare_model_dir(None, destination)  # replaces the previous, read-only directory
    assert list(destination.iterdir()) == []
    assert stat.S_IMODE(destination.stat().st_mode) == 0o555
