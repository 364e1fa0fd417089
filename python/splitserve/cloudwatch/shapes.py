"""The input shapes of the CloudWatch operations the gateway serves, and one checker for all three
protocols.

Each protocol decodes a request into plain values (the query protocol into strings only, JSON
into numbers and strings, CBOR into numbers, strings and datetimes); `coerce` then checks them
against the operation's shape and returns one form whatever the protocol: str, int, float, bool,
timestamps as float epoch seconds, lists and dicts. What does not fit is InvalidParameterValue
naming the member, as CloudWatch words it (docs/sagemaker-api.md, section 7). Members a shape
does not know are ignored, as AWS services ignore them.

The shapes copy the members, lengths and enumerations of botocore's CloudWatch model that the
gateway uses; members it does not act on (AccountId, Tags, ...) are listed so that they are
checked and accepted.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from splitserve.errors import InvalidParameterValue, MissingParameter

__all__ = [
    "OPERATIONS",
    "Boolean",
    "Double",
    "Integer",
    "ListOf",
    "Shape",
    "String",
    "Structure",
    "Timestamp",
    "coerce",
]

_INT32_MAX = 2**31 - 1
_WHOLE_NUMBER = re.compile(r"-?[0-9]{1,19}")


@dataclass(frozen=True)
class String:
    """A string of `min_length` to `max_length` characters, from `enum` when it is given."""

    min_length: int = 0
    max_length: int = 1024
    enum: tuple[str, ...] = ()


@dataclass(frozen=True)
class Integer:
    """A whole number from `minimum` to `maximum`."""

    minimum: int = -_INT32_MAX - 1
    maximum: int = _INT32_MAX


@dataclass(frozen=True)
class Double:
    """A finite number."""


@dataclass(frozen=True)
class Boolean:
    """true or false."""


@dataclass(frozen=True)
class Timestamp:
    """A point in time: epoch seconds, an ISO 8601 string, or a CBOR datetime."""


@dataclass(frozen=True)
class ListOf:
    """A list of `member`, at most `max_items` long."""

    member: Shape
    max_items: int = 100
    min_items: int = 0


@dataclass(frozen=True)
class Structure:
    """Named members, some of them required."""

    members: Mapping[str, Shape]
    required: frozenset[str] = field(default_factory=frozenset)


Shape = String | Integer | Double | Boolean | Timestamp | ListOf | Structure

STATISTICS = ("SampleCount", "Average", "Sum", "Minimum", "Maximum")
UNITS = (
    "Seconds", "Microseconds", "Milliseconds", "Bytes", "Kilobytes", "Megabytes", "Gigabytes",
    "Terabytes", "Bits", "Kilobits", "Megabits", "Gigabits", "Terabits", "Percent", "Count",
    "Bytes/Second", "Kilobytes/Second", "Megabytes/Second", "Gigabytes/Second",
    "Terabytes/Second", "Bits/Second", "Kilobits/Second", "Megabits/Second", "Gigabits/Second",
    "Terabits/Second", "Count/Second", "None",
)  # fmt: skip
STATE_VALUES = ("OK", "ALARM", "INSUFFICIENT_DATA")
COMPARISON_OPERATORS = (
    "GreaterThanOrEqualToThreshold", "GreaterThanThreshold", "LessThanThreshold",
    "LessThanOrEqualToThreshold", "LessThanLowerOrGreaterThanUpperThreshold",
    "LessThanLowerThreshold", "GreaterThanUpperThreshold",
)  # fmt: skip
ALARM_TYPES = ("CompositeAlarm", "MetricAlarm", "LogAlarm")
HISTORY_ITEM_TYPES = (
    "ConfigurationUpdate", "StateUpdate", "Action", "AlarmContributorStateUpdate",
    "AlarmContributorAction",
)  # fmt: skip
SCAN_BY = ("TimestampDescending", "TimestampAscending")

_NAMESPACE = String(1, 255)
_METRIC_NAME = String(1, 255)
_DIMENSION = Structure(
    {"Name": String(1, 255), "Value": String(1, 1024)}, frozenset({"Name", "Value"})
)
_DIMENSIONS = ListOf(_DIMENSION, max_items=30)
_PERIOD = Integer(minimum=1)
_UNIT = String(enum=UNITS)
_STATISTIC = String(enum=STATISTICS)
_EXTENDED_STATISTIC = String(1, 255)
_NEXT_TOKEN = String(0, 4096)
_METRIC = Structure(
    {"Namespace": _NAMESPACE, "MetricName": _METRIC_NAME, "Dimensions": _DIMENSIONS}
)
_METRIC_STAT = Structure(
    {"Metric": _METRIC, "Period": _PERIOD, "Stat": String(1, 255), "Unit": _UNIT},
    frozenset({"Metric", "Period", "Stat"}),
)
_METRIC_DATA_QUERY = Structure(
    {
        "Id": String(1, 255),
        "MetricStat": _METRIC_STAT,
        "Expression": String(1, 2048),
        "Label": String(0, 2048),
        "ReturnData": Boolean(),
        "Period": _PERIOD,
        "AccountId": String(1, 255),
    },
    frozenset({"Id"}),
)
_METRIC_DATA_QUERIES = ListOf(_METRIC_DATA_QUERY, max_items=1000)
_ALARM_NAME = String(1, 255)
_ACTIONS = ListOf(String(1, 1024), max_items=5)
_TAG = Structure({"Key": String(1, 128), "Value": String(0, 256)}, frozenset({"Key", "Value"}))

#: Every operation served, with its input shape.
OPERATIONS: Mapping[str, Structure] = {
    "GetMetricStatistics": Structure(
        {
            "Namespace": _NAMESPACE,
            "MetricName": _METRIC_NAME,
            "Dimensions": _DIMENSIONS,
            "StartTime": Timestamp(),
            "EndTime": Timestamp(),
            "Period": _PERIOD,
            "Statistics": ListOf(_STATISTIC, max_items=5),
            "ExtendedStatistics": ListOf(_EXTENDED_STATISTIC, max_items=10),
            "Unit": _UNIT,
        },
        frozenset({"Namespace", "MetricName", "StartTime", "EndTime", "Period"}),
    ),
    "GetMetricData": Structure(
        {
            "MetricDataQueries": _METRIC_DATA_QUERIES,
            "StartTime": Timestamp(),
            "EndTime": Timestamp(),
            "NextToken": _NEXT_TOKEN,
            "ScanBy": String(enum=SCAN_BY),
            "MaxDatapoints": Integer(),
            "LabelOptions": Structure({"Timezone": String(0, 50)}),
        },
        frozenset({"MetricDataQueries", "StartTime", "EndTime"}),
    ),
    "ListMetrics": Structure(
        {
            "Namespace": _NAMESPACE,
            "MetricName": _METRIC_NAME,
            "Dimensions": ListOf(
                Structure({"Name": String(1, 255), "Value": String(1, 1024)}, frozenset({"Name"})),
                max_items=10,
            ),
            "NextToken": _NEXT_TOKEN,
            "RecentlyActive": String(enum=("PT3H",)),
            "IncludeLinkedAccounts": Boolean(),
            "OwningAccount": String(1, 255),
        }
    ),
    "PutMetricAlarm": Structure(
        {
            "AlarmName": _ALARM_NAME,
            "AlarmDescription": String(0, 1024),
            "ActionsEnabled": Boolean(),
            "OKActions": _ACTIONS,
            "AlarmActions": _ACTIONS,
            "InsufficientDataActions": _ACTIONS,
            "MetricName": _METRIC_NAME,
            "Namespace": _NAMESPACE,
            "Statistic": _STATISTIC,
            "ExtendedStatistic": _EXTENDED_STATISTIC,
            "Dimensions": _DIMENSIONS,
            "Period": _PERIOD,
            "Unit": _UNIT,
            "EvaluationPeriods": Integer(minimum=1),
            "DatapointsToAlarm": Integer(minimum=1),
            "Threshold": Double(),
            "ComparisonOperator": String(enum=COMPARISON_OPERATORS),
            "TreatMissingData": String(1, 255),
            "EvaluateLowSampleCountPercentile": String(1, 255),
            "Metrics": _METRIC_DATA_QUERIES,
            "Tags": ListOf(_TAG, max_items=50),
            "ThresholdMetricId": String(1, 255),
        },
        frozenset({"AlarmName"}),
    ),
    "DescribeAlarms": Structure(
        {
            "AlarmNames": ListOf(_ALARM_NAME, max_items=100),
            "AlarmNamePrefix": String(1, 255),
            "AlarmTypes": ListOf(String(enum=ALARM_TYPES), max_items=3),
            "ChildrenOfAlarmName": _ALARM_NAME,
            "ParentsOfAlarmName": _ALARM_NAME,
            "StateValue": String(enum=STATE_VALUES),
            "ActionPrefix": String(1, 1024),
            "MaxRecords": Integer(1, 100),
            "NextToken": _NEXT_TOKEN,
        }
    ),
    "DescribeAlarmsForMetric": Structure(
        {
            "MetricName": _METRIC_NAME,
            "Namespace": _NAMESPACE,
            "Statistic": _STATISTIC,
            "ExtendedStatistic": _EXTENDED_STATISTIC,
            "Dimensions": _DIMENSIONS,
            "Period": _PERIOD,
            "Unit": _UNIT,
        },
        frozenset({"MetricName", "Namespace"}),
    ),
    "DeleteAlarms": Structure(
        {"AlarmNames": ListOf(_ALARM_NAME, max_items=100)}, frozenset({"AlarmNames"})
    ),
    "SetAlarmState": Structure(
        {
            "AlarmName": _ALARM_NAME,
            "StateValue": String(enum=STATE_VALUES),
            "StateReason": String(0, 1023),
            "StateReasonData": String(0, 4000),
        },
        frozenset({"AlarmName", "StateValue", "StateReason"}),
    ),
    "DescribeAlarmHistory": Structure(
        {
            "AlarmName": _ALARM_NAME,
            "AlarmContributorId": String(1, 16),
            "AlarmTypes": ListOf(String(enum=ALARM_TYPES), max_items=3),
            "HistoryItemType": String(enum=HISTORY_ITEM_TYPES),
            "StartDate": Timestamp(),
            "EndDate": Timestamp(),
            "MaxRecords": Integer(1, 100),
            "NextToken": _NEXT_TOKEN,
            "ScanBy": String(enum=SCAN_BY),
        }
    ),
}


def coerce(shape: Shape, value: object, path: str) -> object:
    """`value` checked against `shape` and brought to its one form (see the module docstring).

    Args:
        shape: the member's shape.
        value: what the protocol decoded.
        path: the member's name as messages give it (`MetricDataQueries.member.1.Id`).

    Raises:
        InvalidParameterValue: a value of the wrong type, out of range or not in the enumeration.
        MissingParameter: a required member of a structure is absent.
    """
    if isinstance(shape, Structure):
        return _coerce_structure(shape, value, path)
    if isinstance(shape, ListOf):
        return _coerce_list(shape, value, path)
    if isinstance(shape, String):
        return _coerce_string(shape, value, path)
    if isinstance(shape, Integer):
        return _coerce_integer(shape, value, path)
    if isinstance(shape, Double):
        return _coerce_double(value, path)
    if isinstance(shape, Boolean):
        return _coerce_boolean(value, path)
    return _coerce_timestamp(value, path)


def _coerce_structure(shape: Structure, value: object, path: str) -> dict[str, object]:
    if value is None or value == "":
        value = {}
    if not isinstance(value, dict):
        raise InvalidParameterValue(f"The parameter {path or 'input'} must be a structure.")
    result: dict[str, object] = {}
    for name, member in shape.members.items():
        member_path = f"{path}.{name}" if path else name
        raw = value.get(name)
        if raw is None:
            if name in shape.required:
                raise MissingParameter(f"The parameter {member_path} is required.")
            continue
        result[name] = coerce(member, raw, member_path)
    return result


def _coerce_list(shape: ListOf, value: object, path: str) -> list[object]:
    if value == "":  # the query protocol's empty list: `Name=`
        value = []
    if not isinstance(value, list):
        raise InvalidParameterValue(f"The parameter {path} must be a list.")
    if not shape.min_items <= len(value) <= shape.max_items:
        raise InvalidParameterValue(
            f"The collection {path} must have between {shape.min_items} and {shape.max_items} "
            f"items; it has {len(value)}."
        )
    return [
        coerce(shape.member, item, f"{path}.member.{index}")
        for index, item in enumerate(value, start=1)
    ]


def _coerce_string(shape: String, value: object, path: str) -> str:
    if not isinstance(value, str):
        raise InvalidParameterValue(f"The parameter {path} must be a string.")
    if shape.enum and value not in shape.enum:
        raise InvalidParameterValue(
            f"The parameter {path} must be one of: {', '.join(shape.enum)}."
        )
    if not shape.min_length <= len(value) <= shape.max_length:
        raise InvalidParameterValue(
            f"The parameter {path} must be between {shape.min_length} and {shape.max_length} "
            "characters long."
        )
    if any(0xD800 <= ord(character) <= 0xDFFF for character in value):
        raise InvalidParameterValue(f"The parameter {path} is not valid Unicode.")
    return value


def _coerce_integer(shape: Integer, value: object, path: str) -> int:
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif (isinstance(value, float) and value.is_integer()) or (
        isinstance(value, str) and _WHOLE_NUMBER.fullmatch(value)
    ):
        number = int(value)
    if number is None:
        raise InvalidParameterValue(f"The parameter {path} must be a whole number.")
    if not shape.minimum <= number <= shape.maximum:
        raise InvalidParameterValue(
            f"The parameter {path} must be between {shape.minimum} and {shape.maximum}."
        )
    return number


def _coerce_double(value: object, path: str) -> float:
    number: float | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int | float | str) and (not isinstance(value, str) or len(value) <= 64):
        try:
            number = float(value)
        except (ValueError, OverflowError):  # not a number, or an integer past float's range
            number = None
    if number is None or not math.isfinite(number):
        raise InvalidParameterValue(f"The parameter {path} must be a finite number.")
    return number


def _coerce_boolean(value: object, path: str) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return value == "true"
    raise InvalidParameterValue(f"The parameter {path} must be true or false.")


def _coerce_timestamp(value: object, path: str) -> float:
    seconds: float | None = None
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        seconds = moment.timestamp()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value) if abs(value) < 1e300 else None
    elif isinstance(value, str) and len(value) <= 64:
        seconds = _parse_text_timestamp(value)
    if seconds is None or not math.isfinite(seconds) or not 0 <= seconds < 253402300800:
        raise InvalidParameterValue(
            f"The parameter {path} must be a timestamp (ISO 8601 or epoch seconds) between "
            "1970 and 9999."
        )
    return seconds


def _parse_text_timestamp(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
