"""Model-data and capture locations: s3:// stays inside the model store; local paths are taken."""

from __future__ import annotations

from pathlib import Path

import pytest

from splitserve.control.paths import LocalPathResolver
from splitserve.control.service import ControlService
from splitserve.errors import ValidationException
from tests.control.conftest import model_body


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    (root / "bucket" / "dir").mkdir(parents=True)
    return root


@pytest.mark.parametrize(
    ("url", "relative"),
    [
        ("s3://bucket/model.tar.gz", "bucket/model.tar.gz"),
        ("s3://bucket/dir/", "bucket/dir"),
        ("s3://bucket", "bucket"),
        ("s3://bucket/not/there/yet.tar.gz", "bucket/not/there/yet.tar.gz"),
        ("s3://bucket/a..b/c", "bucket/a..b/c"),
    ],
)
def test_s3_locations_resolve_under_the_store(store: Path, url: str, relative: str) -> None:
    resolver = LocalPathResolver(store)
    assert resolver.resolve(url, field="modelDataUrl") == (store / relative).resolve()


def test_local_paths_are_the_operators_choice(store: Path) -> None:
    resolver = LocalPathResolver(store)
    assert resolver.resolve("file:///srv/my%20model.tar.gz", field="f") == Path(
        "/srv/my model.tar.gz"
    )
    assert resolver.resolve("file://localhost/srv/m", field="f") == Path("/srv/m")
    assert resolver.resolve("/srv/m.tar.gz", field="f") == Path("/srv/m.tar.gz")


def test_a_relative_model_store_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    resolver = LocalPathResolver(Path("models"))
    assert resolver.model_store == tmp_path / "models"
    assert resolver.resolve("s3://b/k", field="f") == (tmp_path / "models" / "b" / "k").resolve()


@pytest.mark.parametrize(
    ("url", "constraint"),
    [
        ("s3://bucket/../../etc/passwd", "s3:// locations may not contain '.' or '..' segments"),
        ("s3://../etc", "s3:// locations may not contain '.' or '..' segments"),
        ("s3://bucket/./x", "s3:// locations may not contain '.' or '..' segments"),
        ("s3://bucket//etc/passwd", "s3:// keys may not start with '/'"),
        ("s3:///etc/passwd", "s3:// locations must name a bucket"),
        ("s3://bucket/a\x00b", "Member must not contain NUL characters"),
        ("file://elsewhere/srv/m", "file:// URLs may name no host other than localhost"),
        ("file:relative/m", "file:// URLs must hold an absolute path"),
        ("file:///srv/m?x=1", "file:// URLs may not have a query or a fragment"),
        ("relative/model.tar.gz", "Member must be an s3://<bucket>/<key> URL"),
        ("https://bucket.s3.amazonaws.com/k", "https:// locations are not downloaded"),
        ("s3://bucket/\ud800", "the location cannot be resolved"),
    ],
)
def test_refused_locations(store: Path, url: str, constraint: str) -> None:
    resolver = LocalPathResolver(store)
    with pytest.raises(ValidationException) as refused:
        resolver.resolve(url, field="primaryContainer.modelDataUrl")
    assert refused.value.message.startswith("1 validation error detected: Value '")
    assert (
        "at 'primaryContainer.modelDataUrl' failed to satisfy constraint: " in refused.value.message
    )
    assert refused.value.message.endswith(constraint) or constraint in refused.value.message


def test_symlinks_that_escape_are_refused(store: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("x")
    (store / "bucket" / "link").symlink_to(outside)
    (store / "evil").symlink_to(outside)
    resolver = LocalPathResolver(store)
    for url in ("s3://bucket/link/secret", "s3://evil/secret", "s3://evil"):
        with pytest.raises(ValidationException, match="must stay inside the model store"):
            resolver.resolve(url, field="modelDataUrl")


def test_symlinks_inside_the_store_are_followed(store: Path) -> None:
    (store / "bucket" / "dir" / "model.tar.gz").write_bytes(b"x")
    (store / "bucket" / "current").symlink_to(store / "bucket" / "dir")
    resolver = LocalPathResolver(store)
    assert (
        resolver.resolve("s3://bucket/current/model.tar.gz", field="f")
        == (store / "bucket" / "dir" / "model.tar.gz").resolve()
    )


def test_a_symlinked_store_root_is_fine(tmp_path: Path) -> None:
    real = tmp_path / "real"
    (real / "bucket").mkdir(parents=True)
    (tmp_path / "alias").symlink_to(real)
    resolver = LocalPathResolver(tmp_path / "alias")
    assert resolver.resolve("s3://bucket/k", field="f") == (real / "bucket" / "k").resolve()


def test_a_symlink_loop_is_refused(store: Path) -> None:
    (store / "bucket" / "loop").symlink_to(store / "bucket" / "loop")
    with pytest.raises(ValidationException):
        LocalPathResolver(store).resolve("s3://bucket/loop/x", field="f")


# --- model artifacts: only under the model store or an allowed directory --------------------------


def test_model_data_outside_the_store_is_refused(store: Path, tmp_path: Path) -> None:
    resolver = LocalPathResolver(store)
    for url in ("file:///etc/shadow", "/etc/shadow", f"file://{tmp_path}/elsewhere.tar.gz"):
        with pytest.raises(ValidationException) as refused:
            resolver.resolve_model_data(url, field="primaryContainer.modelDataUrl")
        message = refused.value.message
        assert "at 'primaryContainer.modelDataUrl'" in message
        assert "must lie under the gateway's model store" in message
        assert "--allow-artifact-path" in message
    inside = store / "bucket" / "model.tar.gz"
    assert resolver.resolve_model_data(f"file://{inside}", field="f") == inside
    assert resolver.resolve_model_data(str(inside), field="f") == inside
    assert resolver.resolve_model_data("s3://bucket/model.tar.gz", field="f") == inside.resolve()


def test_allowed_artifact_paths_are_taken(store: Path, tmp_path: Path) -> None:
    allowed = tmp_path / "artifacts"
    (allowed / "v1").mkdir(parents=True)
    resolver = LocalPathResolver(store, [allowed])
    model = allowed / "v1" / "model.tar.gz"
    assert resolver.resolve_model_data(f"file://{model}", field="f") == model
    assert resolver.resolve_model_data(str(allowed / "v1"), field="f") == allowed / "v1"
    with pytest.raises(ValidationException, match="must lie under"):
        resolver.resolve_model_data(str(tmp_path / "other.tar.gz"), field="f")


def test_a_symlink_out_of_an_allowed_directory_is_refused(store: Path, tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("s")
    (store / "bucket" / "model.tar.gz").symlink_to(tmp_path / "secret")
    resolver = LocalPathResolver(store)
    with pytest.raises(ValidationException, match="symbolic links resolved"):
        resolver.resolve_model_data(str(store / "bucket" / "model.tar.gz"), field="f")


def test_a_whole_artifact_directory_is_refused(store: Path, tmp_path: Path) -> None:
    allowed = tmp_path / "artifacts"
    allowed.mkdir()
    resolver = LocalPathResolver(store, [allowed])
    for url in (str(store), f"file://{allowed}/", str(allowed)):
        with pytest.raises(ValidationException, match="a whole artifact directory"):
            resolver.resolve_model_data(url, field="f")
    assert resolver.resolve_model_data("s3://bucket/dir", field="f") == store / "bucket" / "dir"


async def test_create_model_refuses_a_host_file_naming_the_url(service: ControlService) -> None:
    body = model_body("shadow", "file:///etc/shadow")
    with pytest.raises(ValidationException) as refused:
        await service.dispatch("CreateModel", body)
    message = refused.value.message
    assert "Value 'file:///etc/shadow' at 'primaryContainer.modelDataUrl'" in message
    assert "--allow-artifact-path" in message
    listed = await service.dispatch("ListModels", {})
    assert listed["Models"] == []
