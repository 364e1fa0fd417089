"""The List operations' filters, sort orders and pages (ListModels, ListEndpointConfigs,
ListEndpoints), and their opaque NextToken."""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

from splitserve.control.models import name_key
from splitserve.control.shapes import DEFAULT_MAX_RESULTS
from splitserve.errors import ValidationException


@dataclass(frozen=True)
class Listed:
    """One resource as a List operation filters, sorts and returns it.

    Attributes:
        name: the resource's name as created.
        creation_time: epoch seconds.
        last_modified_time: epoch seconds (the creation time for what never changes).
        status: EndpointStatus's value; "" for resources without one.
        summary: what the List response shows for it.
    """

    name: str
    creation_time: float
    last_modified_time: float
    status: str
    summary: dict[str, object]


def paginate(rows: list[Listed], request: Mapping[str, object], key: str) -> dict[str, object]:
    """Filter, sort and cut one page of `rows`, as every List operation does.

    NextToken is opaque to clients: base64 of the sort settings and the last row's sort position
    (sort value, then the name's key), so a page starts right after the previous one even when
    resources were created or deleted in between. A token that does not decode to that, or that
    was made for another SortBy/SortOrder, is refused with "Invalid pagination token".

    Args:
        rows: every resource of the kind.
        request: the validated List request.
        key: the response member that holds the page (`Models`, `Endpoints`, ...).
    """
    contains = request.get("NameContains")
    if isinstance(contains, str):
        rows = [row for row in rows if contains.lower() in row.name.lower()]
    for member, attribute, before in (
        ("CreationTimeBefore", "creation_time", True),
        ("CreationTimeAfter", "creation_time", False),
        ("LastModifiedTimeBefore", "last_modified_time", True),
        ("LastModifiedTimeAfter", "last_modified_time", False),
    ):
        bound = request.get(member)
        if isinstance(bound, float | int):
            rows = [
                row
                for row in rows
                if (getattr(row, attribute) < bound if before else getattr(row, attribute) > bound)
            ]
    status = request.get("StatusEquals")
    if isinstance(status, str):
        rows = [row for row in rows if row.status == status]
    sort_by = str(request.get("SortBy", "CreationTime"))
    order = str(request.get("SortOrder", "Descending"))
    descending = order == "Descending"

    def position(row: Listed) -> tuple[str | float, str]:
        return (_sort_value(row, sort_by), name_key(row.name))

    rows = sorted(rows, key=position, reverse=descending)
    token = request.get("NextToken")
    if isinstance(token, str) and token:
        after = _decode_token(token, sort_by, order)
        rows = [row for row in rows if _is_after(position(row), after, descending)]
    limit = request.get("MaxResults")
    limit = limit if isinstance(limit, int) else DEFAULT_MAX_RESULTS
    page = rows[:limit]
    response: dict[str, object] = {key: [row.summary for row in page]}
    if len(rows) > limit:
        response["NextToken"] = _encode_token(sort_by, order, position(page[-1]))
    return response


def _sort_value(row: Listed, sort_by: str) -> str | float:
    if sort_by == "Name":
        return name_key(row.name)  # names are case-insensitive, so is their order
    if sort_by == "Status":
        return row.status
    return row.creation_time


def _is_after(
    candidate: tuple[str | float, str], after: tuple[str | float, str], descending: bool
) -> bool:
    # Both tuples hold the same types: the token was checked against SortBy.
    if descending:
        return candidate < after
    return candidate > after


def _encode_token(sort_by: str, order: str, after: tuple[str | float, str]) -> str:
    payload = json.dumps({"SortBy": sort_by, "SortOrder": order, "After": list(after)})
    return base64.urlsafe_b64encode(payload.encode()).decode()


def _decode_token(token: str, sort_by: str, order: str) -> tuple[str | float, str]:
    invalid = ValidationException("Invalid pagination token")
    try:
        payload = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
    except (ValueError, UnicodeError, binascii.Error, RecursionError):
        raise invalid from None
    if not isinstance(payload, dict):
        raise invalid
    if payload.get("SortBy") != sort_by or payload.get("SortOrder") != order:
        raise invalid
    after = payload.get("After")
    if not isinstance(after, list) or len(after) != 2 or not isinstance(after[1], str):
        raise invalid
    value = after[0]
    if sort_by == "CreationTime":
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise invalid
        return (float(value), after[1])
    if not isinstance(value, str):
        raise invalid
    return (value, after[1])
