"""DataCapture: what an endpoint's instances capture, and where.

It lives in capture, not in the control plane that builds it, so that the capture writer takes its
own type and imports no plane; the control plane's records (`control.models`) import it from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DataCapture:
    """What an endpoint's instances capture, and where (the deployer's view of DataCaptureConfig).

    Attributes:
        enable_capture: EnableCapture (default true); False means configured but stopped.
        sampling_percentage: InitialSamplingPercentage, 0 to 100.
        destination_s3_uri: DestinationS3Uri as the client gave it (records name it).
        destination: the local directory it resolves to (`control.paths.LocalPathResolver`).
        kms_key_id: KmsKeyId, stored and echoed; local files are not encrypted.
        capture_input: capture request payloads (CaptureMode Input or InputAndOutput).
        capture_output: capture response payloads (CaptureMode Output or InputAndOutput).
        csv_content_types: CaptureContentTypeHeader.CsvContentTypes (captured as CSV text).
        json_content_types: CaptureContentTypeHeader.JsonContentTypes (captured as JSON text);
            other payloads are captured base64-encoded.
    """

    enable_capture: bool
    sampling_percentage: int
    destination_s3_uri: str
    destination: Path
    kms_key_id: str | None
    capture_input: bool
    capture_output: bool
    csv_content_types: tuple[str, ...]
    json_content_types: tuple[str, ...]
