"""Inference experiments (shadow tests) as the state database keeps them.

An experiment is one row of `inference_experiments`: its name's key, and the whole record as a
JSON document. The table is the experiments' own (created if missing, like CloudWatch's tables),
so the control plane's schema version does not move for it. Every write is one write
transaction, committed before the method returns, so an experiment's status survives a restart
of the gateway and a change of controller (the new controller's runner picks it up where the
record says it was).

Every method blocks: the control plane calls them on its store thread (`ControlState.run`).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from splitserve.control.models import Tags, name_key
from splitserve.control.statefile import StateFileError
from splitserve.database import Database

__all__ = ["ExperimentRecord", "ExperimentStatus", "ExperimentStore", "StopRequest"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS inference_experiments (
    name_key TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    document TEXT NOT NULL
);
"""


class ExperimentStatus(enum.StrEnum):
    """SageMaker's InferenceExperimentStatus values."""

    CREATING = "Creating"
    CREATED = "Created"
    UPDATING = "Updating"
    RUNNING = "Running"
    STARTING = "Starting"
    STOPPING = "Stopping"
    COMPLETED = "Completed"
    CANCELLED = "Cancelled"


#: An experiment in one of these is over: it never changes the endpoint again.
FINISHED_STATUSES = frozenset({ExperimentStatus.COMPLETED, ExperimentStatus.CANCELLED})


@dataclass(frozen=True)
class StopRequest:
    """What StopInferenceExperiment (or the schedule's end) asked for.

    Attributes:
        actions: variant name -> Promote, Remove or Retain.
        desired_variants: DesiredModelVariants as validated (infrastructure after the stop).
        final_status: Completed or Cancelled, once the endpoint has what `actions` ask.
        reason: the StatusReason to show.
    """

    actions: Mapping[str, str]
    desired_variants: tuple[Mapping[str, object], ...]
    final_status: ExperimentStatus
    reason: str | None


@dataclass(frozen=True)
class ExperimentRecord:
    """One inference experiment: what the client asked (desired state) and where it is (status).

    Attributes:
        model_variants: the validated ModelVariants (ModelName, VariantName, InfrastructureConfig).
        shadow_mode_config: the validated ShadowModeConfig.
        schedule_start, schedule_end: the Schedule, epoch seconds (CreateInferenceExperiment
            without one: now and now + 7 days).
        deploy_config: the endpoint configuration the current step (start or stop) deploys, named
            before it is created so a restart halfway finds it again; None outside those steps.
        deploy_issued: the UpdateEndpoint to `deploy_config` was accepted.
        stop: what the stop asked for, while Stopping (and kept after).
        capture_before: the endpoint's DataCaptureConfig before the start replaced it with the
            DataStorageConfig's; a stop that redeploys restores it.
    """

    name: str
    endpoint_name: str
    role_arn: str
    status: ExperimentStatus
    creation_time: float
    last_modified_time: float
    schedule_start: float
    schedule_end: float
    model_variants: tuple[Mapping[str, object], ...]
    shadow_mode_config: Mapping[str, object]
    description: str | None = None
    data_storage_config: Mapping[str, object] | None = None
    kms_key: str | None = None
    tags: Tags = ()
    status_reason: str | None = None
    completion_time: float | None = None
    deploy_config: str | None = None
    deploy_issued: bool = False
    stop: StopRequest | None = None
    capture_before: Mapping[str, object] | None = None
    experiment_type: str = "ShadowMode"

    @property
    def source_variant(self) -> str:
        """ShadowModeConfig.SourceModelVariantName: the production variant."""
        return str(self.shadow_mode_config["SourceModelVariantName"])

    @property
    def shadow_variant(self) -> str:
        """The (one) ShadowModelVariantName."""
        shadows = self.shadow_mode_config["ShadowModelVariants"]
        assert isinstance(shadows, list)
        return str(shadows[0]["ShadowModelVariantName"])

    @property
    def sampling_percentage(self) -> int:
        """The shadow's SamplingPercentage."""
        shadows = self.shadow_mode_config["ShadowModelVariants"]
        assert isinstance(shadows, list)
        return int(shadows[0]["SamplingPercentage"])

    def model_variant(self, variant_name: str) -> Mapping[str, object]:
        """The ModelVariants entry called `variant_name` (validated to exist at Create)."""
        for variant in self.model_variants:
            if variant.get("VariantName") == variant_name:
                return variant
        raise KeyError(variant_name)

    def to_document(self) -> str:
        """The record as the JSON text stored in its row."""
        document = asdict(self)
        document["status"] = self.status.value
        if self.stop is not None:
            document["stop"]["final_status"] = self.stop.final_status.value
        return json.dumps(document, sort_keys=True)

    @classmethod
    def from_document(cls, text: str) -> ExperimentRecord:
        """The record stored as `text`.

        Raises:
            ValueError, KeyError, TypeError: the text is not a record this code wrote.
        """
        document = json.loads(text)
        stop = document.pop("stop", None)
        return cls(
            **{
                **document,
                "status": ExperimentStatus(document["status"]),
                "model_variants": tuple(document["model_variants"]),
                "tags": tuple((str(key), str(value)) for key, value in document["tags"]),
                "stop": None
                if stop is None
                else StopRequest(
                    actions=stop["actions"],
                    desired_variants=tuple(stop["desired_variants"]),
                    final_status=ExperimentStatus(stop["final_status"]),
                    reason=stop["reason"],
                ),
            }
        )


class ExperimentStore:
    """The `inference_experiments` table of the state database."""

    def __init__(self, database: Database) -> None:
        """A store over the open database (the control store's); `prepare` creates the table."""
        self._database = database

    def prepare(self) -> None:
        """Create the table if it is missing, then read every row once, so a damaged row stops
        the start rather than a request.

        Raises:
            StateFileError: a row is not a record this code can read.
        """
        with self._database.transaction(write=True) as db:
            db.script(_SCHEMA)
        self.list()

    def get(self, name: str) -> ExperimentRecord | None:
        """The experiment called `name` (any case), or None."""
        with self._database.transaction() as db:
            row = db.execute(
                "SELECT document FROM inference_experiments WHERE name_key = ?",
                (name_key(name),),
            ).fetchone()
        return None if row is None else _record(row[0])

    def insert(self, record: ExperimentRecord) -> bool:
        """Add an experiment; False (and nothing written) if one of that name exists."""
        with self._database.transaction(write=True) as db:
            key = name_key(record.name)
            exists = db.execute(
                "SELECT 1 FROM inference_experiments WHERE name_key = ?", (key,)
            ).fetchone()
            if exists is not None:
                return False
            db.execute(
                "INSERT INTO inference_experiments (name_key, name, document) VALUES (?, ?, ?)",
                (key, record.name, record.to_document()),
            )
            return True

    def put(self, record: ExperimentRecord) -> None:
        """Write the experiment (replacing the stored one of its name)."""
        with self._database.transaction(write=True) as db:
            key = name_key(record.name)
            db.execute("DELETE FROM inference_experiments WHERE name_key = ?", (key,))
            db.execute(
                "INSERT INTO inference_experiments (name_key, name, document) VALUES (?, ?, ?)",
                (key, record.name, record.to_document()),
            )

    def delete(self, name: str) -> bool:
        """Forget the experiment; False if there was none."""
        with self._database.transaction(write=True) as db:
            key = name_key(name)
            exists = db.execute(
                "SELECT 1 FROM inference_experiments WHERE name_key = ?", (key,)
            ).fetchone()
            db.execute("DELETE FROM inference_experiments WHERE name_key = ?", (key,))
            return exists is not None

    def list(self) -> list[ExperimentRecord]:
        """Every experiment, in no particular order."""
        with self._database.transaction() as db:
            rows = db.execute("SELECT document FROM inference_experiments").fetchall()
        return [_record(row[0]) for row in rows]


def _record(text: object) -> ExperimentRecord:
    try:
        if not isinstance(text, str):
            raise TypeError("the document is not text")
        return ExperimentRecord.from_document(text)
    except (ValueError, KeyError, TypeError) as error:
        raise StateFileError(
            f"the state database holds an inference experiment this splitserve cannot read "
            f"({error}); it was left untouched"
        ) from error
