"""Server-side validation of control-plane requests: what boto3 leaves to the server.

boto3 checks only `required`, `min` and JSON types before sending (sagemaker-api.md, section 1.1);
SageMaker itself enforces patterns, maximum lengths, enums and the rest, and a client that is not
boto3 can send anything at all. `shapes.py` holds the input shapes of the operations the control
plane serves, copied from the botocore service model; this module holds the one walker that checks
a request body against them, and the checks that need more than one member.

Errors read like SageMaker's (Coral's) own:

    1 validation error detected: Value 'bad_name!' at 'endpointName' failed to satisfy constraint:
    Member must satisfy regular expression pattern: [a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}

with camelCase member paths, 1-based list indexes (`productionVariants.1.member.modelName`) and
every violation of one request joined by "; " behind an "N validation errors detected:" prefix.

Choices where SageMaker's behaviour is unknown or differs:
- A JSON value of the wrong type is reported as a constraint violation ("Member must be of type
  string"); SageMaker answers a SerializationException for those, which no SDK handles differently.
- Members the model does not define are ignored and dropped, like Coral does; they are never echoed.
- Members splitserve does not implement (ServerlessConfig, AsyncInferenceConfig, ExplainerConfig,
  ...) are refused with a message that names them, rather than accepted and silently ignored.
- Integers must fit SageMaker's 32-bit `integer`; floats must be finite numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from splitserve.config import (
    ALLOWED_ENVIRONMENT_NAMES,
    RESERVED_ENVIRONMENT_NAMES,
    RESERVED_ENVIRONMENT_PREFIXES,
    SUPPORTED_ROUTING_STRATEGIES,
)
from splitserve.control.schema import (
    BooleanShape,
    FloatShape,
    IntegerShape,
    ListShape,
    MapShape,
    Shape,
    StringShape,
    StructureShape,
)
from splitserve.control.shapes import INPUT_SHAPES, METRIC_PUBLISH_FREQUENCIES
from splitserve.errors import ValidationException

#: SageMaker's `integer` is a signed 32-bit value.
INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1

#: The most characters of a value an error message repeats.
_MAX_VALUE_CHARS = 200


# --- messages -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Violation:
    """One failed constraint: where (Coral path), the value found, and the constraint's wording."""

    path: str
    value: object
    constraint: str


def format_violations(violations: Sequence[Violation]) -> str:
    """The Coral-style message for `violations` ("N validation errors detected: ...")."""
    count = len(violations)
    noun = "error" if count == 1 else "errors"
    details = "; ".join(
        f"Value {describe_value(item.value)} at '{item.path}' failed to satisfy constraint: "
        f"{item.constraint}"
        for item in violations
    )
    return f"{count} validation {noun} detected: {details}"


def raise_violations(violations: Sequence[Violation]) -> None:
    """Raise one ValidationException for `violations`, if there are any."""
    if violations:
        raise ValidationException(format_violations(violations))


def describe_value(value: object) -> str:
    """How an error message shows a value: `null`, or the value in single quotes, shortened."""
    if value is None:
        return "null"
    text = _short_text(value, depth=0)
    if len(text) > _MAX_VALUE_CHARS:
        text = text[: _MAX_VALUE_CHARS - 3] + "..."
    return f"'{text}'"


def _short_text(value: object, depth: int) -> str:
    """A compact rendering that never recurses deeply and never grows far past the message cap."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value[: _MAX_VALUE_CHARS + 1].encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, int):
        return str(value) if abs(value) < 10**30 else f"{'-' if value < 0 else ''}1e30+"
    if isinstance(value, float):
        return repr(value)
    if depth >= 3:
        return "..."
    if isinstance(value, list):
        return "[" + ", ".join(_short_text(item, depth + 1) for item in value[:10]) + "]"
    if isinstance(value, dict):
        items = list(value.items())[:10]
        return "{" + ", ".join(f"{k}={_short_text(v, depth + 1)}" for k, v in items) + "}"
    return type(value).__name__


def member_path(parent: str, member: str) -> str:
    """The Coral path of `member` under `parent`, camelCase (`ModelName` -> `modelName`)."""
    name = member[:1].lower() + member[1:]
    return f"{parent}.{name}" if parent else name


def item_path(parent: str, index: int) -> str:
    """The Coral path of the list item at 0-based `index`; Coral counts from 1 (`x.1.member`)."""
    return f"{parent}.{index + 1}.member"


# --- the walker -----------------------------------------------------------------------------------


class _Invalid:
    """Marks a value that failed validation (so its parent does not keep it)."""


_INVALID = _Invalid()


@dataclass
class _Walk:
    violations: list[Violation] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)

    def fail(self, path: str, value: object, constraint: str) -> _Invalid:
        self.violations.append(Violation(path, value, constraint))
        return _INVALID

    def visit(self, shape: Shape, value: object, path: str) -> object:
        if isinstance(shape, StructureShape):
            return self.structure(shape, value, path)
        if isinstance(shape, ListShape):
            return self.list(shape, value, path)
        if isinstance(shape, MapShape):
            return self.map(shape, value, path)
        if isinstance(shape, StringShape):
            return self.string(shape, value, path)
        if isinstance(shape, IntegerShape):
            return self.integer(shape, value, path)
        if isinstance(shape, FloatShape):
            return self.number(shape, value, path)
        if isinstance(shape, BooleanShape):
            if not isinstance(value, bool):
                return self.fail(path, value, "Member must be of type boolean")
            return value
        return self.timestamp(value, path)

    def structure(self, shape: StructureShape, value: object, path: str) -> object:
        if not isinstance(value, dict):
            return self.fail(path, value, "Member must be of type structure")
        result: dict[str, object] = {}
        for member, member_shape in shape.members.items():
            item = value.get(member)
            child = member_path(path, member)
            if item is None:
                if member in shape.required or member in shape.also_required:
                    self.fail(child, None, "Member must not be null")
                continue
            checked = self.visit(member_shape, item, child)
            if checked is not _INVALID:
                result[member] = checked
        for member, reason in shape.unsupported.items():
            if value.get(member) is not None:
                where = member_path(path, member)
                self.unsupported.append(
                    f"splitserve does not implement {member} (at '{where}'): {reason} "
                    f"Leave {member} out of the request."
                )
        return result

    def list(self, shape: ListShape, value: object, path: str) -> object:
        if not isinstance(value, list):
            return self.fail(path, value, "Member must be of type list")
        if len(value) < shape.min_length:
            return self.fail(
                path, value, f"Member must have length greater than or equal to {shape.min_length}"
            )
        if shape.max_length is not None and len(value) > shape.max_length:
            return self.fail(
                path, value, f"Member must have length less than or equal to {shape.max_length}"
            )
        items = [self.visit(shape.member, item, item_path(path, i)) for i, item in enumerate(value)]
        if any(item is _INVALID for item in items):
            return _INVALID
        return items

    def map(self, shape: MapShape, value: object, path: str) -> object:
        if not isinstance(value, dict):
            return self.fail(path, value, "Member must be of type map")
        if shape.max_length is not None and len(value) > shape.max_length:
            return self.fail(
                path, value, f"Member must have length less than or equal to {shape.max_length}"
            )
        result: dict[str, object] = {}
        for key, item in value.items():
            checked_key = self.string(shape.key, key, path)
            checked = self.visit(shape.value, item, f"{path}.{key}")
            if isinstance(checked_key, str) and checked is not _INVALID:
                result[checked_key] = checked
        return result

    def string(self, shape: StringShape, value: object, path: str) -> object:
        if not isinstance(value, str):
            return self.fail(path, value, "Member must be of type string")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return self.fail(path, value, "Member must be a valid Unicode string")
        before = len(self.violations)
        if len(value) < shape.min_length:
            self.fail(
                path, value, f"Member must have length greater than or equal to {shape.min_length}"
            )
        if shape.max_length is not None and len(value) > shape.max_length:
            self.fail(
                path, value, f"Member must have length less than or equal to {shape.max_length}"
            )
        if shape.pattern is not None and not shape.matches(value):
            self.fail(
                path, value, f"Member must satisfy regular expression pattern: {shape.pattern}"
            )
        if shape.enum is not None and value not in shape.enum:
            self.fail(path, value, f"Member must satisfy enum value set: [{', '.join(shape.enum)}]")
        return value if len(self.violations) == before else _INVALID

    def integer(self, shape: IntegerShape, value: object, path: str) -> object:
        if isinstance(value, bool) or not isinstance(value, int):
            return self.fail(path, value, "Member must be of type integer")
        minimum = INT32_MIN if shape.minimum is None else shape.minimum
        maximum = INT32_MAX if shape.maximum is None else shape.maximum
        if value < minimum:
            return self.fail(
                path, value, f"Member must have value greater than or equal to {minimum}"
            )
        if value > maximum:
            return self.fail(path, value, f"Member must have value less than or equal to {maximum}")
        if shape.enum is not None and value not in shape.enum:
            allowed = ", ".join(str(item) for item in shape.enum)
            return self.fail(path, value, f"Member must satisfy enum value set: [{allowed}]")
        return value

    def number(self, shape: FloatShape, value: object, path: str) -> object:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return self.fail(path, value, "Member must be of type number")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            return self.fail(path, value, "Member must be a finite number")
        if shape.minimum is not None and number < shape.minimum:
            bound = _format_number(shape.minimum)
            return self.fail(
                path, value, f"Member must have value greater than or equal to {bound}"
            )
        return number

    def timestamp(self, value: object, path: str) -> object:
        if isinstance(value, str):
            try:
                moment = datetime.fromisoformat(value)
            except ValueError:
                return self.fail(path, value, "Member must be a timestamp")
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            return moment.timestamp()
        if isinstance(value, bool) or not isinstance(value, int | float):
            return self.fail(path, value, "Member must be a timestamp")
        try:
            seconds = float(value)
        except OverflowError:
            seconds = math.inf
        if not math.isfinite(seconds):
            return self.fail(path, value, "Member must be a timestamp")
        return seconds


def _format_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def validate_request(operation: str, body: Mapping[str, object]) -> dict[str, object]:
    """Check `body` against `operation`'s input shape; return it normalized.

    The result holds only members of the shape (unknown ones are dropped), floats as floats and
    timestamps as epoch seconds.

    Raises:
        ValidationException: a constraint failed (one Coral-style message for all of them), or the
            request uses a member splitserve does not implement.
    """
    walk = _Walk()
    result = walk.structure(INPUT_SHAPES[operation], dict(body), "")
    # An unimplemented member is named before any violation: a ServerlessConfig variant has no
    # InstanceType or InitialInstanceCount by design, and "Member must not be null" for those
    # would send its author fixing the wrong thing.
    if walk.unsupported:
        raise ValidationException(" ".join(walk.unsupported))
    raise_violations(walk.violations)
    assert isinstance(result, dict)  # a dict body that passed gives a dict
    return result


# --- checks that need more than one member --------------------------------------------------------


def check_production_variants(
    variants: Sequence[Mapping[str, object]],
    *,
    path: str,
    instance_types: frozenset[str],
) -> None:
    """Check what the schema cannot: known instance types, supported routing, unique names.

    Raises:
        ValidationException: an unknown instance type or unsupported routing strategy
            (Coral-style), or a duplicate VariantName (`The variant name "<v>" was non-unique
            within the request.`).
    """
    violations: list[Violation] = []
    allowed = ", ".join(sorted(instance_types))
    for index, variant in enumerate(variants):
        where = item_path(path, index)
        instance_type = variant.get("InstanceType")
        if instance_type not in instance_types:
            violations.append(
                Violation(
                    member_path(where, "InstanceType"),
                    instance_type,
                    f"Member must satisfy enum value set: [{allowed}]",
                )
            )
        routing = variant.get("RoutingConfig")
        if isinstance(routing, dict):
            strategy = routing.get("RoutingStrategy")
            if strategy not in SUPPORTED_ROUTING_STRATEGIES:
                violations.append(
                    Violation(
                        member_path(member_path(where, "RoutingConfig"), "RoutingStrategy"),
                        strategy,
                        "Member must satisfy enum value set: "
                        f"[{', '.join(SUPPORTED_ROUTING_STRATEGIES)}]",
                    )
                )
    raise_violations(violations)
    check_unique_variant_names(variant.get("VariantName") for variant in variants)
    weights = [variant.get("InitialVariantWeight", 1.0) for variant in variants]
    check_weight_sum(float(w) for w in weights if isinstance(w, float | int))


def check_unique_variant_names(names: Iterable[object]) -> None:
    """Raise `The variant name "<v>" was non-unique within the request.` for the first repeat."""
    seen: set[object] = set()
    for name in names:
        if name in seen:
            raise ValidationException(
                f'The variant name "{name}" was non-unique within the request.'
            )
        seen.add(name)


def check_weight_sum(weights: Iterable[float]) -> None:
    """The router divides by the sum of the weights, so it must be a finite number."""
    try:
        total = math.fsum(weights)
    except OverflowError:
        total = math.inf
    if not math.isfinite(total):
        raise ValidationException("The sum of the variant weights must be a finite number.")


def check_metrics_config(config: Mapping[str, object] | None) -> None:
    """MetricPublishFrequencyInSeconds takes only the values the model's documentation lists."""
    if config is None:
        return
    frequency = config.get("MetricPublishFrequencyInSeconds")
    if frequency is not None and frequency not in METRIC_PUBLISH_FREQUENCIES:
        allowed = ", ".join(str(value) for value in METRIC_PUBLISH_FREQUENCIES)
        raise_violations(
            [
                Violation(
                    "metricsConfig.metricPublishFrequencyInSeconds",
                    frequency,
                    f"Member must satisfy enum value set: [{allowed}]",
                )
            ]
        )


def check_deployment_config(config: Mapping[str, object] | None) -> None:
    """The rules of DeploymentConfig beyond its members' own bounds (docs/sagemaker-api.md,
    "Deployment guardrails"): one update policy; CanarySize with CANARY only and LinearStepSize
    with LINEAR only; a CAPACITY_PERCENT canary of at most 50, linear steps of 10 to 50, rolling
    batches of 5 to 50 and rollback batches of at most 100. Sizes given as INSTANCE_COUNT are
    checked against the new fleet by `check_capacity_sizes`.

    Raises:
        ValidationException: naming the member and the rule.
    """
    if config is None:
        return
    blue_green = config.get("BlueGreenUpdatePolicy")
    if isinstance(blue_green, dict) and isinstance(config.get("RollingUpdatePolicy"), dict):
        raise ValidationException(
            "Only one update policy may be specified in DeploymentConfig: give "
            "BlueGreenUpdatePolicy or RollingUpdatePolicy, not both."
        )
    rolling = config.get("RollingUpdatePolicy")
    if isinstance(rolling, dict):
        batch = _size_of(rolling.get("MaximumBatchSize"))
        if batch is not None and batch[0] == "CAPACITY_PERCENT" and not 5 <= batch[1] <= 50:
            raise ValidationException(
                f"MaximumBatchSize Value {batch[1]} (CAPACITY_PERCENT) must be between 5 and 50 "
                "percent of the variant's capacity."
            )
        rollback = _size_of(rolling.get("RollbackMaximumBatchSize"))
        if rollback is not None and rollback[0] == "CAPACITY_PERCENT" and rollback[1] > 100:
            raise ValidationException(
                f"RollbackMaximumBatchSize Value {rollback[1]} (CAPACITY_PERCENT) must be at "
                "most 100 percent of the variant's capacity."
            )
    if not isinstance(blue_green, dict):
        return
    routing = blue_green.get("TrafficRoutingConfiguration")
    if not isinstance(routing, dict):
        return
    routing_type = routing.get("Type")
    for member, wanted in (("CanarySize", "CANARY"), ("LinearStepSize", "LINEAR")):
        given = isinstance(routing.get(member), dict)
        if routing_type == wanted and not given:
            raise ValidationException(
                f"{member} must be specified when TrafficRoutingConfiguration Type is {wanted}."
            )
        if routing_type != wanted and given:
            raise ValidationException(
                f"{member} can only be specified when TrafficRoutingConfiguration Type is "
                f"{wanted}, not {routing_type}."
            )
    size = _capacity_size(routing)
    if size is None or size[0] != "CAPACITY_PERCENT":
        return
    member, low, high = _SIZE_BOUNDS[str(routing_type)]
    if not low <= size[1] <= high:
        raise ValidationException(
            f"{member} Value {size[1]} (CAPACITY_PERCENT) must be between {low} and {high} "
            f"percent of the variant's capacity for TrafficRoutingConfiguration Type "
            f"{routing_type}."
        )


#: TrafficRoutingConfiguration Type -> its size member and the share of capacity (in percent)
#: SageMaker allows it (botocore's documentation of CanarySize and LinearStepSize).
_SIZE_BOUNDS = {"CANARY": ("CanarySize", 1, 50), "LINEAR": ("LinearStepSize", 10, 50)}


def _capacity_size(routing: Mapping[str, object]) -> tuple[str, int] | None:
    """(Type, Value) of the CanarySize or LinearStepSize a validated routing gives, if any."""
    for member in ("CanarySize", "LinearStepSize"):
        size = _size_of(routing.get(member))
        if size is not None:
            return size
    return None


def _size_of(size: object) -> tuple[str, int] | None:
    """(Type, Value) of a validated CapacitySize, None when absent."""
    if not isinstance(size, dict):
        return None
    return str(size.get("Type")), int(str(size.get("Value")))


def check_capacity_sizes(config: Mapping[str, object] | None, instance_count: int) -> None:
    """A CanarySize or LinearStepSize given as INSTANCE_COUNT within the same bounds as a
    percentage (at most 50 % for a canary, 10 to 50 % for linear steps) of `instance_count`,
    the new configuration's production instances.

    Raises:
        ValidationException: naming the size, the count and the bounds.
    """
    rolling = None if config is None else config.get("RollingUpdatePolicy")
    batch = _size_of(rolling.get("MaximumBatchSize")) if isinstance(rolling, dict) else None
    if (
        batch is not None
        and batch[0] == "INSTANCE_COUNT"
        and not 5 * instance_count <= batch[1] * 100 <= 50 * instance_count
    ):
        raise ValidationException(
            f"MaximumBatchSize Value {batch[1]} (INSTANCE_COUNT) must be between 5 and 50 "
            f"percent of the new endpoint configuration's {instance_count} production "
            "instance(s)."
        )
    policy = None if config is None else config.get("BlueGreenUpdatePolicy")
    routing = policy.get("TrafficRoutingConfiguration") if isinstance(policy, dict) else None
    if not isinstance(routing, dict):
        return
    size = _capacity_size(routing)
    if size is None or size[0] != "INSTANCE_COUNT":
        return
    member, low, high = _SIZE_BOUNDS[str(routing.get("Type"))]
    if not low * instance_count <= size[1] * 100 <= high * instance_count:
        raise ValidationException(
            f"{member} Value {size[1]} (INSTANCE_COUNT) must be between {low} and {high} "
            f"percent of the new endpoint configuration's {instance_count} production "
            "instance(s) for TrafficRoutingConfiguration Type "
            f"{routing.get('Type')}."
        )


def reserved_environment_names(environment: Iterable[str]) -> list[str]:
    """The names in `environment` a model may not set (config.RESERVED_ENVIRONMENT_*), sorted."""
    return sorted(
        name
        for name in environment
        if name not in ALLOWED_ENVIRONMENT_NAMES
        and (name in RESERVED_ENVIRONMENT_NAMES or name.startswith(RESERVED_ENVIRONMENT_PREFIXES))
    )


def check_environment(environment: Mapping[str, object] | None, *, where: str) -> None:
    """Refuse Environment variables that change how a worker loads or runs code.

    Args:
        environment: a container's Environment map (None: there is none).
        where: where it is, for the message: "at 'primaryContainer.environment'", or
            'of model "m1"' for a stored model (one created before a name was reserved).

    Raises:
        ValidationException: naming every reserved key (README, "Security").
    """
    reserved = reserved_environment_names(environment or {})
    if not reserved:
        return
    names = ", ".join(reserved)
    noun = "variable" if len(reserved) == 1 else "variables"
    raise ValidationException(
        f"The Environment {noun} {names} ({where}) may not be set: splitserve reserves the "
        "variables that change how a model server loads or runs code (the dynamic loader's, "
        "the interpreters', PATH, ...) and those it sets itself. See the Security section of "
        "the README for the list."
    )
