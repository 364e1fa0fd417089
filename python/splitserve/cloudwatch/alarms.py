"""Metric alarms: PutMetricAlarm, DescribeAlarms, DescribeAlarmsForMetric, DeleteAlarms,
SetAlarmState, DescribeAlarmHistory, and the evaluation that moves alarms between OK, ALARM and
INSUFFICIENT_DATA every minute.

No aiohttp here. Alarms live in memory (this module's `AlarmBook`) and in the state database
(`store.CloudWatchStore`), written through on every change, so a restarted gateway has them back
with their states. The store is the truth: every operation and every evaluation first reads the
alarms again (`AlarmBook.refresh`, one query), so a gateway replica sees the alarms another
replica put, deleted or moved (only the controller replica evaluates; see `gateway`).

Each minute `AlarmBook.evaluate` judges every alarm (`alarm_judge.judge_alarm`: the datapoints,
the breaches and CloudWatch's wording of the reason) and records the states that change: a
StateUpdate history item (and, when actions are enabled and the new state has actions, an Action
item: the actions are recorded, not executed: there is no SNS here), a log line and a count in
splitserve_cloudwatch_alarm_transitions_total.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from splitserve.cloudwatch.alarm_input import (
    checked_definition,
    dicts,
    dimension_set,
    integer,
    page_offset,
    strings,
)
from splitserve.cloudwatch.alarm_judge import judge_alarm
from splitserve.cloudwatch.queries import (
    FigureReader,
)
from splitserve.cloudwatch.store import AlarmRow, CloudWatchStore, HistoryRow
from splitserve.config import AccountSettings, CloudWatchSettings
from splitserve.errors import (
    CloudWatchLimitExceeded,
    InvalidFormat,
    InvalidParameterCombination,
    InvalidParameterValue,
    ResourceNotFound,
    SplitserveError,
)
from splitserve.metrics.prometheus import ALARM_TRANSITIONS

__all__ = ["AlarmBook"]

log = logging.getLogger(__name__)

_ACTION_MEMBERS = {
    "OK": "OKActions",
    "ALARM": "AlarmActions",
    "INSUFFICIENT_DATA": "InsufficientDataActions",
}


@dataclass(frozen=True)
class _Alarm:
    """An alarm in memory: its definition (PutMetricAlarm's members) and its state."""

    name: str
    definition: Mapping[str, object]
    state: str
    reason: str
    reason_data: str | None
    state_updated: float
    state_transitioned: float
    configuration_updated: float

    def row(self) -> AlarmRow:
        """The alarm as the store keeps it."""
        return AlarmRow(
            self.name,
            json.dumps(self.definition),
            self.state,
            self.reason,
            self.reason_data,
            self.state_updated,
            self.state_transitioned,
            self.configuration_updated,
        )

    @classmethod
    def of_row(cls, row: AlarmRow) -> _Alarm:
        """The alarm the store kept as `row`.

        Raises:
            ValueError: its definition is not a JSON object.
        """
        definition = json.loads(row.definition)
        if not isinstance(definition, dict):
            raise ValueError("an alarm definition is not a JSON object")
        return cls(
            row.name,
            definition,
            row.state,
            row.reason,
            row.reason_data,
            row.state_updated,
            row.state_transitioned,
            row.configuration_updated,
        )


def _moment(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


class AlarmBook:
    """Every metric alarm of the gateway, and their evaluation."""

    def __init__(
        self,
        settings: CloudWatchSettings,
        account: AccountSettings,
        store: CloudWatchStore,
        figures: FigureReader,
        clock: Callable[[], float],
    ) -> None:
        """An empty book (see `load`), writing through to `store` and judging `figures`."""
        self._settings = settings
        self._account = account
        self._store = store
        self._figures = figures
        self._clock = clock
        self._alarms: dict[str, _Alarm] = {}
        # The rows `refresh` read last, by name: an alarm whose row is unchanged is kept as is.
        self._rows: dict[str, AlarmRow] = {}

    async def load(self) -> None:
        """Read the alarms the store keeps (skipping a damaged row, with a log line)."""
        await self.refresh()

    async def refresh(self) -> None:
        """Make the book what the store keeps now: alarms other gateway replicas put, deleted or
        changed the state of. An alarm whose row did not change stays the same object, so an
        evaluation running meanwhile still recognises it."""
        rows = await asyncio.to_thread(self._store.alarms)
        alarms: dict[str, _Alarm] = {}
        for row in rows:
            known = self._alarms.get(row.name)
            # The row read last time, compared as it is (cheaper than re-encoding the alarm).
            if known is not None and self._rows.get(row.name) == row:
                alarms[row.name] = known
                continue
            try:
                alarms[row.name] = _Alarm.of_row(row)
            except ValueError:
                log.warning("alarm %r in the state database is damaged; it is skipped", row.name)
        self._alarms = alarms
        self._rows = {row.name: row for row in rows}

    async def in_alarm(self, alarm_names: Sequence[str]) -> list[str]:
        """The names among `alarm_names` whose alarm is in state ALARM, as the store keeps them
        now (a name with no alarm is never in ALARM). A stepped UpdateEndpoint reads this while
        it bakes (AutoRollbackConfiguration)."""
        await self.refresh()
        return [
            name
            for name in alarm_names
            if (alarm := self._alarms.get(name)) is not None and alarm.state == "ALARM"
        ]

    def operations(self) -> dict[str, Callable[[dict[str, object]], Awaitable[dict[str, object]]]]:
        """Operation name -> handler; each reads the store's alarms first (`refresh`)."""
        return {
            name: self._refreshed(operation)
            for name, operation in (
                ("PutMetricAlarm", self.put_metric_alarm),
                ("DescribeAlarms", self.describe_alarms),
                ("DescribeAlarmsForMetric", self.describe_alarms_for_metric),
                ("DeleteAlarms", self.delete_alarms),
                ("SetAlarmState", self.set_alarm_state),
                ("DescribeAlarmHistory", self.describe_alarm_history),
            )
        }

    def _refreshed(
        self, operation: Callable[[dict[str, object]], Awaitable[dict[str, object]]]
    ) -> Callable[[dict[str, object]], Awaitable[dict[str, object]]]:
        async def refreshed(params: dict[str, object]) -> dict[str, object]:
            await self.refresh()
            return await operation(params)

        return refreshed

    # --- operations -------------------------------------------------------------------------------

    async def put_metric_alarm(self, params: dict[str, object]) -> dict[str, object]:
        """PutMetricAlarm: create or replace an alarm (a replaced alarm keeps its state).

        Raises:
            MissingParameter, InvalidParameterValue, InvalidParameterCombination: as CloudWatch.
            CloudWatchLimitExceeded: a new alarm beyond `max_alarms`.
        """
        definition = checked_definition(params)
        name = str(params["AlarmName"])
        now = self._clock()
        existing = self._alarms.get(name)
        if existing is None and len(self._alarms) >= self._settings.max_alarms:
            raise CloudWatchLimitExceeded(
                f"The maximum number of alarms ({self._settings.max_alarms}) has been reached."
            )
        if existing is None:
            alarm = _Alarm(
                name,
                definition,
                "INSUFFICIENT_DATA",
                "Unchecked: Initial alarm creation",
                None,
                now,
                now,
                now,
            )
            summary = f'Alarm "{name}" created'
        else:
            alarm = replace(existing, definition=definition, configuration_updated=now)
            summary = f'Alarm "{name}" updated'
        created = existing is None
        data = {
            "version": "1.0",
            "type": "Create" if created else "Update",
            "createdAlarm" if created else "updatedAlarm": dict(definition),
        }
        history = HistoryRow(name, now, "ConfigurationUpdate", summary, json.dumps(data))
        await asyncio.to_thread(
            self._store.put_alarm, alarm.row(), [history], self._settings.alarm_history_per_alarm
        )
        self._alarms[name] = alarm
        return {}

    async def describe_alarms(self, params: dict[str, object]) -> dict[str, object]:
        """DescribeAlarms: the metric alarms that pass the filters, by name, paged.

        Raises:
            InvalidParameterCombination: AlarmNames with AlarmNamePrefix.
            InvalidNextToken: a token this gateway did not give.
        """
        names = params.get("AlarmNames")
        prefix = params.get("AlarmNamePrefix")
        if names and prefix is not None:
            raise InvalidParameterCombination(
                "AlarmNames and AlarmNamePrefix cannot be specified together."
            )
        types = params.get("AlarmTypes")
        composite_only = params.get("ChildrenOfAlarmName") or params.get("ParentsOfAlarmName")
        wanted_metric = not composite_only and (not types or "MetricAlarm" in strings(types))
        state = params.get("StateValue")
        action_prefix = params.get("ActionPrefix")
        selected = []
        for name in sorted(self._alarms):
            alarm = self._alarms[name]
            if not wanted_metric:
                break
            if names and name not in strings(names):
                continue
            if isinstance(prefix, str) and not name.startswith(prefix):
                continue
            if state is not None and alarm.state != state:
                continue
            if isinstance(action_prefix, str) and not any(
                action.startswith(action_prefix)
                for member in _ACTION_MEMBERS.values()
                for action in strings(alarm.definition.get(member))
            ):
                continue
            selected.append(alarm)
        size = integer(params.get("MaxRecords", self._settings.describe_alarms_page_size))
        offset = page_offset(params.get("NextToken"), len(selected))
        page = selected[offset : offset + size]
        output: dict[str, object] = {
            "MetricAlarms": [self._describe(alarm) for alarm in page],
            "CompositeAlarms": [],
        }
        if offset + size < len(selected):
            output["NextToken"] = f"alarms-{offset + size}"
        return output

    async def describe_alarms_for_metric(self, params: dict[str, object]) -> dict[str, object]:
        """DescribeAlarmsForMetric: the alarms on one metric, narrowed by the optional members."""
        dimensions = dimension_set(params.get("Dimensions"))
        matched = []
        for name in sorted(self._alarms):
            definition = self._alarms[name].definition
            if (
                definition.get("MetricName") != params["MetricName"]
                or definition.get("Namespace") != params["Namespace"]
            ):
                continue
            if "Dimensions" in params and dimension_set(definition.get("Dimensions")) != dimensions:
                continue
            if any(
                member in params and definition.get(member) != params[member]
                for member in ("Statistic", "ExtendedStatistic", "Period", "Unit")
            ):
                continue
            matched.append(self._describe(self._alarms[name]))
        return {"MetricAlarms": matched}

    async def delete_alarms(self, params: dict[str, object]) -> dict[str, object]:
        """DeleteAlarms: all of them or, when one is unknown, none.

        Raises:
            ResourceNotFound: a name that is no alarm.
        """
        names = strings(params["AlarmNames"])
        missing = [name for name in names if name not in self._alarms]
        if missing:
            raise ResourceNotFound(f"The following alarms were not found: {missing}")
        await asyncio.to_thread(self._store.delete_alarms, names)
        for name in names:
            self._alarms.pop(name, None)
        return {}

    async def set_alarm_state(self, params: dict[str, object]) -> dict[str, object]:
        """SetAlarmState: set the state until the next evaluation says otherwise.

        Raises:
            ResourceNotFound: no such alarm.
            InvalidFormat: StateReasonData that is not a JSON object.
        """
        name = str(params["AlarmName"])
        alarm = self._alarms.get(name)
        if alarm is None:
            raise ResourceNotFound(f"Alarm {name} not found")
        reason_data = params.get("StateReasonData")
        if reason_data is not None:
            try:
                decoded = json.loads(str(reason_data))
            except (ValueError, RecursionError) as error:
                raise InvalidFormat("StateReasonData is not valid JSON.") from error
            if not isinstance(decoded, dict):
                raise InvalidFormat("StateReasonData must be a JSON object.")
        await self._change_state(
            alarm,
            str(params["StateValue"]),
            str(params["StateReason"]),
            None if reason_data is None else str(reason_data),
        )
        return {}

    async def describe_alarm_history(self, params: dict[str, object]) -> dict[str, object]:
        """DescribeAlarmHistory: the history items that pass the filters, newest first unless
        ScanBy says otherwise, paged."""
        name = params.get("AlarmName")
        rows = await asyncio.to_thread(self._store.history, None if name is None else str(name))
        types = params.get("AlarmTypes")
        if types and "MetricAlarm" not in strings(types):
            rows = []
        item_type = params.get("HistoryItemType")
        start = params.get("StartDate")
        end = params.get("EndDate")
        if isinstance(start, float) and isinstance(end, float) and start > end:
            raise InvalidParameterValue("The parameter StartDate must not be after EndDate.")
        selected = [
            row
            for row in rows
            if (item_type is None or row.item_type == item_type)
            and (not isinstance(start, float) or row.timestamp >= start)
            and (not isinstance(end, float) or row.timestamp <= end)
        ]
        if params.get("ScanBy", "TimestampDescending") == "TimestampDescending":
            selected.reverse()
        size = integer(params.get("MaxRecords", 100))
        offset = page_offset(params.get("NextToken"), len(selected))
        output: dict[str, object] = {
            "AlarmHistoryItems": [
                {
                    "AlarmName": row.name,
                    "AlarmType": "MetricAlarm",
                    "Timestamp": _moment(row.timestamp),
                    "HistoryItemType": row.item_type,
                    "HistorySummary": row.summary,
                    "HistoryData": row.data,
                }
                for row in selected[offset : offset + size]
            ]
        }
        if offset + size < len(selected):
            output["NextToken"] = f"alarms-{offset + size}"
        return output

    # --- evaluation -------------------------------------------------------------------------------

    async def evaluate(self) -> None:
        """Judge every alarm the store keeps on the figures now; record the states that change."""
        await self.refresh()
        now = self._clock()
        for alarm in list(self._alarms.values()):
            try:
                verdict = await judge_alarm(alarm.definition, self._figures, now)
            except (TypeError, ValueError, KeyError, SplitserveError):
                # A definition the store damaged: the other alarms are still judged.
                log.warning("alarm %s cannot be evaluated: its definition is damaged", alarm.name)
                continue
            current = self._alarms.get(alarm.name)
            if current is None or current is not alarm or verdict is None:
                continue  # deleted or replaced meanwhile, or `ignore` with nothing to judge
            state, reason, reason_data = verdict
            if state != alarm.state:
                await self._change_state(alarm, state, reason, reason_data)

    async def _change_state(
        self, alarm: _Alarm, state: str, reason: str, reason_data: str | None
    ) -> None:
        now = self._clock()
        changed = replace(
            alarm,
            state=state,
            reason=reason[:1023],
            reason_data=reason_data,
            state_updated=now,
            state_transitioned=now if state != alarm.state else alarm.state_transitioned,
        )
        data: dict[str, object] = {
            "version": "1.0",
            "oldState": {"stateValue": alarm.state, "stateReason": alarm.reason},
            "newState": {"stateValue": state, "stateReason": changed.reason},
        }
        if reason_data is not None:
            data["newState"] = {**data["newState"], "stateReasonData": reason_data}  # type: ignore[dict-item]
        history = [
            HistoryRow(
                alarm.name,
                now,
                "StateUpdate",
                f"Alarm updated from {alarm.state} to {state}",
                json.dumps(data),
            )
        ]
        if alarm.definition.get("ActionsEnabled", True):
            # Recorded, not executed: the gateway has no SNS, Auto Scaling or EC2 to call.
            history.extend(
                HistoryRow(
                    alarm.name,
                    now,
                    "Action",
                    f"Recorded action {action} (splitserve executes no alarm actions)",
                    json.dumps({"actionState": "Recorded", "notificationResource": action}),
                )
                for action in strings(alarm.definition.get(_ACTION_MEMBERS[state]))
            )
        await asyncio.to_thread(
            self._store.put_alarm, changed.row(), history, self._settings.alarm_history_per_alarm
        )
        if self._alarms.get(alarm.name) is alarm:
            self._alarms[alarm.name] = changed
        log.info("alarm %s: %s -> %s: %s", alarm.name, alarm.state, state, changed.reason)
        ALARM_TRANSITIONS.labels(state).inc()

    def _describe(self, alarm: _Alarm) -> dict[str, object]:
        definition = alarm.definition
        described: dict[str, object] = {
            "AlarmName": alarm.name,
            "AlarmArn": (
                f"arn:aws:cloudwatch:{self._account.region}:{self._account.account_id}:alarm:"
                f"{alarm.name}"
            ),
            "AlarmConfigurationUpdatedTimestamp": _moment(alarm.configuration_updated),
            "ActionsEnabled": definition.get("ActionsEnabled", True),
            "OKActions": list(strings(definition.get("OKActions"))),
            "AlarmActions": list(strings(definition.get("AlarmActions"))),
            "InsufficientDataActions": list(strings(definition.get("InsufficientDataActions"))),
            "StateValue": alarm.state,
            "StateReason": alarm.reason,
            "StateUpdatedTimestamp": _moment(alarm.state_updated),
            "StateTransitionedTimestamp": _moment(alarm.state_transitioned),
            "Dimensions": list(dicts(definition.get("Dimensions"))),
            "TreatMissingData": definition.get("TreatMissingData", "missing"),
        }
        if alarm.reason_data is not None:
            described["StateReasonData"] = alarm.reason_data
        for member in (
            "AlarmDescription",
            "MetricName",
            "Namespace",
            "Statistic",
            "ExtendedStatistic",
            "Period",
            "Unit",
            "EvaluationPeriods",
            "DatapointsToAlarm",
            "Threshold",
            "ComparisonOperator",
            "EvaluateLowSampleCountPercentile",
        ):
            if member in definition:
                described[member] = definition[member]
        return described
