"""The typed application keys under which the gateway's long-lived objects live."""

from __future__ import annotations

from aiohttp import web

from splitserve.capture.writer import CaptureWriter
from splitserve.cloudwatch.gateway import CloudWatchGateway
from splitserve.cluster.view import ReplicaView
from splitserve.config import Settings
from splitserve.control.service import ControlService
from splitserve.metrics.minutes import MinuteStore
from splitserve.runtime.registry import EndpointRegistry
from splitserve.runtime.service import InvocationService
from splitserve.wiring.fleet import FleetDeployer

SETTINGS = web.AppKey("settings", Settings)
CONTROL = web.AppKey("control", ControlService)
INVOCATIONS = web.AppKey("invocations", InvocationService)
ENDPOINTS = web.AppKey("endpoints", EndpointRegistry)
MINUTES = web.AppKey("minutes", MinuteStore)
CAPTURE = web.AppKey("capture", CaptureWriter)
FLEET = web.AppKey("fleet", FleetDeployer)
CLOUDWATCH = web.AppKey("cloudwatch", CloudWatchGateway)
#: This process as a replica (its id, whether it controls, its host peers): `SoleReplica` alone.
REPLICA = web.AppKey("replica", ReplicaView)
