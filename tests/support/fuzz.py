"""Helpers shared by the fuzz tests of the control plane and of CloudWatch's API."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def json_slots(value: object) -> Iterator[tuple[dict[str, Any] | list[Any], Any]]:
    """Every (container, key) inside a JSON value: the places a mutation can hit."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield value, key
            yield from json_slots(item)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield value, index
            yield from json_slots(item)
