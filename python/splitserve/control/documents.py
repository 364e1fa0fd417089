"""Reading validated request documents: typed access to members, and the model's one container.

Every function here takes a document `validation.validate_request` has already checked against
its shape, so a member is either absent or of its shape's type; the helpers only narrow types for
the type checker and pick out what the operations use.
"""

from __future__ import annotations

from collections.abc import Mapping

from splitserve.control.models import FAILOVER_TAG, ResourceKind, Tags
from splitserve.control.validation import check_environment, member_path
from splitserve.errors import ValidationException


def text(document: Mapping[str, object], key: str) -> str:
    """The string member `key`; a ValidationException if it is missing."""
    value = document.get(key)
    if not isinstance(value, str):
        raise ValidationException(f"{key} is missing.")
    return value


def texts(value: object) -> tuple[str, ...]:
    """The strings of a list member (none if it is absent)."""
    return tuple(item for item in value if isinstance(item, str)) if isinstance(value, list) else ()


def optional_mapping(value: object) -> dict[str, object] | None:
    """A structure member, or None if it is absent."""
    return value if isinstance(value, dict) else None


def mappings(value: object) -> list[dict[str, object]]:
    """The structures of a list member (none if it is absent)."""
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, dict)]


def optional_int(value: object) -> int | None:
    """An integer member, or None if it is absent."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def optional_float(value: object) -> float | None:
    """A number member as a float, or None if it is absent."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def not_found(kind: ResourceKind, arn: str) -> ValidationException:
    """SageMaker's `Could not find <kind> "<arn>".`"""
    return ValidationException(f'Could not find {kind.description} "{arn}".')


def tag_pairs(value: object, existing: Tags = ()) -> Tags:
    """A validated TagList as (Key, Value) pairs added to `existing`: a key given again takes its
    new value in its old place (tag keys are unique per resource, and case-sensitive)."""
    merged = dict(existing)
    for tag in mappings(value):
        merged[str(tag.get("Key"))] = str(tag.get("Value", ""))
    return tuple(merged.items())


def check_failover_tag(tags: Tags) -> None:
    """Refuse a `splitserve:failover` tag whose value is neither `true` nor `false` (any case),
    so a typo does not silently leave failover off."""
    for key, tag_value in tags:
        if key == FAILOVER_TAG and tag_value.lower() not in ("true", "false"):
            raise ValidationException(
                f"The tag {FAILOVER_TAG} must have the value true or false, not "
                f"'{tag_value[:100]}'."
            )


def endpoint_tags(value: object) -> Tags:
    """CreateEndpoint's validated Tags as (Key, Value) pairs (`tag_pairs`), with the
    `splitserve:failover` tag checked (`check_failover_tag`)."""
    tags = tag_pairs(value)
    check_failover_tag(tags)
    return tags


def single_container(request: Mapping[str, object]) -> tuple[Mapping[str, object], str]:
    """The model's one container and its Coral path; splitserve runs one container per model."""
    primary = optional_mapping(request.get("PrimaryContainer"))
    containers = request.get("Containers")
    if primary is not None and containers is not None:
        raise ValidationException("Give PrimaryContainer or Containers, not both.")
    if primary is not None:
        return primary, "primaryContainer"
    listed = mappings(containers)
    if not listed:
        raise ValidationException(
            "A model needs a container: give PrimaryContainer (or one entry in Containers)."
        )
    if len(listed) > 1:
        raise ValidationException(
            f"splitserve runs one container per model; Containers has {len(listed)} entries."
        )
    return listed[0], "containers.1.member"


def check_container(container: Mapping[str, object], where: str) -> None:
    """Refuse what splitserve does not run in a container: multi-model mode, two model data
    locations, and the Environment variables it reserves (config.RESERVED_ENVIRONMENT_NAMES)."""
    if container.get("Mode") == "MultiModel":
        raise ValidationException(
            f"splitserve does not implement Mode MultiModel (at '{member_path(where, 'Mode')}'): "
            "multi-model endpoints are not implemented. Give Mode SingleModel, or leave Mode "
            "out, and create one model per artifact."
        )
    if container.get("ModelDataUrl") is not None and container.get("ModelDataSource") is not None:
        raise ValidationException(f"Give ModelDataUrl or ModelDataSource (at '{where}'), not both.")
    check_environment(
        optional_mapping(container.get("Environment")),
        where=f"at '{member_path(where, 'Environment')}'",
    )


def model_data_location(container: Mapping[str, object], where: str) -> tuple[str | None, str]:
    """The container's model data location (ModelDataUrl or ModelDataSource's S3Uri), and path."""
    url = container.get("ModelDataUrl")
    if isinstance(url, str):
        return url, member_path(where, "ModelDataUrl")
    source = optional_mapping(container.get("ModelDataSource")) or {}
    s3 = optional_mapping(source.get("S3DataSource")) or {}
    uri = s3.get("S3Uri")
    if isinstance(uri, str):
        path = member_path(
            member_path(member_path(where, "ModelDataSource"), "S3DataSource"), "S3Uri"
        )
        return uri, path
    return None, where
