"""The argument types of the `splitserve` command: each turns one option's text into its value or
refuses it with `argparse.ArgumentTypeError`, which argparse answers with a usage line naming the
option and exit code 2.

Part of the face, beside `cli` (which builds the parser with these). Limits come from `config`.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import urllib.parse
from pathlib import Path

from splitserve.config import MAX_REPLICA_PROCESSES, Settings
from splitserve.database.url import DatabaseUrlError, parse_database_url

_DEFAULTS = Settings()

_DURATION = re.compile(r"([0-9]{1,9})([smhd]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """`15m`, `90s`, `2h`, `1d` (or bare seconds) as a number of seconds."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (try 15m, 2h or 1d)")
    return int(match[1]) * _UNIT_SECONDS[match[2]]


def positive_seconds(text: str) -> float:
    """A number of seconds above 0 (fractions allowed), for the timeout options."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def positive_factor(text: str) -> float:
    """A number above 0 (fractions allowed), for the multiple options."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number: {text!r}")
    return value


def positive_count(text: str) -> int:
    """A whole number of at least 1, for the count options."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1: {text!r}")
    return int(text)


def process_count(text: str) -> int:
    """`--processes`: a whole number from 1 to MAX_REPLICA_PROCESSES, or `auto`: the CPUs this
    process may run on, less half of them (left to the instances), at least 1."""
    if text.strip().lower() == "auto":
        return max(1, len(os.sched_getaffinity(0)) - len(os.sched_getaffinity(0)) // 2)
    count = positive_count(text)
    if count > MAX_REPLICA_PROCESSES:
        raise argparse.ArgumentTypeError(
            f"at most {MAX_REPLICA_PROCESSES} replica processes on one host: {text!r}"
        )
    return count


def log_level(text: str) -> str:
    """A logging level's name (any case), upper-cased."""
    name = text.strip().upper()
    if not isinstance(logging.getLevelNamesMapping().get(name), int):
        raise argparse.ArgumentTypeError(
            f"not a log level: {text!r} (DEBUG, INFO, WARNING or ERROR)"
        )
    return name


def retention_days(text: str) -> int:
    """A whole number of days from 1 to the largest retention config.py allows."""
    limit = _DEFAULTS.cloudwatch.max_retention_days
    if not text.strip().isdigit() or not 1 <= int(text) <= limit:
        raise argparse.ArgumentTypeError(
            f"must be a whole number of days from 1 to {limit}: {text!r}"
        )
    return int(text)


def state_url(url: str) -> str:
    """`--state`'s value, checked (argparse answers a bad one with exit code 2)."""
    try:
        parse_database_url(url)
    except DatabaseUrlError as error:
        raise argparse.ArgumentTypeError(str(error)) from error
    return url


def http_url(value: str) -> str:
    """`--s3-endpoint-url`, checked (argparse answers a bad one with exit code 2)."""
    parsed = urllib.parse.urlsplit(value)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise argparse.ArgumentTypeError(f"{value!r} is not an http:// or https:// URL")
    return value


def absolute_path(value: str) -> Path:
    """`--ray-node-dir`, checked: absolute, as it names a directory on every node, not here."""
    path = Path(value)
    if not path.is_absolute():
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an absolute path (it names a directory on every Ray node)"
        )
    return path


def type_resource(value: str) -> tuple[str, str]:
    """`--ray-type-resource PATTERN=RESOURCE`, checked (argparse answers a bad one with 2)."""
    pattern, equals, resource = value.partition("=")
    if not equals or not pattern.strip() or not resource.strip():
        raise argparse.ArgumentTypeError(
            f"{value!r} is not PATTERN=RESOURCE (e.g. 'ml.c5.*=compute')"
        )
    return pattern.strip(), resource.strip()
