"""The synthetic churn data: shaped like the walkthrough's table, seeded, with a known mechanism."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from splitserve.evaluation.churn import (
    COLUMNS,
    FEATURE_NAMES,
    STATES,
    churn_probability,
    generate_churn,
    train_test_split,
)


def test_the_same_seed_gives_the_same_customers() -> None:
    first, second = generate_churn(300, seed=4), generate_churn(300, seed=4)
    assert first.to_csv() == second.to_csv()
    np.testing.assert_array_equal(first.features, second.features)
    assert generate_churn(300, seed=5).to_csv() != first.to_csv()


def test_table_has_the_walkthrough_columns() -> None:
    data = generate_churn(200, seed=2)
    rows = list(csv.reader(io.StringIO(data.to_csv())))
    assert tuple(rows[0]) == COLUMNS
    assert len(rows) == 201
    first = dict(zip(COLUMNS, rows[1], strict=True))
    assert first["State"] in STATES
    assert first["Area Code"] in {"408", "415", "510"}
    assert first["Int'l Plan"] in {"yes", "no"}
    assert first["Churn?"] in {"True.", "False."}
    assert float(first["Day Charge"]) == pytest.approx(float(first["Day Mins"]) * 0.17, abs=0.006)


def test_model_input_is_numeric_and_one_hot() -> None:
    data = generate_churn(500, seed=3)
    assert data.features.dtype == np.float32
    assert data.features.shape == (500, len(FEATURE_NAMES))
    assert np.isfinite(data.features).all()
    states = data.features[:, [FEATURE_NAMES.index(f"State_{s}") for s in STATES]]
    np.testing.assert_array_equal(states.sum(axis=1), 1)
    areas = data.features[:, [i for i, n in enumerate(FEATURE_NAMES) if n.startswith("Area")]]
    np.testing.assert_array_equal(areas.sum(axis=1), 1)
    assert not any("Charge" in name or name == "Phone" for name in FEATURE_NAMES)
    international = data.features[:, FEATURE_NAMES.index("Int'l Plan")]
    assert set(np.unique(international)) <= {0.0, 1.0}
    table_plan = np.array([plan == "yes" for plan in data.table["Int'l Plan"]])
    np.testing.assert_array_equal(international == 1, table_plan)


def test_churn_follows_the_documented_mechanism() -> None:
    data = generate_churn(40000, seed=1)
    assert 0.12 < data.labels.mean() < 0.16  # about 14%, as in the original table
    # The labels are Bernoulli draws of the stated probabilities.
    assert data.labels.mean() == pytest.approx(data.churn_probability.mean(), abs=0.006)
    column = {name: data.features[:, i].astype(np.float64) for i, name in enumerate(FEATURE_NAMES)}
    recomputed = churn_probability(
        column["CustServ Calls"],
        np.asarray(data.table["Day Mins"], dtype=np.float64),
        np.asarray(data.table["Eve Mins"], dtype=np.float64),
        column["Int'l Plan"] == 1,
        column["VMail Plan"] == 1,
    )
    np.testing.assert_allclose(recomputed, data.churn_probability)
    # Four or more support calls is the strongest single sign, as in the original data.
    frustrated = column["CustServ Calls"] >= 4
    assert data.labels[frustrated].mean() > 2 * data.labels[~frustrated].mean()
    # The best possible model (the true probability) ranks well but not perfectly.
    assert 0.85 < roc_auc_score(data.labels, data.churn_probability) < 0.92


def test_train_test_split_is_a_partition() -> None:
    data = generate_churn(1000, seed=6)
    train, test = train_test_split(data, 0.2, seed=0)
    assert (len(train), len(test)) == (800, 200)
    phones = set(train.table["Phone"]) | set(test.table["Phone"])
    assert len(phones) >= 990  # random phone numbers: all but a few collisions
    assert train.labels.sum() + test.labels.sum() == data.labels.sum()
    with pytest.raises(ValueError, match="empty"):
        train_test_split(data, 0.0, seed=0)
