"""`splitserve weights ENDPOINT`: the table, its JSON, and a gateway that refuses or is away."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from splitserve.cli import main
from splitserve.cli_stats import StatsUnavailable, render_weights
from tests.support.http import Answer, Received, answering_server, free_port

_HISTORY = {
    "EndpointName": "ab",
    "EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/ab",
    "CreationTime": 1714564790.0,
    "WeightChanges": [
        {
            "Time": 1714564800.0,
            "Cause": "CreateEndpoint",
            "Weights": [
                {"VariantName": "Variant1", "Weight": 1.0},
                {"VariantName": "Variant2", "Weight": 1.0},
            ],
        },
        {
            "Time": 1714565400.5,
            "Cause": "UpdateEndpointWeightsAndCapacities",
            "Weights": [
                {"VariantName": "Variant1", "Weight": 1.0},
                {"VariantName": "Variant2", "Weight": 3.0},
            ],
        },
    ],
}


def _answer(request: Received) -> Answer:
    """The gateway's weight route: "ab" has a history, anything else is not found."""
    if request.path == "/splitserve/endpoints/ab/weights":
        return Answer(200, json.dumps(_HISTORY).encode())
    if request.path == "/splitserve/endpoints/odd/weights":
        return Answer(200, b'{"EndpointName": "odd"}')
    body = {"__type": "ValidationException", "Message": 'Could not find endpoint "x".'}
    return Answer(400, json.dumps(body).encode())


@pytest.fixture
def gateway() -> Iterator[str]:
    with answering_server(_answer) as server:
        yield server.url


def test_table_has_a_row_per_change(gateway: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["weights", "ab", "--url", gateway]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "Endpoint ab: 2 weight changes, oldest first",
        "time (UTC)           cause                               Variant1  Variant2",
        "2024-05-01 12:00:00  CreateEndpoint                       1 (50%)   1 (50%)",
        "2024-05-01 12:10:00  UpdateEndpointWeightsAndCapacities   1 (25%)   3 (75%)",
    ]


def test_json_is_the_gateways_answer(gateway: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["weights", "ab", "--url", gateway, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == _HISTORY


def test_refusals_and_absence_exit_1_with_one_line(
    gateway: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["weights", "nope", "--url", gateway]) == 1
    assert capsys.readouterr().err == 'splitserve: Could not find endpoint "x".\n'
    assert main(["weights", "odd", "--url", gateway]) == 1
    assert "did not answer with a weight history" in capsys.readouterr().err
    assert main(["weights", "ab", "--url", f"http://127.0.0.1:{free_port()}"]) == 1
    assert "cannot reach the gateway" in capsys.readouterr().err


def test_an_empty_or_unreadable_history() -> None:
    assert render_weights({"EndpointName": "ab", "WeightChanges": []}) == (
        "Endpoint ab: no weight changes recorded\n"
    )
    with pytest.raises(StatsUnavailable, match="could not be read"):
        render_weights({"EndpointName": "ab", "WeightChanges": [{"Time": "soon"}]})
