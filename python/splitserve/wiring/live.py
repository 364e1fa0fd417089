"""`LiveParts`: what every `LiveEndpoint` is built from, on the controller and on any replica.

The controller's fleet deployer (`wiring.fleet`) builds its live endpoints from the fleets it runs;
a replica that is not the controller builds them from the routing documents in the store
(`wiring.follower`). Both take the per-instance connection pool, the per-variant recorders, the
log stream name and the data-capture sink from here, so an endpoint routes, counts and captures
the same way whichever replica serves the request.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

from splitserve.capture.spec import DataCapture
from splitserve.capture.writer import CaptureSink, CaptureWriter
from splitserve.config import Settings
from splitserve.contract.upstream import UpstreamAddress, UpstreamPool
from splitserve.metrics.minutes import MinuteStore
from splitserve.metrics.recorder import VariantRecorder

__all__ = ["LiveParts", "capture_document", "data_capture"]

log = logging.getLogger(__name__)


class LiveParts:
    """Builds the parts of live endpoints for one gateway process."""

    def __init__(
        self, settings: Settings, minutes: MinuteStore, capture: CaptureWriter | None
    ) -> None:
        """Parts counting into `minutes` and capturing through `capture` (None: no capture)."""
        self._settings = settings
        self.minutes = minutes
        self.capture = capture

    def pool(self, address: UpstreamAddress, pipeline_depth: int = 1) -> UpstreamPool:
        """A keep-alive connection pool to the instance at `address`, pipelining up to
        `pipeline_depth` requests on a connection (its image's: `InstanceInfo.pipeline_depth`)."""
        forwarding = self._settings.forwarding
        return UpstreamPool(
            address,
            max_idle=forwarding.max_idle_connections,
            max_connections=forwarding.max_connections,
            connect_timeout=forwarding.connect_timeout_seconds,
            max_response_bytes=forwarding.max_response_bytes,
            pipeline_depth=pipeline_depth,
        )

    def recorders(self, endpoint_name: str, variants: Iterable[str]) -> dict[str, VariantRecorder]:
        """Each variant's recorder (its Prometheus series and minute ring)."""
        return {
            variant: VariantRecorder.resolve(
                endpoint_name, variant, self.minutes.variant(endpoint_name, variant)
            )
            for variant in variants
        }

    def log_stream_arn(self, endpoint_name: str) -> str:
        """What ModelError answers name as the endpoint's log stream."""
        account = self._settings.account
        return (
            f"arn:aws:logs:{account.region}:{account.account_id}:log-group:"
            f"/aws/sagemaker/Endpoints/{endpoint_name}"
        )

    def capture_sink(
        self, endpoint_name: str, variants: Iterable[str], capture: DataCapture | None
    ) -> CaptureSink | None:
        """The data-capture sink of one generation, or None when it captures nothing. The
        destination was resolved (and refused if it escapes the model store) by the control
        plane's LocalPathResolver when it made the plan."""
        if capture is None:
            return None
        if self.capture is None:
            if capture.enable_capture:
                log.warning("endpoint %s: no capture writer, nothing captured", endpoint_name)
            return None
        return self.capture.sink(endpoint_name, list(variants), capture)


def capture_document(capture: DataCapture) -> dict[str, object]:
    """`capture` as JSON values, for a routing document."""
    document = dataclasses.asdict(capture)
    document["destination"] = str(capture.destination)
    document["csv_content_types"] = list(capture.csv_content_types)
    document["json_content_types"] = list(capture.json_content_types)
    return document


def data_capture(document: Mapping[str, object]) -> DataCapture:
    """The `DataCapture` a routing document holds (`capture_document`'s inverse).

    Raises:
        ValueError: `document` is not one `capture_document` wrote.
    """
    try:
        fields = dict(document)
        fields["destination"] = Path(str(fields["destination"]))
        fields["csv_content_types"] = tuple(str(t) for t in fields["csv_content_types"])  # type: ignore[attr-defined]
        fields["json_content_types"] = tuple(str(t) for t in fields["json_content_types"])  # type: ignore[attr-defined]
        return DataCapture(**fields)  # type: ignore[arg-type]
    except (KeyError, TypeError) as error:
        raise ValueError(f"not a DataCaptureConfig document: {error}") from None
