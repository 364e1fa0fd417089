"""The command line's one client for a gateway: what it sends, and every way a call can fail."""

from __future__ import annotations

import json

import pytest

from splitserve.gateway_client import GatewayClient, GatewayRequestError
from tests.support.http import Answer, Received, answering_server, free_port


def _json(status: int, document: object) -> Answer:
    return Answer(status, json.dumps(document).encode(), {"Content-Type": "application/json"})


def test_get_json_sends_the_path_and_query_and_decodes_the_answer() -> None:
    with answering_server(lambda _: _json(200, {"ok": [1, 2]})) as server:
        client = GatewayClient(server.url + "/", timeout_seconds=5)
        assert client.get_json("/splitserve/stats/a%2Fb", {"since": 900, "per": 60}) == {
            "ok": [1, 2]
        }
        assert client.get_json("/plain") == {"ok": [1, 2]}
    assert [(r.method, r.path) for r in server.received] == [
        ("GET", "/splitserve/stats/a%2Fb?since=900&per=60"),
        ("GET", "/plain"),
    ]


def test_weight_history_gets_the_endpoints_weight_route() -> None:
    with answering_server(lambda _: _json(200, {"WeightChanges": []})) as server:
        assert GatewayClient(server.url, 5).weight_history("a/b c") == {"WeightChanges": []}
    assert [(r.method, r.path) for r in server.received] == [
        ("GET", "/splitserve/endpoints/a%2Fb%20c/weights")
    ]


def test_sagemaker_posts_json_1_1_with_the_target() -> None:
    with answering_server(lambda _: _json(200, {"EndpointName": "e"})) as server:
        answer = GatewayClient(server.url, 5).sagemaker("DescribeEndpoint", {"EndpointName": "e"})
    assert answer == {"EndpointName": "e"}
    (request,) = server.received
    assert (request.method, request.path) == ("POST", "/")
    assert request.headers["X-Amz-Target"] == "SageMaker.DescribeEndpoint"
    assert request.headers["Content-Type"] == "application/x-amz-json-1.1"
    assert json.loads(request.body) == {"EndpointName": "e"}


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        # SageMaker's JSON 1.1 errors say `message`; the REST ones and splitserve's say `Message`.
        (_json(400, {"__type": "ValidationException", "message": "Could not find it."}),
         "Could not find it."),
        (_json(400, {"__type": "ValidationException", "Message": "no such thing"}),
         "no such thing"),
        (Answer(502, b"<html>bad gateway</html>"), "HTTP 502 Bad Gateway"),
        (_json(500, ["not", "an", "object"]), "HTTP 500 Internal Server Error"),
        (_json(404, {"message": ""}), "HTTP 404 Not Found"),
    ],
)  # fmt: skip
def test_an_error_answer_gives_its_message_and_status(answer: Answer, message: str) -> None:
    def reply(_: Received) -> Answer:
        return answer

    with answering_server(reply) as server, pytest.raises(GatewayRequestError) as raised:
        GatewayClient(server.url, 5).get_json("/x")
    assert raised.value.message == message
    assert str(raised.value) == message
    assert raised.value.status == answer.status


def test_an_answer_that_is_not_json_is_refused() -> None:
    with (
        answering_server(lambda _: Answer(200, b"plain text")) as server,
        pytest.raises(GatewayRequestError, match="did not answer with JSON") as raised,
    ):
        GatewayClient(server.url, 5).get_json("/x")
    assert raised.value.status is None


def test_no_gateway_at_the_address() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(GatewayRequestError, match=f"cannot reach the gateway at {url}: ") as raised:
        GatewayClient(url, 5).get_json("/x")
    assert raised.value.status is None


@pytest.mark.parametrize("url", ["127.0.0.1:8080", "ftp://127.0.0.1:1", "http://[::1"])
def test_a_malformed_url_says_so(url: str) -> None:
    with pytest.raises(GatewayRequestError, match="cannot reach the gateway at"):
        GatewayClient(url, 5).sagemaker("DescribeEndpoint", {})
