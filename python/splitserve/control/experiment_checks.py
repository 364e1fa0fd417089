"""The request checks of the inference experiment operations that need no state: a Schedule's
start and end, a stop's variant actions and desired variants, what an update may change while the
experiment runs, and how an update's ModelVariants merge into the experiment's.

`experiments.ExperimentOperations` calls these after SageMaker's shapes were checked
(`validation.validate_request`) and before it writes; what splitserve chose where SageMaker's
documentation is silent is in docs/sagemaker-api.md, "Shadow tests".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from splitserve.config import EXPERIMENT_DEFAULT_DURATION_SECONDS, EXPERIMENT_MAX_DURATION_SECONDS
from splitserve.control.documents import mappings
from splitserve.control.experiment_store import ExperimentRecord
from splitserve.errors import ValidationException

__all__ = [
    "check_desired",
    "check_running_variants",
    "check_same_names",
    "member_mapping",
    "merged_variants",
    "optional_text",
    "schedule_span",
    "stop_actions",
]


def schedule_span(
    schedule: Mapping[str, object] | None,
    current: ExperimentRecord | None,
    now: float,
    *,
    running: bool = False,
) -> tuple[float, float]:
    """The (start, end) a Schedule asks for. At Create, start defaults to now and end to start +
    7 days; at Update, a member left out keeps the experiment's value (and a running experiment
    keeps its start). The end must come after the start and after now, within 30 days of the
    start."""
    schedule = schedule or {}
    raw_start = schedule.get("StartTime")
    raw_end = schedule.get("EndTime")
    if running and current is not None:
        start = current.schedule_start
    elif isinstance(raw_start, int | float):
        start = float(raw_start)
    else:
        start = now if current is None else current.schedule_start
    if isinstance(raw_end, int | float):
        end = float(raw_end)
    elif current is not None:
        end = current.schedule_end
    else:
        end = start + EXPERIMENT_DEFAULT_DURATION_SECONDS
    if end <= start:
        raise ValidationException("The Schedule's EndTime must be after its StartTime.")
    if end <= now:
        raise ValidationException("The Schedule's EndTime must be in the future.")
    if end - start > EXPERIMENT_MAX_DURATION_SECONDS:
        raise ValidationException(
            "An inference experiment runs for at most 30 days: the Schedule's EndTime must be "
            "within 30 days of its StartTime."
        )
    return start, end


def stop_actions(record: ExperimentRecord, given: Mapping[str, object]) -> dict[str, str]:
    """The variant actions of a stop, with the defaults (production Retain, shadow Remove)."""
    source, shadow = record.source_variant, record.shadow_variant
    if not given:
        raise ValidationException(
            "1 validation error detected: Value '{}' at 'modelVariantActions' failed to satisfy "
            "constraint: Member must have length greater than or equal to 1"
        )
    unknown = sorted(set(given) - {source, shadow})
    if unknown:
        raise ValidationException(
            f'ModelVariantActions names variant "{unknown[0]}", which is not a variant of the '
            f'inference experiment (it has "{source}" and "{shadow}").'
        )
    actions = {source: "Retain", shadow: "Remove"}
    actions.update({name: str(action) for name, action in given.items()})
    if actions[source] == "Promote":
        raise ValidationException(
            f'The variant "{source}" is the production variant already: it can be retained or, '
            "when the shadow is promoted, removed."
        )
    if actions[source] == "Remove" and actions[shadow] != "Promote":
        raise ValidationException(
            f'Removing the production variant "{source}" needs the shadow variant "{shadow}" '
            "promoted in its place: an endpoint needs a production variant."
        )
    if actions[shadow] == "Promote" and actions[source] == "Retain" and source in given:
        raise ValidationException(
            f'Promoting "{shadow}" replaces the production variant "{source}" with it: give '
            f'"{source}" the action Remove, or leave it out.'
        )
    return actions


def check_desired(record: ExperimentRecord, desired: Sequence[Mapping[str, object]]) -> None:
    """StopInferenceExperiment's DesiredModelVariants name the experiment's variants with their
    own models.

    Raises:
        ValidationException: one names another variant, or another model.
    """
    names = {record.source_variant, record.shadow_variant}
    for variant in desired:
        name = str(variant.get("VariantName"))
        if name not in names:
            raise ValidationException(
                f'DesiredModelVariants names variant "{name}", which is not a variant of the '
                "inference experiment."
            )
        if variant.get("ModelName") != record.model_variant(name).get("ModelName"):
            raise ValidationException(
                f'DesiredModelVariants gives variant "{name}" the model '
                f'"{variant.get("ModelName")}"; the experiment\'s is '
                f'"{record.model_variant(name).get("ModelName")}".'
            )


def check_running_variants(
    record: ExperimentRecord, variants: Sequence[Mapping[str, object]]
) -> None:
    """While Running, a ModelVariants entry may change its InstanceCount only."""
    for variant in variants:
        name = str(variant.get("VariantName"))
        try:
            current = record.model_variant(name)
        except KeyError:
            raise ValidationException(
                f'ModelVariants names variant "{name}", which is not a variant of the running '
                "inference experiment."
            ) from None
        before = member_mapping(
            member_mapping(current, "InfrastructureConfig"), "RealTimeInferenceConfig"
        )
        after = member_mapping(
            member_mapping(variant, "InfrastructureConfig"), "RealTimeInferenceConfig"
        )
        if variant.get("ModelName") != current.get("ModelName") or before.get(
            "InstanceType"
        ) != after.get("InstanceType"):
            raise ValidationException(
                f'The model and instance type of variant "{name}" cannot change while the '
                "inference experiment runs; only its InstanceCount can."
            )


def check_same_names(record: ExperimentRecord, config: Mapping[str, object]) -> None:
    """A running experiment's ShadowModeConfig keeps its source and shadow variants.

    Raises:
        ValidationException: it names others.
    """
    shadows = mappings(config.get("ShadowModelVariants"))
    if config.get("SourceModelVariantName") != record.source_variant or [
        shadow.get("ShadowModelVariantName") for shadow in shadows
    ] != [record.shadow_variant]:
        raise ValidationException(
            "The variants of a running inference experiment cannot change; only the shadow's "
            "SamplingPercentage can."
        )


def merged_variants(
    current: Sequence[Mapping[str, object]], changes: Sequence[Mapping[str, object]]
) -> tuple[Mapping[str, object], ...]:
    """`current` with each entry of `changes` in place of the one of its VariantName (new names
    added): UpdateInferenceExperiment lists only the variants it changes."""
    by_name = {str(variant["VariantName"]): variant for variant in current}
    for variant in changes:
        by_name[str(variant["VariantName"])] = variant
    return tuple(by_name.values())


def member_mapping(document: Mapping[str, object], key: str) -> Mapping[str, object]:
    """`document[key]` when it is a structure, else an empty one (validation already ran)."""
    value = document.get(key)
    return value if isinstance(value, dict) else {}


def optional_text(document: Mapping[str, object], key: str) -> str | None:
    """`document[key]` when it is a string, else None."""
    value = document.get(key)
    return value if isinstance(value, str) else None
