"""The SageMaker control plane: models, endpoint configurations and endpoints.

`ControlService.dispatch(operation, body)` serves the operations below with SageMaker's request
and response shapes (docs/sagemaker-api.md, '2. Names, limits and operations') and its error
messages (docs/sagemaker-api.md, '1.1 Control plane'). It validates, writes every state to the
`Store` before it answers, and drives a `Deployer` from background tasks, one per endpoint at a
time.

The work is split by what it is about:
- `definitions.py`: models and endpoint configurations (Create, Describe, Delete, List);
- `endpoints.py`: the endpoint operations, which write desired state and start the work;
- `lifecycle.py`: the endpoint state machine, the background work that converges endpoints (and
  brings them back after a restart), with `guardrails.py` (UpdateEndpoint's guarded blue/green:
  steps, rolling batches, bakes and rollback) and `bakes.py` (the alarm-watching waits);
- `planning.py`: configurations to variants and deployment plans; `limits.py`: instance limits;
- `listing.py`: the List operations' filters and pages; `documents.py`: reading requests;
- `experiments.py`: the inference experiments (shadow tests), which `experiment_runner.py`
  carries out on their endpoints and `experiment_store.py` keeps;
- `tags.py`: AddTags, ListTags and DeleteTags (and the live `splitserve:failover` tag; the
  `splitserve:ramp` tag's ramp is `ramp.py`'s);
- `state.py`: the store on its own thread, the lock and the record changes;
- `validation.py` (with `shapes.py` and `schema.py`): request validation.

Names are identified like their ARNs, case-insensitively (ARNs lower-case them); responses keep the
spelling the client created them with.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from splitserve.config import Settings
from splitserve.control.definitions import DefinitionOperations
from splitserve.control.deployer import AlarmStates, Deployer
from splitserve.control.endpoints import EndpointOperations
from splitserve.control.experiment_runner import ExperimentRunner
from splitserve.control.experiment_store import ExperimentStore
from splitserve.control.experiments import ExperimentOperations
from splitserve.control.lifecycle import EndpointLifecycle
from splitserve.control.limits import InstanceLimits
from splitserve.control.paths import LocalPathResolver
from splitserve.control.planning import Planner
from splitserve.control.state import ControlState
from splitserve.control.store import Store
from splitserve.control.tags import TagOperations
from splitserve.errors import SerializationException, UnknownOperationException

#: The most steps `settle_experiments` takes (each experiment needs a handful per transition).
_SETTLE_ROUNDS = 50

_Handler = Callable[[Mapping[str, object]], Awaitable[dict[str, object]]]


class ControlService:
    """Serves the SageMaker control-plane operations over a Store and a Deployer."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        deployer: Deployer,
        *,
        instance_vcpus: Mapping[str, int],
        alarms: AlarmStates | None = None,
    ) -> None:
        """Build the service; nothing runs until `start()`.

        Args:
            settings: account (ARNs), model store (s3:// locations), default routing strategy,
                the instance limits (`settings.control`) and the host's CPUs.
            store: the open state store; the service closes it in `close()`.
            deployer: what runs the endpoints.
            instance_vcpus: the instance types the workers' catalog can run, with their vCPUs.
            alarms: the CloudWatch alarms' states, which a stepped UpdateEndpoint's bakes watch
                (AutoRollbackConfiguration); None: no alarm ever fires.
        """
        self._state = ControlState(store, settings.account)
        resolver = LocalPathResolver(settings.model_store, settings.allowed_artifact_paths)
        limits = InstanceLimits(
            instance_vcpus=dict(instance_vcpus),
            host_cpus=len(settings.workers.host_cpus()),
            max_instances_per_variant=settings.control.max_instances_per_variant,
            # On a cluster the host's CPUs are not the instances' (the placement checks room).
            max_vcpu_overcommit=(
                None
                if settings.placement.backend == "ray"
                else settings.control.max_vcpu_overcommit
            ),
        )
        planner = Planner(
            self._state,
            resolver,
            limits,
            settings.router.default_routing_strategy,
            nodes_fetch_s3=settings.placement.s3_endpoint_url is not None,
        )
        self._lifecycle = EndpointLifecycle(
            self._state,
            deployer,
            planner,
            alarms=alarms,
            alarm_poll_seconds=settings.control.alarm_poll_seconds,
        )
        definitions = DefinitionOperations(self._state, resolver, frozenset(instance_vcpus))
        endpoints = EndpointOperations(self._state, deployer, planner, self._lifecycle)
        tags = TagOperations(self._state, deployer, settings.account, self._lifecycle)
        self._experiment_runner = ExperimentRunner(
            self._state,
            ExperimentStore(store.database),
            create_endpoint_config=definitions.create_endpoint_config,
            update_endpoint=endpoints.update_endpoint,
            update_weights=endpoints.update_endpoint_weights_and_capacities,
            check_seconds=settings.control.experiment_check_seconds,
        )
        experiments = ExperimentOperations(
            self._state,
            self._experiment_runner,
            resolver,
            frozenset(instance_vcpus),
            settings.account,
        )
        self._endpoints = endpoints
        self._closed = False
        self._operations: dict[str, _Handler] = {
            "CreateModel": definitions.create_model,
            "DescribeModel": definitions.describe_model,
            "DeleteModel": definitions.delete_model,
            "ListModels": definitions.list_models,
            "CreateEndpointConfig": definitions.create_endpoint_config,
            "DescribeEndpointConfig": definitions.describe_endpoint_config,
            "DeleteEndpointConfig": definitions.delete_endpoint_config,
            "ListEndpointConfigs": definitions.list_endpoint_configs,
            "CreateEndpoint": endpoints.create_endpoint,
            "DescribeEndpoint": endpoints.describe_endpoint,
            "ListEndpoints": endpoints.list_endpoints,
            "UpdateEndpoint": endpoints.update_endpoint,
            "UpdateEndpointWeightsAndCapacities": endpoints.update_endpoint_weights_and_capacities,
            "DeleteEndpoint": endpoints.delete_endpoint,
            "AddTags": tags.add_tags,
            "ListTags": tags.list_tags,
            "DeleteTags": tags.delete_tags,
            "CreateInferenceExperiment": experiments.create_inference_experiment,
            "DescribeInferenceExperiment": experiments.describe_inference_experiment,
            "ListInferenceExperiments": experiments.list_inference_experiments,
            "UpdateInferenceExperiment": experiments.update_inference_experiment,
            "StartInferenceExperiment": experiments.start_inference_experiment,
            "StopInferenceExperiment": experiments.stop_inference_experiment,
            "DeleteInferenceExperiment": experiments.delete_inference_experiment,
        }

    async def start(self, *, takeover: bool = False) -> None:
        """Bring back the endpoints the store remembers (deployments continue in the background);
        `takeover`: as `EndpointLifecycle.start` takes it (a replica took control over)."""
        await self._lifecycle.start(takeover=takeover)
        # After the endpoints: an experiment's step reads them as the lifecycle restored them.
        await self._experiment_runner.start()

    async def close(self) -> None:
        """Cancel the background tasks, wait for them, and close the store."""
        if self._closed:
            return
        self._closed = True
        await self._experiment_runner.cancel()
        await self._lifecycle.cancel()
        await self._state.close()

    async def settle(self) -> None:
        """Wait until no background task runs (tests; an orderly stop that lets deployments end)."""
        await self._lifecycle.settle()

    async def settle_experiments(self) -> None:
        """Step the inference experiments and wait for the endpoints they change, until no
        experiment moves any more (tests: what the background runner would reach in time)."""
        runner = self._experiment_runner
        for _ in range(_SETTLE_ROUNDS):
            steps = runner.steps
            await self._lifecycle.settle()
            await runner.reconcile_all()
            # The background loop steps too: settled only when a whole round moved nothing.
            if runner.steps == steps:
                return

    async def weight_history(self, endpoint_name: str) -> dict[str, object]:
        """The endpoint's weight changes (splitserve's own, not a SageMaker operation; see
        `EndpointOperations.weight_history`).

        Raises:
            ValidationException: `Could not find endpoint` when there is no such endpoint.
        """
        return await self._endpoints.weight_history(endpoint_name)

    async def dispatch(self, operation: str, body: dict[str, object]) -> dict[str, object]:
        """Serve one operation (the X-Amz-Target after `SageMaker.`) and return its output.

        Raises:
            UnknownOperationException: the operation is not one this gateway serves.
            SerializationException: the body is not a JSON object.
            ValidationException, ResourceLimitExceeded: as each operation documents.
        """
        handler = self._operations.get(operation)
        if handler is None:
            raise UnknownOperationException(f"Operation SageMaker.{operation} is not supported.")
        if not isinstance(body, dict):
            raise SerializationException("The request body must be a JSON object.")
        return await handler(body)
