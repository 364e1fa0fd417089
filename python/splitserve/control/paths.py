"""Where a model-artifact or data-capture URL lives on this host.

`s3://bucket/key` means `<model store>/bucket/key`: the model store stands in for S3, and nothing
named through s3:// may resolve outside it (no `.` or `..` segments, no absolute keys, no symbolic
link that leads out; the final path is resolved and checked for containment). `file://` URLs and
absolute paths name local files directly. https:// locations are refused; the gateway downloads
nothing.

A model artifact (`resolve_model_data`) must moreover lie under the model store or a directory the
operator allowed (`--allow-artifact-path`), symbolic links resolved: otherwise any CreateModel
caller could have the gateway read any file of the host (`file:///etc/shadow`) into a model
directory. The workers check again at deploy time, on what they actually open
(`splitserve.workers.artifacts`).

A location that does not exist is not an error here: SageMaker checks a model's artifact when it
deploys it, and so does the control service (the endpoint goes Failed, naming the missing URL).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

from splitserve.control.validation import Violation, format_violations
from splitserve.errors import ValidationException

_LOCAL_HOSTS = ("", "localhost")


class LocalPathResolver:
    """Turns the locations clients send (ModelDataUrl, S3Uri, DestinationS3Uri) into local paths."""

    def __init__(self, model_store: Path, allowed_artifact_paths: Sequence[Path] = ()) -> None:
        """Resolve s3:// locations under `model_store` (made absolute; it need not exist yet);
        model artifacts may also come from under `allowed_artifact_paths`."""
        self._root = Path(os.path.abspath(model_store))
        self._allowed = tuple(Path(os.path.abspath(path)) for path in allowed_artifact_paths)

    @property
    def model_store(self) -> Path:
        """The directory that s3:// buckets are subdirectories of."""
        return self._root

    def resolve(self, url: str, *, field: str) -> Path:
        """The local path `url` names. This reads symbolic links, so call it off the event loop.

        Args:
            url: an `s3://bucket/key` location, a `file://` URL or an absolute path.
            field: the request member it came from, as a Coral path
                (`primaryContainer.modelDataUrl`), for the error message.

        Raises:
            ValidationException: the location is of another kind, or an s3:// location escapes
                the model store.
        """
        if "\x00" in url:
            raise _refused(url, field, "Member must not contain NUL characters")
        if url.startswith("s3://"):
            return self._resolve_s3(url, field)
        if url.startswith("file:"):
            parts = urlsplit(url)
            if parts.netloc not in _LOCAL_HOSTS:
                raise _refused(url, field, "file:// URLs may name no host other than localhost")
            if parts.query or parts.fragment:
                raise _refused(url, field, "file:// URLs may not have a query or a fragment")
            path = unquote(parts.path)
            if not path.startswith("/"):
                raise _refused(url, field, "file:// URLs must hold an absolute path")
            return Path(path)
        if url.startswith("/"):
            return Path(url)
        if url.startswith("https://"):
            raise _refused(
                url,
                field,
                "https:// locations are not downloaded; use s3://<bucket>/<key> (under the "
                "gateway's model store), a file:// URL or an absolute path",
            )
        raise _refused(
            url,
            field,
            "Member must be an s3://<bucket>/<key> URL, a file:// URL or an absolute path",
        )

    def resolve_model_data(self, url: str, *, field: str) -> Path:
        """The local path of a model artifact (`ModelDataUrl`), which must lie under the model
        store or an allowed artifact directory, and may not be one of them whole. Reads
        symbolic links: call it off the event loop.

        Args:
            url: as for `resolve`.
            field: as for `resolve`.

        Raises:
            ValidationException: as for `resolve`, or the location (symbolic links resolved)
                is outside those directories, or is one of them.
        """
        path = self.resolve(url, field=field)
        try:
            real = _resolved(path)
            roots = [_resolved(root) for root in (self._root, *self._allowed)]
        except (OSError, RuntimeError, ValueError):  # a symlink loop, an unencodable name
            raise _refused(url, field, "the location cannot be resolved") from None
        if real in roots:
            raise _refused(
                url,
                field,
                "the location is a whole artifact directory; name a model file or a model "
                "directory under it",
            )
        if not any(real.is_relative_to(root) for root in roots):
            raise _refused(
                url,
                field,
                "model artifacts must lie under the gateway's model store or a directory "
                "allowed with --allow-artifact-path (symbolic links resolved)",
            )
        return path

    def _resolve_s3(self, url: str, field: str) -> Path:
        bucket, _, key = url.removeprefix("s3://").partition("/")
        if not bucket:
            raise _refused(url, field, "s3:// locations must name a bucket")
        if key.startswith("/"):
            raise _refused(url, field, "s3:// keys may not start with '/'")
        segments = [bucket, *key.split("/")]
        if any(segment in (".", "..") for segment in segments):
            raise _refused(url, field, "s3:// locations may not contain '.' or '..' segments")
        try:
            root = _resolved(self._root)
            path = _resolved(self._root.joinpath(*segments))
        except (OSError, RuntimeError, ValueError):  # a symlink loop, an unencodable name
            raise _refused(url, field, "the location cannot be resolved") from None
        if not path.is_relative_to(root):
            raise _refused(
                url,
                field,
                "s3:// locations must stay inside the model store (a symbolic link leads outside)",
            )
        return path


def _resolved(path: Path) -> Path:
    """`path` with its symbolic links resolved, as `Path.resolve()` (a missing part is kept).

    Raises:
        RuntimeError, OSError: a symbolic link loop. Python 3.11 and 3.12 raise RuntimeError for
            one; from 3.13 resolve() stops at the loop and returns a path still holding the link,
            which is refused here the same way.
    """
    real = path.resolve()
    if any(part.is_symlink() for part in (real, *real.parents)):
        raise OSError(f"a symbolic link loop in {path}")
    return real


def _refused(url: str, field: str, constraint: str) -> ValidationException:
    return ValidationException(format_violations([Violation(field, url, constraint)]))
