"""The input shapes of the operations the control plane serves, from SageMaker's service model.

Copied from botocore's model (`tests/control/test_validation.py` checks every one against
`botocore/data/sagemaker/2017-07-24/service-2.json.gz`), with splitserve's own choices marked
where they differ: members it refuses (`unsupported`), constraints checked elsewhere (`relaxed`),
members it requires (`also_required`). `validation.validate_request` applies them.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping

from splitserve.config import MAX_NAME_LENGTH, MAX_PRODUCTION_VARIANTS, NAME_PATTERN
from splitserve.control.schema import (
    BooleanShape,
    FloatShape,
    IntegerShape,
    ListShape,
    MapShape,
    Shape,
    StringShape,
    StructureShape,
    TimestampShape,
)

#: MaxResults when a List* request gives none. The model documents 10 for ListEndpoints only; the
#: other two List operations answer 10 as well in practice, and one default keeps paging uniform.
DEFAULT_MAX_RESULTS = 10


def _is_tag_text(value: str) -> bool:
    """`([\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]*)`: letters, separators, numbers and `_.:/=+-@`."""
    return all(unicodedata.category(char)[0] in "LZN" or char in "_.:/=+-@" for char in value)


#: config.NAME_PATTERN: the runtime checks TargetVariant against the same constant.
_NAME_PATTERN = NAME_PATTERN

MODEL_NAME = StringShape(
    "ModelName", max_length=63, pattern=r"[a-zA-Z0-9]([\-a-zA-Z0-9]*[a-zA-Z0-9])?"
)
ENDPOINT_NAME = StringShape("EndpointName", max_length=MAX_NAME_LENGTH, pattern=_NAME_PATTERN)
ENDPOINT_CONFIG_NAME = StringShape(
    "EndpointConfigName", max_length=MAX_NAME_LENGTH, pattern=_NAME_PATTERN
)
VARIANT_NAME = StringShape("VariantName", max_length=MAX_NAME_LENGTH, pattern=_NAME_PATTERN)
BOOLEAN = BooleanShape("Boolean")
TIMESTAMP = TimestampShape("Timestamp")

_TAG_KEY = StringShape(
    "TagKey",
    min_length=1,
    max_length=128,
    pattern=r"([\p{L}\p{Z}\p{N}_.:/=+\-@]*)",
    matcher=_is_tag_text,
)
_TAG = StructureShape(
    "Tag",
    {
        "Key": _TAG_KEY,
        "Value": StringShape(
            "TagValue",
            max_length=256,
            pattern=r"([\p{L}\p{Z}\p{N}_.:/=+\-@]*)",
            matcher=_is_tag_text,
        ),
    },
    required=frozenset({"Key", "Value"}),
)
#: The most tags a TagList holds, and a resource has (SageMaker's limit).
MAX_TAGS = 50
TAG_LIST = ListShape("TagList", _TAG, max_length=MAX_TAGS)
RESOURCE_ARN = StringShape(
    "ResourceArn", max_length=256, pattern=r"arn:aws[a-z-]*:sagemaker:[a-z0-9-]*:[0-9]{12}:.+"
)

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
        "InitialInstanceCount instead.",
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
        "AsyncInferenceConfig": "asynchronous inference is not implemented; the endpoint answers "
        "InvokeEndpoint synchronously.",
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

_WAIT_INTERVAL = IntegerShape("WaitIntervalInSeconds", minimum=0, maximum=3600)
_EXECUTION_TIMEOUT = IntegerShape("MaximumExecutionTimeoutInSeconds", minimum=600, maximum=28800)

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
                        "WaitIntervalInSeconds": _WAIT_INTERVAL,
                        "CanarySize": _CAPACITY_SIZE,
                        "LinearStepSize": _CAPACITY_SIZE,
                    },
                    required=frozenset({"Type", "WaitIntervalInSeconds"}),
                ),
                "TerminationWaitInSeconds": IntegerShape(
                    "TerminationWaitInSeconds", minimum=0, maximum=3600
                ),
                "MaximumExecutionTimeoutInSeconds": _EXECUTION_TIMEOUT,
            },
            required=frozenset({"TrafficRoutingConfiguration"}),
        ),
        # Validated with SageMaker's bounds, then refused by name
        # (`validation.check_deployment_config`): updates here are blue/green.
        "RollingUpdatePolicy": StructureShape(
            "RollingUpdatePolicy",
            {
                "MaximumBatchSize": _CAPACITY_SIZE,
                "WaitIntervalInSeconds": _WAIT_INTERVAL,
                "MaximumExecutionTimeoutInSeconds": _EXECUTION_TIMEOUT,
                "RollbackMaximumBatchSize": _CAPACITY_SIZE,
            },
            required=frozenset({"MaximumBatchSize", "WaitIntervalInSeconds"}),
        ),
        "AutoRollbackConfiguration": StructureShape(
            "AutoRollbackConfig",
            {
                "Alarms": ListShape(
                    "AlarmList",
                    StructureShape(
                        "Alarm",
                        {
                            "AlarmName": StringShape(
                                "AlarmName", min_length=1, max_length=255, pattern=r"(?!\s*$).+"
                            )
                        },
                    ),
                    min_length=1,
                    max_length=10,
                ),
            },
        ),
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
                unsupported={
                    "ServerlessUpdateConfig": "serverless variants are not implemented; give "
                    "DesiredInstanceCount instead."
                },
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


ADD_TAGS = StructureShape(
    "AddTagsInput",
    {"ResourceArn": RESOURCE_ARN, "Tags": TAG_LIST},
    required=frozenset({"ResourceArn", "Tags"}),
)
LIST_TAGS = StructureShape(
    "ListTagsInput",
    {
        "ResourceArn": RESOURCE_ARN,
        "NextToken": StringShape("NextToken", max_length=8192, pattern=r".*"),
        # The model gives a minimum only: a page of 50 holds every tag a resource can have.
        "MaxResults": IntegerShape("ListTagsMaxResults", minimum=50),
    },
    required=frozenset({"ResourceArn"}),
)
DELETE_TAGS = StructureShape(
    "DeleteTagsInput",
    {
        "ResourceArn": RESOURCE_ARN,
        "TagKeys": ListShape("TagKeyList", _TAG_KEY, min_length=1, max_length=50),
    },
    required=frozenset({"ResourceArn", "TagKeys"}),
)


# --- inference experiments (shadow tests; control/experiments.py) --------------------------------

_EXPERIMENT_NAME = StringShape(
    "InferenceExperimentName",
    min_length=1,
    max_length=120,
    pattern=r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,119}",
)
_MODEL_VARIANT_NAME = StringShape(
    "ModelVariantName", max_length=63, pattern=r"[a-zA-Z0-9]([\-a-zA-Z0-9]*[a-zA-Z0-9])?"
)
_EXPERIMENT_SCHEDULE = StructureShape(
    "InferenceExperimentSchedule", {"StartTime": TIMESTAMP, "EndTime": TIMESTAMP}
)
_EXPERIMENT_DESCRIPTION = StringShape(
    "InferenceExperimentDescription", max_length=1024, pattern=r".*"
)
_MODEL_VARIANT_CONFIG_LIST = ListShape(
    "ModelVariantConfigList",
    StructureShape(
        "ModelVariantConfig",
        {
            "ModelName": StringShape(
                "ModelName", max_length=63, pattern=r"[a-zA-Z0-9]([\-a-zA-Z0-9]*[a-zA-Z0-9])?"
            ),
            "VariantName": _MODEL_VARIANT_NAME,
            "InfrastructureConfig": StructureShape(
                "ModelInfrastructureConfig",
                {
                    "InfrastructureType": StringShape(
                        "ModelInfrastructureType", enum=("RealTimeInference",)
                    ),
                    "RealTimeInferenceConfig": StructureShape(
                        "RealTimeInferenceConfig",
                        {
                            # As ProductionVariant.InstanceType: the workers' catalog is the enum.
                            "InstanceType": StringShape(
                                "ProductionVariantInstanceType", relaxed=frozenset({"enum"})
                            ),
                            # The model allows 0; a variant needs an instance to answer.
                            "InstanceCount": IntegerShape(
                                "TaskCount", minimum=1, relaxed=frozenset({"minimum"})
                            ),
                        },
                        required=frozenset({"InstanceType", "InstanceCount"}),
                    ),
                },
                required=frozenset({"InfrastructureType", "RealTimeInferenceConfig"}),
            ),
        },
        required=frozenset({"ModelName", "VariantName", "InfrastructureConfig"}),
    ),
    min_length=1,
    max_length=2,
)
_SHADOW_MODE_CONFIG = StructureShape(
    "ShadowModeConfig",
    {
        "SourceModelVariantName": _MODEL_VARIANT_NAME,
        "ShadowModelVariants": ListShape(
            "ShadowModelVariantConfigList",
            StructureShape(
                "ShadowModelVariantConfig",
                {
                    "ShadowModelVariantName": _MODEL_VARIANT_NAME,
                    # The model gives no minimum; a negative share means nothing.
                    "SamplingPercentage": IntegerShape(
                        "Percentage", minimum=0, maximum=100, relaxed=frozenset({"minimum"})
                    ),
                },
                required=frozenset({"ShadowModelVariantName", "SamplingPercentage"}),
            ),
            min_length=1,
            max_length=1,
        ),
    },
    required=frozenset({"SourceModelVariantName", "ShadowModelVariants"}),
)
_EXPERIMENT_DATA_STORAGE_CONFIG = StructureShape(
    "InferenceExperimentDataStorageConfig",
    {
        # Checked by `paths.LocalPathResolver`, as DataCaptureConfig.DestinationS3Uri.
        "Destination": StringShape(
            "DestinationS3Uri", max_length=512, relaxed=frozenset({"pattern"})
        ),
        "KmsKey": KMS_KEY_ID,
        "ContentType": DATA_CAPTURE_CONFIG.members["CaptureContentTypeHeader"],
    },
    required=frozenset({"Destination"}),
)
_EXPERIMENT_TYPE = StringShape("InferenceExperimentType", enum=("ShadowMode",))
EXPERIMENT_STATUSES = (
    "Creating",
    "Created",
    "Updating",
    "Running",
    "Starting",
    "Stopping",
    "Completed",
    "Cancelled",
)

CREATE_INFERENCE_EXPERIMENT = StructureShape(
    "CreateInferenceExperimentRequest",
    {
        "Name": _EXPERIMENT_NAME,
        "Type": _EXPERIMENT_TYPE,
        "Schedule": _EXPERIMENT_SCHEDULE,
        "Description": _EXPERIMENT_DESCRIPTION,
        "RoleArn": ROLE_ARN,
        "EndpointName": StringShape("EndpointName", max_length=63, pattern=_NAME_PATTERN),
        "ModelVariants": _MODEL_VARIANT_CONFIG_LIST,
        "DataStorageConfig": _EXPERIMENT_DATA_STORAGE_CONFIG,
        "ShadowModeConfig": _SHADOW_MODE_CONFIG,
        "KmsKey": KMS_KEY_ID,
        "Tags": TAG_LIST,
    },
    required=frozenset(
        {"Name", "Type", "RoleArn", "EndpointName", "ModelVariants", "ShadowModeConfig"}
    ),
)
UPDATE_INFERENCE_EXPERIMENT = StructureShape(
    "UpdateInferenceExperimentRequest",
    {
        "Name": _EXPERIMENT_NAME,
        "Schedule": _EXPERIMENT_SCHEDULE,
        "Description": _EXPERIMENT_DESCRIPTION,
        "ModelVariants": _MODEL_VARIANT_CONFIG_LIST,
        "DataStorageConfig": _EXPERIMENT_DATA_STORAGE_CONFIG,
        "ShadowModeConfig": _SHADOW_MODE_CONFIG,
    },
    required=frozenset({"Name"}),
)
STOP_INFERENCE_EXPERIMENT = StructureShape(
    "StopInferenceExperimentRequest",
    {
        "Name": _EXPERIMENT_NAME,
        "ModelVariantActions": MapShape(
            "ModelVariantActionMap",
            _MODEL_VARIANT_NAME,
            StringShape("ModelVariantAction", enum=("Retain", "Remove", "Promote")),
            max_length=2,
        ),
        "DesiredModelVariants": _MODEL_VARIANT_CONFIG_LIST,
        "DesiredState": StringShape(
            "InferenceExperimentStopDesiredState", enum=("Completed", "Cancelled")
        ),
        "Reason": StringShape("InferenceExperimentStatusReason", max_length=1024, pattern=r".*"),
    },
    required=frozenset({"Name", "ModelVariantActions"}),
)
LIST_INFERENCE_EXPERIMENTS = StructureShape(
    "ListInferenceExperimentsRequest",
    {
        "NameContains": StringShape("NameContains", max_length=63, pattern=r"[a-zA-Z0-9\-]+"),
        "Type": _EXPERIMENT_TYPE,
        "StatusEquals": StringShape("InferenceExperimentStatus", enum=EXPERIMENT_STATUSES),
        "CreationTimeAfter": TIMESTAMP,
        "CreationTimeBefore": TIMESTAMP,
        "LastModifiedTimeAfter": TIMESTAMP,
        "LastModifiedTimeBefore": TIMESTAMP,
        "SortBy": StringShape(
            "SortInferenceExperimentsBy", enum=("Name", "CreationTime", "Status")
        ),
        "SortOrder": StringShape("SortOrder", enum=("Ascending", "Descending")),
        "NextToken": StringShape("NextToken", max_length=8192, pattern=r".*"),
        "MaxResults": _MAX_RESULTS,
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
    "AddTags": ADD_TAGS,
    "ListTags": LIST_TAGS,
    "DeleteTags": DELETE_TAGS,
    "CreateInferenceExperiment": CREATE_INFERENCE_EXPERIMENT,
    "DescribeInferenceExperiment": _by_name(
        "DescribeInferenceExperimentRequest", "Name", _EXPERIMENT_NAME
    ),
    "ListInferenceExperiments": LIST_INFERENCE_EXPERIMENTS,
    "UpdateInferenceExperiment": UPDATE_INFERENCE_EXPERIMENT,
    "StartInferenceExperiment": _by_name(
        "StartInferenceExperimentRequest", "Name", _EXPERIMENT_NAME
    ),
    "StopInferenceExperiment": STOP_INFERENCE_EXPERIMENT,
    "DeleteInferenceExperiment": _by_name(
        "DeleteInferenceExperimentRequest", "Name", _EXPERIMENT_NAME
    ),
}
