"""Feedback's service and tables called directly, over both backends: every refusal, the join
exactly once, the stored labels rebuilding the live experiment, pruning, and the index's writer."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest

from splitserve.config import DatabaseSettings, FeedbackSettings
from splitserve.database import Database, open_database
from splitserve.errors import (
    DatabaseUnavailable,
    DuplicateFeedback,
    LateFeedback,
    MalformedFeedback,
    UnknownInferenceId,
    UnscorableFeedback,
    ValidationException,
    WrongEndpointFeedback,
)
from splitserve.metrics.prometheus import REGISTRY
from splitserve.online.index import InferenceIndex
from splitserve.online.service import FeedbackService, uuid7_seconds
from splitserve.online.store import FeedbackStore, IndexRow

_QUICK = DatabaseSettings(connect_timeout_seconds=1.0, statement_timeout_seconds=2.0)
NOW = 1_750_000_000.0
DAY = 24 * 3600


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A new state database."""
    if request.param == "sqlite":
        path = tmp_path / "state.sqlite3"
        sqlite3.connect(path).close()
        url = f"sqlite://{path}"
    else:
        url = request.getfixturevalue("postgres_url")
    opened = open_database(url, _QUICK)
    try:
        yield opened
    finally:
        opened.close()


class Endpoints:
    """Two endpoints: `ab` (A and B, 50/50) and `other` (C alone)."""

    def __init__(self) -> None:
        self.routed: dict[str, dict[str, float]] = {"ab": {"A": 1.0, "B": 1.0}, "other": {"C": 1.0}}

    def known(self, endpoint: str) -> bool:
        return endpoint in self.routed

    def weights(self, endpoint: str) -> Mapping[str, float] | None:
        return self.routed.get(endpoint)

    def names(self) -> list[str]:
        return sorted(self.routed)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def _service(database: Database, clock: Clock | None = None) -> FeedbackService:
    return FeedbackService(
        FeedbackSettings(), FeedbackStore.open(database), Endpoints(), clock or Clock()
    )


def _index(
    store: FeedbackStore,
    inference_id: str,
    variant: str = "A",
    *,
    endpoint: str = "ab",
    answer: bytes = b"0.9",
    when: float = NOW - 60,
    targeted: bool = False,
) -> None:
    store.write_index([(endpoint, inference_id, variant, targeted, when, "text/csv", answer)])


def _record(inference_id: str, data: object = "1") -> dict[str, object]:
    return {
        "groundTruthData": {"data": data, "encoding": "CSV"},
        "eventMetadata": {"eventId": inference_id},
        "eventVersion": "0",
    }


def _body(*records: object) -> bytes:
    return json.dumps(list(records)).encode()


def _counted(endpoint: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "splitserve_feedback_total", {"endpoint_name": endpoint, "outcome": outcome}
    )
    return value or 0.0


def test_a_label_joins_once_and_a_second_is_a_duplicate(database: Database) -> None:
    service = _service(database)
    store = FeedbackStore(database)
    _index(store, "id-1")
    before = _counted("ab", "joined")
    answer = service.submit("ab", json.dumps(_record("id-1")).encode())
    assert answer.to_json() == {
        "Joined": 1,
        "Refused": 0,
        "Records": [{"EventId": "id-1", "Outcome": "joined"}],
    }
    assert _counted("ab", "joined") == before + 1
    with pytest.raises(DuplicateFeedback, match="already has its label"):
        service.submit("ab", json.dumps(_record("id-1", "0")).encode())
    # In one batch too: the second record of the same id is refused, the first joins.
    _index(store, "id-2")
    batch = service.submit("ab", _body(_record("id-2"), _record("id-2")))
    assert [outcome for _, outcome, _ in batch.outcomes] == ["joined", "duplicate"]
    assert [label.labels for label in store.labels_after("ab", 0)] == [(1,), (1,)]


def test_each_refusal_names_its_problem(database: Database) -> None:
    clock = Clock()
    service = _service(database, clock)
    store = FeedbackStore(database)
    _index(store, "old", when=NOW - DAY - 1)
    _index(store, "theirs", "C", endpoint="other")
    _index(store, "regression", answer=b"3.5")
    _index(store, "rows", answer=b"0.1\n0.2\n")
    _index(store, "text", answer=b"not a score")
    old_uuid7 = "0190e5a4-0000-7abc-8abc-000000000001"  # drawn in 2024: past any retention
    cases = [
        (_record("never"), UnknownInferenceId, "No answered invocation has inference id 'never'"),
        (_record(old_uuid7), LateFeedback, "more than 24 h ago"),
        (_record("old"), LateFeedback, "more than 24 h ago"),
        (_record("theirs"), WrongEndpointFeedback, "of endpoint other, not of this endpoint"),
        (_record("regression"), UnscorableFeedback, "outside \\[0, 1\\]"),
        (_record("rows"), UnscorableFeedback, "2 scores .* 1 labels"),
        (_record("text"), UnscorableFeedback, "no usable scores"),
        (_record("x", "maybe"), MalformedFeedback, "Record 0 \\(x\\): label 'maybe'"),
        ({"eventMetadata": {"eventId": "x"}}, MalformedFeedback, "groundTruthData"),
        ({**_record("x"), "eventVersion": "9"}, MalformedFeedback, "eventVersion"),
        (_record(""), MalformedFeedback, "no eventMetadata.eventId"),
        (_record("x" * 65), MalformedFeedback, "not an inference id"),
        (
            {
                "groundTruthData": {"data": "1", "encoding": "JSON"},
                "eventMetadata": {"eventId": "x"},
            },
            MalformedFeedback,
            "only CSV",
        ),
    ]
    for record, error, message in cases:
        with pytest.raises(error, match=message):
            service.submit("ab", json.dumps(record).encode())
    for body, message in [
        (b"", "empty"),
        (b"\xff", "not UTF-8"),
        (b"[]", "holds no record"),
        (b"7", "a ground-truth record, an array of them, or JSON Lines"),
        (b'{"a": 1}\nnot json', "line 2 is not JSON"),
        (_body(*[_record("x")] * 1001), "1001 records; at most 1000"),
        (b" " * (1024 * 1024 + 1), "at most 1048576 per request"),
    ]:
        with pytest.raises(MalformedFeedback, match=message):
            service.submit("ab", body)
    with pytest.raises(ValidationException, match="Endpoint nope not found"):
        service.submit("nope", json.dumps(_record("x")).encode())
    refused = service.look("ab")["labels"]
    assert refused == {
        "joined": 0,
        "refused": {
            "late": 2,
            "malformed": 13,
            "unknown": 1,
            "unscorable": 3,
            "wrong_endpoint": 1,
        },
    }


def test_a_batch_answers_every_record(database: Database) -> None:
    service = _service(database)
    store = FeedbackStore(database)
    _index(store, "a1", answer=b"0.2\n0.8\n")
    lines = "\n".join(
        json.dumps(record) for record in (_record("a1", "0,1"), _record("zz"), {"nope": 1})
    )
    answer = service.submit("ab", lines.encode()).to_json()
    assert answer["Joined"] == 1
    assert answer["Refused"] == 2
    records = answer["Records"]
    assert isinstance(records, list)
    assert records[0] == {"EventId": "a1", "Outcome": "joined"}
    assert records[1]["Outcome"] == "unknown"
    assert records[2]["EventId"] is None
    assert records[2]["Outcome"] == "malformed"
    assert "Record 2" in records[2]["Message"]


def test_the_experiment_rebuilds_from_stored_labels(database: Database) -> None:
    service = _service(database)
    store = FeedbackStore(database)
    for number in range(40):
        variant = "AB"[number % 2]
        _index(store, f"i{number}", variant, answer=b"0.9" if variant == "A" else b"0.2")
    service.submit("ab", _body(*(_record(f"i{number}") for number in range(40))))
    view = service.look("ab")
    assert view["EndpointName"] == "ab"
    assert view["labels"] == {"joined": 40, "refused": {}}
    variants = view["variants"]
    assert isinstance(variants, dict)
    assert variants["A"]["n"] == 20
    assert variants["A"]["metrics"]["accuracy"]["value"] == 1.0
    assert variants["B"]["metrics"]["accuracy"]["value"] == 0.0
    srm = view["srm"]
    assert isinstance(srm, dict)
    assert srm["failed"] is False
    # A new service over the same database (a restart, or another replica) sees the same.
    again = _service(database).look("ab")
    assert again["variants"] == view["variants"]
    assert again["labels"] == view["labels"]
    sample = REGISTRY.get_sample_value(
        "splitserve_experiment_metric",
        {"endpoint_name": "ab", "variant_name": "A", "metric": "accuracy", "bound": "value"},
    )
    assert sample == 1.0


def test_one_variant_has_nothing_to_compare(database: Database) -> None:
    view = _service(database).look("other")
    assert view["winner"] is None
    assert "fewer than two variants" in str(view["message"])


def test_pruning_by_age_and_count(database: Database) -> None:
    store = FeedbackStore.open(database)
    for number in range(5):
        _index(store, f"p{number}", when=NOW - 10 * number)
    assert store.prune(NOW - 25, max_rows=10) == 2  # p3 and p4 are too old
    assert store.prune(NOW - 25, max_rows=2) == 1  # the oldest of the three left
    assert store.assignments("ab") == {"A": 2}


def test_a_large_index_write_keeps_every_row_and_the_first_of_a_repeated_id(
    database: Database,
) -> None:
    # 133 rows: two whole multi-row statements and a shorter one; an id repeated inside the first
    # statement and one repeated across statements, each keeping its first answer.
    store = FeedbackStore.open(database)
    rows: list[IndexRow] = [
        ("ab", f"id-{n}", "AB"[n % 2], n % 3 == 0, NOW - n, "text/csv", f"0.{n}".encode())
        for n in range(131)
    ]
    rows.insert(10, ("ab", "id-3", "B", False, NOW, None, b"second"))
    rows.append(("ab", "id-100", "A", True, NOW, "text/csv", b"again"))
    store.write_index(rows)
    assert len(rows) == 133
    assert database.query("SELECT COUNT(*) FROM feedback_index")[0][0] == 131
    assert database.query(
        "SELECT variant, targeted, content_type, answer FROM feedback_index "
        "WHERE inference_id IN ('id-3', 'id-100') ORDER BY inference_id"
    ) == [("A", 0, "text/csv", b"0.100"), ("B", 1, "text/csv", b"0.3")]
    untargeted = [n for n in range(131) if n % 3]
    assert store.assignments("ab") == {
        "A": sum(1 for n in untargeted if n % 2 == 0),
        "B": sum(1 for n in untargeted if n % 2),
    }


def test_uuid7_time() -> None:
    assert uuid7_seconds("01a23caf-731d-731a-a3ad-000000000001") == pytest.approx(
        0x01A23CAF731D / 1000
    )
    assert uuid7_seconds("01a23caf-731d-431a-a3ad-000000000001") is None  # version 4
    assert uuid7_seconds("not-an-id") is None


async def test_the_index_writes_off_the_request_path_and_drops_when_full(
    database: Database,
) -> None:
    store = FeedbackStore.open(database)
    index = InferenceIndex(replace(FeedbackSettings(), index_queue_size=2, answer_max_bytes=3))
    index.start(store, lambda: True)
    dropped = REGISTRY.get_sample_value("splitserve_feedback_index_dropped_total") or 0.0
    for number in range(3):
        index.record("ab", "A", f"w{number}", False, b"text/csv", b"0.12345")
    assert REGISTRY.get_sample_value("splitserve_feedback_index_dropped_total") == dropped + 1
    await index.close()
    rows = database.query("SELECT inference_id, answer FROM feedback_index ORDER BY inference_id")
    assert [(row[0], bytes(row[1])) for row in rows] == [  # type: ignore[call-overload]
        ("w0", b"0.1"),
        ("w1", b"0.1"),
    ]


def test_forgetting_a_deleted_endpoint(database: Database) -> None:
    service = _service(database)
    store = FeedbackStore(database)
    _index(store, "f1")
    _index(store, "f2")
    service.submit("ab", json.dumps(_record("f1")).encode())
    assert service.look("ab")["labels"] == {"joined": 1, "refused": {}}
    service.forget("ab")
    assert service.look("ab")["labels"] == {"joined": 0, "refused": {}}
    with pytest.raises(UnknownInferenceId):
        service.submit("ab", json.dumps(_record("f2")).encode())


class _Unreachable(FeedbackStore):
    """A store whose database cannot be reached for writes."""

    def __init__(self) -> None:
        pass

    def write_index(self, rows: Sequence[IndexRow]) -> None:
        raise DatabaseUnavailable("The state database cannot be reached.")


async def test_an_index_write_that_fails_drops_and_counts_its_entries() -> None:
    index = InferenceIndex(FeedbackSettings(index_batch_rows=2))
    index.start(_Unreachable(), lambda: False)
    dropped = REGISTRY.get_sample_value("splitserve_feedback_index_dropped_total") or 0.0
    for number in range(3):
        index.record("ab", "A", f"u{number}", False, None, b"0.5")
    await index.close()  # writes what waits: two batches, both refused
    assert REGISTRY.get_sample_value("splitserve_feedback_index_dropped_total") == dropped + 3


def test_labels_of_variants_no_longer_routed_stay_in_the_experiment(database: Database) -> None:
    endpoints = Endpoints()
    service = FeedbackService(FeedbackSettings(), FeedbackStore.open(database), endpoints, Clock())
    store = FeedbackStore(database)
    for number, variant in enumerate(("A", "B", "Old", "Older")):
        _index(store, f"v{number}", variant)
    service.submit("ab", _body(_record("v0"), _record("v1"), _record("v2")))
    assert list(service.look("ab")["variants"]) == ["A", "B", "Old"]  # type: ignore[call-overload]
    service.submit("ab", _body(_record("v3")))
    assert list(service.look("ab")["variants"]) == ["A", "B", "Old", "Older"]  # type: ignore[call-overload]
    endpoints.routed["ab"] = {"A": 1.0, "B": 3.0}  # new weights: the split check starts over
    view = service.look("ab")
    assert list(view["variants"]) == ["A", "B", "Old", "Older"]  # type: ignore[call-overload]
    assert view["labels"] == {"joined": 4, "refused": {}}


def test_new_weights_restart_the_split_check_and_keep_the_winner(database: Database) -> None:
    endpoints = Endpoints()
    clock = Clock()
    service = FeedbackService(FeedbackSettings(), FeedbackStore.open(database), endpoints, clock)
    store = FeedbackStore(database)
    for number in range(200):  # A right every time, B wrong: A wins
        variant = "AB"[number % 2]
        _index(store, f"i{number}", variant, answer=b"0.9" if variant == "A" else b"0.2")
    service.submit("ab", _body(*(_record(f"i{number}") for number in range(200))))
    assert service.look("ab")["winner"] == "A"
    for number in range(200, 400):  # then the other way round: the two are even now
        variant = "AB"[number % 2]
        _index(store, f"i{number}", variant, answer=b"0.2" if variant == "A" else b"0.9")
    service.submit("ab", _body(*(_record(f"i{number}") for number in range(200, 400))))
    assert service.look("ab")["winner"] == "A"  # an always-valid decision, once made, stands
    # A promotion's step: the split check starts over against 3:1 and counts from now, and the
    # decision made under 1:1 stands (rebuilt from the labels at one look, it would not).
    clock.now += 10
    endpoints.routed["ab"] = {"A": 3.0, "B": 1.0}
    view = service.look("ab")
    assert view["winner"] == "A"
    assert view["srm"] == {"p_value": 1.0, "failed": False}  # nothing routed since the change
    for number in range(300):  # since the change, every routed invocation went to B
        _index(store, f"late{number}", "B", when=clock.now + 1)
    view = service.look("ab")
    assert view["srm"]["failed"] is True  # type: ignore[index]
    assert view["winner"] is None  # a failed split check blocks the winner


def test_the_same_label_sent_at_once_by_many_joins_once(database: Database) -> None:
    # Services over one database stand for replicas: each has its own FeedbackService.
    services = [_service(database) for _ in range(4)]
    store = FeedbackStore(database)
    for number in range(5):
        _index(store, f"c{number}")
    body = _body(*(_record(f"c{number}") for number in range(5)))
    barrier = threading.Barrier(len(services))

    def send(service: FeedbackService) -> list[str]:
        barrier.wait()
        return [outcome for _, outcome, _ in service.submit("ab", body).outcomes]

    with ThreadPoolExecutor(len(services)) as pool:
        answers = list(pool.map(send, services))
    joined = [outcome for answer in answers for outcome in answer if outcome == "joined"]
    assert len(joined) == 5
    assert sorted(o for answer in answers for o in answer).count("duplicate") == 15
    assert len(store.labels_after("ab", 0)) == 5
