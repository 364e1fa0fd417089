"""`CloudWatchService`: every CloudWatch operation the gateway serves, by name.

No aiohttp here: `dispatch` takes an operation and its checked parameters (`protocols.decode`)
and returns the output members; the route encodes them in the request's protocol.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from splitserve.errors import UnknownOperationException

__all__ = ["CloudWatchService", "Operation"]

#: One operation: checked parameters -> output members.
Operation = Callable[[dict[str, object]], Awaitable[dict[str, object]]]


class CloudWatchService:
    """Dispatches CloudWatch operations to the parts that serve them."""

    def __init__(self, *tables: dict[str, Operation]) -> None:
        """A service serving the operations of every table (name -> handler)."""
        self._operations: dict[str, Operation] = {}
        for table in tables:
            self._operations.update(table)

    @property
    def operations(self) -> frozenset[str]:
        """The names of the operations served."""
        return frozenset(self._operations)

    async def dispatch(self, operation: str, params: dict[str, object]) -> dict[str, object]:
        """Serve `operation` with `params`.

        Raises:
            UnknownOperationException: an operation this service does not serve.
            CloudWatchError: what the operation refuses.
        """
        handler = self._operations.get(operation)
        if handler is None:
            raise UnknownOperationException(
                f"Operation {operation} is not supported by splitserve's CloudWatch API."
            )
        return await handler(params)
