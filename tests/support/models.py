"""Small real XGBoost models, written as SageMaker artifacts, for every test tier."""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xgboost as xgb

XGBOOST_IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1"
#: The ExecutionRoleArn every test model is created with (stored and echoed, never assumed).
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
NUM_FEATURES = 13


@dataclass(frozen=True)
class TrainedModel:
    """A small binary:logistic model, its artifact on disk, and rows to score."""

    booster: xgb.Booster
    artifact: Path
    rows: np.ndarray

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """XGBoost's own prediction for `rows`, the reference every test compares to."""
        return np.asarray(self.booster.predict(xgb.DMatrix(rows)))


def train_binary_model(seed: int, rounds: int = 10) -> xgb.Booster:
    """A binary:logistic booster over NUM_FEATURES features, trained on seeded synthetic data."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(400, NUM_FEATURES)).astype(np.float32)
    labels = (features[:, 0] + 0.5 * features[:, 1] + rng.normal(scale=0.5, size=400) > 0).astype(
        int
    )
    return xgb.train(
        {"objective": "binary:logistic", "max_depth": 3, "nthread": 1, "seed": seed},
        xgb.DMatrix(features, label=labels),
        num_boost_round=rounds,
    )


def write_model_tarball(booster: xgb.Booster, path: Path) -> Path:
    """Save `booster` as SageMaker's XGBoost training does: `xgboost-model` inside model.tar.gz."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = booster.save_raw(raw_format="ubj")
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("xgboost-model")
        info.size = len(raw)
        tar.addfile(info, io.BytesIO(bytes(raw)))
    return path
