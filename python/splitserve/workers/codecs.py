"""Request decoding and response encoding of the built-in XGBoost server.

The formats follow the SageMaker XGBoost container (reference section 5.2), with these decisions:

- Input: `text/csv` (dense, no header, no label column), `text/libsvm`, `text/x-libsvm` and the
  container's bare `libsvm` (sparse; indices are 1-based and shifted to 0-based, an index 0 is
  refused; the label before the first `index:value` pair is optional and ignored),
  `application/x-npy` (1-D = one row, 2-D = rows; loaded with allow_pickle=False) and
  `application/json` (`{"instances": rows}`, a bare list of rows, or one flat row; each row may
  also be `{"features": [...]}`). The container refuses JSON; we accept it because it is what
  most HTTP clients send first.
- A missing Content-Type: the container treats it as libsvm, but boto3 omits the header when
  the caller sets none and most such callers send CSV. We look at the body instead: if its first
  line holds a `:` it is libsvm (what the container would have parsed), otherwise CSV. A body that
  parses one way can never parse the other, so no request changes meaning silently.
- Missing values: an empty CSV cell, `nan`, a JSON `null` and an absent libsvm index are missing
  (NaN, XGBoost's default). Infinite values, and finite values outside the float32 range (which
  XGBoost would see as infinite), are refused with the row and column.
- Bounds before parsing, so that no body makes a worker fail with a 500 (MemoryError,
  RecursionError, ValueError): a JSON body may nest at most `MAX_JSON_DEPTH` arrays and objects
  (rows need 4 at most) and hold no number of more than `MAX_NUMBER_DIGITS` digits; an `.npy`
  header must declare exactly as many bytes as the body holds after it.
- An empty body is a 400: a request that asks for no prediction is a client error to us (the
  container answers 204 with an empty body, which clients then fail to parse).
- Blank lines are allowed only at the end of a text body; a blank line between rows is refused
  rather than guessed to be a row of missing values.
- Output: `text/csv` (one row per line, newline-terminated; a multi-output row comma-joined),
  `application/json` (`{"predictions": [{"score": p}, ...]}`) and `application/jsonlines` (one
  `{"score": p}` per line). Values print as the container prints them: the repr of the Python
  float of the float32 value (`0.9700000286102295`). Rows and columns in messages are 1-based.

Nothing here imports XGBoost or aiohttp, so tests call these functions directly.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt

CSV: Final = "text/csv"
LIBSVM: Final = "text/libsvm"
NPY: Final = "application/x-npy"
JSON: Final = "application/json"
JSONLINES: Final = "application/jsonlines"

#: Every accepted request Content-Type, mapped to the format that decodes it.
CONTENT_TYPES: Final[dict[str, str]] = {
    CSV: CSV,
    LIBSVM: LIBSVM,
    "text/x-libsvm": LIBSVM,
    "libsvm": LIBSVM,
    NPY: NPY,
    JSON: JSON,
}

#: Every supported Accept, mapped to the Content-Type of the response.
ACCEPT_TYPES: Final[dict[str, str]] = {
    CSV: "text/csv; charset=utf-8",
    JSON: "application/json",
    JSONLINES: "application/jsonlines",
}

#: The Accept used when the request has none, an empty one, or `*/*`.
DEFAULT_ACCEPT: Final = CSV

#: The deepest nesting of JSON arrays and objects accepted (`{"instances": [{"features": [...]}]}`
#: is 4); deeper bodies are refused before parsing, which would recurse once per level.
MAX_JSON_DEPTH: Final = 8

#: The most digits in a row a JSON number may have (float32 needs 9 significant digits; Python
#: refuses to convert an integer of more than 4300 digits, with a ValueError).
MAX_NUMBER_DIGITS: Final = 100

_JSON_STRING: Final = re.compile(r'"(?:[^"\\]|\\.)*"')
#: Per byte: +1 opens an array or object, -1 closes one.
_BRACKET_STEPS: Final = np.zeros(256, dtype=np.int8)
_BRACKET_STEPS[[ord("["), ord("{")]] = 1
_BRACKET_STEPS[[ord("]"), ord("}")]] = -1

#: How much of an offending cell an error message quotes.
_CELL_QUOTE_CHARS: Final = 40

_FLOAT32_MAX: Final = float(np.finfo(np.float32).max)

Rows = npt.NDArray[np.float32]


class PayloadError(Exception):
    """A request the server refuses, with the HTTP status and a message meant for the client.

    Attributes:
        status: 400 (bad body), 406 (unsupported Accept) or 415 (unsupported Content-Type).
        message: one line that says what is wrong and where (rows and columns are 1-based).
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _bad(message: str) -> PayloadError:
    return PayloadError(400, message)


def _quote(text: str) -> str:
    if len(text) > _CELL_QUOTE_CHARS:
        text = text[:_CELL_QUOTE_CHARS] + "..."
    return json.dumps(text)


def _media_type(header: str) -> str:
    return header.split(";", 1)[0].strip().lower()


def request_format(content_type: str | None, body: bytes) -> str:
    """The input format of a request: one of CSV, LIBSVM, NPY or JSON.

    Args:
        content_type: the raw Content-Type header, or None when the request had none.
        body: the request body; looked at only when `content_type` is None or blank.

    Returns:
        the format constant that decodes the body.

    Raises:
        PayloadError: 415 naming the type and the supported ones.
    """
    if content_type is None or not content_type.strip():
        first_line = body[:4096].lstrip().split(b"\n", 1)[0]
        return LIBSVM if b":" in first_line else CSV
    media_type = _media_type(content_type)
    try:
        return CONTENT_TYPES[media_type]
    except KeyError:
        supported = ", ".join(CONTENT_TYPES)
        raise PayloadError(
            415, f"Content-Type {_quote(media_type)} is not supported; use one of: {supported}"
        ) from None


def negotiate_accept(accept: str | None, default: str = DEFAULT_ACCEPT) -> str:
    """The response format for an Accept header.

    Entries are taken in order of their q-value (stable, so equal q keeps the client's order);
    the first supported one wins. `*/*`, a missing or an empty header mean `default`; `text/*`
    and `application/*` mean the first supported type of that family. q=0 excludes an entry.

    Args:
        accept: the raw Accept header, or None.
        default: the format for `*/*` (SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT, or text/csv).

    Returns:
        a key of ACCEPT_TYPES.

    Raises:
        PayloadError: 406 naming the header and the supported types.
    """
    if accept is None or not accept.strip():
        return default
    entries: list[tuple[float, str]] = []
    for entry in accept.split(","):
        media_type, *parameters = (part.strip() for part in entry.split(";"))
        quality = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if media_type and quality > 0:
            entries.append((quality, media_type.lower()))
    entries.sort(key=lambda entry: -entry[0])
    for _, media_type in entries:
        if media_type in ACCEPT_TYPES:
            return media_type
        if media_type == "*/*":
            return default
        if media_type.endswith("/*"):
            family = media_type[:-1]
            for supported in ACCEPT_TYPES:
                if supported.startswith(family):
                    return supported
    supported = ", ".join(ACCEPT_TYPES)
    raise PayloadError(406, f"Accept {_quote(accept)} is not supported; use one of: {supported}")


def decode_rows(body: bytes, input_format: str, num_features: int) -> Rows:
    """Decode a request body into a 2-D float32 array of rows, NaN marking missing values.

    Args:
        body: the request body.
        input_format: CSV, LIBSVM, NPY or JSON (see `request_format`).
        num_features: the number of features the model expects; every row must have that many.

    Returns:
        a C-contiguous float32 array of shape (rows, num_features), at least one row.

    Raises:
        PayloadError: 400 with the first problem found (row and column 1-based).
    """
    if not body:
        raise _bad("empty request body")
    if input_format == NPY:
        return _decode_npy(body, num_features)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _bad(f"the body is not valid UTF-8 (byte {error.start + 1})") from None
    if input_format == JSON:
        return _decode_json(text, num_features)
    lines = _text_rows(text)
    if input_format == LIBSVM:
        return _decode_libsvm(lines, num_features)
    return _decode_csv(lines, num_features)


def _text_rows(text: str) -> list[str]:
    lines = text.split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise _bad("the body holds no rows")
    for index, line in enumerate(lines):
        if line.endswith("\r"):
            lines[index] = line[:-1]
        if not line.strip():
            raise _bad(f"row {index + 1} is empty")
    return lines


def _feature_count_error(row: int, count: int, num_features: int) -> PayloadError:
    return _bad(f"row {row} has {count} features, the model expects {num_features}")


def _decode_csv(lines: list[str], num_features: int) -> Rows:
    # Count separators before splitting, so a 100k-column row fails without 100k allocations.
    for index, line in enumerate(lines):
        count = line.count(",") + 1
        if count != num_features:
            raise _feature_count_error(index + 1, count, num_features)
    cells = ",".join(lines).split(",")
    try:
        values = np.array(cells, dtype=np.float64)
    except ValueError:
        values = _parse_cells_slowly(cells, num_features)
    return _finish(values.reshape(len(lines), num_features), lambda flat: cells[flat])


def _parse_cells_slowly(cells: list[str], num_features: int) -> npt.NDArray[np.float64]:
    """The fallback of `_decode_csv`: empty cells are missing; names the first bad cell."""
    values = np.empty(len(cells), dtype=np.float64)
    for flat, cell in enumerate(cells):
        if not cell.strip():
            values[flat] = math.nan
            continue
        try:
            values[flat] = float(cell)
        except ValueError:
            row, column = divmod(flat, num_features)
            raise _bad(
                f"row {row + 1}, column {column + 1}: {_quote(cell.strip())} is not a number"
            ) from None
    return values


def _decode_libsvm(lines: list[str], num_features: int) -> Rows:
    rows = np.full((len(lines), num_features), np.nan, dtype=np.float32)
    for index, line in enumerate(lines):
        row = index + 1
        tokens = line.split()
        if tokens and ":" not in tokens[0]:
            tokens = tokens[1:]  # the optional label
        seen: set[int] = set()
        for token in tokens:
            index_text, separator, value_text = token.partition(":")
            try:
                if not separator:
                    raise ValueError(token)
                feature = int(index_text)
            except ValueError:
                raise _bad(
                    f"row {row}: {_quote(token)} is not an index:value pair with an integer index"
                ) from None
            if feature < 1:
                raise _bad(f"row {row}: feature index {feature}; libsvm indices start at 1")
            if feature > num_features:
                raise _bad(
                    f"row {row} has feature index {feature}, "
                    f"the model expects {num_features} features"
                )
            if feature in seen:
                raise _bad(f"row {row} repeats feature index {feature}")
            seen.add(feature)
            try:
                value = float(value_text)
            except ValueError:
                raise _bad(
                    f"row {row}, column {feature}: {_quote(value_text)} is not a number"
                ) from None
            if math.isinf(value) or abs(value) > _FLOAT32_MAX:
                raise _not_finite(row, feature, value_text)
            rows[index, feature - 1] = value
    return rows


def _decode_npy(body: bytes, num_features: int) -> Rows:
    stream = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise _bad(
                f"the body is not a valid .npy array: format version {version[0]}.{version[1]}"
            )
    except ValueError as error:
        raise _bad(f"the body is not a valid .npy array: {error}") from None
    if len(shape) not in (1, 2):
        raise _bad(f"the array has {len(shape)} dimensions; send one row (1-D) or rows (2-D)")
    if dtype.kind not in "biuf":
        raise _bad(f"the array holds {dtype}; send numbers (bool, int, uint or float)")
    columns = shape[-1]
    if columns != num_features:
        raise _feature_count_error(1, columns, num_features)
    if len(shape) == 2 and shape[0] == 0:
        raise _bad("the array holds no rows")
    # Before np.load allocates what the header declares: 10**12 rows must not be tried.
    declared = math.prod(shape) * dtype.itemsize
    present = len(body) - stream.tell()
    if declared != present:
        raise _bad(
            f"the body is not a valid .npy array: its header declares shape {tuple(shape)} of"
            f" {dtype} ({declared} bytes of data) but the body holds {present} bytes after it"
        )
    try:
        array = np.load(io.BytesIO(body), allow_pickle=False)
    except ValueError as error:
        raise _bad(f"the body is not a valid .npy array: {error}") from None
    values = np.asarray(array, dtype=np.float64).reshape(-1, num_features)
    return _finish(values, lambda flat: repr(float(values.flat[flat])))


def _check_json_bounds(text: str) -> None:
    """Refuse a JSON body nested deeper than MAX_JSON_DEPTH or holding a number of more than
    MAX_NUMBER_DIGITS digits, without parsing it (strings hold neither: they are skipped)."""
    codes = np.frombuffer(_JSON_STRING.sub('""', text).encode("utf-8"), dtype=np.uint8)
    if codes.size == 0:
        return
    digits = (codes - ord("0") < 10).view(np.int8)
    edges = np.flatnonzero(np.diff(digits, prepend=0, append=0))  # where runs of digits start, end
    if edges.size and int((edges[1::2] - edges[::2]).max()) > MAX_NUMBER_DIGITS:
        raise _bad(f"the JSON body holds a number of more than {MAX_NUMBER_DIGITS} digits")
    steps = _BRACKET_STEPS[codes]
    steps = steps[steps != 0]
    if steps.size and int(np.cumsum(steps, dtype=np.int64).max()) > MAX_JSON_DEPTH:
        raise _bad(
            f"the JSON body nests arrays and objects more than {MAX_JSON_DEPTH} deep; rows need"
            " at most 4"
        )


def _decode_json(text: str, num_features: int) -> Rows:
    _check_json_bounds(text)
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise _bad(
            f"the body is not valid JSON: {error.msg} (line {error.lineno} column {error.colno})"
        ) from None
    except (RecursionError, ValueError) as error:  # a second line behind _check_json_bounds
        raise _bad(f"the JSON body cannot be decoded: {type(error).__name__}") from None
    rows: Any = document
    if isinstance(document, dict):
        if "instances" not in document:
            raise _bad('a JSON object body must hold the rows under "instances"')
        rows = document["instances"]
    if not isinstance(rows, list):
        raise _bad("the JSON rows must be a list of rows, or one row of numbers")
    if not rows:
        raise _bad("the body holds no rows")
    if not isinstance(rows[0], list | dict):
        rows = [rows]  # one flat row
    for index in range(len(rows)):
        if isinstance(rows[index], dict):
            rows[index] = rows[index].get("features")
        row = rows[index]
        if not isinstance(row, list):
            raise _bad(f'row {index + 1} is not a list of numbers (nor {{"features": [...]}})')
        if len(row) != num_features:
            raise _feature_count_error(index + 1, len(row), num_features)
    try:
        values = np.array(rows, dtype=np.float64)
    except (ValueError, TypeError):
        values = _parse_json_cells_slowly(rows, num_features)
    return _finish(values, lambda flat: repr(float(values.flat[flat])))


def _parse_json_cells_slowly(
    rows: Sequence[Sequence[Any]], num_features: int
) -> npt.NDArray[np.float64]:
    """The fallback of `_decode_json`: names the first cell that is not a number or null."""
    values = np.empty((len(rows), num_features), dtype=np.float64)
    for row_index, row in enumerate(rows):
        for column_index, cell in enumerate(row):
            try:
                values[row_index, column_index] = math.nan if cell is None else float(cell)
            except (ValueError, TypeError):
                raise _bad(
                    f"row {row_index + 1}, column {column_index + 1}: "
                    f"{_quote(json.dumps(cell))} is not a number"
                ) from None
    return values


def _finish(values: npt.NDArray[np.float64], cell_text: Any) -> Rows:
    """Convert to float32, refusing infinities and values float32 cannot hold.

    Args:
        values: the parsed rows, shape (rows, features).
        cell_text: flat index -> the text of that cell, for the error message.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        rows = np.ascontiguousarray(values, dtype=np.float32)
    infinite = np.isinf(rows)
    if infinite.any():
        flat = int(np.argmax(infinite.reshape(-1)))
        row, column = divmod(flat, rows.shape[1])
        raise _not_finite(row + 1, column + 1, str(cell_text(flat)).strip())
    return rows


def _not_finite(row: int, column: int, text: str) -> PayloadError:
    return _bad(
        f"row {row}, column {column}: {_quote(text)} is infinite or outside the float32 range; "
        "send nan or an empty cell for a missing value"
    )


def encode_predictions(predictions: npt.NDArray[np.float32], accept: str) -> bytes:
    """Encode predictions as the container does.

    Args:
        predictions: one value per row (shape (rows,)) or one vector per row (rows, outputs),
            e.g. every class probability of multi:softprob.
        accept: a key of ACCEPT_TYPES (see `negotiate_accept`).

    Returns:
        the response body; its Content-Type is ACCEPT_TYPES[accept].
    """
    # tolist() turns each float32 into the Python float of the same value, whose repr is the
    # container's text (0.9700000286102295).
    values: list[Any] = predictions.tolist()
    if accept == CSV:
        if predictions.ndim == 1:
            text = "\n".join(map(repr, values))
        else:
            text = "\n".join(",".join(map(repr, row)) for row in values)
        return (text + "\n").encode()
    if accept == JSON:
        return json.dumps({"predictions": [{"score": value} for value in values]}).encode()
    if accept == JSONLINES:
        return "".join(json.dumps({"score": value}) + "\n" for value in values).encode()
    raise ValueError(f"no encoder for {accept!r}")
