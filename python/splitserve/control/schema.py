"""The types the control plane's input shapes are written in (`shapes.py` holds the shapes).

Each mirrors a botocore service-model shape type with the constraints SageMaker enforces: string
lengths, patterns and enums, integer and float bounds, list lengths, structures' required members.
`validation.py` walks a request body against them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class StringShape:
    """A string member. `relaxed` names model constraints checked elsewhere (or not at all).

    `pattern` is written as in the service model (it appears in messages); `matcher` replaces the
    regular expression when the model's is not Python syntax (Java's \\p{L} classes).
    """

    name: str
    min_length: int = 0
    max_length: int | None = None
    pattern: str | None = None
    enum: tuple[str, ...] | None = None
    relaxed: frozenset[str] = frozenset()
    matcher: Callable[[str], bool] | None = None
    _compiled: re.Pattern[str] | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if self.pattern is not None and self.matcher is None:
            object.__setattr__(self, "_compiled", re.compile(self.pattern))

    def matches(self, value: str) -> bool:
        """Whether `value` satisfies the pattern (a full match, as Java's String.matches)."""
        if self.matcher is not None:
            return self.matcher(value)
        return self._compiled is None or self._compiled.fullmatch(value) is not None


@dataclass(frozen=True)
class IntegerShape:
    """A 32-bit integer member with optional bounds."""

    name: str
    minimum: int | None = None
    maximum: int | None = None
    enum: tuple[int, ...] | None = None
    relaxed: frozenset[str] = frozenset()


@dataclass(frozen=True)
class FloatShape:
    """A finite number; ints are accepted and become floats."""

    name: str
    minimum: float | None = None
    relaxed: frozenset[str] = frozenset()


@dataclass(frozen=True)
class BooleanShape:
    """A JSON true or false."""

    name: str


@dataclass(frozen=True)
class TimestampShape:
    """Epoch seconds (what boto3 sends) or an ISO-8601 string; normalized to epoch seconds."""

    name: str


@dataclass(frozen=True)
class ListShape:
    """A JSON array of `member`."""

    name: str
    member: Shape
    min_length: int = 0
    max_length: int | None = None
    relaxed: frozenset[str] = frozenset()


@dataclass(frozen=True)
class MapShape:
    """A JSON object with free keys (`key`) and `value` values."""

    name: str
    key: StringShape
    value: Shape
    max_length: int | None = None


@dataclass(frozen=True)
class StructureShape:
    """A JSON object with named members.

    Attributes:
        required: required in the service model.
        also_required: not required by the model but by splitserve (e.g. a classic production
            variant's ModelName, which only inference-component endpoints may omit).
        unsupported: members of the model that splitserve refuses, with the reason it gives.
    """

    name: str
    members: Mapping[str, Shape]
    required: frozenset[str] = frozenset()
    also_required: frozenset[str] = frozenset()
    unsupported: Mapping[str, str] = field(default_factory=dict)


Shape = (
    StringShape
    | IntegerShape
    | FloatShape
    | BooleanShape
    | TimestampShape
    | ListShape
    | MapShape
    | StructureShape
)
