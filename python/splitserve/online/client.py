"""`splitserve.feedback(...)`: send labels to a running gateway (stdlib only; botocore only to
sign, when credentials are given).

    import splitserve
    answer = splitserve.feedback("http://127.0.0.1:8080", "churn-ab", [(inference_id, 1), ...])
    answer["Joined"], answer["Refused"], answer["Records"]

Each item is a ground-truth record (a mapping, sent as it is) or an (inference id, label) pair,
the label a 0/1, a bool, a word `evaluate` reads ("true", "no", ...) or a sequence of them, one per
row of the request. The records go as one JSON array, so the gateway answers with every record's
outcome (README, "Closing the loop"), which this returns.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from splitserve.config import FeedbackSettings
from splitserve.gateway_client import GatewayClient

__all__ = ["feedback", "ground_truth_record", "signed_headers"]

_DEFAULTS = FeedbackSettings()
#: SigV4's signing name for the gateway's own routes: the control plane's (wiring.auth).
_SIGNING_SERVICE = "sagemaker"

Label = int | bool | str | Sequence[int | bool | str]


def ground_truth_record(inference_id: str, label: Label) -> dict[str, object]:
    """The ground-truth record (SageMaker's merge format) labelling invocation `inference_id`.

    Raises:
        ValueError: `label` is not a label or a sequence of labels.
    """
    if isinstance(label, bool):
        data = "1" if label else "0"
    elif isinstance(label, int | str):
        data = str(label)
    elif isinstance(label, Sequence) and label:
        data = ",".join(
            "1" if item is True else "0" if item is False else str(item) for item in label
        )
    else:
        raise ValueError(f"not a label: {label!r}")
    return {
        "groundTruthData": {"data": data, "encoding": "CSV"},
        "eventMetadata": {"eventId": inference_id},
        "eventVersion": "0",
    }


def feedback(
    url: str,
    endpoint: str,
    records_or_pairs: Iterable[Mapping[str, object] | tuple[str, Label]],
    *,
    credentials: tuple[str, str] | Any | None = None,
    region: str = "us-east-1",
    timeout: float = _DEFAULTS.client_timeout_seconds,
) -> dict[str, Any]:
    """POST labels to `endpoint` of the gateway at `url`; return its answer (`Joined`,
    `Refused`, and per record `EventId`, `Outcome` and a `Message` for a refusal).

    Args:
        url: the gateway, e.g. `http://127.0.0.1:8080`.
        endpoint: the endpoint whose invocations the labels are for.
        records_or_pairs: ground-truth records, or (inference id, label) pairs.
        credentials: for a gateway started with `--auth`: an (access key id, secret) pair, or
            botocore credentials; the request is then SigV4-signed (needs botocore).
        region: the region in the signature's scope.
        timeout: seconds to wait for the answer.

    Raises:
        ValueError: an item is neither a record nor an (id, label) pair.
        GatewayRequestError: no answer, or an error answer (its message says why: a body over
            the limit, an unknown endpoint, a refused signature).
    """
    records = [
        dict(item) if isinstance(item, Mapping) else ground_truth_record(*_pair(item))
        for item in records_or_pairs
    ]
    body = json.dumps(records).encode()
    path = f"/splitserve/feedback/{_quote(endpoint)}"
    headers = {"Content-Type": "application/json"}
    if credentials is not None:
        headers = signed_headers(url.rstrip("/") + path, body, headers, credentials, region)
    answer: dict[str, Any] = GatewayClient(url, timeout).post(path, body, headers)
    return answer


def _pair(item: object) -> tuple[str, Label]:
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
        return item[0], item[1]
    raise ValueError(f"not a ground-truth record or an (inference id, label) pair: {item!r}")


def _quote(endpoint: str) -> str:
    import urllib.parse  # noqa: PLC0415 (stdlib, only here)

    return urllib.parse.quote(endpoint, safe="")


def signed_headers(
    url: str, body: bytes, headers: dict[str, str], credentials: Any, region: str
) -> dict[str, str]:
    """`headers` with a SigV4 signature of the POST of `body` to `url` (botocore's signer)."""
    from botocore.auth import SigV4Auth  # noqa: PLC0415 (optional: only to sign)
    from botocore.awsrequest import AWSRequest  # noqa: PLC0415
    from botocore.credentials import Credentials  # noqa: PLC0415

    if isinstance(credentials, tuple):
        credentials = Credentials(*credentials)
    request = AWSRequest(method="POST", url=url, data=body, headers=headers)
    SigV4Auth(credentials, _SIGNING_SERVICE, region).add_auth(request)
    return dict(request.headers.items())
