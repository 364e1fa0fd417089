"""Server-side validation of control-plane requests: what boto3 leaves to the server.

boto3 checks only `required`, `min` and JSON types before sending (sagemaker-api.md, section 1.1);
SageMaker itself enforces patterns, maximum lengths, enums and the rest, and a client that is not
boto3 can send anything at all. This module holds the input shapes of the operations the control
plane serves, copied from the botocore service model (`tests/control/test_validation.py` checks
every one against `botocore/data/sagemaker/2017-07-24/service-2.json.gz`), and one walker that
checks a request body against them.

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
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from splitserve.config import (
    ALLOWED_ENVIRONMENT_NAMES,
    MAX_PRODUCTION_VARIANTS,
    RESERVED_ENVIRONMENT_NAMES,
    RESERVED_ENVIRONMENT_PREFIXES,
)
from splitserve.errors import ValidationException

#: SageMaker's `integer` is a signed 32-bit value.
INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1

#: MaxResults when a List* request gives none. The model documents 10 for ListEndpoints only; the
#: other two List operations answer 10 as well in practice, and one default keeps paging uniform.
DEFAULT_MAX_RESULTS = 10

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


# --- shapes ---------------------------------------------------------------------------------------


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


def _is_tag_text(value: str) -> bool:
    """`([\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]*)`: letters, separators, numbers and `_.:/=+-@`."""
    return all(unicodedata.category(char)[0] in "LZN" or char in "_.:/=+-@" for char in value)


# --- the service model's input shapes (only what the served operations use) ----------------------

_NAME_PATTERN = r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}"

MODEL_NAME = StringShape(
    "ModelName", max_length=63, pattern=r"[a-zA-Z0-9]([\-a-zA-Z0-9]*[a-zA-Z0-9])?"
)
ENDPOINT_NAME = StringShape("EndpointName", max_length=63, pattern=_NAME_PATTERN)
ENDPOINT_CONFIG_NAME = StringShape("EndpointConfigName", max_length=63, pattern=_NAME_PATTERN)
VARIANT_NAME = StringShape("VariantName", max_length=63, pattern=_NAME_PATTERN)
BOOLEAN = BooleanShape("Boolean")
TIMESTAMP = TimestampShape("Timestamp")

_TAG = StructureShape(
    "Tag",
    {
        "Key": StringShape(
            "TagKey",
            min_length=1,
            max_length=128,
            pattern=r"([\p{L}\p{Z}\p{N}_.:/=+\-@]*)",
            matcher=_is_tag_text,
        ),
        "Value": StringShape(
            "TagValue",
            max_length=256,
            pattern=r"([\p{L}\p{Z}\p{N}_.:/=+\-@]*)",
            matcher=_is_tag_text,
        ),
    },
    required=frozenset({"Key", "Value"}),
)
TAG_LIST = ListShape("TagList", _TAG, max_length=50)

ROLE_ARN = StringShape(
    "RoleArn",
    min_length=20,
    max_length=2048,
    pattern=r"arn:aws[a-z\-]*:iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-_/]+",
)
KMS_KEY_ID = StringShape("KmsKeyId", max_length=2048, pattern=r"[a-zA-Z0-9:/_-]*")

_VPC_ID_PATTERN = r"[-0-9a-zA-Z]+"
VPC_CONFIG = StructureShape(
    "VpcConfig",
    {
        "SecurityGroupIds": ListShape(
            "VpcSecurityGroupIds",
            StringShape("SecurityGroupId", max_length=32, pattern=_VPC_ID_PATTERN),
            min_length=1,
            max_length=5,
        ),
        "Subnets": ListShape(
            "Subnets",
            StringShape("SubnetId", max_length=32, pattern=_VPC_ID_PATTERN),
            min_length=1,
            max_length=16,
        ),
    },
    required=frozenset({"SecurityGroupIds", "Subnets"}),
)

# Model data locations: the model's pattern only allows https:// and s3://; splitserve also takes
# file:// URLs and absolute paths, and checks every location with `paths.LocalPathResolver`.
MODEL_DATA_URL = StringShape("Url", max_length=1024, relaxed=frozenset({"pattern"}))
_S3_MODEL_URI = StringShape("S3ModelUri", max_length=1024, relaxed=frozenset({"pattern"}))

_S3_MODEL_DATA_SOURCE = StructureShape(
    "S3ModelDataSource",
    {
        "S3Uri": _S3_MODEL_URI,
        "S3DataType": StringShape("S3ModelDataType", enum=("S3Prefix", "S3Object")),
        "CompressionType": StringShape("ModelCompressionType", enum=("None", "Gzip")),
        "ModelAccessConfig": StructureShape(
            "ModelAccessConfig",
            {"AcceptEula": BooleanShape("AcceptEula")},
            required=frozenset({"AcceptEula"}),
        ),
        "ETag": StringShape("String"),
        "ManifestEtag": StringShape("String"),
    },
    required=frozenset({"S3Uri", "S3DataType", "CompressionType"}),
    unsupported={
        "HubAccessConfig": "SageMaker JumpStart hub content is not available locally.",
        "ManifestS3Uri": "manifest-based model data is not implemented.",
    },
)

CONTAINER_DEFINITION = StructureShape(
    "ContainerDefinition",
    {
        "ContainerHostname": StringShape("ContainerHostname", max_length=63, pattern=_NAME_PATTERN),
        "Image": StringShape("ContainerImage", max_length=255, pattern=r"[\S]+"),
        "ImageConfig": StructureShape(
            "ImageConfig",
            {
                "RepositoryAccessMode": StringShape(
                    "RepositoryAccessMode", enum=("Platform", "Vpc")
                ),
                "RepositoryAuthConfig": StructureShape(
                    "RepositoryAuthConfig",
                    {
                        "RepositoryCredentialsProviderArn": StringShape(
                            "RepositoryCredentialsProviderArn",
                            min_length=1,
                            max_length=2048,
                            pattern=r".*",
                        )
                    },
                    required=frozenset({"RepositoryCredentialsProviderArn"}),
                ),
            },
            required=frozenset({"RepositoryAccessMode"}),
        ),
        "Mode": StringShape("ContainerMode", enum=("SingleModel", "MultiModel")),
        "ModelDataUrl": MODEL_DATA_URL,
        "ModelDataSource": StructureShape(
            "ModelDataSource", {"S3DataSource": _S3_MODEL_DATA_SOURCE}
        ),
        "Environment": MapShape(
            "EnvironmentMap",
            StringShape("EnvironmentKey", max_length=1024, pattern=r"[a-zA-Z_][a-zA-Z0-9_]*"),
            StringShape("EnvironmentValue", max_length=1024, pattern=r"[\S\s]*"),
            max_length=100,
        ),
    },
    # The model leaves Image optional because a model package can supply it; splitserve has no
    # model packages, so the image is what says which server to run.
    also_required=frozenset({"Image"}),
    unsupported={
        "AdditionalModelDataSources": "additional model data sources are not implemented.",
        "ModelPackageName": "model packages (the SageMaker model registry) are not implemented.",
        "InferenceSpecificationName": "model packages (the SageMaker model registry) are not "
        "implemented.",
        "MultiModelConfig": "multi-model endpoints are not implemented.",
        "ContainerMetricsConfig": "container metrics endpoints are not implemented.",
    },
)

CREATE_MODEL = StructureShape(
    "CreateModelInput",
    {
        "ModelName": MODEL_NAME,
        "PrimaryContainer": CONTAINER_DEFINITION,
        "Containers": ListShape("ContainerDefinitionList", CONTAINER_DEFINITION, max_length=15),
        "InferenceExecutionConfig": StructureShape(
            "InferenceExecutionConfig",
            {"Mode": StringShape("InferenceExecutionMode", enum=("Serial", "Direct"))},
            required=frozenset({"Mode"}),
        ),
        "ExecutionRoleArn": ROLE_ARN,
        "Tags": TAG_LIST,
        "VpcConfig": VPC_CONFIG,
        "EnableNetworkIsolation": BOOLEAN,
    },
    required=frozenset({"ModelName"}),
)

_CONTENT_TYPE = r"[a-zA-Z0-9](-*[a-zA-Z0-9])*\/[a-zA-Z0-9](-*[a-zA-Z0-9.])*"

DATA_CAPTURE_CONFIG = StructureShape(
    "DataCaptureConfig",
    {
        "EnableCapture": BooleanShape("EnableCapture"),
        "InitialSamplingPercentage": IntegerShape("SamplingPercentage", minimum=0, maximum=100),
        # Checked by `paths.LocalPathResolver` (s3:// under the model store, file://, absolute).
        "DestinationS3Uri": StringShape(
            "DestinationS3Uri", max_length=512, relaxed=frozenset({"pattern"})
        ),
        "KmsKeyId": KMS_KEY_ID,
        "CaptureOptions": ListShape(
            "CaptureOptionList",
            StructureShape(
                "CaptureOption",
                {
                    "CaptureMode": StringShape(
                        "CaptureMode", enum=("Input", "Output", "InputAndOutput")
                    )
                },
                required=frozenset({"CaptureMode"}),
            ),
            min_length=1,
            max_length=32,
        ),
        "CaptureContentTypeHeader": StructureShape(
            "CaptureContentTypeHeader",
            {
                "CsvContentTypes": ListShape(
                    "CsvContentTypes",
                    StringShape("CsvContentType", 1, 256, pattern=_CONTENT_TYPE),
                    min_length=1,
                    max_length=10,
                ),
                "JsonContentTypes": ListShape(
                    "JsonContentTypes",
                    StringShape("JsonContentType", 1, 256, pattern=_CONTENT_TYPE),
                    min_length=1,
                    max_length=10,
                ),
            },
        ),
    },
    required=frozenset({"InitialSamplingPercentage", "DestinationS3Uri", "CaptureOptions"}),
)

#: The routing strategies the Rust router implements inside a variant.
SUPPORTED_ROUTING_STRATEGIES = ("LEAST_OUTSTANDING_REQUESTS", "RANDOM")

PRODUCTION_VARIANT = StructureShape(
    "ProductionVariant",
    {
        "VariantName": VARIANT_NAME,
        "ModelName": MODEL_NAME,
        "InitialInstanceCount": IntegerShape("InitialTaskCount", minimum=1),
        # The model's 277-value enum is replaced by the workers' instance catalog (checked by
        # `check_instance_types`): a type the host cannot run is refused even if SageMaker has it.
        "InstanceType": StringShape("ProductionVariantInstanceType", relaxed=frozenset({"enum"})),
        "VariantInstanceProvisionTimeoutInSeconds": IntegerShape(
            "VariantInstanceProvisionTimeoutInSeconds", minimum=300, maximum=3600
        ),
        "InitialVariantWeight": FloatShape("VariantWeight", minimum=0),
        "VolumeSizeInGB": IntegerShape("ProductionVariantVolumeSizeInGB", minimum=1, maximum=512),
        "ModelDataDownloadTimeoutInSeconds": IntegerShape(
            "ProductionVariantModelDataDownloadTimeoutInSeconds", minimum=60, maximum=3600
        ),
        "ContainerStartupHealthCheckTimeoutInSeconds": IntegerShape(
            "ProductionVariantContainerStartupHealthCheckTimeoutInSeconds",
            minimum=60,
            maximum=3600,
        ),
        "EnableSSMAccess": BooleanShape("ProductionVariantSSMAccess"),
        "RoutingConfig": StructureShape(
            "ProductionVariantRoutingConfig",
            {
                "RoutingStrategy": StringShape(
                    "RoutingStrategy",
                    enum=("LEAST_OUTSTANDING_REQUESTS", "RANDOM", "PREFIX_AWARE", "KV_AWARE"),
                )
            },
            required=frozenset({"RoutingStrategy"}),
            unsupported={"PrefixAwareRoutingConfig": "prefix-aware routing is not implemented."},
        ),
        "InferenceAmiVersion": StringShape(
            "ProductionVariantInferenceAmiVersion",
            enum=(
                "al2-ami-sagemaker-inference-gpu-2",
                "al2-ami-sagemaker-inference-gpu-2-1",
                "al2-ami-sagemaker-inference-gpu-3-1",
                "al2-ami-sagemaker-inference-neuron-2",
                "al2023-ami-sagemaker-inference-gpu-4-1",
            ),
        ),
    },
    required=frozenset({"VariantName"}),
    also_required=frozenset({"ModelName", "InstanceType", "InitialInstanceCount"}),
    unsupported={
        "InstancePools": "instance pools are not implemented; give one InstanceType.",
        "AcceleratorType": "Elastic Inference accelerators are not available.",
        "CoreDumpConfig": "container core dumps are not collected.",
        "ServerlessConfig": "serverless variants are not implemented; give InstanceType and "
        "InitialInstanceCount.",
        "ManagedInstanceScaling": "managed instance scaling (inference components) is not "
        "implemented.",
        "CapacityReservationConfig": "capacity reservations do not apply to local instances.",
        "AcceleratorPartitionLayouts": "accelerator partitions are not available.",
    },
)

PRODUCTION_VARIANT_LIST = ListShape(
    "ProductionVariantList", PRODUCTION_VARIANT, min_length=1, max_length=MAX_PRODUCTION_VARIANTS
)

#: MetricsConfig.MetricPublishFrequencyInSeconds: the values the model's documentation lists.
METRIC_PUBLISH_FREQUENCIES = (10, 30, 60, 120, 180, 240, 300)

CREATE_ENDPOINT_CONFIG = StructureShape(
    "CreateEndpointConfigInput",
    {
        "EndpointConfigName": ENDPOINT_CONFIG_NAME,
        "ProductionVariants": PRODUCTION_VARIANT_LIST,
        "DataCaptureConfig": DATA_CAPTURE_CONFIG,
        "Tags": TAG_LIST,
        "KmsKeyId": KMS_KEY_ID,
        "ShadowProductionVariants": PRODUCTION_VARIANT_LIST,
        "ExecutionRoleArn": ROLE_ARN,
        "VpcConfig": VPC_CONFIG,
        "EnableNetworkIsolation": BOOLEAN,
        "MetricsConfig": StructureShape(
            "MetricsConfig",
            {
                "EnableEnhancedMetrics": BooleanShape("EnableEnhancedMetrics"),
                "EnableDetailedObservability": BooleanShape("EnableDetailedObservability"),
                "MetricPublishFrequencyInSeconds": IntegerShape(
                    "MetricPublishFrequencyInSeconds",
                    enum=METRIC_PUBLISH_FREQUENCIES,
                    relaxed=frozenset({"enum"}),
                ),
            },
        ),
    },
    required=frozenset({"EndpointConfigName", "ProductionVariants"}),
    unsupported={
        "AsyncInferenceConfig": "asynchronous inference is not implemented.",
        "ExplainerConfig": "online explanations (SageMaker Clarify) are not implemented.",
        "CrossRegionTrafficConfig": "there is only one region.",
    },
)

_CAPACITY_SIZE = StructureShape(
    "CapacitySize",
    {
        "Type": StringShape("CapacitySizeType", enum=("INSTANCE_COUNT", "CAPACITY_PERCENT")),
        "Value": IntegerShape("CapacitySizeValue", minimum=1),
    },
    required=frozenset({"Type", "Value"}),
)

DEPLOYMENT_CONFIG = StructureShape(
    "DeploymentConfig",
    {
        "BlueGreenUpdatePolicy": StructureShape(
            "BlueGreenUpdatePolicy",
            {
                "TrafficRoutingConfiguration": StructureShape(
                    "TrafficRoutingConfig",
                    {
                        "Type": StringShape(
                            "TrafficRoutingConfigType", enum=("ALL_AT_ONCE", "CANARY", "LINEAR")
                        ),
                        "WaitIntervalInSeconds": IntegerShape(
                            "WaitIntervalInSeconds", minimum=0, maximum=3600
                        ),
                        "CanarySize": _CAPACITY_SIZE,
                        "LinearStepSize": _CAPACITY_SIZE,
                    },
                    required=frozenset({"Type", "WaitIntervalInSeconds"}),
                ),
                "TerminationWaitInSeconds": IntegerShape(
                    "TerminationWaitInSeconds", minimum=0, maximum=3600
                ),
                "MaximumExecutionTimeoutInSeconds": IntegerShape(
                    "MaximumExecutionTimeoutInSeconds", minimum=600, maximum=28800
                ),
            },
            required=frozenset({"TrafficRoutingConfiguration"}),
        ),
    },
    unsupported={
        "RollingUpdatePolicy": "rolling updates are not implemented; updates are blue/green, all "
        "at once.",
        "AutoRollbackConfiguration": "there are no CloudWatch alarms to roll back on.",
    },
)

CREATE_ENDPOINT = StructureShape(
    "CreateEndpointInput",
    {
        "EndpointName": ENDPOINT_NAME,
        "EndpointConfigName": ENDPOINT_CONFIG_NAME,
        "DeploymentConfig": DEPLOYMENT_CONFIG,
        "Tags": TAG_LIST,
    },
    required=frozenset({"EndpointName", "EndpointConfigName"}),
)

UPDATE_ENDPOINT = StructureShape(
    "UpdateEndpointInput",
    {
        "EndpointName": ENDPOINT_NAME,
        "EndpointConfigName": ENDPOINT_CONFIG_NAME,
        "RetainAllVariantProperties": BOOLEAN,
        "ExcludeRetainedVariantProperties": ListShape(
            "VariantPropertyList",
            StructureShape(
                "VariantProperty",
                {
                    "VariantPropertyType": StringShape(
                        "VariantPropertyType",
                        enum=("DesiredInstanceCount", "DesiredWeight", "DataCaptureConfig"),
                    )
                },
                required=frozenset({"VariantPropertyType"}),
            ),
            max_length=3,
        ),
        "DeploymentConfig": DEPLOYMENT_CONFIG,
        "RetainDeploymentConfig": BOOLEAN,
    },
    required=frozenset({"EndpointName", "EndpointConfigName"}),
)

UPDATE_ENDPOINT_WEIGHTS_AND_CAPACITIES = StructureShape(
    "UpdateEndpointWeightsAndCapacitiesInput",
    {
        "EndpointName": ENDPOINT_NAME,
        "DesiredWeightsAndCapacities": ListShape(
            "DesiredWeightAndCapacityList",
            StructureShape(
                "DesiredWeightAndCapacity",
                {
                    "VariantName": VARIANT_NAME,
                    "DesiredWeight": FloatShape("VariantWeight", minimum=0),
                    # The model allows 0 (scale to zero exists for inference components only); a
                    # classic variant needs an instance to answer, so splitserve asks for >= 1.
                    "DesiredInstanceCount": IntegerShape(
                        "TaskCount", minimum=1, relaxed=frozenset({"minimum"})
                    ),
                },
                required=frozenset({"VariantName"}),
                unsupported={"ServerlessUpdateConfig": "serverless variants are not implemented."},
            ),
            min_length=1,
        ),
    },
    required=frozenset({"EndpointName", "DesiredWeightsAndCapacities"}),
)

_PAGINATION_TOKEN = StringShape("PaginationToken", max_length=8192, pattern=r".*")
_MAX_RESULTS = IntegerShape("MaxResults", minimum=1, maximum=100)
_ORDER_KEY = StringShape("OrderKey", enum=("Ascending", "Descending"))
_NAME_CONTAINS_PATTERN = r"[a-zA-Z0-9-]+"

ENDPOINT_STATUSES = (
    "OutOfService",
    "Creating",
    "Updating",
    "SystemUpdating",
    "RollingBack",
    "InService",
    "Deleting",
    "Failed",
    "UpdateRollbackFailed",
)


def _list_input(name: str, sort_keys: tuple[str, ...], contains: str) -> dict[str, Shape]:
    return {
        "SortBy": StringShape(name, enum=sort_keys),
        "SortOrder": _ORDER_KEY,
        "NextToken": _PAGINATION_TOKEN,
        "MaxResults": _MAX_RESULTS,
        "NameContains": StringShape(contains, max_length=63, pattern=_NAME_CONTAINS_PATTERN),
        "CreationTimeBefore": TIMESTAMP,
        "CreationTimeAfter": TIMESTAMP,
    }


LIST_MODELS = StructureShape(
    "ListModelsInput",
    _list_input("ModelSortKey", ("Name", "CreationTime"), "ModelNameContains"),
)
LIST_ENDPOINT_CONFIGS = StructureShape(
    "ListEndpointConfigsInput",
    _list_input("EndpointConfigSortKey", ("Name", "CreationTime"), "EndpointConfigNameContains"),
)
LIST_ENDPOINTS = StructureShape(
    "ListEndpointsInput",
    {
        **_list_input(
            "EndpointSortKey", ("Name", "CreationTime", "Status"), "EndpointNameContains"
        ),
        "LastModifiedTimeBefore": TIMESTAMP,
        "LastModifiedTimeAfter": TIMESTAMP,
        "StatusEquals": StringShape("EndpointStatus", enum=ENDPOINT_STATUSES),
    },
)


def _by_name(shape_name: str, member: str, member_shape: Shape) -> StructureShape:
    return StructureShape(shape_name, {member: member_shape}, required=frozenset({member}))


#: Every served operation's input shape, by operation name.
INPUT_SHAPES: Mapping[str, StructureShape] = {
    "CreateModel": CREATE_MODEL,
    "DescribeModel": _by_name("DescribeModelInput", "ModelName", MODEL_NAME),
    "DeleteModel": _by_name("DeleteModelInput", "ModelName", MODEL_NAME),
    "ListModels": LIST_MODELS,
    "CreateEndpointConfig": CREATE_ENDPOINT_CONFIG,
    "DescribeEndpointConfig": _by_name(
        "DescribeEndpointConfigInput", "EndpointConfigName", ENDPOINT_CONFIG_NAME
    ),
    "DeleteEndpointConfig": _by_name(
        "DeleteEndpointConfigInput", "EndpointConfigName", ENDPOINT_CONFIG_NAME
    ),
    "ListEndpointConfigs": LIST_ENDPOINT_CONFIGS,
    "CreateEndpoint": CREATE_ENDPOINT,
    "DescribeEndpoint": _by_name("DescribeEndpointInput", "EndpointName", ENDPOINT_NAME),
    "DeleteEndpoint": _by_name("DeleteEndpointInput", "EndpointName", ENDPOINT_NAME),
    "ListEndpoints": LIST_ENDPOINTS,
    "UpdateEndpoint": UPDATE_ENDPOINT,
    "UpdateEndpointWeightsAndCapacities": UPDATE_ENDPOINT_WEIGHTS_AND_CAPACITIES,
}


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
                self.unsupported.append(f"{member} (at '{where}') is not supported: {reason}")
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
    raise_violations(walk.violations)
    if walk.unsupported:
        raise ValidationException("splitserve does not implement " + "; ".join(walk.unsupported))
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
    """Blue/green all-at-once is what splitserve runs; canary and linear shifting are refused."""
    if config is None:
        return
    policy = config.get("BlueGreenUpdatePolicy")
    if not isinstance(policy, dict):
        return
    routing = policy.get("TrafficRoutingConfiguration")
    if isinstance(routing, dict) and routing.get("Type") != "ALL_AT_ONCE":
        raise ValidationException(
            f"splitserve does not implement TrafficRoutingConfiguration Type {routing.get('Type')} "
            "(at 'deploymentConfig.blueGreenUpdatePolicy.trafficRoutingConfiguration.type'): "
            "updates shift all traffic at once (ALL_AT_ONCE)."
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
