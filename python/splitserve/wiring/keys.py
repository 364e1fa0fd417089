"""The typed application keys under which the gateway's long-lived objects live."""

from __future__ import annotations

from aiohttp import web

from splitserve.capture.writer import CaptureWriter
from splitserve.config import Settings
from splitserve.control.service import ControlService
from splitserve.runtime.service import InvocationService
from splitserve.metrics.minutes import MinuteStore

SETTINGS = web.AppKey("settings", Settings)
CONTROL = web.AppKey("control", ControlService)
INVOCATIONS = web.AppKey("invocations", InvocationService)
MINUTES = web.AppKey("minutes", MinuteStore)
CAPTURE = web.AppKey("capture", CaptureWriter)
