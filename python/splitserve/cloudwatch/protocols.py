"""CloudWatch's three wire protocols, decoded into one request form and encoded from one answer.

docs/sagemaker-api.md, section 7, has the facts. In short:

- Smithy RPC v2 CBOR (current botocore): `POST /service/GraniteServiceVersion20100801/operation/
  <Operation>`, CBOR bodies (cbor2), timestamps as CBOR tag 1 (epoch seconds); errors are a CBOR
  map `{"__type": "<namespace>#<ShapeName>", "message"}` with `x-amzn-query-error:
  <Code>;Sender|Receiver`, from which botocore takes CloudWatch's legacy code.
- AWS JSON 1.0: `POST /` with `X-Amz-Target: GraniteServiceVersion20100801.<Operation>`; the same
  as CBOR in JSON (timestamps as epoch seconds).
- Query (older botocore): `POST /`, form-encoded `Action=<Operation>&Version=2010-08-01` with
  flattened members (`Dimensions.member.1.Name`), answered in XML.

No aiohttp here: `decode` takes the path, headers and body; `encode_result` and `encode_error` give
status, headers and body. Every operation's input is then checked by `shapes.coerce`.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

import cbor2

from splitserve.cloudwatch.shapes import OPERATIONS, ListOf, Shape, Structure, coerce
from splitserve.errors import (
    InvalidParameterValue,
    MissingParameter,
    SerializationException,
    SplitserveError,
    UnknownOperationException,
    wire_error,
)

__all__ = [
    "API_VERSION",
    "SERVICE_PATH_PREFIX",
    "TARGET_PREFIX",
    "Answer",
    "DecodedRequest",
    "WireProtocol",
    "decode",
    "encode_error",
    "encode_result",
    "protocol_of",
]

SERVICE_PATH_PREFIX = "/service/GraniteServiceVersion20100801/operation/"
TARGET_PREFIX = "GraniteServiceVersion20100801."
API_VERSION = "2010-08-01"
XML_NAMESPACE = "http://monitoring.amazonaws.com/doc/2010-08-01/"
_SHAPE_NAMESPACE = "com.amazonaws.cloudwatch"
_FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
#: The most form fields a query request may carry: far above any real call (500 queries of a few
#: fields each), far below what a 6 MiB body could hold.
_MAX_FORM_FIELDS = 20_000
_INDEX = re.compile(r"[1-9][0-9]{0,5}")
# Characters XML 1.0 cannot carry; messages may echo a client's value, and the answer must parse.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")

#: CloudWatch's legacy code -> the Smithy shape name botocore's model gives the error.
_SHAPE_NAMES = {
    "InvalidParameterValue": "InvalidParameterValueException",
    "MissingParameter": "MissingRequiredParameterException",
    "InvalidParameterCombination": "InvalidParameterCombinationException",
    "ResourceNotFound": "ResourceNotFound",
    "InvalidNextToken": "InvalidNextToken",
    "LimitExceeded": "LimitExceededFault",
    "InvalidFormat": "InvalidFormatFault",
    "InternalServiceError": "InternalServiceFault",
}


class WireProtocol(enum.Enum):
    """How a CloudWatch request came, and so how its answer goes."""

    CBOR = "smithy-rpc-v2-cbor"
    JSON = "json"
    QUERY = "query"


@dataclass(frozen=True)
class DecodedRequest:
    """A request's operation and its checked parameters (`shapes.coerce`'s form)."""

    operation: str
    params: dict[str, object]


@dataclass(frozen=True)
class Answer:
    """What goes back: status, headers, body."""

    status: int
    headers: dict[str, str]
    body: bytes


def protocol_of(path: str, headers: Mapping[str, str]) -> WireProtocol | None:
    """The CloudWatch protocol a request speaks, or None when it is not a CloudWatch request
    (the SageMaker control plane also takes `POST /`)."""
    if path.startswith(SERVICE_PATH_PREFIX):
        return WireProtocol.CBOR
    if path != "/":
        return None
    target = headers.get("X-Amz-Target")
    if target is not None:
        return WireProtocol.JSON if target.startswith(TARGET_PREFIX) else None
    content_type = headers.get("Content-Type", "").partition(";")[0].strip().lower()
    return WireProtocol.QUERY if content_type == _FORM_CONTENT_TYPE else None


def decode(
    protocol: WireProtocol, path: str, headers: Mapping[str, str], body: bytes
) -> DecodedRequest:
    """The operation and checked parameters of a request.

    Raises:
        UnknownOperationException: an operation this gateway does not serve.
        SerializationException: a body that is not what the protocol says.
        InvalidParameterValue, MissingParameter: parameters that do not fit the operation.
    """
    if protocol is WireProtocol.QUERY:
        operation, raw = _decode_query(body)
    else:
        if protocol is WireProtocol.CBOR:
            operation = path.removeprefix(SERVICE_PATH_PREFIX)
        else:
            operation = headers.get("X-Amz-Target", "").removeprefix(TARGET_PREFIX)
        _check_operation(operation)
        raw = _decode_cbor(body) if protocol is WireProtocol.CBOR else _decode_json(body)
    shape = OPERATIONS[operation]
    params = coerce(shape, raw, "")
    assert isinstance(params, dict)  # a Structure coerces to a dict
    return DecodedRequest(operation, params)


def _check_operation(operation: str) -> None:
    if operation not in OPERATIONS:
        shown = operation if len(operation) <= 64 and operation.isprintable() else "(unprintable)"
        raise UnknownOperationException(
            f"Operation {shown or '(none)'} is not supported by splitserve's CloudWatch API."
        )


def _decode_cbor(body: bytes) -> object:
    if not body:
        return {}
    try:
        value = cbor2.loads(body)
    except Exception as error:
        # Hostile bytes reach the decoder and its tag handlers (dates, bignums, regular
        # expressions, shared references), which raise many kinds of error, cbor2.CBORError
        # foremost: whatever it raises, the body is not CBOR this service can read.
        raise SerializationException("The request body is not valid CBOR.") from error
    if not isinstance(value, dict):
        raise SerializationException("The request body must be a CBOR map.")
    return value


def _decode_json(body: bytes) -> object:
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as error:
        raise SerializationException("The request body is not valid JSON.") from error
    if not isinstance(value, dict):
        raise SerializationException("The request body must be a JSON object.")
    return value


class _Node:
    """One level of a query request's dotted names: its value and its children."""

    __slots__ = ("children", "value")

    def __init__(self) -> None:
        self.value: str | None = None
        self.children: dict[str, _Node] = {}


def _decode_query(body: bytes) -> tuple[str, object]:
    try:
        text = body.decode("utf-8")
        fields = parse_qsl(
            text, keep_blank_values=True, max_num_fields=_MAX_FORM_FIELDS, errors="strict"
        )
    except UnicodeDecodeError as error:
        raise SerializationException("The request body is not valid UTF-8.") from error
    except ValueError as error:
        raise InvalidParameterValue(
            f"The request has more than {_MAX_FORM_FIELDS} parameters."
        ) from error
    root = _Node()
    for name, value in fields:
        node = root
        for part in name.split("."):
            node = node.children.setdefault(part, _Node())
        node.value = value
    action = root.children.get("Action")
    if action is None or not action.value:
        raise MissingParameter("The parameter Action is required.")
    version = root.children.get("Version")
    if version is None or version.value != API_VERSION:
        raise InvalidParameterValue(f"The parameter Version must be {API_VERSION}.")
    _check_operation(action.value)
    return action.value, _unflatten(OPERATIONS[action.value], root, "")


def _unflatten(shape: Shape, node: _Node, path: str) -> object:
    """A query node as the plain value the JSON protocol would have carried."""
    if isinstance(shape, Structure):
        if not node.children:
            return node.value
        result: dict[str, object] = {}
        for name, member in shape.members.items():
            child = node.children.get(name)
            if child is not None:
                result[name] = _unflatten(member, child, f"{path}.{name}" if path else name)
        return result
    if isinstance(shape, ListOf):
        members = node.children.get("member")
        if members is None:
            return node.value if not node.children else []
        items: dict[int, _Node] = {}
        for index, child in members.children.items():
            if not _INDEX.fullmatch(index):
                raise InvalidParameterValue(
                    f"The parameter {path}.member.{index[:16]} has no valid index."
                )
            items[int(index)] = child
        if sorted(items) != list(range(1, len(items) + 1)):
            raise InvalidParameterValue(
                f"The members of {path} must be numbered from 1 without gaps."
            )
        return [
            _unflatten(shape.member, items[index], f"{path}.member.{index}")
            for index in range(1, len(items) + 1)
        ]
    if node.children:
        raise InvalidParameterValue(f"The parameter {path} must be a single value.")
    return node.value


def encode_result(
    protocol: WireProtocol, operation: str, output: Mapping[str, object], request_id: str
) -> Answer:
    """A successful answer to `operation` (timestamps as aware datetimes in `output`)."""
    headers = {"x-amzn-RequestId": request_id}
    if protocol is WireProtocol.CBOR:
        headers["Content-Type"] = "application/cbor"
        headers["smithy-protocol"] = "rpc-v2-cbor"
        body = cbor2.dumps(dict(output), datetime_as_timestamp=True, timezone=UTC)
    elif protocol is WireProtocol.JSON:
        headers["Content-Type"] = "application/x-amz-json-1.0"
        body = json.dumps(output, default=_json_default).encode()
    else:
        headers["Content-Type"] = "text/xml"
        result = "".join(_xml_members(output))
        result_element = f"<{operation}Result>{result}</{operation}Result>" if output else ""
        body = (
            f'<{operation}Response xmlns="{XML_NAMESPACE}">{result_element}'
            f"<ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata>"
            f"</{operation}Response>"
        ).encode()
    return Answer(200, headers, body)


def encode_error(protocol: WireProtocol, error: SplitserveError, request_id: str) -> Answer:
    """`error` in the protocol's error form, with CloudWatch's legacy code."""
    wire = wire_error(error)
    code = "InternalServiceError" if wire.code == "InternalFailure" else wire.code
    if protocol is WireProtocol.QUERY and code == "UnknownOperationException":
        code = "InvalidAction"  # the query protocol's word for an Action no one serves
    fault = "Receiver" if wire.status >= 500 else "Sender"
    headers = {"x-amzn-RequestId": request_id}
    if protocol is WireProtocol.QUERY:
        headers["Content-Type"] = "text/xml"
        body = (
            f'<ErrorResponse xmlns="{XML_NAMESPACE}"><Error><Type>{fault}</Type>'
            f"<Code>{code}</Code><Message>{_xml_text(error.message)}</Message></Error>"
            f"<RequestId>{request_id}</RequestId></ErrorResponse>"
        ).encode()
        return Answer(wire.status, headers, body)
    headers["x-amzn-query-error"] = f"{code};{fault}"
    shape_name = _SHAPE_NAMES.get(code, code)
    document = {"__type": f"{_SHAPE_NAMESPACE}#{shape_name}", "message": error.message}
    if protocol is WireProtocol.CBOR:
        headers["Content-Type"] = "application/cbor"
        headers["smithy-protocol"] = "rpc-v2-cbor"
        return Answer(wire.status, headers, cbor2.dumps(document))
    headers["Content-Type"] = "application/x-amz-json-1.0"
    return Answer(wire.status, headers, json.dumps(document).encode())


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        return value.timestamp()
    raise TypeError(f"cannot encode {type(value).__name__}")


def _xml_text(text: str) -> str:
    return escape(_NOT_XML.sub("?", text))


def _xml_members(structure: Mapping[str, object]) -> list[str]:
    return [f"<{name}>{_xml_value(value)}</{name}>" for name, value in structure.items()]


def _xml_value(value: object) -> str:
    # A dict subclass is a map (ValueMap: statistic -> value); a plain dict a structure.
    if isinstance(value, dict) and type(value) is not dict:
        return "".join(
            f"<entry><key>{_xml_text(str(key))}</key><value>{_xml_value(item)}</value></entry>"
            for key, item in value.items()
        )
    if isinstance(value, dict):
        return "".join(_xml_members(value))
    if isinstance(value, list):
        return "".join(f"<member>{_xml_value(item)}</member>" for item in value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return _xml_text(str(value))
