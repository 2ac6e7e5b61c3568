"""An SVM model file: plain HDF5 arrays and attributes (never a pickle) with a SHA-256 over them.

Reading and writing the file needs neither scikit-learn nor the estimator, so ``vggfeat info``
shows a model without importing scikit-learn (a second or more); :mod:`vggfeat.svm` builds its
:class:`~vggfeat.svm.LinearSVM` from what :func:`read_model_file` returns.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from .errors import VggfeatError
from .files import open_h5, open_hdf5, written_atomically
from .store import SVM_MODEL_FORMAT, kind_of

MODEL_FORMAT_VERSION = 1
# Classes that were numbers or booleans (the Python API's fit(X, [3, 7, 12])) are stored as text, as
# names are, with the attribute "classes_dtype", so that a loaded model predicts the values it was fitted on.
NUMBER_CLASSES = ("int64", "float64", "bool")


@dataclass
class ModelFile:
    """What a model file holds, checked: the weights, the class names and the attributes (JSON
    attributes decoded)."""

    coef: np.ndarray  # [classes, dim] float64
    intercept: np.ndarray  # [classes] float64
    classes: list[str]
    params: dict  # the estimator's parameters (normalize, multilabel, ...; holdout and part_dims only where set)
    C: float  # the C it was trained with
    cv_scores: dict[float, float]  # C -> cross-validation (or hold-out) score; empty where C was given
    extraction_configs: list[dict]  # one per fused features file, in order
    training: dict  # files, rows, labels, date: for the record
    checksum: str  # of its content (:func:`_checksum`): which model it is, for the files made with it
    command: str = ""  # the command line that trained it, where one did
    classes_dtype: str = ""  # "int64", "float64" or "bool" where the classes were such values (stored as text), else ""


def write_model_file(path: str | os.PathLike, coef: np.ndarray, intercept: np.ndarray, classes: list[str],
                     attrs: dict) -> None:
    """Write the arrays and ``attrs`` (plain values) to ``path``, whole or not at all, with a checksum."""
    with written_atomically(Path(path)) as temporary, open_h5(temporary, "w") as f:
        f["coef"] = np.asarray(coef, dtype=np.float64)
        f["intercept"] = np.asarray(intercept, dtype=np.float64)
        f.create_dataset("classes", data=[str(c) for c in classes], dtype=h5py.string_dtype("utf-8"))
        f.attrs.update({"format": SVM_MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION, **attrs})
        f.attrs["checksum"] = _checksum(f)


def read_model_file(path: str | os.PathLike) -> ModelFile:
    """Read a model file; refuse other files, other format versions and edited or damaged content."""
    path = Path(path)
    try:
        with open_hdf5(path, "model") as f:
            if f.attrs.get("format") != SVM_MODEL_FORMAT:
                raise VggfeatError(f"{path} is not a vggfeat SVM model file{kind_of(f)}")
            if f.attrs.get("format_version") != MODEL_FORMAT_VERSION:
                raise VggfeatError(f"{path} has model format {jsonable(f.attrs.get('format_version'))!r}; this vggfeat "
                                   f"reads {MODEL_FORMAT_VERSION}")
            _check_layout(f, path)
            if f.attrs.get("checksum") != _checksum(f):
                raise VggfeatError(f"{path} was modified or is damaged (checksum mismatch); retrain the model")
            model = ModelFile(
                coef=f["coef"][:], intercept=f["intercept"][:], classes=list(f["classes"].asstr()[:]),
                params=_params(f), C=float(f.attrs["C_chosen"]),
                cv_scores={float(c): float(s) for c, s in json.loads(f.attrs["cv_scores"]).items()},
                extraction_configs=json.loads(f.attrs["extraction_configs"]), training=json.loads(f.attrs["training"]),
                checksum=str(f.attrs["checksum"]), command=str(f.attrs.get("command", "")),
                classes_dtype=str(f.attrs.get("classes_dtype", "")))
    except VggfeatError:
        raise
    except (OSError, KeyError, ValueError, TypeError, AttributeError, RecursionError) as error:
        raise VggfeatError(f"{path} is not a readable vggfeat SVM model file ({type(error).__name__}: "
                           f"{str(error)[:200]})") from None
    _check_values(model, path)
    return model


def _params(f: h5py.File) -> dict:
    """The estimator's parameters: the attribute params, with the hold-out that C was chosen on
    where there was one (an attribute of its own, for the vggfeat versions before it to read the
    model: :data:`vggfeat.svm._UNSET_UNWRITTEN`; in params, of the files written between)."""
    params = json.loads(f.attrs["params"])
    if "holdout" in f.attrs and isinstance(params, dict):
        params["holdout"] = jsonable(f.attrs["holdout"])
    return params


def _check_layout(f: h5py.File, path: Path) -> None:
    """Refuse, before any array is read (the checksum reads them all), a file laid out otherwise
    than :func:`write_model_file` lays it out: its three arrays of agreeing shapes, whole in the
    file (a compressed array of a 75 KB file can declare gigabytes), nothing else."""
    if sorted(f.keys()) != ["classes", "coef", "intercept"] or not all(isinstance(f[name], h5py.Dataset) for name in f):
        raise VggfeatError(f"{path} is damaged: it holds {', '.join(sorted(f.keys())) or 'nothing'}, where a model holds "
                           "the datasets classes, coef and intercept")
    coef, intercept, classes = f["coef"], f["intercept"], f["classes"]
    if coef.ndim != 2 or intercept.shape != coef.shape[:1] or classes.shape != coef.shape[:1]:
        raise VggfeatError(f"{path} is damaged: coefficient, intercept and class counts disagree")
    if any(data.chunks is not None or data.external or data.is_virtual for data in (coef, intercept, classes)):
        raise VggfeatError(f"{path} was not written by vggfeat (its arrays are compressed, chunked or elsewhere)")


def _check_values(model: ModelFile, path: Path) -> None:
    """Refuse a model whose attributes are not of their kinds, or whose values no training gives."""
    kinds = (("params", model.params, dict), ("training", model.training, dict),
             ("extraction_configs", model.extraction_configs, list))
    wrong = [name for name, value, kind in kinds if not isinstance(value, kind)]
    if wrong or not all(isinstance(config, dict) for config in model.extraction_configs):
        raise VggfeatError(f"{path} is not a readable vggfeat SVM model file ({', '.join(wrong) or 'extraction_configs'} "
                           "not of its kind)")
    flags = [name for name in ("multilabel", "normalize") if not isinstance(model.params.get(name, False), bool)
             and not (name == "normalize" and model.params[name] == "parts")]
    if flags:
        raise VggfeatError(f"{path} is not a readable vggfeat SVM model file ({', '.join(flags)} not true or false)")
    holdout = model.params.get("holdout")
    if holdout is not None and not (isinstance(holdout, (int, float)) and not isinstance(holdout, bool) and 0 < holdout < 1):
        raise VggfeatError(f"{path} is not a readable vggfeat SVM model file (holdout {str(holdout)[:40]} not a fraction)")
    parts = model.params.get("part_dims")
    if model.params.get("normalize") == "parts" and not (
            isinstance(parts, list) and parts and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in parts)
            and sum(parts) == model.coef.shape[1]):  # the scores would be of other rows than those it was trained on
        raise VggfeatError(f"{path} is damaged: it normalises each part of its rows, and its part_dims {str(parts)[:60]} "
                           f"are not the parts of its {model.coef.shape[1]} dimensions")
    if model.classes_dtype not in ("", *NUMBER_CLASSES):
        raise VggfeatError(f"{path} is not a readable vggfeat SVM model file (classes of type {model.classes_dtype!r})")
    if not model.classes:
        raise VggfeatError(f"{path} is damaged: it holds no class")
    if len(set(model.classes)) != len(model.classes):
        raise VggfeatError(f"{path} is damaged: a class is named twice")
    if model.classes_dtype and not all(map(_NUMBER_TEXT[model.classes_dtype], model.classes)):
        raise VggfeatError(f"{path} is damaged: its classes are not {model.classes_dtype} values, as it says")
    if not (np.isfinite(model.coef).all() and np.isfinite(model.intercept).all() and np.isfinite(model.C)):
        raise VggfeatError(f"{path} is damaged: its weights hold NaN or infinite values")


def _is_number(text: str, kind: type) -> bool:
    try:
        kind(text)
    except ValueError:
        return False
    return True


# Whether a class's text is a value of each NUMBER_CLASSES kind, as load_model turns it into one.
_NUMBER_TEXT = {"int64": lambda text: _is_number(text, int), "float64": lambda text: _is_number(text, float),
                "bool": lambda text: text in ("True", "False")}


def model_summary(path: str | os.PathLike) -> dict:
    """What a model file holds, for ``vggfeat info``: :func:`read_model_file`'s checks, then its
    classes, dimension, C and training record."""
    model = read_model_file(path)
    return {"format": SVM_MODEL_FORMAT, "path": str(path), "classes": model.classes,
            "multilabel": bool(model.params.get("multilabel")), "dim": int(model.coef.shape[1]), "C": model.C,
            "C_by_cross_validation": bool(model.cv_scores), "C_chosen": how_C_was_chosen(model.params, model.cv_scores),
            "holdout": model.params.get("holdout"), "normalize": model.params.get("normalize", True),
            "part_dims": model.params.get("part_dims"),
            "solver": model.params.get("solver", "liblinear"),
            "extraction_configs": model.extraction_configs, "training": model.training, "command": model.command}


def how_C_was_chosen(params: dict, cv_scores: dict) -> str:
    """How a model's C came, in words: "fixed", "chosen by 3-fold CV" or "chosen on a 20% hold-out"."""
    if not cv_scores:
        return "fixed"
    if params.get("holdout") is not None:
        return f"chosen on a {100 * params['holdout']:g}% hold-out"
    return f"chosen by {params.get('cv', 3)}-fold CV"


def normalised_words(normalize: bool | str, part_dims: list[int] | None) -> str:
    """How a model's rows are normalised, for a line that describes it: ", L2-normalised", ", each
    part (4096 + 4096) L2-normalised" or ""."""
    if normalize == "parts":
        return f", each part ({' + '.join(map(str, part_dims or []))}) L2-normalised"
    return ", L2-normalised" if normalize else ""


def jsonable(value):
    """HDF5 attribute values (numpy scalars and arrays, bytes) as plain JSON-able Python values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (tuple, list, np.ndarray)):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.decode()
    return value


def _checksum(f: h5py.File) -> str:
    """SHA-256 over every dataset (name, dtype, shape, bytes) and every attribute but the checksum."""
    digest = hashlib.sha256()
    for name in sorted(f.keys()):
        data = f[name]
        values = list(data.asstr()[:]) if h5py.check_string_dtype(data.dtype) else data[:]
        digest.update(f"{name}|{data.dtype}|{data.shape}|".encode())
        digest.update(json.dumps(values).encode() if isinstance(values, list) else np.ascontiguousarray(values).tobytes())
    for key in sorted(k for k in f.attrs if k != "checksum"):
        digest.update(f"{key}={jsonable(f.attrs[key])!r};".encode())
    return digest.hexdigest()
