"""The operations on models and endpoint configurations: Create, Describe, Delete and List.

They store what an endpoint is made of; nothing runs until CreateEndpoint or UpdateEndpoint
deploys a configuration (`endpoints.py`). A model's data location and a configuration's capture
destination are checked here (they must resolve to permitted local paths), but the model data
need not exist until a deployment: SageMaker checks it then, and so does splitserve.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence

from splitserve.control.documents import (
    check_container,
    mappings,
    model_data_location,
    not_found,
    optional_mapping,
    single_container,
    tag_pairs,
    text,
)
from splitserve.control.listing import Listed, paginate
from splitserve.control.models import EndpointConfigRecord, ModelRecord, ResourceKind
from splitserve.control.paths import LocalPathResolver
from splitserve.control.state import ControlState
from splitserve.control.validation import (
    check_metrics_config,
    check_production_variants,
    check_unique_variant_names,
    validate_request,
)
from splitserve.errors import ValidationException


class DefinitionOperations:
    """Serves the model and endpoint configuration operations.

    Args:
        state: the store and its lookups.
        resolver: checks model data and capture locations.
        instance_types: the instance types a variant may name.
    """

    def __init__(
        self, state: ControlState, resolver: LocalPathResolver, instance_types: frozenset[str]
    ) -> None:
        self._state = state
        self._resolver = resolver
        self._instance_types = instance_types

    async def create_model(self, body: Mapping[str, object]) -> dict[str, object]:
        """CreateModel: store a model with one container -> {ModelArn}.

        Its model data location is checked (it must resolve inside the model store when it is an
        s3:// location) but need not exist yet: that is checked when an endpoint deploys it.
        """
        request = validate_request("CreateModel", body)
        name = text(request, "ModelName")
        container, where = single_container(request)
        check_container(container, where)
        location, field = model_data_location(container, where)
        if location is not None:
            await asyncio.to_thread(self._resolver.resolve_model_data, location, field=field)
        document = {
            key: value for key, value in request.items() if key not in ("ModelName", "Tags")
        }
        record = ModelRecord(name, time.time(), document, tag_pairs(request.get("Tags")))
        arn = self._state.arn(ResourceKind.MODEL, name)
        if not await self._state.run(self._state.store.insert_model, record):
            raise ValidationException(f'Cannot create already existing model "{arn}".')
        return {"ModelArn": arn}

    async def describe_model(self, body: Mapping[str, object]) -> dict[str, object]:
        """DescribeModel -> the model as created (name, ARN, creation time, container, ...)."""
        request = validate_request("DescribeModel", body)
        record = await self._state.model(text(request, "ModelName"))
        return {
            "ModelName": record.name,
            "ModelArn": self._state.arn(ResourceKind.MODEL, record.name),
            "CreationTime": record.creation_time,
            **record.document,
        }

    async def delete_model(self, body: Mapping[str, object]) -> dict[str, object]:
        """DeleteModel -> {}. Allowed while endpoints use the model (they keep running)."""
        request = validate_request("DeleteModel", body)
        name = text(request, "ModelName")
        if not await self._state.run(self._state.store.delete_model, name):
            raise not_found(ResourceKind.MODEL, self._state.arn(ResourceKind.MODEL, name))
        return {}

    async def list_models(self, body: Mapping[str, object]) -> dict[str, object]:
        """ListModels -> {Models: [{ModelName, ModelArn, CreationTime}], NextToken?}."""
        request = validate_request("ListModels", body)
        records = await self._state.run(self._state.store.list_models)
        return paginate(self._listed(records, ResourceKind.MODEL, "Model"), request, "Models")

    # --- endpoint configurations ------------------------------------------------------------------

    async def create_endpoint_config(self, body: Mapping[str, object]) -> dict[str, object]:
        """CreateEndpointConfig -> {EndpointConfigArn}.

        Accepts everything DescribeEndpointConfig echoes. ShadowProductionVariants take the
        production variants' member shape and checks; SageMaker allows one production and one
        shadow variant with them, splitserve several production variants and up to 10 shadows
        (docs/sagemaker-api.md, "Shadow variants").
        """
        request = validate_request("CreateEndpointConfig", body)
        name = text(request, "EndpointConfigName")
        variants = mappings(request.get("ProductionVariants"))
        check_production_variants(
            variants, path="productionVariants", instance_types=self._instance_types
        )
        shadow_variants = mappings(request.get("ShadowProductionVariants"))
        if shadow_variants:
            check_production_variants(
                shadow_variants,
                path="shadowProductionVariants",
                instance_types=self._instance_types,
            )
            check_unique_variant_names(
                variant.get("VariantName") for variant in [*variants, *shadow_variants]
            )
        check_metrics_config(optional_mapping(request.get("MetricsConfig")))
        capture = optional_mapping(request.get("DataCaptureConfig"))
        if capture is not None:
            await asyncio.to_thread(
                self._resolver.resolve,
                text(capture, "DestinationS3Uri"),
                field="dataCaptureConfig.destinationS3Uri",
            )
        for variant in [*variants, *shadow_variants]:
            variant.setdefault("InitialVariantWeight", 1.0)
        arn = self._state.arn(ResourceKind.ENDPOINT_CONFIG, name)
        if await self._state.run(self._state.store.get_endpoint_config, name) is not None:
            raise ValidationException(
                f'Cannot create already existing endpoint configuration "{arn}".'
            )
        for variant in [*variants, *shadow_variants]:
            await self._state.model(text(variant, "ModelName"))
        document = {
            key: value
            for key, value in request.items()
            if key not in ("EndpointConfigName", "Tags")
        }
        record = EndpointConfigRecord(name, time.time(), document, tag_pairs(request.get("Tags")))
        if not await self._state.run(self._state.store.insert_endpoint_config, record):
            raise ValidationException(
                f'Cannot create already existing endpoint configuration "{arn}".'
            )
        return {"EndpointConfigArn": arn}

    async def describe_endpoint_config(self, body: Mapping[str, object]) -> dict[str, object]:
        """DescribeEndpointConfig -> the configuration as created (with InitialVariantWeight)."""
        request = validate_request("DescribeEndpointConfig", body)
        record = await self._state.endpoint_config(text(request, "EndpointConfigName"))
        return {
            "EndpointConfigName": record.name,
            "EndpointConfigArn": self._state.arn(ResourceKind.ENDPOINT_CONFIG, record.name),
            "CreationTime": record.creation_time,
            **record.document,
        }

    async def delete_endpoint_config(self, body: Mapping[str, object]) -> dict[str, object]:
        """DeleteEndpointConfig -> {}. Allowed while endpoints use it (they keep their copy)."""
        request = validate_request("DeleteEndpointConfig", body)
        name = text(request, "EndpointConfigName")
        if not await self._state.run(self._state.store.delete_endpoint_config, name):
            raise not_found(
                ResourceKind.ENDPOINT_CONFIG, self._state.arn(ResourceKind.ENDPOINT_CONFIG, name)
            )
        return {}

    async def list_endpoint_configs(self, body: Mapping[str, object]) -> dict[str, object]:
        """ListEndpointConfigs -> {EndpointConfigs: [{Name, Arn, CreationTime}], NextToken?}."""
        request = validate_request("ListEndpointConfigs", body)
        records = await self._state.run(self._state.store.list_endpoint_configs)
        rows = self._listed(records, ResourceKind.ENDPOINT_CONFIG, "EndpointConfig")
        return paginate(rows, request, "EndpointConfigs")

    def _listed(
        self,
        records: Sequence[ModelRecord] | Sequence[EndpointConfigRecord],
        kind: ResourceKind,
        member: str,
    ) -> list[Listed]:
        """The List rows of `records`: `<member>Name`, `<member>Arn` and CreationTime each, sorted
        and filtered by name and creation time."""
        return [
            Listed(
                record.name,
                record.creation_time,
                record.creation_time,
                "",
                {
                    f"{member}Name": record.name,
                    f"{member}Arn": self._state.arn(kind, record.name),
                    "CreationTime": record.creation_time,
                },
            )
            for record in records
        ]
