"""DescribeEndpoint's answer, built from the stored endpoint and the deployer's instance list."""

from __future__ import annotations

from collections.abc import Mapping

from splitserve.control.models import DeployedVariant, EndpointRecord


def describe_endpoint(
    record: EndpointRecord, arn: str, instances: Mapping[str, list[dict[str, object]]]
) -> dict[str, object]:
    """DescribeEndpointOutput for `record`, with splitserve's `Instances` on each variant.

    Args:
        record: the stored endpoint.
        arn: its ARN.
        instances: the deployer's instance details, by variant name.
    """
    response: dict[str, object] = {
        "EndpointName": record.name,
        "EndpointArn": arn,
        "EndpointConfigName": record.endpoint_config_name,
        "ProductionVariants": [
            _variant_summary(variant, instances.get(variant.variant_name))
            for variant in record.variants
            if not variant.shadow
        ],
        "EndpointStatus": record.status.value,
        "CreationTime": record.creation_time,
        "LastModifiedTime": record.last_modified_time,
    }
    shadows = [variant for variant in record.variants if variant.shadow]
    if shadows:
        # SageMaker's ShadowProductionVariants: ProductionVariantSummary members, the same as
        # production variants' (docs/sagemaker-api.md, "Shadow variants").
        response["ShadowProductionVariants"] = [
            _variant_summary(variant, instances.get(variant.variant_name)) for variant in shadows
        ]
    if record.data_capture is not None:
        response["DataCaptureConfig"] = _data_capture_summary(record.data_capture)
    if record.failure_reason:
        response["FailureReason"] = record.failure_reason
    if record.deployment_config is not None:
        response["LastDeploymentConfig"] = dict(record.deployment_config)
    if record.pending is not None:
        pending: dict[str, object] = {
            "EndpointConfigName": record.pending.endpoint_config_name,
            "ProductionVariants": [
                {**_variant_summary(variant, None), "InstanceType": variant.instance_type}
                for variant in record.pending.variants
                if not variant.shadow
            ],
            "StartTime": record.pending.start_time,
        }
        pending_shadows = [
            {**_variant_summary(variant, None), "InstanceType": variant.instance_type}
            for variant in record.pending.variants
            if variant.shadow
        ]
        if pending_shadows:
            pending["ShadowProductionVariants"] = pending_shadows
        response["PendingDeploymentSummary"] = pending
    return response


def _variant_summary(
    variant: DeployedVariant, instances: list[dict[str, object]] | None
) -> dict[str, object]:
    """A ProductionVariantSummary plus splitserve's `Instances` (botocore ignores extras)."""
    summary: dict[str, object] = {"VariantName": variant.variant_name}
    if variant.deployed_time is not None:
        # No registry to resolve a digest from: the resolved image is the image as specified.
        summary["DeployedImages"] = [
            {
                "SpecifiedImage": variant.image,
                "ResolvedImage": variant.image,
                "ResolutionTime": variant.deployed_time,
            }
        ]
    summary["CurrentWeight"] = variant.current_weight
    summary["DesiredWeight"] = variant.desired_weight
    summary["CurrentInstanceCount"] = variant.current_instance_count
    summary["DesiredInstanceCount"] = variant.desired_instance_count
    if variant.status is not None:
        summary["VariantStatus"] = [
            {
                "Status": variant.status.status,
                "StatusMessage": variant.status.message,
                "StartTime": variant.status.start_time,
            }
        ]
    if variant.routing_strategy is not None:
        summary["RoutingConfig"] = {"RoutingStrategy": variant.routing_strategy}
    if instances is not None:
        summary["Instances"] = instances
    return summary


def _data_capture_summary(document: Mapping[str, object]) -> dict[str, object]:
    """DescribeEndpoint's DataCaptureConfigSummary. KmsKeyId appears only when configured, as in
    AWS's own responses (the model marks it required, but AWS omits it when there is none)."""
    enabled = document.get("EnableCapture") is not False
    summary: dict[str, object] = {
        "EnableCapture": enabled,
        "CaptureStatus": "Started" if enabled else "Stopped",
        "CurrentSamplingPercentage": document.get("InitialSamplingPercentage"),
        "DestinationS3Uri": document.get("DestinationS3Uri"),
    }
    if isinstance(document.get("KmsKeyId"), str):
        summary["KmsKeyId"] = document["KmsKeyId"]
    return summary
