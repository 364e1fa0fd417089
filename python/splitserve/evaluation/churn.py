"""A synthetic telecom customer-churn data set shaped like the SageMaker A/B walkthrough's.

The walkthrough trains XGBoost on a telecom churn table (one row per customer: State, Account
Length, Area Code, Phone, Int'l Plan, VMail Plan, VMail Message, Day/Eve/Night/Intl Mins, Calls and
Charge, CustServ Calls, and the label `Churn?`, written `True.` or `False.`). This module generates
a table with those columns from a seed, with no download, and with a churn mechanism that is known
exactly, so a model's quality can be judged against the truth.

The customers (each column independent unless said):
- State: uniform over the 50 states and DC. Area Code: 408, 415 or 510 (1:2:1). Phone: random.
- Account Length: days, normal(101, 40) rounded, within [1, 243].
- Int'l Plan: "yes" for 10%. VMail Plan: "yes" for 28%; VMail Message: messages, normal(29, 7.5)
  for plan holders (at least 1), 0 for the rest.
- Day, Eve, Night Mins: normal(180, 54), (200, 51), (200, 51) within [0, 360]; Intl Mins:
  normal(10.2, 2.8) within [0, 20]. Day, Eve, Night Calls: normal(100, 20) rounded, at least 0;
  Intl Calls: Poisson(4.5). Each Charge is its minutes times the rate (0.17, 0.085, 0.045, 0.27
  per minute), rounded to cents, as in the original table.
- CustServ Calls: Poisson(1.56).

The churn mechanism: a customer churns with probability sigmoid(z), where

    z = -2.95 + 0.35 (CustServ Calls - 1.5) + 1.6 [CustServ Calls >= 4]
              + 0.03 (Day Mins - 180) + 0.006 (Eve Mins - 200)
              + 2.0 [Int'l Plan] - 1.0 [VMail Plan]

(frustrated customers who call support four times or more, heavy daytime users and international
plan holders leave; voicemail users stay). About 14% churn, as in the original table. State,
Area Code, Account Length, the call counts and night and international minutes have no effect.

The model input is numeric only, as the walkthrough prepares it: Phone and the four Charge columns
(each a multiple of its minutes) are dropped, the yes/no plans become 0/1, and State and Area Code
are one-hot encoded; see FEATURE_NAMES.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

STATES = (
    "AK", "AL", "AR", "AZ", "CA", "CO", "CT", "DC", "DE", "FL", "GA", "HI", "IA", "ID", "IL",
    "IN", "KS", "KY", "LA", "MA", "MD", "ME", "MI", "MN", "MO", "MS", "MT", "NC", "ND", "NE",
    "NH", "NJ", "NM", "NV", "NY", "OH", "OK", "OR", "PA", "RI", "SC", "SD", "TN", "TX", "UT",
    "VA", "VT", "WA", "WI", "WV", "WY",
)  # fmt: skip
AREA_CODES = (408, 415, 510)

#: The table's columns, in the walkthrough's order; the last is the label.
COLUMNS = (
    "State", "Account Length", "Area Code", "Phone", "Int'l Plan", "VMail Plan", "VMail Message",
    "Day Mins", "Day Calls", "Day Charge", "Eve Mins", "Eve Calls", "Eve Charge", "Night Mins",
    "Night Calls", "Night Charge", "Intl Mins", "Intl Calls", "Intl Charge", "CustServ Calls",
    "Churn?",
)  # fmt: skip

_NUMERIC_FEATURES = (
    "Account Length", "VMail Message", "Day Mins", "Day Calls", "Eve Mins", "Eve Calls",
    "Night Mins", "Night Calls", "Intl Mins", "Intl Calls", "CustServ Calls",
)  # fmt: skip

#: The model input's columns: the numeric ones, the plans as 0/1, then the one-hot columns.
FEATURE_NAMES = (
    *_NUMERIC_FEATURES,
    "Int'l Plan",
    "VMail Plan",
    *(f"Area Code_{code}" for code in AREA_CODES),
    *(f"State_{state}" for state in STATES),
)

_RATES = {"Day": 0.17, "Eve": 0.085, "Night": 0.045, "Intl": 0.27}


@dataclass(frozen=True)
class ChurnData:
    """Customers, their model input and labels.

    Attributes:
        table: the table's columns by name (COLUMNS), numbers as numpy arrays, text as lists.
        features: the model input, one row per customer, columns FEATURE_NAMES (float32).
        labels: 1 for a customer who churned.
        churn_probability: the true probability of churn the mechanism gave each customer.
    """

    table: Mapping[str, npt.NDArray[np.float64] | list[str]]
    features: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int8]
    churn_probability: npt.NDArray[np.float64]

    def __len__(self) -> int:
        return int(self.labels.size)

    def subset(self, rows: npt.NDArray[np.intp]) -> ChurnData:
        """The customers at positions `rows`, in that order."""
        table: dict[str, npt.NDArray[np.float64] | list[str]] = {
            name: ([column[i] for i in rows] if isinstance(column, list) else column[rows].copy())
            for name, column in self.table.items()
        }
        return ChurnData(
            table, self.features[rows], self.labels[rows], self.churn_probability[rows]
        )

    def to_csv(self) -> str:
        """The table as CSV with a header row, as the walkthrough's churn.txt."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(COLUMNS)
        columns = [self.table[name] for name in COLUMNS]
        for index in range(len(self)):
            writer.writerow([_cell(column[index]) for column in columns])
        return buffer.getvalue()


def generate_churn(rows: int, seed: int) -> ChurnData:
    """`rows` customers drawn as the module docstring describes, reproducibly from `seed`."""
    rng = np.random.default_rng(seed)

    def normal(mean: float, spread: float, low: float, high: float) -> npt.NDArray[np.float64]:
        return np.clip(rng.normal(mean, spread, rows), low, high)

    state = rng.integers(0, len(STATES), rows)
    area = rng.choice(len(AREA_CODES), rows, p=[0.25, 0.5, 0.25])
    account_length = np.round(normal(101, 40, 1, 243))
    international = rng.random(rows) < 0.10
    voicemail = rng.random(rows) < 0.28
    messages = np.where(voicemail, np.round(normal(29, 7.5, 1, 60)), 0.0)
    minutes = {
        "Day": np.round(normal(180, 54, 0, 360), 1),
        "Eve": np.round(normal(200, 51, 0, 360), 1),
        "Night": np.round(normal(200, 51, 0, 360), 1),
        "Intl": np.round(normal(10.2, 2.8, 0, 20), 1),
    }
    calls = {
        "Day": np.round(normal(100, 20, 0, 200)),
        "Eve": np.round(normal(100, 20, 0, 200)),
        "Night": np.round(normal(100, 20, 0, 200)),
        "Intl": rng.poisson(4.5, rows).astype(np.float64),
    }
    service_calls = rng.poisson(1.56, rows).astype(np.float64)
    probability = churn_probability(
        service_calls, minutes["Day"], minutes["Eve"], international, voicemail
    )
    labels = (rng.random(rows) < probability).astype(np.int8)
    exchanges, lines = rng.integers(327, 423, rows), rng.integers(0, 10000, rows)
    phone = [f"{a}-{b:04d}" for a, b in zip(exchanges, lines, strict=True)]
    table: dict[str, npt.NDArray[np.float64] | list[str]] = {
        "State": [STATES[i] for i in state],
        "Account Length": account_length,
        "Area Code": np.array([AREA_CODES[i] for i in area], dtype=np.float64),
        "Phone": phone,
        "Int'l Plan": ["yes" if flag else "no" for flag in international],
        "VMail Plan": ["yes" if flag else "no" for flag in voicemail],
        "VMail Message": messages,
    }
    for period in ("Day", "Eve", "Night", "Intl"):
        table[f"{period} Mins"] = minutes[period]
        table[f"{period} Calls"] = calls[period]
        table[f"{period} Charge"] = np.round(minutes[period] * _RATES[period], 2)
    table["CustServ Calls"] = service_calls
    table["Churn?"] = ["True." if label else "False." for label in labels]
    table = {name: table[name] for name in COLUMNS}

    numeric = np.column_stack([table[name] for name in _NUMERIC_FEATURES])
    features = np.hstack(
        [
            numeric,
            international[:, None],
            voicemail[:, None],
            np.eye(len(AREA_CODES))[area],
            np.eye(len(STATES))[state],
        ]
    ).astype(np.float32)
    return ChurnData(table, features, labels, probability)


def churn_probability(
    service_calls: npt.NDArray[np.float64],
    day_minutes: npt.NDArray[np.float64],
    evening_minutes: npt.NDArray[np.float64],
    international_plan: npt.NDArray[np.bool_],
    voicemail_plan: npt.NDArray[np.bool_],
) -> npt.NDArray[np.float64]:
    """The true probability of churn (the mechanism in the module docstring)."""
    logit = (
        -2.95
        + 0.35 * (service_calls - 1.5)
        + 1.6 * (service_calls >= 4)
        + 0.03 * (day_minutes - 180)
        + 0.006 * (evening_minutes - 200)
        + 2.0 * international_plan
        - 1.0 * voicemail_plan
    )
    return np.asarray(1 / (1 + np.exp(-logit)), dtype=np.float64)


def train_test_split(
    data: ChurnData, test_fraction: float, seed: int
) -> tuple[ChurnData, ChurnData]:
    """Shuffle the customers with `seed` and split them into (train, test).

    Raises:
        ValueError: `test_fraction` leaves either part empty.
    """
    order = np.random.default_rng(seed).permutation(len(data))
    test_rows = round(len(data) * test_fraction)
    if not 0 < test_rows < len(data):
        raise ValueError(f"test fraction {test_fraction} of {len(data)} rows leaves a part empty")
    return data.subset(order[test_rows:]), data.subset(order[:test_rows])


def _cell(value: object) -> str:
    if isinstance(value, float | np.floating):
        number = float(value)
        return str(int(number)) if number.is_integer() else f"{number:g}"
    return str(value)
