"""Models and endpoint configurations: shapes, round trips and the exact error messages."""

from __future__ import annotations

import pytest

from splitserve.config import Settings
from splitserve.control.service import ControlService
from splitserve.errors import UnknownOperationException, ValidationException
from tests.control.conftest import (
    ACCOUNT_ARN,
    IMAGE,
    create_config,
    create_model,
    model_body,
    variant,
    write_artifact,
)
from tests.control.shapes import check_output


async def test_create_describe_delete_model(service: ControlService) -> None:
    created = await service.dispatch("CreateModel", {**model_body("My-Model"), "Tags": []})
    assert check_output("CreateModel", created) == {"ModelArn": f"{ACCOUNT_ARN}:model/my-model"}

    described = await service.dispatch("DescribeModel", {"ModelName": "My-Model"})
    parsed = check_output("DescribeModel", described)
    assert parsed["ModelName"] == "My-Model"
    assert parsed["ModelArn"] == f"{ACCOUNT_ARN}:model/my-model"
    assert parsed["PrimaryContainer"] == {
        "Image": IMAGE,
        "Environment": {"SAGEMAKER_REGION": "local"},
        "ModelDataUrl": "s3://bucket/model.tar.gz",
    }
    assert parsed["ExecutionRoleArn"].endswith(":role/SageMakerRole")
    assert isinstance(described["CreationTime"], float)

    # Names are identified like ARNs: another spelling finds the same model.
    assert (await service.dispatch("DescribeModel", {"ModelName": "my-model"}))["ModelName"] == (
        "My-Model"
    )
    assert (
        check_output(
            "DeleteModel", await service.dispatch("DeleteModel", {"ModelName": "my-model"})
        )
        == {}
    )
    with pytest.raises(ValidationException) as missing:
        await service.dispatch("DescribeModel", {"ModelName": "My-Model"})
    assert missing.value.message == f'Could not find model "{ACCOUNT_ARN}:model/my-model".'


async def test_model_errors_verbatim(service: ControlService) -> None:
    await create_model(service, "m")
    with pytest.raises(ValidationException) as duplicate:
        await create_model(service, "M")
    assert (
        duplicate.value.message == f'Cannot create already existing model "{ACCOUNT_ARN}:model/m".'
    )
    with pytest.raises(ValidationException) as missing:
        await service.dispatch("DeleteModel", {"ModelName": "nope"})
    assert missing.value.message == f'Could not find model "{ACCOUNT_ARN}:model/nope".'


async def test_model_with_one_container_in_containers_and_a_data_source(
    service: ControlService,
) -> None:
    container = {
        "Image": IMAGE,
        "ModelDataSource": {
            "S3DataSource": {
                "S3Uri": "s3://bucket/model-dir/",
                "S3DataType": "S3Prefix",
                "CompressionType": "None",
            }
        },
    }
    await service.dispatch("CreateModel", {"ModelName": "multi", "Containers": [container]})
    described = check_output(
        "DescribeModel", await service.dispatch("DescribeModel", {"ModelName": "multi"})
    )
    assert described["Containers"] == [container]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"ModelName": "m"}, "A model needs a container"),
        (
            {"ModelName": "m", "Containers": [{"Image": IMAGE}, {"Image": IMAGE}]},
            "splitserve runs one container per model; Containers has 2 entries.",
        ),
        (
            {"ModelName": "m", "PrimaryContainer": {"Image": IMAGE}, "Containers": []},
            "Give PrimaryContainer or Containers, not both.",
        ),
        (
            {"ModelName": "m", "PrimaryContainer": {"ModelDataUrl": "s3://b/k"}},
            "1 validation error detected: Value null at 'primaryContainer.image' failed to "
            "satisfy constraint: Member must not be null",
        ),
        (
            {"ModelName": "m", "PrimaryContainer": {"Image": IMAGE, "Mode": "MultiModel"}},
            "splitserve does not implement Mode MultiModel (at 'primaryContainer.mode')",
        ),
        (
            {"ModelName": "m", "PrimaryContainer": {"Image": IMAGE, "ModelPackageName": "p"}},
            "splitserve does not implement ModelPackageName (at "
            "'primaryContainer.modelPackageName')",
        ),
        (
            {
                "ModelName": "m",
                "PrimaryContainer": {"Image": IMAGE, "ModelDataUrl": "https://example.com/m.tgz"},
            },
            "https:// locations are not downloaded",
        ),
        (
            {
                "ModelName": "m",
                "PrimaryContainer": {"Image": IMAGE, "ModelDataUrl": "s3://bucket/../../etc"},
            },
            "1 validation error detected: Value 's3://bucket/../../etc' at "
            "'primaryContainer.modelDataUrl' failed to satisfy constraint: s3:// locations may "
            "not contain '.' or '..' segments",
        ),
        (
            {"ModelName": "bad_name", "PrimaryContainer": {"Image": IMAGE}},
            "1 validation error detected: Value 'bad_name' at 'modelName' failed to satisfy "
            "constraint: Member must satisfy regular expression pattern: "
            "[a-zA-Z0-9]([\\-a-zA-Z0-9]*[a-zA-Z0-9])?",
        ),
    ],
)
async def test_create_model_refusals(
    service: ControlService, body: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationException) as refused:
        await service.dispatch("CreateModel", body)
    assert message in refused.value.message


async def test_missing_artifact_is_not_an_error_at_create_model(
    service: ControlService, settings: Settings
) -> None:
    await create_model(service, "later", "s3://bucket/not-yet/model.tar.gz")
    store = settings.model_store.resolve()
    await create_model(service, "local-file", f"file://{store}/models/model.tar.gz")
    await create_model(service, "absolute", f"{store}/models/model.tar.gz")
    listed = await service.dispatch("ListModels", {"SortBy": "Name", "SortOrder": "Ascending"})
    assert [model["ModelName"] for model in listed["Models"]] == [  # type: ignore[attr-defined]
        "absolute",
        "later",
        "local-file",
    ]
    described = await service.dispatch("DescribeModel", {"ModelName": "later"})
    container = described["PrimaryContainer"]
    assert isinstance(container, dict)
    assert container["ModelDataUrl"] == "s3://bucket/not-yet/model.tar.gz"


async def test_endpoint_config_round_trips(service: ControlService, settings: Settings) -> None:
    write_artifact(settings)
    await create_model(service, "m1")
    await create_model(service, "m2")
    variants = [
        variant("A", "m1", weight=2),
        {
            **variant("B", "m2", weight=None, count=2, instance_type="ml.c5.large"),
            "RoutingConfig": {"RoutingStrategy": "RANDOM"},
            "VolumeSizeInGB": 4,
            "ContainerStartupHealthCheckTimeoutInSeconds": 120,
        },
    ]
    capture = {
        "EnableCapture": True,
        "InitialSamplingPercentage": 20,
        "DestinationS3Uri": "s3://capture/ab",
        "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
        "CaptureContentTypeHeader": {
            "CsvContentTypes": ["text/csv"],
            "JsonContentTypes": ["application/json"],
        },
    }
    created = await service.dispatch(
        "CreateEndpointConfig",
        {
            "EndpointConfigName": "ab-cfg",
            "ProductionVariants": variants,
            "DataCaptureConfig": capture,
            "Tags": [{"Key": "team", "Value": "ml"}],
            "KmsKeyId": "alias/local",
        },
    )
    assert check_output("CreateEndpointConfig", created) == {
        "EndpointConfigArn": f"{ACCOUNT_ARN}:endpoint-config/ab-cfg"
    }
    described = await service.dispatch("DescribeEndpointConfig", {"EndpointConfigName": "ab-cfg"})
    check_output("DescribeEndpointConfig", described)
    echoed = described["ProductionVariants"]
    assert isinstance(echoed, list)
    # As given, with InitialVariantWeight always a float (1.0 when it was left out).
    assert echoed[0] == {**variants[0], "InitialVariantWeight": 2.0}
    assert echoed[1] == {**variants[1], "InitialVariantWeight": 1.0}
    assert isinstance(echoed[0]["InitialVariantWeight"], float)
    assert described["DataCaptureConfig"] == capture
    assert described["KmsKeyId"] == "alias/local"
    assert "Tags" not in described

    # mlflow's "add" mode: Describe's variants plus a new one at weight 0, under a new name.
    echoed.append(variant("C", "m1", weight=0))
    described.pop("EndpointConfigArn")
    described.pop("CreationTime")
    await service.dispatch("CreateEndpointConfig", {**described, "EndpointConfigName": "ab-cfg-2"})
    again = await service.dispatch("DescribeEndpointConfig", {"EndpointConfigName": "ab-cfg-2"})
    assert again["ProductionVariants"] == echoed


async def test_endpoint_config_errors_verbatim(service: ControlService, settings: Settings) -> None:
    write_artifact(settings)
    await create_model(service, "m1")
    await create_config(service, "cfg", [variant("A", "m1")])
    with pytest.raises(ValidationException) as duplicate:
        await create_config(service, "CFG", [variant("A", "m1")])
    assert duplicate.value.message == (
        "Cannot create already existing endpoint configuration "
        f'"{ACCOUNT_ARN}:endpoint-config/cfg".'
    )
    with pytest.raises(ValidationException) as missing_model:
        await create_config(service, "cfg2", [variant("A", "m1"), variant("B", "Nope")])
    assert missing_model.value.message == f'Could not find model "{ACCOUNT_ARN}:model/nope".'
    with pytest.raises(ValidationException) as missing:
        await service.dispatch("DescribeEndpointConfig", {"EndpointConfigName": "Gone"})
    assert missing.value.message == (
        f'Could not find endpoint configuration "{ACCOUNT_ARN}:endpoint-config/gone".'
    )
    with pytest.raises(ValidationException):
        await service.dispatch("DeleteEndpointConfig", {"EndpointConfigName": "Gone"})
    deleted = await service.dispatch("DeleteEndpointConfig", {"EndpointConfigName": "cfg"})
    assert check_output("DeleteEndpointConfig", deleted) == {}


_NAME_PATTERN = "[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}"


@pytest.mark.parametrize(
    ("variants", "message"),
    [
        (
            [variant(f"V{i}", "m1") for i in range(11)],
            "1 validation error detected: Value '[",
        ),
        (
            [variant("A", "m1"), variant("A", "m1")],
            'The variant name "A" was non-unique within the request.',
        ),
        (
            [variant("A", "m1", instance_type="ml.fake.large")],
            "1 validation error detected: Value 'ml.fake.large' at "
            "'productionVariants.1.member.instanceType' failed to satisfy constraint: Member must "
            "satisfy enum value set: [ml.c5.large, ml.m5.large, ml.m5.xlarge, ml.t2.medium]",
        ),
        (
            [variant("A", "m1", weight=-1)],
            "1 validation error detected: Value '-1' at "
            "'productionVariants.1.member.initialVariantWeight' failed to satisfy constraint: "
            "Member must have value greater than or equal to 0",
        ),
        (
            [variant("A", "m1", weight=float("nan"))],
            "1 validation error detected: Value 'nan' at "
            "'productionVariants.1.member.initialVariantWeight' failed to satisfy constraint: "
            "Member must be a finite number",
        ),
        (
            [variant("A", "m1", count=0)],
            "1 validation error detected: Value '0' at "
            "'productionVariants.1.member.initialInstanceCount' failed to satisfy constraint: "
            "Member must have value greater than or equal to 1",
        ),
        (
            [{"VariantName": "A", "ModelName": "m1"}],
            "2 validation errors detected: Value null at 'productionVariants.1.member."
            "initialInstanceCount' failed to satisfy constraint: Member must not be null; Value "
            "null at 'productionVariants.1.member.instanceType' failed to satisfy constraint: "
            "Member must not be null",
        ),
        (
            [variant("bad_name!", "m1"), {**variant("B", "m1"), "InitialInstanceCount": "2"}],
            "2 validation errors detected: Value 'bad_name!' at "
            "'productionVariants.1.member.variantName' failed to satisfy constraint: Member must "
            f"satisfy regular expression pattern: {_NAME_PATTERN}; Value '2' at "
            "'productionVariants.2.member.initialInstanceCount' failed to satisfy constraint: "
            "Member must be of type integer",
        ),
        (
            [{**variant("A", "m1"), "ServerlessConfig": {"MemorySizeInMB": 2048}}],
            "splitserve does not implement ServerlessConfig (at "
            "'productionVariants.1.member.serverlessConfig')",
        ),
        (
            [{**variant("A", "m1"), "RoutingConfig": {"RoutingStrategy": "KV_AWARE"}}],
            "1 validation error detected: Value 'KV_AWARE' at "
            "'productionVariants.1.member.routingConfig.routingStrategy' failed to satisfy "
            "constraint: Member must satisfy enum value set: [LEAST_OUTSTANDING_REQUESTS, RANDOM]",
        ),
        (
            [variant("A", "m1", weight=1e308), variant("B", "m1", weight=1e308)],
            "The sum of the variant weights must be a finite number.",
        ),
    ],
)
async def test_endpoint_config_validation(
    service: ControlService,
    settings: Settings,
    variants: list[dict[str, object]],
    message: str,
) -> None:
    write_artifact(settings)
    await create_model(service, "m1")
    with pytest.raises(ValidationException) as refused:
        await create_config(service, "cfg", variants)
    assert refused.value.message.startswith(message)
    if message.endswith("Value '["):
        assert refused.value.message.endswith(
            "at 'productionVariants' failed to satisfy constraint: Member must have length less "
            "than or equal to 10"
        )


async def test_endpoint_name_too_long_reports_length_and_pattern(service: ControlService) -> None:
    with pytest.raises(ValidationException) as refused:
        await service.dispatch("DescribeEndpoint", {"EndpointName": "a" * 64})
    value = "a" * 64
    assert refused.value.message == (
        f"2 validation errors detected: Value '{value}' at 'endpointName' failed to satisfy "
        "constraint: Member must have length less than or equal to 63; "
        f"Value '{value}' at 'endpointName' failed to satisfy constraint: Member must satisfy "
        f"regular expression pattern: {_NAME_PATTERN}"
    )


async def test_data_capture_validation(service: ControlService, settings: Settings) -> None:
    write_artifact(settings)
    await create_model(service, "m1")
    capture: dict[str, object] = {
        "InitialSamplingPercentage": 101,
        "DestinationS3Uri": "s3://capture/x",
        "CaptureOptions": [{"CaptureMode": "Sideways"}],
    }
    with pytest.raises(ValidationException) as refused:
        await create_config(service, "cfg", [variant("A", "m1")], DataCaptureConfig=capture)
    assert refused.value.message == (
        "2 validation errors detected: Value '101' at "
        "'dataCaptureConfig.initialSamplingPercentage' failed to satisfy constraint: Member must "
        "have value less than or equal to 100; Value 'Sideways' at "
        "'dataCaptureConfig.captureOptions.1.member.captureMode' failed to satisfy constraint: "
        "Member must satisfy enum value set: [Input, Output, InputAndOutput]"
    )
    escaping = {**capture, "InitialSamplingPercentage": 5, "CaptureOptions": []}
    escaping["DestinationS3Uri"] = "s3://capture//etc"
    with pytest.raises(ValidationException) as refused:
        await create_config(service, "cfg", [variant("A", "m1")], DataCaptureConfig=escaping)
    assert "captureOptions" in refused.value.message
    escaping["CaptureOptions"] = [{"CaptureMode": "Input"}]
    with pytest.raises(ValidationException) as refused:
        await create_config(service, "cfg", [variant("A", "m1")], DataCaptureConfig=escaping)
    assert refused.value.message.endswith("s3:// keys may not start with '/'")


async def test_unknown_operation(service: ControlService) -> None:
    with pytest.raises(UnknownOperationException) as unknown:
        await service.dispatch("CreateTrainingJob", {})
    assert unknown.value.message == "Operation SageMaker.CreateTrainingJob is not supported."


async def test_unknown_members_are_dropped(service: ControlService) -> None:
    await service.dispatch("CreateModel", {**model_body("m"), "Surprise": {"x": 1}})
    described = await service.dispatch("DescribeModel", {"ModelName": "m"})
    assert "Surprise" not in described


async def test_serverless_variant_is_refused_by_name(
    service: ControlService, settings: Settings
) -> None:
    """A serverless variant has no instance type or count by design: the refusal names
    ServerlessConfig and says what to give instead, rather than asking for the missing count."""
    write_artifact(settings)
    await create_model(service, "m1")
    serverless: dict[str, object] = {
        "VariantName": "A",
        "ModelName": "m1",
        "ServerlessConfig": {"MemorySizeInMB": 2048, "MaxConcurrency": 5},
    }
    with pytest.raises(ValidationException) as refused:
        await create_config(service, "cfg", [serverless])
    assert refused.value.message == (
        "splitserve does not implement ServerlessConfig (at "
        "'productionVariants.1.member.serverlessConfig'): serverless variants are not implemented; "
        "give InstanceType and InitialInstanceCount instead. Leave ServerlessConfig out of the "
        "request."
    )


async def test_unsupported_members_are_named_in_full_sentences(
    service: ControlService, settings: Settings
) -> None:
    """Each unimplemented member gets a sentence of its own: the member, where it is, why, and
    what to do; "is not supported" never follows "does not implement"."""
    write_artifact(settings)
    await create_model(service, "m1")
    with pytest.raises(ValidationException) as refused:
        await service.dispatch(
            "CreateEndpointConfig",
            {
                "EndpointConfigName": "cfg",
                "ProductionVariants": [variant("A", "m1")],
                "AsyncInferenceConfig": {"OutputConfig": {"S3OutputPath": "s3://b/out"}},
                "ExplainerConfig": {},
            },
        )
    message = refused.value.message
    assert message == (
        "splitserve does not implement AsyncInferenceConfig (at 'asyncInferenceConfig'): "
        "asynchronous inference is not implemented; the endpoint answers InvokeEndpoint "
        "synchronously. Leave AsyncInferenceConfig out of the request. "
        "splitserve does not implement ExplainerConfig (at 'explainerConfig'): online "
        "explanations (SageMaker Clarify) are not implemented. Leave ExplainerConfig out of the "
        "request."
    )
    assert "is not supported" not in message
