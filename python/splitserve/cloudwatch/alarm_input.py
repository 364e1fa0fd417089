"""PutMetricAlarm's input, checked as CloudWatch checks it, and the small readers of decoded
request members that the alarm operations share (docs/sagemaker-api.md, section 7.3)."""

from __future__ import annotations

from collections.abc import Mapping

from splitserve.cloudwatch.queries import parse_statistic
from splitserve.errors import (
    InvalidNextToken,
    InvalidParameterCombination,
    InvalidParameterValue,
    MissingParameter,
)

_TREAT_MISSING = ("missing", "ignore", "breaching", "notBreaching")
_LOW_SAMPLE_COUNT = ("evaluate", "ignore")
_ANOMALY_OPERATORS = (
    "LessThanLowerOrGreaterThanUpperThreshold",
    "LessThanLowerThreshold",
    "GreaterThanUpperThreshold",
)
_MAX_ALARM_SECONDS = 86_400
_DEFINITION_MEMBERS = (
    "AlarmDescription",
    "ActionsEnabled",
    "OKActions",
    "AlarmActions",
    "InsufficientDataActions",
    "MetricName",
    "Namespace",
    "Statistic",
    "ExtendedStatistic",
    "Dimensions",
    "Period",
    "Unit",
    "EvaluationPeriods",
    "DatapointsToAlarm",
    "Threshold",
    "ComparisonOperator",
    "TreatMissingData",
    "EvaluateLowSampleCountPercentile",
    "Tags",
)


def checked_definition(params: Mapping[str, object]) -> dict[str, object]:
    """PutMetricAlarm's members the alarm keeps, checked as CloudWatch checks them.

    Raises:
        MissingParameter, InvalidParameterValue, InvalidParameterCombination.
    """
    if "Metrics" in params or "ThresholdMetricId" in params:
        raise InvalidParameterValue(
            "The parameter Metrics is not supported: splitserve's alarms watch one metric "
            "(MetricName, Namespace, Statistic or ExtendedStatistic), not metric math."
        )
    for member in (
        "MetricName",
        "Namespace",
        "Period",
        "EvaluationPeriods",
        "Threshold",
        "ComparisonOperator",
    ):
        if member not in params:
            raise MissingParameter(f"The parameter {member} is required.")
    has_statistic = "Statistic" in params
    if has_statistic == ("ExtendedStatistic" in params):
        raise InvalidParameterCombination(
            "Exactly one of the parameters Statistic and ExtendedStatistic must be specified."
        )
    if not has_statistic:
        parse_statistic(str(params["ExtendedStatistic"]), "ExtendedStatistic")
    operator = str(params["ComparisonOperator"])
    if operator in _ANOMALY_OPERATORS:
        raise InvalidParameterValue(
            f"The value {operator} for parameter ComparisonOperator needs an anomaly detection "
            "band, which splitserve does not serve."
        )
    period = integer(params["Period"])
    if period % 60:
        raise InvalidParameterValue(
            "The parameter Period must be a multiple of 60: splitserve keeps figures per minute."
        )
    evaluation_periods = integer(params["EvaluationPeriods"])
    if period * evaluation_periods > _MAX_ALARM_SECONDS:
        raise InvalidParameterCombination(
            "The evaluation period (Period multiplied by EvaluationPeriods) must not exceed "
            f"{_MAX_ALARM_SECONDS} seconds."
        )
    if integer(params.get("DatapointsToAlarm", evaluation_periods)) > evaluation_periods:
        raise InvalidParameterCombination(
            "DatapointsToAlarm must be less than or equal to EvaluationPeriods."
        )
    treat = params.get("TreatMissingData", "missing")
    if treat not in _TREAT_MISSING:
        raise InvalidParameterValue(
            f"The parameter TreatMissingData must be one of: {', '.join(_TREAT_MISSING)}."
        )
    low = params.get("EvaluateLowSampleCountPercentile")
    if low is not None and low not in _LOW_SAMPLE_COUNT:
        raise InvalidParameterValue(
            "The parameter EvaluateLowSampleCountPercentile must be one of: evaluate, ignore."
        )
    if low is not None and has_statistic:
        raise InvalidParameterCombination(
            "EvaluateLowSampleCountPercentile applies only with ExtendedStatistic."
        )
    names = [str(item.get("Name")) for item in dicts(params.get("Dimensions"))]
    if len(set(names)) != len(names):
        raise InvalidParameterValue("Dimension names must be unique within an alarm.")
    return {member: params[member] for member in _DEFINITION_MEMBERS if member in params}


def strings(value: object) -> list[str]:
    """The strings of a decoded list member (nothing when it is not a list)."""
    return [str(item) for item in value] if isinstance(value, list) else []


def dicts(value: object) -> list[dict[str, object]]:
    """The structures of a decoded list member (nothing when it is not a list)."""
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def dimension_set(value: object) -> frozenset[tuple[str, str]]:
    """A Dimensions member as a set of (name, value) pairs."""
    return frozenset((str(item.get("Name")), str(item.get("Value"))) for item in dicts(value))


def number(value: object) -> float:
    """A member the decoder already checked is numeric, as a float."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise TypeError("not a number")


def integer(value: object) -> int:
    """A member the decoder already checked is an integer."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise TypeError("not an integer")


def page_offset(token: object, total: int) -> int:
    """The offset a DescribeAlarms or DescribeAlarmHistory NextToken carries.

    Raises:
        InvalidNextToken: a token this gateway did not give.
    """
    if token is None:
        return 0
    text = str(token)
    number = text.removeprefix("alarms-")
    if text.startswith("alarms-") and number.isdigit() and len(number) <= 9:
        return min(int(number), total)
    raise InvalidNextToken("The service cannot understand the NextToken given.")
