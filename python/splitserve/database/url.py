"""Reading a state database URL: which backend, where, and how to name it without its password."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

__all__ = ["DatabaseUrl", "DatabaseUrlError", "parse_database_url"]

#: The schemes a PostgreSQL URL may use (libpq accepts both).
_POSTGRES_SCHEMES = ("postgresql", "postgres")


class DatabaseUrlError(ValueError):
    """A state database URL this gateway cannot use; the message names the URL (never its
    password) and what is wrong with it."""


@dataclass(frozen=True)
class DatabaseUrl:
    """A parsed state database URL.

    Attributes:
        kind: "sqlite" or "postgresql".
        url: the URL as given (it may hold a password: never log or show it; use `display`).
        display: the URL without its password, for messages and logs.
        path: the SQLite file (kind "sqlite" only).
    """

    kind: str
    url: str
    display: str
    path: Path | None = None


def parse_database_url(url: str) -> DatabaseUrl:
    """Read `url`: `sqlite:///absolute/path` or `postgresql://[user[:password]@]host[:port]/db`
    (also `postgres://`; libpq's query parameters such as `?sslmode=require` pass through).

    Raises:
        DatabaseUrlError: the scheme is neither, the SQLite path is not absolute or names a
            directory, or the PostgreSQL URL has no host or database name.
    """
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    if not rest:
        raise DatabaseUrlError(
            f"state database URL {_redacted(url)!r} is not a URL: use sqlite:///absolute/path "
            "or postgresql://user@host:port/database"
        )
    if scheme == "sqlite":
        # sqlite:///abs/path: an empty authority, then the absolute path.
        if not rest.startswith("/"):
            raise DatabaseUrlError(
                f"state database URL {url!r} names no absolute file: use sqlite:///absolute/path "
                "(three slashes)"
            )
        path = Path(unquote(rest.split("?", 1)[0]))
        if path == Path("/") or rest.endswith("/"):
            raise DatabaseUrlError(f"state database URL {url!r} names a directory, not a file")
        return DatabaseUrl(kind="sqlite", url=url, display=f"sqlite://{path}", path=path)
    if scheme in _POSTGRES_SCHEMES:
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 (reading it checks it is a number)
        except ValueError as error:
            raise DatabaseUrlError(
                f"state database URL {_redacted(url)!r} cannot be read: {error}"
            ) from error
        database = parts.path.lstrip("/")
        if not parts.hostname:
            raise DatabaseUrlError(f"state database URL {_redacted(url)!r} names no host")
        if not database:
            raise DatabaseUrlError(f"state database URL {_redacted(url)!r} names no database")
        return DatabaseUrl(kind="postgresql", url=url, display=_redacted(url))
    raise DatabaseUrlError(
        f"state database URL {_redacted(url)!r} has scheme {scheme!r}: use sqlite:///absolute/path "
        "or postgresql://user@host:port/database"
    )


def _redacted(url: str) -> str:
    """`url` without a password and query (which may carry one)."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url.rsplit("@", maxsplit=1)[-1]
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        user_info, _, host = authority.rpartition("@")
        user = user_info.split(":", 1)[0]
        authority = f"{user}@{host}" if user else host
    return f"{scheme}://{authority}{slash}{path.split('?', 1)[0]}"
