"""AWS Signature Version 4 checks for the gateway's two planes, and the access-key file they use.

`SigV4Verifier.verify` recomputes what botocore's `SigV4Auth` computes for a request (the canonical
request, the string to sign, the HMAC chain) and compares signatures in constant time. Both boto3
clients sign with the service name `sagemaker`, whichever plane they call. Wrong keys, signatures
or dates raise the errors AWS answers with (all 403): MissingAuthenticationToken,
UnrecognizedClientException, InvalidSignatureException.

The access-key file is TOML, one `[[keys]]` table per key, and must not be readable or writable by
group or others (as ssh demands of a private key):

    [[keys]]
    access_key_id = "AKIDEXAMPLE"
    secret_access_key = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"

No aiohttp import: the app wraps the planes' handlers with a call to `verify`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import stat
import time
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import lru_cache
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

from splitserve.config import AuthSettings
from splitserve.errors import (
    InvalidSignatureException,
    MissingAuthenticationToken,
    UnrecognizedClientException,
)

#: The only algorithm accepted, as it opens the Authorization header.
ALGORITHM = "AWS4-HMAC-SHA256"

#: The signing name of both the `sagemaker` and the `sagemaker-runtime` service models.
SIGNING_SERVICE = "sagemaker"
#: The signing name of CloudWatch's service model (its routes pass it to `verify`).
CLOUDWATCH_SIGNING_SERVICE = "monitoring"

_TERMINATOR = "aws4_request"
_AMZ_DATE = re.compile(r"\d{8}T\d{6}Z")
#: The header exactly as botocore writes it; anything else takes the slower, explaining parser.
_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=([^/,\s]+)/([^/,\s]*)/([^/,\s]*)/([^/,\s]*)/([^/,\s]*), ?"
    r"SignedHeaders=([^,\s]+), ?Signature=([0-9a-f]{64})"
)
_SIGNATURE = re.compile(r"[0-9a-f]{64}")
_REGION = re.compile(r"[a-z0-9-]{1,64}")
_ACCESS_KEY_ID = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_TIMESTAMP_FORMAT = "%Y%m%dT%H%M%SZ"

#: Derived signing keys kept; one is needed per access key, day and region in use, so this only
#: bounds memory if something churns through regions. The cache is emptied when it is full.
_MAX_CACHED_SIGNING_KEYS = 1024

_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check your "
    "AWS Secret Access Key and signing method. Consult the service documentation for details."
)
_INVALID_TOKEN = "The security token included in the request is invalid."


class AuthFileError(ValueError):
    """The access-key file cannot be read, is open to others, is not valid TOML, or is invalid.

    Messages name the file and the offending entry, never a secret.
    """


@dataclass(frozen=True)
class AccessKey:
    """One access key the gateway accepts. `repr` and `str` leave the secret out."""

    access_key_id: str
    secret_access_key: str = field(repr=False)


@dataclass(frozen=True)
class Principal:
    """Who signed a request that passed the check."""

    access_key_id: str


class HeaderLookup(Protocol):
    """Case-insensitive request headers that may repeat (aiohttp's `request.headers`)."""

    def get(self, key: str, /) -> str | None:
        """The first value of header `key`, or None when absent."""
        ...

    def getall(self, key: str, default: list[str], /) -> list[str]:
        """Every value of header `key`, in order, or `default` when absent."""
        ...


@dataclass(frozen=True)
class _Authorization:
    access_key_id: str
    scope_date: str
    region: str
    service: str
    terminator: str
    signed_headers: str
    signature: str


class SigV4Verifier:
    """Checks AWS Signature Version 4 `Authorization` headers against a fixed set of access keys.

    A request costs one SHA-256 of its body (botocore signs the payload's hash), one of the
    canonical request and one HMAC: the signing key derived from a secret, day and region is
    cached once a request signed with it has passed.
    """

    def __init__(
        self,
        keys: Iterable[AccessKey],
        *,
        max_clock_skew_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Accept requests signed with any of `keys`.

        Args:
            keys: the access keys; their ids must be distinct.
            max_clock_skew_seconds: how far a request's date may be from `clock()`.
            clock: the current time as seconds since the epoch (wall clock, as dates are).

        Raises:
            ValueError: two keys have the same access key id.
        """
        self._keys: dict[str, AccessKey] = {}
        for key in keys:
            if key.access_key_id in self._keys:
                raise ValueError(f"access key id {key.access_key_id} is listed twice")
            self._keys[key.access_key_id] = key
        self._principals = {key_id: Principal(key_id) for key_id in self._keys}
        self._max_skew = max_clock_skew_seconds
        self._clock = clock
        self._signing_keys: dict[tuple[str, str, str, str], bytes] = {}

    def __repr__(self) -> str:
        return f"SigV4Verifier(access_key_ids={self.access_key_ids!r})"

    @property
    def access_key_ids(self) -> tuple[str, ...]:
        """The ids of the accepted keys, sorted (ids are not secret; the secrets stay hidden)."""
        return tuple(sorted(self._keys))

    @classmethod
    def from_settings(cls, settings: AuthSettings) -> SigV4Verifier:
        """A verifier for the keys in `settings.keys_file`.

        Raises:
            AuthFileError: the file is missing, open to group or others, or invalid.
            ValueError: `settings.keys_file` is None (authentication is off).
        """
        if settings.keys_file is None:
            raise ValueError("authentication is off: no access-key file is set")
        return cls(
            load_access_keys(settings.keys_file),
            max_clock_skew_seconds=settings.max_clock_skew_seconds,
        )

    def verify(
        self,
        method: str,
        path: str,
        query_string: str,
        headers: HeaderLookup,
        body: bytes,
        *,
        service: str = SIGNING_SERVICE,
    ) -> Principal:
        """Check the request's SigV4 signature; return who signed it.

        Args:
            method: the HTTP method.
            path: the request path exactly as it came on the wire (still percent-encoded).
            query_string: the raw query string, without `?` ("" if none).
            headers: the request headers.
            body: the whole request body.
            service: the signing name the credential scope must name (CloudWatch's routes
                pass `CLOUDWATCH_SIGNING_SERVICE`).

        Returns:
            The principal of the access key that signed the request.

        Raises:
            MissingAuthenticationToken: no Authorization header.
            UnrecognizedClientException: the access key is not in the file.
            InvalidSignatureException: malformed header, wrong credential scope, a date more than
                the allowed skew from now, a body that does not match its declared hash, or a
                signature that does not match.
        """
        authorization = headers.get("Authorization")
        if authorization is None:
            raise MissingAuthenticationToken("Missing Authentication Token")
        auth = _parse_authorization(authorization)
        timestamp, request_time = _request_time(headers)
        _check_scope(auth, timestamp, service)
        key = self._keys.get(auth.access_key_id)
        if key is None:
            raise UnrecognizedClientException(_INVALID_TOKEN)
        self._check_clock(timestamp, request_time)

        declared_hash = headers.get("X-Amz-Content-SHA256")
        body_hash = hashlib.sha256(body).hexdigest()
        if declared_hash is not None and declared_hash != body_hash:
            raise InvalidSignatureException(
                "The provided 'x-amz-content-sha256' header does not match what was computed "
                "(this gateway needs the payload signed; UNSIGNED-PAYLOAD is not accepted)."
            )
        canonical_request = "\n".join(
            (
                method.upper(),
                canonical_path(path),
                canonical_query_string(query_string),
                _canonical_headers(auth.signed_headers, headers),
                auth.signed_headers,
                body_hash,
            )
        )
        credential_scope = f"{auth.scope_date}/{auth.region}/{auth.service}/{_TERMINATOR}"
        string_to_sign = "\n".join(
            (
                ALGORITHM,
                timestamp,
                credential_scope,
                hashlib.sha256(canonical_request.encode("utf-8")).hexdigest(),
            )
        )
        cache_key = (key.access_key_id, auth.scope_date, auth.region, auth.service)
        signing_key = self._signing_keys.get(cache_key)
        fresh = signing_key is None
        if signing_key is None:
            signing_key = derive_signing_key(
                key.secret_access_key, auth.scope_date, auth.region, auth.service
            )
        expected = hmac.digest(signing_key, string_to_sign.encode("utf-8"), "sha256").hex()
        if not hmac.compare_digest(expected, auth.signature):
            raise InvalidSignatureException(_MISMATCH)
        if fresh:
            # Cached only once a request proved it holds the secret, so guessing at regions or
            # dates cannot fill the cache.
            if len(self._signing_keys) >= _MAX_CACHED_SIGNING_KEYS:
                self._signing_keys.clear()
            self._signing_keys[cache_key] = signing_key
        return self._principals[key.access_key_id]

    def _check_clock(self, timestamp: str, request_time: float) -> None:
        """Refuse a request dated more than the allowed skew away from now, as AWS words it."""
        now = self._clock()
        if abs(request_time - now) <= self._max_skew:
            return
        minutes = f"{self._max_skew / 60:g} min."
        if request_time < now - self._max_skew:
            raise InvalidSignatureException(
                f"Signature expired: {timestamp} is now earlier than "
                f"{_format_timestamp(now - self._max_skew)} ({_format_timestamp(now)} - {minutes})"
            )
        if request_time > now + self._max_skew:
            raise InvalidSignatureException(
                f"Signature not yet current: {timestamp} is still later than "
                f"{_format_timestamp(now + self._max_skew)} ({_format_timestamp(now)} + {minutes})"
            )


def derive_signing_key(secret_access_key: str, date: str, region: str, service: str) -> bytes:
    """The SigV4 signing key: HMAC chain over date, region, service and `aws4_request`."""
    key = hmac.digest(f"AWS4{secret_access_key}".encode(), date.encode(), "sha256")
    for part in (region, service, _TERMINATOR):
        key = hmac.digest(key, part.encode(), "sha256")
    return key


@lru_cache(maxsize=256)  # a runtime plane sees few distinct paths: one per endpoint
def canonical_path(path: str) -> str:
    """The canonical URI as botocore computes it for every service but S3.

    Dot segments and empty segments are removed, then the (already percent-encoded) path is
    encoded once more, so `%20` becomes `%2520`: botocore's `SigV4Auth._normalize_url_path`.
    """
    return quote(_remove_dot_segments(path) or "/", safe="/~")


def canonical_query_string(query_string: str) -> str:
    """The canonical query string as botocore computes it from a URL's query.

    Pairs are split on `&` and the first `=`, kept as sent (not re-encoded), and sorted by name
    then value: botocore's `SigV4Auth._canonical_query_string_url`.
    """
    if not query_string:
        return ""
    pairs = sorted(pair.partition("=")[::2] for pair in query_string.split("&"))
    return "&".join(f"{name}={value}" for name, value in pairs)


def load_access_keys(path: Path) -> tuple[AccessKey, ...]:
    """Read the access-key file at `path` (format: this module's docstring).

    Raises:
        AuthFileError: the file cannot be read, is not a regular file, may be read or written by
            group or others, is not UTF-8 TOML, has no key, has an unknown or missing field, an
            invalid access key id, an empty secret, or one id twice.
    """
    try:
        # O_NONBLOCK: a FIFO put in the file's place must not hang the start-up; the mode is read
        # from the descriptor, so it is that of the file actually read.
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            mode = os.fstat(descriptor).st_mode
            if not stat.S_ISREG(mode):
                raise AuthFileError(f"auth file {path} is not a regular file")
            if mode & 0o077:
                raise AuthFileError(
                    f"auth file {path} is accessible by group or others (mode "
                    f"{stat.S_IMODE(mode):04o}); it holds secret keys, so it must be readable by "
                    f"its owner only: chmod 600 {path}"
                )
        except BaseException:
            os.close(descriptor)
            raise
        with os.fdopen(descriptor, "rb") as file:
            raw = file.read()
    except OSError as error:
        raise AuthFileError(f"cannot read auth file {path}: {error.strerror}") from error
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        # tomllib's messages give a line and column, never the text of the line.
        raise AuthFileError(f"auth file {path} is not valid UTF-8 TOML: {error}") from error
    unknown = sorted(set(document) - {"keys"})
    if unknown:
        raise AuthFileError(f"auth file {path}: unknown top-level entries {unknown}")
    tables = document.get("keys")
    if not isinstance(tables, list) or not tables:
        raise AuthFileError(
            f"auth file {path} has no keys: add one or more [[keys]] tables with "
            "access_key_id and secret_access_key"
        )
    keys: list[AccessKey] = []
    seen: set[str] = set()
    for number, table in enumerate(tables, start=1):
        where = f"auth file {path}, [[keys]] number {number}"
        if not isinstance(table, dict):
            raise AuthFileError(f"{where} is not a table")
        fields = {"access_key_id", "secret_access_key"}
        if set(table) != fields:
            missing, extra = sorted(fields - set(table)), sorted(set(table) - fields)
            raise AuthFileError(f"{where}: missing fields {missing}, unknown fields {extra}")
        access_key_id, secret = table["access_key_id"], table["secret_access_key"]
        if not isinstance(access_key_id, str) or not _ACCESS_KEY_ID.fullmatch(access_key_id):
            raise AuthFileError(
                f"{where}: access_key_id must be 1 to 128 letters, digits, '_', '.' or '-'"
            )
        if not isinstance(secret, str) or not secret:
            raise AuthFileError(f"{where}: secret_access_key must be a non-empty string")
        if access_key_id in seen:
            raise AuthFileError(f"{where}: access key id {access_key_id} is listed twice")
        seen.add(access_key_id)
        keys.append(AccessKey(access_key_id, secret))
    return tuple(keys)


def _parse_authorization(header: str) -> _Authorization:
    """Split `AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…` into its parts."""
    match = _AUTHORIZATION.fullmatch(header)
    if match is not None:
        return _Authorization(*match.groups())
    algorithm, _, parameters = header.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise InvalidSignatureException(
            f"Unsupported Authorization type; this gateway accepts only {ALGORITHM} "
            "(AWS Signature Version 4)."
        )
    fields: dict[str, str] = {}
    for part in parameters.split(","):
        name, _, value = part.strip().partition("=")
        fields[name] = value
    missing = [
        f"Authorization header requires '{name}' parameter."
        for name in ("Credential", "Signature", "SignedHeaders")
        if not fields.get(name)
    ]
    if missing:
        raise InvalidSignatureException(" ".join(missing))
    scope = fields["Credential"].split("/")
    if len(scope) != 5:
        raise InvalidSignatureException(
            "Credential must have the form <access key id>/<YYYYMMDD>/<region>/<service>/"
            f"{_TERMINATOR}."
        )
    signature = fields["Signature"]
    if not _SIGNATURE.fullmatch(signature):
        raise InvalidSignatureException(_MISMATCH)
    access_key_id, scope_date, region, service, terminator = scope
    return _Authorization(
        access_key_id, scope_date, region, service, terminator, fields["SignedHeaders"], signature
    )


def _request_time(headers: HeaderLookup) -> tuple[str, float]:
    """The request's date as `YYYYMMDDTHHMMSSZ` and as seconds since the epoch, from X-Amz-Date
    or else from Date (botocore signs with whichever of the two it sent)."""
    amz_date = headers.get("X-Amz-Date")
    if amz_date is not None:
        if not _AMZ_DATE.fullmatch(amz_date):
            raise InvalidSignatureException(
                "X-Amz-Date must be in the ISO 8601 basic format YYYYMMDD'T'HHMMSS'Z'."
            )
        try:
            return amz_date, _parse_timestamp(amz_date)
        except ValueError as error:
            raise InvalidSignatureException("X-Amz-Date is not a valid date.") from error
    date = headers.get("Date")
    if date is not None:
        try:
            parsed = parsedate_to_datetime(date)
            if parsed.tzinfo is None:  # "-0000": UTC, with no zone information
                parsed = parsed.replace(tzinfo=UTC)
            seconds = parsed.timestamp()
        except (TypeError, ValueError) as error:
            raise InvalidSignatureException("The Date header is not a valid HTTP date.") from error
        return _format_timestamp(seconds), seconds
    raise InvalidSignatureException(
        "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
    )


def _check_scope(auth: _Authorization, timestamp: str, service: str) -> None:
    """Refuse a credential scope for another service, day or terminator, as AWS words it."""
    if (
        auth.service == service
        and auth.terminator == _TERMINATOR
        and timestamp.startswith(auth.scope_date)
        and len(auth.scope_date) == 8
        and _REGION.fullmatch(auth.region)
    ):
        return
    problems = []
    if not _REGION.fullmatch(auth.region):
        problems.append(f"Credential should be scoped to a valid region, not '{auth.region}'.")
    if auth.service != service:
        problems.append(f"Credential should be scoped to correct service: '{service}'.")
    if auth.terminator != _TERMINATOR:
        problems.append(
            f"Credential should be scoped with a valid terminator: '{_TERMINATOR}', "
            f"not '{auth.terminator}'."
        )
    if auth.scope_date != timestamp[:8]:
        problems.append(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from "
            f"HTTP: '{auth.scope_date}' != '{timestamp[:8]}', from '{timestamp}'."
        )
    if problems:
        raise InvalidSignatureException(" ".join(problems))


def _canonical_headers(signed_headers: str, headers: HeaderLookup) -> str:
    """`name:value` lines for the signed headers, values trimmed, repeats joined by commas; plus
    the blank line that ends the block. The Host header must be among them."""
    lines = []
    for name in _signed_header_names(signed_headers):
        value = ",".join(" ".join(value.split()) for value in headers.getall(name, []))
        lines.append(f"{name}:{value}\n")
    return "".join(lines)


@lru_cache(maxsize=64)  # clients sign the same few header sets over and over
def _signed_header_names(signed_headers: str) -> tuple[str, ...]:
    names = tuple(signed_headers.split(";"))
    if "host" not in names:
        raise InvalidSignatureException("'Host' must be a 'SignedHeader' in the AWS Authorization.")
    return names


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 dot-segment removal that also drops empty segments (botocore's
    `remove_dot_segments`: AWS wants consecutive slashes collapsed)."""
    if not path:
        return ""
    segments: list[str] = []
    for segment in path.split("/"):
        if not segment or segment == ".":
            continue
        if segment == "..":
            if segments:
                segments.pop()
        else:
            segments.append(segment)
    first = "/" if path[0] == "/" else ""
    last = "/" if path[-1] == "/" and segments else ""
    return first + "/".join(segments) + last


@lru_cache(maxsize=16)  # requests in the same second share their date
def _parse_timestamp(timestamp: str) -> float:
    """Seconds since the epoch for a `YYYYMMDDTHHMMSSZ` string of digits (raises ValueError if
    it names no real time). Slicing is several times faster than strptime."""
    return datetime(
        int(timestamp[0:4]),
        int(timestamp[4:6]),
        int(timestamp[6:8]),
        int(timestamp[9:11]),
        int(timestamp[11:13]),
        int(timestamp[13:15]),
        tzinfo=UTC,
    ).timestamp()


def _format_timestamp(seconds: float) -> str:
    return time.strftime(_TIMESTAMP_FORMAT, time.gmtime(seconds))
