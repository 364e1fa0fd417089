"""The errors splitserve raises, and the one table that maps each to its wire code and HTTP status.

Every error a client may see derives from `SplitserveError`; its message is written for the client
(it never carries internal exception text). The routing core's own exceptions (`splitserve._router`)
never reach this table: the runtime service and the fleet deployer turn them into these classes
where they arise, so this module imports nothing of the package.

The two planes speak different wire formats (docs/sagemaker-api.md, '1. Protocols'): the control
plane (JSON 1.1) reads the code from the body's `__type`; the runtime (REST-JSON) from the
`x-amzn-ErrorType` header. The table gives the code and status; each plane's error boundary
(`wiring.boundary`) puts it in its plane's form.
"""

from __future__ import annotations

from dataclasses import dataclass


class SplitserveError(Exception):
    """Base of every error with a client-facing message."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --- control plane (SageMaker JSON 1.1) -----------------------------------------------------------


class ValidationException(SplitserveError):
    """A request the control plane refuses: bad value, unknown or duplicate resource, bad state."""


class ResourceLimitExceeded(SplitserveError):
    """The host cannot take more instances or resources."""


class ResourceInUse(SplitserveError):
    """The resource is used by another and cannot change now."""


class ConflictException(SplitserveError):
    """The resource's status does not allow the operation now (an inference experiment's)."""


class InferenceExperimentNotFound(SplitserveError):
    """No inference experiment has the name (wire code ResourceNotFound, SageMaker's modelled
    error for the experiment operations)."""


class UnknownOperationException(SplitserveError):
    """X-Amz-Target names no operation of the SageMaker API this gateway serves."""


class SerializationException(SplitserveError):
    """The request body is not a JSON object."""


class MissingAuthenticationToken(SplitserveError):
    """The request is not signed, and the gateway requires signatures."""


class InvalidSignatureException(SplitserveError):
    """The request's SigV4 signature does not match."""


class UnrecognizedClientException(SplitserveError):
    """The request is signed with an access key the gateway does not know."""


class AccessDeniedException(SplitserveError):
    """The caller may not do this."""


# --- data plane (sagemaker-runtime REST-JSON) -----------------------------------------------------


class InvocationValidationError(SplitserveError):
    """An InvokeEndpoint request the runtime refuses (wire code `ValidationError`)."""


class PayloadTooLarge(SplitserveError):
    """The InvokeEndpoint body is over the limit (wire: HTTP 413)."""


class BodyReadTimeout(SplitserveError):
    """The InvokeEndpoint body did not arrive within the read timeout (wire: HTTP 408)."""


@dataclass(frozen=True)
class ModelErrorDetail:
    """What a ModelError carries besides its message."""

    original_status_code: int
    original_message: str
    log_stream_arn: str


class ModelError(SplitserveError):
    """The model container answered non-2xx, or not at all within the timeout (HTTP 424)."""

    def __init__(self, message: str, detail: ModelErrorDetail) -> None:
        super().__init__(message)
        self.detail = detail


class ServiceUnavailable(SplitserveError):
    """No healthy instance can take the request now (HTTP 503; boto3 retries it)."""


class DatabaseUnavailable(SplitserveError):
    """The state database cannot be reached, or did not answer in time (HTTP 503, wire code
    ServiceUnavailable; boto3 retries it). The message names the database without its password;
    `detail` (the driver's own text) is for the log only."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


class InternalFailure(SplitserveError):
    """Something failed inside the gateway; the details are only in its log (HTTP 500)."""


# --- CloudWatch (docs/sagemaker-api.md, section 7) -----------------------------------------------


class CloudWatchError(SplitserveError):
    """Base of the errors CloudWatch's API answers; its wire code is CloudWatch's legacy (query)
    code, which every CloudWatch protocol carries (splitserve.cloudwatch.protocols)."""


class InvalidParameterValue(CloudWatchError):
    """A CloudWatch parameter has a value out of its type, range or enumeration."""


class MissingParameter(CloudWatchError):
    """A required CloudWatch parameter is absent."""


class InvalidParameterCombination(CloudWatchError):
    """CloudWatch parameters that cannot go together (or too many datapoints asked for)."""


class ResourceNotFound(CloudWatchError):
    """The named alarm does not exist (HTTP 404)."""


class InvalidNextToken(CloudWatchError):
    """A NextToken this gateway did not hand out (or for another query)."""


class CloudWatchLimitExceeded(CloudWatchError):
    """The gateway keeps no more alarms (wire code `LimitExceeded`)."""


class InvalidFormat(CloudWatchError):
    """SetAlarmState's StateReasonData is not JSON."""


# --- feedback (README, "Closing the loop") --------------------------------------------------------


class FeedbackRefused(SplitserveError):
    """A label POST /splitserve/feedback/<endpoint> did not join. Each subclass is one outcome,
    named by `outcome` (the `outcome` label of `splitserve_feedback_total`)."""

    outcome = "malformed"


class MalformedFeedback(FeedbackRefused):
    """The body or a record is not SageMaker's ground-truth format, or is over a limit."""

    outcome = "malformed"


class UnknownInferenceId(FeedbackRefused):
    """No answered invocation has the record's inference id (HTTP 404)."""

    outcome = "unknown"


class LateFeedback(FeedbackRefused):
    """The record's invocation is older than the index keeps (HTTP 410)."""

    outcome = "late"


class DuplicateFeedback(FeedbackRefused):
    """The record's invocation already has its label (HTTP 409)."""

    outcome = "duplicate"


class WrongEndpointFeedback(FeedbackRefused):
    """The record's inference id belongs to another endpoint's invocation (HTTP 409)."""

    outcome = "wrong_endpoint"


class UnscorableFeedback(FeedbackRefused):
    """The invocation's answer holds no scores the labels can be paired with (HTTP 422)."""

    outcome = "unscorable"


# --- workers and deployments ----------------------------------------------------------------------


class DeploymentError(SplitserveError):
    """An endpoint's instances could not be brought up; the message becomes its FailureReason."""


@dataclass(frozen=True)
class WireError:
    """How one error class goes on the wire: the code clients match on and the HTTP status."""

    code: str
    status: int


#: The one table from error class to wire code and status. Lookup walks the class's MRO, so a
#: subclass inherits its parent's row unless it has its own.
ERROR_TABLE: dict[type[Exception], WireError] = {
    ValidationException: WireError("ValidationException", 400),
    ResourceLimitExceeded: WireError("ResourceLimitExceeded", 400),
    ResourceInUse: WireError("ResourceInUse", 400),
    ConflictException: WireError("ConflictException", 400),
    InferenceExperimentNotFound: WireError("ResourceNotFound", 400),
    UnknownOperationException: WireError("UnknownOperationException", 400),
    SerializationException: WireError("SerializationException", 400),
    MissingAuthenticationToken: WireError("MissingAuthenticationTokenException", 403),
    InvalidSignatureException: WireError("InvalidSignatureException", 403),
    UnrecognizedClientException: WireError("UnrecognizedClientException", 403),
    AccessDeniedException: WireError("AccessDeniedException", 403),
    InvocationValidationError: WireError("ValidationError", 400),
    PayloadTooLarge: WireError("ValidationError", 413),
    # botocore's standard retry mode counts RequestTimeout among its transient errors.
    BodyReadTimeout: WireError("RequestTimeout", 408),
    ModelError: WireError("ModelError", 424),
    ServiceUnavailable: WireError("ServiceUnavailable", 503),
    DatabaseUnavailable: WireError("ServiceUnavailable", 503),
    InternalFailure: WireError("InternalFailure", 500),
    DeploymentError: WireError("ValidationException", 400),
    MalformedFeedback: WireError("ValidationError", 400),
    UnknownInferenceId: WireError("UnknownInferenceId", 404),
    LateFeedback: WireError("LateFeedback", 410),
    DuplicateFeedback: WireError("DuplicateFeedback", 409),
    WrongEndpointFeedback: WireError("WrongEndpointFeedback", 409),
    UnscorableFeedback: WireError("UnscorableFeedback", 422),
    FeedbackRefused: WireError("ValidationError", 400),
    InvalidParameterValue: WireError("InvalidParameterValue", 400),
    MissingParameter: WireError("MissingParameter", 400),
    InvalidParameterCombination: WireError("InvalidParameterCombination", 400),
    ResourceNotFound: WireError("ResourceNotFound", 404),
    InvalidNextToken: WireError("InvalidNextToken", 400),
    CloudWatchLimitExceeded: WireError("LimitExceeded", 400),
    InvalidFormat: WireError("InvalidFormat", 400),
}


def wire_error(error: BaseException) -> WireError:
    """The wire code and status for `error`; anything not in the table is an InternalFailure."""
    for cls in type(error).__mro__:
        row = ERROR_TABLE.get(cls)
        if row is not None:
            return row
    return WireError("InternalFailure", 500)
