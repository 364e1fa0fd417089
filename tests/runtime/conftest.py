"""Shared set-up of the runtime tests: they run on uvloop, the loop the gateway itself runs on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import uvloop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Run every async test under tests/runtime on a uvloop event loop (pytest-asyncio hook)."""
    return {"uvloop": uvloop.new_event_loop}
