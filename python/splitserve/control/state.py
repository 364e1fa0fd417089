"""The control plane's access to its store: one thread for SQLite, one lock, and the lookups and
record changes every operation and background task shares."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import ParamSpec, TypeVar

from splitserve.config import MAX_FAILURE_REASON, AccountSettings
from splitserve.control.documents import not_found
from splitserve.control.models import (
    EndpointConfigRecord,
    EndpointRecord,
    EndpointStatus,
    ModelRecord,
    ResourceKind,
)
from splitserve.control.store import Store, WeightChange

log = logging.getLogger(__name__)

_P = ParamSpec("_P")
_R = TypeVar("_R")


class ControlState:
    """The store behind the control plane, reached off the event loop.

    Attributes:
        store: the open state store (closed by `close()`).
        lock: held by every read-check-write of an endpoint, so checks and writes of concurrent
            calls and background tasks do not interleave.
    """

    def __init__(self, store: Store, account: AccountSettings) -> None:
        """Wrap `store`; `account` names the ARNs."""
        self.store = store
        self.lock = asyncio.Lock()
        self._account = account
        # One thread for every SQLite call: the connection is never used by two threads at once.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="splitserve-store")

    async def run(self, function: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
        """Run a blocking store call on the store's own thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, functools.partial(function, *args, **kwargs)
        )

    async def close(self) -> None:
        """Close the store (on its thread) and let the thread go."""
        await self.run(self.store.close)
        self._executor.shutdown(wait=False)

    def arn(self, kind: ResourceKind, name: str) -> str:
        """The ARN of the resource `name` of `kind` in this gateway's account."""
        return kind.arn(self._account, name)

    async def model(self, name: str) -> ModelRecord:
        """The model called `name`; `Could not find model` if there is none."""
        record = await self.run(self.store.get_model, name)
        if record is None:
            raise not_found(ResourceKind.MODEL, self.arn(ResourceKind.MODEL, name))
        return record

    async def endpoint_config(self, name: str) -> EndpointConfigRecord:
        """The endpoint configuration called `name`; `Could not find` if there is none."""
        record = await self.run(self.store.get_endpoint_config, name)
        if record is None:
            raise not_found(
                ResourceKind.ENDPOINT_CONFIG, self.arn(ResourceKind.ENDPOINT_CONFIG, name)
            )
        return record

    async def endpoint(self, name: str) -> EndpointRecord:
        """The endpoint called `name`; `Could not find endpoint` if there is none."""
        record = await self.run(self.store.get_endpoint, name)
        if record is None:
            raise not_found(ResourceKind.ENDPOINT, self.arn(ResourceKind.ENDPOINT, name))
        return record

    async def record_weights(
        self, endpoint_name: str, cause: str, weights: Mapping[str, float], at: float
    ) -> None:
        """Append the weights the router was just given (at `at`, by `cause`; see
        `WeightChange`) to the endpoint's history.

        A failure to write is logged, not raised: the router already has the weights, so the
        operation that gave them has happened; only the history (evaluate's SRM check) lacks it.
        """
        change = WeightChange(at, cause, tuple(weights.items()))
        try:
            await self.run(self.store.add_weight_change, endpoint_name, change)
        except Exception:
            log.exception(
                "the weight change (%s) of endpoint %s was not recorded", cause, endpoint_name
            )

    async def transition(
        self, endpoint_name: str, change: Callable[[EndpointRecord], EndpointRecord]
    ) -> None:
        """Apply `change` to the stored endpoint and write it back (under the lock)."""
        async with self.lock:
            current = await self.run(self.store.get_endpoint, endpoint_name)
            if current is not None:
                await self.run(self.store.put_endpoint, change(current))

    async def set_failed(self, endpoint_name: str, reason: str) -> str | None:
        """The endpoint is Failed with FailureReason `reason` (takes the lock); the FailureReason
        as stored, or None when the endpoint no longer exists."""
        async with self.lock:
            return await self.set_failed_locked(endpoint_name, reason)

    async def set_failed_locked(self, endpoint_name: str, reason: str) -> str | None:
        """`set_failed` for a caller that holds the lock already."""
        current = await self.run(self.store.get_endpoint, endpoint_name)
        if current is None:
            return None
        failed = replace(
            current,
            status=EndpointStatus.FAILED,
            failure_reason=reason[:MAX_FAILURE_REASON],
            last_modified_time=time.time(),
            pending=None,
            variants=tuple(
                replace(variant, status=None, current_instance_count=0)
                for variant in current.variants
            ),
        )
        await self.run(self.store.put_endpoint, failed)
        return failed.failure_reason
