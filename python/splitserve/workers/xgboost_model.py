"""The built-in XGBoost server's model: which file of the model directory it loads, how (XGBoost
JSON, UBJSON or binary; a pickle only when allowed), and the predictor it serves with: XGBoost's
C API (`DensePredictor`) once it is shown to match Booster.predict on probe rows, else
`InplacePredictor`. Imported only by the server process (`xgboost_server`, whose docstring has
the rules for the model directory and the failures at start-up).
"""

from __future__ import annotations

import ctypes
import json
import logging
import math
import os
import pickle
import re
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from splitserve.workers.batching import Predictions, Rows

#: The file name SageMaker's XGBoost training writes, preferred when the directory holds others.
PREFERRED_MODEL_FILE: Final = "xgboost-model"

# The server's logger: these lines are the server's start-up, read in its output as such.
_log = logging.getLogger("splitserve.workers.xgboost_server")


class ModelLoadError(Exception):
    """The model directory holds no loadable model; the message names the file and the reason."""


class InplacePredictor:
    """Booster.inplace_predict on float32 rows, NaN = missing: XGBoost's public fast path.

    Thread-safe; XGBoost's C++ code releases the GIL.
    """

    name: Final = "inplace_predict"

    def __init__(self, booster: Any) -> None:
        self._booster = booster

    def __call__(self, rows: Rows) -> Predictions:
        """Predict rows of shape (n, features); returns n values or n vectors."""
        # The decoder checked the feature count; XGBoost's own check costs ~30 us a call.
        predictions = self._booster.inplace_predict(rows, validate_features=False)
        return np.asarray(predictions, dtype=np.float32)


class DensePredictor:
    """XGBoost's C API XGBoosterPredictFromDense, called through ctypes with a reused proxy DMatrix.

    The same C call inplace_predict makes, without its per-call costs: ~200 us of Python
    wrapper (type dispatch, JSON arguments, a class built per call to wrap the output) and a new
    proxy DMatrix whose context re-reads the cgroup CPU quota. Measured on a 13-feature,
    50-tree model: ~45 us a call instead of ~300 us. `load_model` uses it only after checking
    that it returns exactly Booster.predict's values, else it keeps `InplacePredictor`.

    Thread-safe: each thread has its own proxy DMatrix and output pointers, and XGBoost allows
    concurrent in-place predictions on one booster.
    """

    name: Final = "c-api"

    def __init__(self, booster: Any) -> None:
        from xgboost import core  # noqa: PLC0415 - the server process only

        self._library: Any = core._LIB  # the loaded libxgboost, whose C API is public
        self._check = core._check_call
        self._booster = booster  # owns the handle: freed when the Booster is collected
        self._booster_handle = booster.handle
        options = {
            "type": 0,  # values, not margins
            "training": False,
            "iteration_begin": 0,
            "iteration_end": 0,  # every tree
            "missing": math.nan,
            "strict_shape": False,
            "cache_id": 0,
        }
        self._options = json.dumps(options).encode()
        self._per_thread = threading.local()

    def _thread_state(self) -> _DenseCallState:
        state: _DenseCallState | None = getattr(self._per_thread, "state", None)
        if state is None:
            state = _DenseCallState()
            self._check(self._library.XGProxyDMatrixCreate(ctypes.byref(state.proxy)))
            self._per_thread.state = state
        return state

    def __call__(self, rows: Rows) -> Predictions:
        """Predict rows of shape (n, features); returns n values or n vectors."""
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        count, features = rows.shape
        interface = (
            b'{"data": [%d, true], "shape": [%d, %d], "strides": null, '
            b'"typestr": "<f4", "version": 3}' % (rows.ctypes.data, count, features)
        )
        state = self._thread_state()
        self._check(
            self._library.XGBoosterPredictFromDense(
                self._booster_handle,
                interface,
                self._options,
                state.proxy,
                ctypes.byref(state.shape),
                ctypes.byref(state.dimensions),
                ctypes.byref(state.result),
            )
        )
        shape = tuple(state.shape[axis] for axis in range(state.dimensions.value))
        # The buffer is XGBoost's (per thread) until this thread's next call: copy it out.
        return np.ctypeslib.as_array(state.result, shape=shape).copy()


class _DenseCallState:
    """One thread's proxy DMatrix and output pointers for `DensePredictor`."""

    def __init__(self) -> None:
        self.proxy = ctypes.c_void_p()
        self.shape = ctypes.POINTER(ctypes.c_uint64)()
        self.dimensions = ctypes.c_uint64()
        self.result = ctypes.POINTER(ctypes.c_float)()


Predictor = InplacePredictor | DensePredictor


@dataclass(frozen=True)
class LoadedModel:
    """A loaded booster and what the server reports about it.

    Attributes:
        path: the file it was loaded from.
        predict: rows -> predictions (`DensePredictor`, or `InplacePredictor` as fallback).
        num_features: how many features every row must have.
        objective: the learning objective, e.g. binary:logistic.
        nthread: the XGBoost thread count it predicts with.
    """

    path: Path
    predict: Predictor
    num_features: int
    objective: str
    nthread: int


def find_model_file(model_dir: Path) -> Path:
    """The model file of a directory, chosen as the module docstring describes.

    Raises:
        ModelLoadError: no file, or several without an `xgboost-model` among them.
    """
    if not model_dir.is_dir():
        raise ModelLoadError(f"{model_dir}: the model directory does not exist")
    candidates = sorted(
        path for path in model_dir.iterdir() if not path.name.startswith(".") and path.is_file()
    )
    preferred = model_dir / PREFERRED_MODEL_FILE
    if preferred in candidates:
        ignored = [path.name for path in candidates if path != preferred]
        if ignored:
            _log.warning(
                "%s: using %s and ignoring %s (the SageMaker container would average them all)",
                model_dir,
                PREFERRED_MODEL_FILE,
                ", ".join(ignored),
            )
        return preferred
    if not candidates:
        raise ModelLoadError(f"{model_dir}: no model file (expected {PREFERRED_MODEL_FILE})")
    if len(candidates) > 1:
        names = ", ".join(path.name for path in candidates)
        raise ModelLoadError(
            f"{model_dir}: several model files ({names}); splitserve serves exactly one model "
            f"and refuses to average several as the SageMaker XGBoost container does "
            f"(SAGEMAKER_INFERENCE_ENSEMBLE). Name the model {PREFERRED_MODEL_FILE} or remove "
            "the other files"
        )
    return candidates[0]


def _is_pickle(data: bytes) -> bool:
    # Protocols 2-5 start with PROTO; XGBoost's formats start with '{' (JSON, UBJSON) or binf.
    return len(data) >= 2 and data[0] == 0x80 and 2 <= data[1] <= 5


_XGBOOST_MESSAGE_PREFIX: Final = re.compile(r"^\[[0-9:]+\] \S+:[0-9]+: ")


#: What XGBoost's JSON parser quotes of the text it choked on.
_XGBOOST_QUOTED_INPUT: Final = re.compile(r',? got: "[^"]*"')


def _xgboost_reason(error: Exception) -> str:
    """XGBoost's message without its time and source prefix, its stack trace, and anything it
    quotes of the file: its next lines show the bytes around the error, and the message names
    the character it found. A failure reason must never show a file's contents (the artifact
    could be any file the gateway was tricked into reading)."""
    text = str(error).split("Stack trace:", 1)[0].strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = _XGBOOST_MESSAGE_PREFIX.sub("", lines[0]) if lines else ""
    return _XGBOOST_QUOTED_INPUT.sub("", first) or type(error).__name__


def load_model(model_dir: Path, *, allow_pickle: bool, nthread: int) -> LoadedModel:
    """Load the model of `model_dir` and check that it predicts.

    Args:
        model_dir: the model directory.
        allow_pickle: unpickle a pickled model instead of refusing it.
        nthread: XGBoost's thread count for prediction.

    Returns:
        the loaded model.

    Raises:
        ModelLoadError: with a message naming the file and the reason.
    """
    if not allow_pickle:
        # xgboost imports scikit-learn (and with it pandas) when it is installed, only for its
        # scikit-learn wrappers: 2.2 s and ~95 MB more per worker. Only an unpickled XGBModel
        # needs them. A None entry makes `import sklearn` fail, which xgboost handles.
        sys.modules.setdefault("sklearn", None)  # type: ignore[arg-type]
    # OpenMP's default lets idle pool threads spin; they then take the CPU from this process's
    # event loop and from its neighbours. Measured with nthread=2 on a busy 2-CPU host: a 1-row
    # predict took 2.3 ms spinning, 0.3 ms passive. Read by libgomp when xgboost loads it.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import xgboost  # noqa: PLC0415 - heavy; only the server process needs it

    path = find_model_file(model_dir)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ModelLoadError(f"{path}: cannot read: {error.strerror}") from None
    if _is_pickle(data):
        if not allow_pickle:
            raise ModelLoadError(
                f"{path}: the model is a Python pickle, and unpickling runs code stored in the "
                "file, so pickled models are refused. If you trust this file, start the gateway "
                "with --allow-pickle; better, re-save the model with Booster.save_model"
            )
        try:
            loaded = pickle.loads(data)  # the operator allowed it with --allow-pickle
        except Exception as error:
            # The exception's text may quote the file's bytes: name only its kind.
            raise ModelLoadError(f"{path}: cannot unpickle: {type(error).__name__}") from None
        if isinstance(loaded, xgboost.Booster):
            booster = loaded
        elif callable(getattr(loaded, "get_booster", None)):
            try:
                booster = loaded.get_booster()
            except Exception as error:
                raise ModelLoadError(f"{path}: the pickled model has no booster: {error}") from None
        else:
            raise ModelLoadError(
                f"{path}: the pickle holds a {type(loaded).__qualname__}, "
                "not an XGBoost Booster or scikit-learn XGBoost model"
            )
    else:
        booster = xgboost.Booster()
        try:
            booster.load_model(bytearray(data))
        except xgboost.core.XGBoostError as error:
            raise ModelLoadError(
                f"{path}: not an XGBoost model (JSON, UBJSON or binary): {_xgboost_reason(error)}"
            ) from None
    try:
        booster.set_param({"nthread": nthread})
        num_features = int(booster.num_features())
        objective = str(json.loads(booster.save_config())["learner"]["objective"]["name"])
        probes = _probe_rows(num_features)
        expected = [booster.predict(xgboost.DMatrix(rows, missing=math.nan)) for rows in probes]
    except Exception as error:
        reason = _xgboost_reason(error)
        raise ModelLoadError(f"{path}: the model does not predict: {reason}") from None
    predictor: Predictor = InplacePredictor(booster)
    try:
        dense = DensePredictor(booster)
        if all(
            np.array_equal(dense(rows), values, equal_nan=True)
            for rows, values in zip(probes, expected, strict=True)
        ):
            predictor = dense
        else:
            _log.warning("%s: the C API predicts differently; using inplace_predict", path)
    except Exception:
        _log.warning("%s: the C API path failed; using inplace_predict", path, exc_info=True)
    return LoadedModel(path, predictor, num_features, objective, nthread)


def _probe_rows(num_features: int) -> list[Rows]:
    """Rows to check a predictor against Booster.predict: values, missing values, sizes."""
    generator = np.random.default_rng(20240229)
    probes = []
    for count in (1, 7, 130):
        rows = generator.normal(scale=3.0, size=(count, num_features)).astype(np.float32)
        rows[generator.random(rows.shape) < 0.2] = np.nan
        probes.append(rows)
    return probes
