"""The typed application keys under which the gateway's long-lived objects live."""

from __future__ import annotations

from aiohttp import web

from splitserve.capture.writer import CaptureWriter
from splitserve.cloudwatch.gateway import CloudWatchGateway
from splitserve.cluster.view import ReplicaView
from splitserve.config import Settings
from splitserve.database import Database
from splitserve.metrics.minutes import MinuteStore
from splitserve.metrics.spool import MetricsSpool
from splitserve.online.index import InferenceIndex
from splitserve.online.service import FeedbackService
from splitserve.runtime.registry import EndpointRegistry
from splitserve.runtime.service import InvocationService
from splitserve.wiring.forwarder import ControllerForwarder
from splitserve.wiring.replicas import ControllerSlot

SETTINGS = web.AppKey("settings", Settings)
#: The control service and fleet deployer, once this process controls the endpoints.
CONTROLLER = web.AppKey("controller", ControllerSlot)
INVOCATIONS = web.AppKey("invocations", InvocationService)
ENDPOINTS = web.AppKey("endpoints", EndpointRegistry)
MINUTES = web.AppKey("minutes", MinuteStore)
CAPTURE = web.AppKey("capture", CaptureWriter)
#: Among replicas: passes control-plane requests to the controller.
FORWARDER = web.AppKey("forwarder", ControllerForwarder)
#: Among replicas: this process's internal listener (`http://address:port`), bound by the edge.
INTERNAL_URL = web.AppKey("internal_url", str)
CLOUDWATCH = web.AppKey("cloudwatch", CloudWatchGateway)
#: This process as a replica (its id, whether it controls, its host peers): `SoleReplica` alone.
REPLICA = web.AppKey("replica", ReplicaView)
#: Among replicas on one host: the host's record of each replica's counts (`metrics.spool`).
METRICS_SPOOL = web.AppKey("metrics_spool", MetricsSpool)
#: Every answered invocation on its way to the state database, for feedback (absent when the
#: index is turned off).
FEEDBACK_INDEX = web.AppKey("feedback_index", InferenceIndex)
#: Over PostgreSQL: the connection pool the control store, CloudWatch and feedback share (the
#: replicas' heartbeats and lease keep one of their own, so they never queue behind the others'
#: work); absent over SQLite, where each part keeps a connection of its own.
SHARED_DATABASE = web.AppKey("shared_database", Database)
#: Feedback and the live experiments, once the state database is open (`wiring.online`).
FEEDBACK = web.AppKey("feedback", FeedbackService)
