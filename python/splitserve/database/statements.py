"""SQL text shared by the backends: splitting a schema into statements, `?` to `%s`."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator

__all__ = ["check_channel", "split_script", "to_pyformat"]

_CHANNEL = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def split_script(script: str) -> Iterator[str]:
    """The statements of a `;`-separated script, each whole (SQLite's own tokenizer decides
    where one ends, so a `;` in a comment or a string literal does not split it)."""
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \t\r\n;"):
                yield pending
            pending = ""
    if pending.strip(" \t\r\n;"):
        yield pending


def to_pyformat(sql: str) -> str:
    """`sql` with its `?` placeholders as psycopg's `%s` (and every literal `%` doubled, as psycopg
    reads `%` everywhere when there are parameters). A `?` inside a quoted string or identifier
    stays as it is."""
    out: list[str] = []
    quote: str | None = None
    for character in sql:
        if quote is not None:
            if character == quote:
                quote = None
            out.append("%%" if character == "%" else character)
        elif character in "'\"":
            quote = character
            out.append(character)
        elif character == "?":
            out.append("%s")
        elif character == "%":
            out.append("%%")
        else:
            out.append(character)
    return "".join(out)


def check_channel(channel: str) -> str:
    """`channel` if it is a plain lower-case identifier (PostgreSQL's LISTEN names it unquoted).

    Raises:
        ValueError: it is not.
    """
    if _CHANNEL.fullmatch(channel) is None:
        raise ValueError(
            f"change channel {channel!r} must be a lower-case identifier ([a-z_][a-z0-9_]*)"
        )
    return channel
