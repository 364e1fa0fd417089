"""Fixtures shared by every test tier: small real XGBoost models written as SageMaker artifacts.

The tiers: services and modules called directly, and HTTP through aiohttp's test client, both in
the directory that mirrors the part they test (`make test-fast` runs them); end-to-end through the
real CLI in a subprocess, in tests/e2e (marker `e2e`; `make test` runs everything). Helpers more
than one directory uses live in tests/support.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.support.models import NUM_FEATURES, TrainedModel, train_binary_model, write_model_tarball

#: `postgres_server` (a private PostgreSQL for the session) and `postgres_url` (a new database).
pytest_plugins = ["tests.support.postgres"]


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model store holding two differently trained models under s3://models/v1 and v2."""
    store = tmp_path_factory.mktemp("model-store")
    for name, seed, rounds in (("v1", 1, 5), ("v2", 2, 20)):
        write_model_tarball(
            train_binary_model(seed, rounds), store / "models" / name / "model.tar.gz"
        )
    return store


@pytest.fixture(scope="session")
def models(model_store: Path) -> dict[str, TrainedModel]:
    """The two models in `model_store`, by name, with 50 rows to score."""
    rows = np.random.default_rng(7).normal(size=(50, NUM_FEATURES)).astype(np.float32)
    result = {}
    for name, seed, rounds in (("v1", 1, 5), ("v2", 2, 20)):
        result[name] = TrainedModel(
            train_binary_model(seed, rounds), model_store / "models" / name / "model.tar.gz", rows
        )
    return result
