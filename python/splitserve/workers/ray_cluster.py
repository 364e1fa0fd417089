"""Joining the Ray cluster as its driver (`serve --placement ray`; README, "Running on a
cluster"). Imported, with Ray, only when that placement is asked for."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import threading

import ray

from splitserve.config import PlacementSettings
from splitserve.errors import DeploymentError


def connect(settings: PlacementSettings) -> None:
    """Join the Ray cluster as a driver in the configured namespace. Blocking.

    Raises:
        DeploymentError: the cluster cannot be reached.
    """
    if ray.is_initialized():
        return
    _check_reachable(settings)
    try:
        ray.init(
            address=settings.ray_address,
            namespace=settings.ray_namespace,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise DeploymentError(
            f"could not join the Ray cluster at {settings.ray_address}: {error}"
        ) from error


def _check_reachable(settings: PlacementSettings) -> None:
    """Refuse a HOST:PORT nothing answers on within the connect timeout (`ray.init` would wait
    for it without end)."""
    address = settings.ray_address
    host, colon, port = address.rpartition(":")
    if not colon or not port.isdigit() or "://" in address:
        return  # "auto", or a client URL: ray.init reports those itself
    try:
        with socket.create_connection(
            (host.strip("[]"), int(port)), timeout=settings.connect_timeout_seconds
        ):
            pass
    except OSError as error:
        raise DeploymentError(
            f"could not join the Ray cluster at {address}: nothing answers there within "
            f"{settings.connect_timeout_seconds:g} s ({error.strerror or error}); start its head "
            "(ray start --head) or give --ray-address HOST:PORT of a running one"
        ) from None


async def join(settings: PlacementSettings) -> None:
    """`connect` (from a thread), then give the gateway its own SIGTERM and SIGINT handling
    back: Ray's core installs a handler that ends the process at once, which would skip the
    gateway's drain and orderly stop.

    Raises:
        DeploymentError: the cluster cannot be reached.
    """
    signals = (signal.SIGTERM, signal.SIGINT)
    saved = {number: signal.getsignal(number) for number in signals}
    await asyncio.to_thread(connect, settings)
    if threading.current_thread() is threading.main_thread():
        for number, handler in saved.items():
            if handler is not None:
                signal.signal(number, handler)
