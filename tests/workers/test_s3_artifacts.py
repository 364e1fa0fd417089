"""Model artifacts fetched from an S3-compatible store (moto's server, started per module)."""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from splitserve.errors import DeploymentError
from splitserve.workers.artifacts import (
    ArtifactTooLargeError,
    S3Object,
    fetch_s3_object,
    s3_object_under,
)

boto3 = pytest.importorskip("boto3")

BUCKET = "models"


@pytest.fixture(scope="module")
def store(s3_endpoint: str) -> Any:
    """An S3 client of the module's store, with its bucket made."""
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket=BUCKET)
    return client


def test_an_artifact_in_the_model_store_stands_for_its_object() -> None:
    store = Path("/state/models")
    found = s3_object_under(store, store / "models" / "xgb" / "model.tar.gz", "http://s3:9000")
    assert found == S3Object("http://s3:9000", "models", "xgb/model.tar.gz")
    assert found.url == "s3://models/xgb/model.tar.gz"
    assert s3_object_under(store, Path("/elsewhere/model.tar.gz"), "http://s3:9000") is None
    # A whole bucket is no object.
    assert s3_object_under(store, store / "models", "http://s3:9000") is None


def test_an_object_is_fetched_to_its_file(store: Any, s3_endpoint: str, tmp_path: Path) -> None:
    store.put_object(Bucket=BUCKET, Key="a/model.json", Body=b'{"learner": {}}')
    destination = tmp_path / "model.json"
    fetch_s3_object(S3Object(s3_endpoint, BUCKET, "a/model.json"), destination, 1024)
    assert destination.read_bytes() == b'{"learner": {}}'


def test_an_object_over_the_limit_is_refused_before_it_is_written(
    store: Any, s3_endpoint: str, tmp_path: Path
) -> None:
    store.put_object(Bucket=BUCKET, Key="big.tar.gz", Body=b"x" * 4096)
    destination = tmp_path / "big.tar.gz"
    with pytest.raises(ArtifactTooLargeError, match="4096 bytes, over the 1000-byte limit"):
        fetch_s3_object(S3Object(s3_endpoint, BUCKET, "big.tar.gz"), destination, 1000)
    assert not destination.exists()


def test_a_missing_object_or_bucket_is_named_with_the_stores_reason(
    store: Any, s3_endpoint: str, tmp_path: Path
) -> None:
    with pytest.raises(DeploymentError, match=r"s3://models/nothing\.tar\.gz .*NoSuchKey"):
        fetch_s3_object(S3Object(s3_endpoint, BUCKET, "nothing.tar.gz"), tmp_path / "a", 1000)
    with pytest.raises(DeploymentError, match="NoSuchBucket"):
        fetch_s3_object(S3Object(s3_endpoint, "no-bucket", "k"), tmp_path / "b", 1000)


def test_a_store_nothing_answers_at_is_named(s3_credentials: None, tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    with pytest.raises(DeploymentError, match=f"could not be fetched from {closed}: .*connect"):
        fetch_s3_object(S3Object(closed, BUCKET, "k"), tmp_path / "c", 1000)


def test_a_node_without_boto3_is_told_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)  # import boto3 raises ImportError
    with pytest.raises(DeploymentError, match=r"needs boto3 on the node .*splitserve\[ray\]"):
        fetch_s3_object(S3Object("http://127.0.0.1:1", BUCKET, "k"), tmp_path / "d", 1000)
