"""A posteriors file (``vggfeat classify``'s) read back: refused where it holds what no classifier
writes, its attributes before any row is read (:func:`check_attributes`), its rows a block at a
time as they are read (:func:`check_block`), or all before it is rewritten (:func:`check_rows`),
so that an edited or damaged file never puts NaN or classes that are not there into a CSV."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from .errors import VggfeatError
from .files import plain_value, whole_number
from .store import open_features_file
from .textfiles import as_utf8


# What to do with a damaged posteriors file: one of a CSV's own (OUTPUT.posteriors.h5), one of a user's.
REMOVE_AND_RERUN = "remove it and run the same classify command again"
CLASSIFY_AGAIN = "classify its images into it again (--overwrite)"


def check_attributes(f: h5py.File, path: str | os.PathLike, again: str) -> None:
    """Refuse, before a row is read, a posteriors file whose attributes classify could not have
    written (edited by hand, damaged): a ``dim`` that is not the values of each row (a dim of 1e9
    would be a list of 1e9 class names), a ``keep_top`` that is not half of them, and ``scales``,
    ``dense``, ``multi_crop`` or ``model`` not of their kinds. ``again``: what to do."""
    attrs, width = f.attrs, f["features"].shape[1]
    dim, scales = plain_value(attrs.get("dim", width)), plain_value(attrs.get("scales", []))
    kept = plain_value(attrs["keep_top"]) if "keep_top" in attrs else None
    problem = None
    if whole_number(dim) != width:
        problem = f"its dim attribute {repr(dim)[:40]} is not the {width} values of each of its rows"
    elif kept is not None and (whole_number(kept) is None or kept < 1 or 2 * kept != width):
        problem = f"its keep_top attribute {repr(kept)[:40]} is not half the {width} values of each of its rows"
    elif not isinstance(scales, list) or not all(whole_number(scale) is not None and scale > 0 for scale in scales):
        problem = f"its scales attribute {repr(scales)[:40]} is not a list of image sizes"
    elif not all(isinstance(plain_value(attrs.get(key, False)), bool) for key in ("dense", "multi_crop")):
        problem = "its dense or multi_crop attribute is not true or false"
    elif not isinstance(plain_value(attrs.get("model", "")), str):
        problem = "its model attribute is not a network's name"
    if problem is not None:
        raise VggfeatError(f"{path} is damaged: {problem}; {again}")


def check_block(block: np.ndarray, kept: int | None, classes: int, paths: Sequence[str], files: Sequence[h5py.File],
                start: int, again: str) -> None:
    """Refuse a block of posteriors (rows of ``files[0]`` from ``start``, averaged with those of
    ``files[1:]``) holding a value that no classifier writes: NaN, an infinite value or one outside
    0..1, or, in a file of each image's top ``kept`` classes, a class that is not one of
    ``classes``. Written to a CSV, NaN reads as a probability and breaks the ranking."""
    good = _possible(block, kept, classes)
    if good.all():
        return
    row = int(np.argmin(good))
    # The first file's own rows say whether it is the damaged one; else one of those fused with it.
    first, others = files[0], [str(f.filename) for f in files[1:]]
    if len(files) == 1 or not _possible(first["features"][start : start + len(block)], kept, classes).all():
        named = first.filename
    else:
        named = others[0] if len(others) == 1 else f"one of {', '.join(others)}"
    values = "posteriors" if kept is None else "top classes"
    raise VggfeatError(f"{named} is damaged: the {values} of {as_utf8(str(paths[row]))} hold NaN, infinite or "
                       f"impossible values; {again}")


# Rows read at a time by :func:`check_rows` (32 MiB of every posterior of 1000 classes).
CHECK_ROWS = 8192


def check_rows(path: Path, classes: int, again: str) -> None:
    """Refuse the posteriors file ``path`` of ``classes`` classes where any of its rows holds a
    value no classifier writes (:func:`check_block`), read a block at a time: before a rewrite
    (--retry-failed, --update) copies its rows, such a row kept, into the file written anew, which
    every reader (its CSV) would then refuse. ``again``: what to do."""
    with open_features_file(path, "posteriors") as f:
        check_attributes(f, path, again)  # a keep_top to read the rows by
        kept, features = plain_value(f.attrs.get("keep_top")), f["features"]
        for start in range(0, features.shape[0], CHECK_ROWS):
            block = features[start : start + CHECK_ROWS]
            if not _possible(block, kept, classes).all():  # the paths read only to name the image
                check_block(block, kept, classes, f["paths"].asstr()[start : start + CHECK_ROWS], [f], start, again)


def _possible(block: np.ndarray, kept: int | None, classes: int) -> np.ndarray:
    """Which rows of ``block`` (see :func:`check_block`) hold only values a classifier writes."""
    probabilities = block if kept is None else block[:, :kept]
    # Softmaxes and their averages are within 0..1 to rounding; NaN fails both comparisons.
    good = ((probabilities >= 0) & (probabilities <= 1 + 1e-3)).all(axis=1)
    if kept is not None:  # class indices, stored as float32: exact below 2**24
        indices = block[:, kept:]
        good &= ((indices >= 0) & (indices < classes) & (indices == np.floor(indices))).all(axis=1)
    return good
