"""The command line's client for a running gateway (`splitserve stats`, `splitserve weights`,
`evaluate --url`).

Blocking (urllib), because a command makes one call and exits; unsigned, so it serves gateways
started without `--auth`. It imports nothing of the package, so the evaluation (which must run
without the gateway and the Rust build) and the face's stats command can both use it.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class GatewayRequestError(Exception):
    """A call to the gateway failed: no answer, an error answer, or an answer that is not JSON.

    Attributes:
        message: what went wrong, fit to show a user: the gateway's own message for an error
            answer, else which gateway could not be reached and why.
        status: the HTTP status of an error answer; None when there was no usable answer.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class GatewayClient:
    """Calls to one gateway.

    Attributes:
        url: the gateway's base URL, e.g. `http://127.0.0.1:8080` (a trailing slash is fine).
        timeout_seconds: how long each call may take (connect and answer).
    """

    url: str
    timeout_seconds: float

    def get_json(self, path: str, query: Mapping[str, object] | None = None) -> Any:
        """GET `path` (already quoted) with `query` and return the decoded JSON answer.

        Raises:
            GatewayRequestError: no answer, an error answer, or an answer that is not JSON.
        """
        url = self.url.rstrip("/") + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        return self._call(url, "GET")

    def weight_history(self, endpoint: str) -> Any:
        """GET /splitserve/endpoints/<endpoint>/weights: the endpoint's weight changes.

        Raises:
            GatewayRequestError: no answer, an error answer (`Could not find endpoint ...`), or
                an answer that is not JSON.
        """
        return self.get_json(
            f"/splitserve/endpoints/{urllib.parse.quote(endpoint, safe='')}/weights"
        )

    def post(self, path: str, body: bytes, headers: Mapping[str, str]) -> Any:
        """POST `body` with `headers` to `path` (already quoted) and return the decoded JSON
        answer (`splitserve.feedback`).

        Raises:
            GatewayRequestError: no answer, an error answer, or an answer that is not JSON.
        """
        return self._call(self.url.rstrip("/") + path, "POST", body, headers)

    def sagemaker(self, operation: str, document: Mapping[str, object]) -> Any:
        """Call a SageMaker control-plane `operation` (e.g. "DescribeEndpoint") with `document`.

        The request is the AWS JSON 1.1 protocol's: POST / with the operation in X-Amz-Target
        (docs/sagemaker-api.md, '1.1 Control plane').

        Raises:
            GatewayRequestError: no answer, an error answer, or an answer that is not JSON.
        """
        return self._call(
            self.url.rstrip("/") + "/",
            "POST",
            json.dumps(document).encode(),
            {
                "Content-Type": "application/x-amz-json-1.1",
                "X-Amz-Target": f"SageMaker.{operation}",
            },
        )

    def _call(
        self,
        url: str,
        method: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        try:
            # Built inside the try: a malformed URL fails here, as a ValueError.
            request = urllib.request.Request(url, body, dict(headers or {}), method=method)
            with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            with error:
                raise GatewayRequestError(_error_message(error), error.code) from None
        except (OSError, ValueError) as error:
            # URLError is an OSError whose reason is the useful part; ValueError: a malformed URL.
            reason = error.reason if isinstance(error, urllib.error.URLError) else error
            raise GatewayRequestError(f"cannot reach the gateway at {self.url}: {reason}") from None
        try:
            return json.loads(raw)
        except ValueError:
            raise GatewayRequestError(f"{self.url} did not answer with JSON") from None


def _error_message(error: urllib.error.HTTPError) -> str:
    """The message of a SageMaker error answer (`message` or `Message`), else the status line."""
    try:
        body = json.load(error)
    except (ValueError, OSError):
        body = None
    if isinstance(body, dict):
        message = body.get("message") or body.get("Message")
        if message:
            return str(message)
    return f"HTTP {error.code} {error.reason}"
