"""Request decoding and response encoding of the built-in XGBoost server, called directly."""

from __future__ import annotations

import io
import json

import numpy as np
import numpy.typing as npt
import pytest

from splitserve.workers import codecs
from splitserve.workers.codecs import PayloadError

FEATURES = 13
ROW = [float(value) for value in range(1, FEATURES + 1)]
ROW_CSV = ",".join(str(int(value)) for value in ROW)


def npy_bytes(array: npt.NDArray[np.generic]) -> bytes:
    """The .npy serialization of `array`."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def decode(body: bytes, input_format: str, features: int = FEATURES) -> npt.NDArray[np.float32]:
    """decode_rows, checking the invariants every result must keep."""
    rows = codecs.decode_rows(body, input_format, features)
    assert rows.dtype == np.float32
    assert rows.ndim == 2
    assert rows.shape[1] == features
    assert rows.flags.c_contiguous
    return rows


def refused(body: bytes, input_format: str, features: int = FEATURES) -> PayloadError:
    """The PayloadError decode_rows raises for `body`."""
    with pytest.raises(PayloadError) as caught:
        codecs.decode_rows(body, input_format, features)
    return caught.value


# --- Content-Type -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("text/csv", codecs.CSV),
        ("text/csv; charset=utf-8", codecs.CSV),
        ("TEXT/CSV", codecs.CSV),
        ("text/libsvm", codecs.LIBSVM),
        ("text/x-libsvm", codecs.LIBSVM),
        ("libsvm", codecs.LIBSVM),
        ("application/x-npy", codecs.NPY),
        ("application/json", codecs.JSON),
        ("Application/JSON ; charset=UTF-8", codecs.JSON),
    ],
)
def test_request_format_reads_the_media_type(content_type: str, expected: str) -> None:
    assert codecs.request_format(content_type, b"1,2") == expected


@pytest.mark.parametrize(
    ("content_type", "body", "expected"),
    [
        (None, b"1,2,3\n", codecs.CSV),
        ("", b"1,2,3\n", codecs.CSV),
        (None, b"1 1:0.5 3:2\n", codecs.LIBSVM),
        (None, b"\n 1:0.5\n", codecs.LIBSVM),
        (None, b"", codecs.CSV),
    ],
)
def test_a_missing_content_type_is_csv_unless_the_body_is_libsvm(
    content_type: str | None, body: bytes, expected: str
) -> None:
    assert codecs.request_format(content_type, body) == expected


@pytest.mark.parametrize(
    "content_type",
    ["application/x-recordio-protobuf", "application/octet-stream", "text/plain", "image/png"],
)
def test_an_unsupported_content_type_is_415_naming_it_and_the_supported(content_type: str) -> None:
    with pytest.raises(PayloadError) as caught:
        codecs.request_format(content_type + "; charset=utf-8", b"1")
    assert caught.value.status == 415
    assert content_type in caught.value.message
    for supported in ("text/csv", "text/libsvm", "application/x-npy", "application/json"):
        assert supported in caught.value.message


# --- Accept -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, codecs.CSV),
        ("", codecs.CSV),
        ("*/*", codecs.CSV),
        ("text/csv", codecs.CSV),
        ("application/json", codecs.JSON),
        ("application/jsonlines", codecs.JSONLINES),
        ("Application/JSON; charset=utf-8", codecs.JSON),
        ("image/png, application/json", codecs.JSON),
        ("text/csv;q=0.5, application/json", codecs.JSON),
        ("text/csv;q=0.5, application/jsonlines;q=0.9, application/json;q=0.1", codecs.JSONLINES),
        ("application/json, text/csv", codecs.JSON),
        ("application/json;q=0, text/csv", codecs.CSV),
        ("image/png, */*", codecs.CSV),
        ("application/*", codecs.JSON),
        ("text/*", codecs.CSV),
    ],
)
def test_negotiate_accept_picks_the_first_supported_by_quality(
    accept: str | None, expected: str
) -> None:
    assert codecs.negotiate_accept(accept) == expected


@pytest.mark.parametrize("accept", [None, "", "*/*", "image/png, */*"])
def test_the_default_accept_replaces_csv_for_a_wildcard(accept: str | None) -> None:
    assert codecs.negotiate_accept(accept, default=codecs.JSONLINES) == codecs.JSONLINES


@pytest.mark.parametrize(
    "accept", ["image/png", "application/x-recordio-protobuf", "text/csv;q=0", "audio/*"]
)
def test_an_unsupported_accept_is_406_naming_it(accept: str) -> None:
    with pytest.raises(PayloadError) as caught:
        codecs.negotiate_accept(accept)
    assert caught.value.status == 406
    assert accept in caught.value.message
    assert "application/jsonlines" in caught.value.message


# --- CSV ----------------------------------------------------------------------------------------


def test_csv_one_row() -> None:
    rows = decode(ROW_CSV.encode(), codecs.CSV)
    assert rows.tolist() == [ROW]


@pytest.mark.parametrize(
    "body",
    [
        f"{ROW_CSV}\n{ROW_CSV}\n",
        f"{ROW_CSV}\n{ROW_CSV}",
        f"{ROW_CSV}\r\n{ROW_CSV}\r\n",
        f"{ROW_CSV}\n{ROW_CSV}\n\n \n",
        f"{ROW_CSV.replace(',', ' , ')}\n{ROW_CSV}\n",
    ],
)
def test_csv_many_rows_trailing_blank_lines_crlf_and_spaces(body: str) -> None:
    assert decode(body.encode(), codecs.CSV).tolist() == [ROW, ROW]


@pytest.mark.parametrize("missing", ["", "nan", "NaN", " ", "-nan"])
def test_csv_empty_and_nan_cells_are_missing(missing: str) -> None:
    cells = [str(value) for value in ROW]
    cells[2] = missing
    cells[FEATURES - 1] = missing
    rows = decode(",".join(cells).encode(), codecs.CSV)
    assert np.isnan(rows[0, 2])
    assert np.isnan(rows[0, FEATURES - 1])
    assert np.count_nonzero(np.isnan(rows)) == 2


def test_csv_keeps_float32_values_exactly() -> None:
    values = np.random.default_rng(3).normal(size=(5, FEATURES)).astype(np.float32)
    body = "\n".join(",".join(repr(float(value)) for value in row) for row in values)
    assert np.array_equal(decode(body.encode(), codecs.CSV), values)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"1,2,3\n", "row 1 has 3 features, the model expects 13"),
        (f"{ROW_CSV}\n1,2\n".encode(), "row 2 has 2 features, the model expects 13"),
        (f"{ROW_CSV},14\n".encode(), "row 1 has 14 features, the model expects 13"),
        (f"{ROW_CSV}\n{ROW_CSV},1\n{ROW_CSV}".encode(), "row 2 has 14 features"),
        (b"", "empty request body"),
        (b"\n\n  \n", "the body holds no rows"),
        (f"{ROW_CSV}\n\n{ROW_CSV}\n".encode(), "row 2 is empty"),
        (
            f"{ROW_CSV}\n{ROW_CSV.replace('3', 'abc', 1)}".encode(),
            'row 2, column 3: "abc" is not a number',
        ),
        (ROW_CSV.replace("1", "0x1f", 1).encode(), 'row 1, column 1: "0x1f" is not a number'),
        (
            ROW_CSV.replace("5", "inf", 1).encode(),
            'row 1, column 5: "inf" is infinite or outside the float32 range',
        ),
        (ROW_CSV.replace("5", "-Infinity", 1).encode(), 'row 1, column 5: "-Infinity" is'),
        (ROW_CSV.replace("7", "1e39", 1).encode(), 'row 1, column 7: "1e39" is infinite or'),
        (b"f1,f2,f3,f4,f5,f6,f7,f8,f9,f10,f11,f12,f13\n", 'row 1, column 1: "f1" is not'),
        (b"1,2,\xff\xfe", "the body is not valid UTF-8 (byte 5)"),
    ],
)
def test_csv_refusals_name_the_row_and_column(body: bytes, message: str) -> None:
    error = refused(body, codecs.CSV)
    assert error.status == 400
    assert message in error.message


def test_csv_quotes_a_long_bad_cell_truncated() -> None:
    cells = [str(value) for value in ROW]
    cells[0] = "x" * 5000
    error = refused(",".join(cells).encode(), codecs.CSV)
    assert "row 1, column 1" in error.message
    assert len(error.message) < 200
    assert "..." in error.message


def test_csv_a_100k_column_row_fails_on_the_feature_count() -> None:
    # How fast is for benches/bench_worker.py; here, that the count is what refuses it.
    body = ",".join(["1.5"] * 100_000).encode()
    error = refused(body, codecs.CSV)
    assert error.message == "row 1 has 100000 features, the model expects 13"


# --- libsvm -------------------------------------------------------------------------------------


def test_libsvm_indices_are_one_based_and_absent_features_are_missing() -> None:
    rows = decode(b"1 1:0.5 3:2 13:-1\n0 2:4\n", codecs.LIBSVM)
    expected = np.full((2, FEATURES), np.nan, dtype=np.float32)
    expected[0, [0, 2, 12]] = [0.5, 2, -1]
    expected[1, 1] = 4
    assert np.array_equal(rows, expected, equal_nan=True)


@pytest.mark.parametrize("body", [b"1:0.5 3:2\n", b"0 1:0.5 3:2\n", b"  1.5\t1:0.5  3:2 \r\n\n"])
def test_libsvm_label_is_optional(body: bytes) -> None:
    rows = decode(body, codecs.LIBSVM)
    assert rows[0, 0] == 0.5
    assert rows[0, 2] == 2
    assert np.count_nonzero(~np.isnan(rows)) == 2


def test_libsvm_a_label_only_row_is_all_missing() -> None:
    rows = decode(b"1 1:1\n0\n", codecs.LIBSVM)
    assert np.isnan(rows[1]).all()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"1 0:0.5\n", "row 1: feature index 0; libsvm indices start at 1"),
        (b"1 1:1\n1 14:0.5\n", "row 2 has feature index 14, the model expects 13 features"),
        (b"1 2:1 2:3\n", "row 1 repeats feature index 2"),
        (b"1 a:1\n", 'row 1: "a:1" is not an index:value pair with an integer index'),
        (b"1 1:1 2\n", 'row 1: "2" is not an index:value pair'),
        (b"1 3:x\n", 'row 1, column 3: "x" is not a number'),
        (b"1 3:inf\n", 'row 1, column 3: "inf" is infinite'),
        (b"1 3:\n", 'row 1, column 3: "" is not a number'),
        (b"1 1:1\n\n1 1:1\n", "row 2 is empty"),
        (b"", "empty request body"),
    ],
)
def test_libsvm_refusals(body: bytes, message: str) -> None:
    error = refused(body, codecs.LIBSVM)
    assert error.status == 400
    assert message in error.message


def test_libsvm_a_huge_row_fails_at_the_first_bad_index() -> None:
    body = ("1 " + " ".join(f"{index}:1" for index in range(1, 100_001))).encode()
    error = refused(body, codecs.LIBSVM)
    assert "feature index 14" in error.message


# --- npy ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.uint8, np.float16])
def test_npy_two_dimensions_are_rows_of_any_numeric_type(dtype: type[np.generic]) -> None:
    values = np.arange(2 * FEATURES).reshape(2, FEATURES).astype(dtype)
    assert np.array_equal(decode(npy_bytes(values), codecs.NPY), values.astype(np.float32))


def test_npy_one_dimension_is_one_row() -> None:
    values = np.array(ROW, dtype=np.float32)
    assert decode(npy_bytes(values), codecs.NPY).tolist() == [ROW]


def test_npy_fortran_order_bool_and_nan() -> None:
    values = np.asfortranarray(np.ones((3, FEATURES)))
    values[1, 4] = np.nan
    rows = decode(npy_bytes(values), codecs.NPY)
    assert np.isnan(rows[1, 4])
    assert np.nansum(rows) == 3 * FEATURES - 1
    flags = np.zeros((1, FEATURES), dtype=bool)
    assert decode(npy_bytes(flags), codecs.NPY).tolist() == [[0.0] * FEATURES]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (npy_bytes(np.zeros((2, 3))), "row 1 has 3 features, the model expects 13"),
        (npy_bytes(np.zeros(100_000)), "row 1 has 100000 features, the model expects 13"),
        (npy_bytes(np.zeros((2, 2, FEATURES))), "the array has 3 dimensions"),
        (npy_bytes(np.array(1.0)), "the array has 0 dimensions"),
        (npy_bytes(np.zeros((0, FEATURES))), "the array holds no rows"),
        (npy_bytes(np.array([[object()] * FEATURES])), "the array holds object"),
        (npy_bytes(np.array([["a"] * FEATURES])), "the array holds <U1"),
        (npy_bytes(np.zeros((1, FEATURES), dtype=np.complex64)), "the array holds complex64"),
        (npy_bytes(np.zeros(FEATURES, dtype="f4,f4")), "the array holds"),
        (b"1,2,3", "the body is not a valid .npy array"),
        (npy_bytes(np.zeros((4, FEATURES)))[:-9], "the body is not a valid .npy array"),
        (npy_bytes(np.full(FEATURES, np.inf)), 'row 1, column 1: "inf" is infinite'),
        (npy_bytes(np.full(FEATURES, 1e300)), 'row 1, column 1: "1e+300" is infinite'),
        (b"", "empty request body"),
    ],
)
def test_npy_refusals(body: bytes, message: str) -> None:
    error = refused(body, codecs.NPY)
    assert error.status == 400
    assert message in error.message


# --- JSON ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "document",
    [
        {"instances": [ROW, ROW]},
        [ROW, ROW],
        {"instances": [{"features": ROW}, {"features": ROW}]},
        [{"features": ROW}, ROW],
    ],
)
def test_json_rows(document: object) -> None:
    assert decode(json.dumps(document).encode(), codecs.JSON).tolist() == [ROW, ROW]


@pytest.mark.parametrize("document", [ROW, {"instances": ROW}])
def test_json_a_flat_list_is_one_row(document: object) -> None:
    assert decode(json.dumps(document).encode(), codecs.JSON).tolist() == [ROW]


def test_json_null_and_nan_are_missing_and_numeric_strings_are_numbers() -> None:
    cells: list[object] = list(ROW)
    cells[0] = None
    cells[1] = "2.5"
    body = json.dumps([cells]).replace(", 3.0,", ", NaN,").encode()
    rows = decode(body, codecs.JSON)
    assert np.isnan(rows[0, 0])
    assert rows[0, 1] == 2.5
    assert np.isnan(rows[0, 2])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (json.dumps([[1, 2, 3]]), "row 1 has 3 features, the model expects 13"),
        (json.dumps({"instances": [ROW, ROW[:-1]]}), "row 2 has 12 features"),
        (json.dumps([ROW, [*ROW[:4], "abc", *ROW[5:]]]), 'row 2, column 5: "\\"abc\\"" is not'),
        (json.dumps([[*ROW[:2], [1], *ROW[3:]]]), "row 1, column 3: "),
        (json.dumps([[*ROW[:2], {"a": 1}, *ROW[3:]]]), "row 1, column 3: "),
        (json.dumps([ROW]).replace(", 3.0,", ", Infinity,"), 'row 1, column 3: "inf" is infinite'),
        (json.dumps([ROW]).replace(", 3.0,", ", 1e39,"), 'row 1, column 3: "1e+39" is infinite'),
        (json.dumps({"rows": [ROW]}), 'the rows under "instances"'),
        (json.dumps({"instances": []}), "the body holds no rows"),
        (json.dumps([]), "the body holds no rows"),
        (json.dumps("abc"), "the JSON rows must be a list"),
        (json.dumps([ROW, 5]), "row 2 is not a list of numbers"),
        (json.dumps([{"feature": ROW}]), "row 1 is not a list of numbers"),
        ("[1, 2", "the body is not valid JSON"),
        ("", "empty request body"),
    ],
)
def test_json_refusals(body: str, message: str) -> None:
    error = refused(body.encode(), codecs.JSON)
    assert error.status == 400
    assert message in error.message


def test_json_invalid_utf8_is_refused() -> None:
    error = refused(b'[[1, "\xff"]]', codecs.JSON)
    assert "not valid UTF-8" in error.message


# --- encoding -----------------------------------------------------------------------------------

SCORES = np.array([0.0254181120544672, 0.97], dtype=np.float32)
PROBABILITIES = np.array([[0.1, 0.7, 0.2], [0.3, 0.3, 0.4]], dtype=np.float32)


def test_csv_output_is_one_value_per_line_as_the_container_prints_it() -> None:
    body = codecs.encode_predictions(SCORES, codecs.CSV)
    assert body == b"0.0254181120544672\n0.9700000286102295\n"
    assert [np.float32(float(line)) for line in body.decode().split()] == SCORES.tolist()


def test_csv_output_of_vectors_is_comma_joined() -> None:
    body = codecs.encode_predictions(PROBABILITIES, codecs.CSV)
    lines = body.decode().splitlines()
    assert body.endswith(b"\n")
    assert len(lines) == 2
    assert [[float(cell) for cell in line.split(",")] for line in lines] == PROBABILITIES.tolist()


def test_json_output() -> None:
    body = codecs.encode_predictions(SCORES, codecs.JSON)
    assert body == (
        b'{"predictions": [{"score": 0.0254181120544672}, {"score": 0.9700000286102295}]}'
    )
    vectors = json.loads(codecs.encode_predictions(PROBABILITIES, codecs.JSON))
    assert vectors == {"predictions": [{"score": row} for row in PROBABILITIES.tolist()]}


def test_jsonlines_output() -> None:
    body = codecs.encode_predictions(SCORES, codecs.JSONLINES)
    assert body == b'{"score": 0.0254181120544672}\n{"score": 0.9700000286102295}\n'
    lines = codecs.encode_predictions(PROBABILITIES, codecs.JSONLINES).decode().splitlines()
    assert [json.loads(line)["score"] for line in lines] == PROBABILITIES.tolist()


def test_every_accept_has_a_content_type_and_an_encoder() -> None:
    for accept, content_type in codecs.ACCEPT_TYPES.items():
        assert content_type.startswith(accept)
        assert codecs.encode_predictions(SCORES, accept)


# --- bounds checked before parsing ----------------------------------------------------------------


def test_deeply_nested_json_is_a_400_not_a_recursion_error() -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    error = refused(body, codecs.JSON)
    assert error.status == 400
    assert f"more than {codecs.MAX_JSON_DEPTH} deep" in error.message
    nested = b'{"instances": [{"features": ' + json.dumps(ROW).encode() + b"}]}"
    assert decode(nested, codecs.JSON).shape == (1, FEATURES)
    # Brackets inside strings are not structure.
    padded = (
        b'{"note": "[[[[[[[[[[[[[[[[\\"[[[[", "instances": [' + json.dumps(ROW).encode() + b"]}"
    )
    assert decode(padded, codecs.JSON).shape == (1, FEATURES)


def test_a_5000_digit_json_number_is_a_400_not_a_value_error() -> None:
    row = ["1" * 5000, *(str(value) for value in ROW[1:])]
    error = refused(("[" + ",".join(row) + "]").encode(), codecs.JSON)
    assert error.status == 400
    assert f"more than {codecs.MAX_NUMBER_DIGITS} digits" in error.message
    # At the limit the number parses (and is then refused as outside float32, a 400 too).
    row[0] = "1" * codecs.MAX_NUMBER_DIGITS
    error = refused(("[" + ",".join(row) + "]").encode(), codecs.JSON)
    assert "outside the float32 range" in error.message


def test_other_formats_take_huge_numbers_as_400s() -> None:
    huge = "1" * 5000
    assert (
        "outside the float32 range"
        in refused(",".join([huge, *ROW_CSV.split(",")[1:]]).encode(), codecs.CSV).message
    )
    assert "integer index" in refused(f"{huge}:1".encode(), codecs.LIBSVM).message


def test_an_npy_header_declaring_more_rows_than_sent_is_a_400() -> None:
    body = npy_bytes(np.zeros((2, FEATURES), dtype=np.float32))
    lying = body.replace(b"(2, 13)", b"(1000000000000, 13)")
    assert lying != body
    error = refused(lying, codecs.NPY)
    assert error.status == 400
    assert "declares shape (1000000000000, 13)" in error.message
    assert error.message.startswith("the body is not a valid .npy array")
    error = refused(body[:-4], codecs.NPY)
    assert "holds 100 bytes after it" in error.message
    assert decode(body, codecs.NPY).shape == (2, FEATURES)
