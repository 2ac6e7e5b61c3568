"""What a descriptor file holds, summed up without reading it whole: counts, classes, failures by
kind of reason, regions; for ``vggfeat info`` and the last lines of a run."""

from __future__ import annotations

import collections
import json
import re
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from .errors import VggfeatError
from .regions import RegionCount
from .files import open_hdf5, plain_value
from .store import count_regions_in, failed_labels, layout_problem


JSON_ATTRS = ("config", "shards", "stacked_from")  # the attributes that info shows, which are JSON


def read_info(path: Path, max_failures: int = 5) -> dict:
    """What ``vggfeat info`` shows: counts, classes, configuration, the first failures."""
    with open_hdf5(path, "features") as f:
        if "features" not in f and "format_version" not in f.attrs:  # another program's file, not a damaged one of vggfeat's
            held = sorted(f)
            raise VggfeatError(f"{path} is not a vggfeat file: an HDF5 file holding "
                               f"{', '.join(held[:5]) + (', ...' if len(held) > 5 else '') if held else 'nothing'}, "
                               "with no /features dataset")
        damage = layout_problem(f)
        if damage is not None:
            raise VggfeatError(f"{path} is damaged: {damage}")
        attrs = {key: plain_value(value) for key, value in f.attrs.items()}
        for key in JSON_ATTRS:  # damaged, it fails here, the file named
            json.loads(attrs.get(key, "{}"))
        recorded = "failed" in f  # a file written by other code than vggfeat's may record no failures
        return {
            "path": str(path),
            "complete": bool(attrs.get("complete", False)),
            "rows": f["features"].shape[0],
            "dim": f["features"].shape[1],
            "dtype": str(f["features"].dtype),
            "classes": list(f["classes"].asstr()[:]),
            "labelled": _labelled(f["labels"]),
            "failed": f["failed/paths"].shape[0] if recorded else 0,
            "failed_by_class": _failed_by_class(f) if recorded else {},
            "first_failures": [
                [p, e]
                for p, e in zip(f["failed/paths"].asstr()[:max_failures], f["failed/errors"].asstr()[:max_failures])
            ] if recorded else [],
            "failures_by_reason": failures_by_reason(f["failed/errors"]) if recorded else [],
            "read_after": _read_after_range(f),
            "regions": _regions_of(f, attrs)._asdict(),
            "attrs": attrs,
        }


def _regions_of(f: h5py.File, attrs: dict) -> RegionCount:
    """How many rows of ``f`` are regions, of how many images: as counted when it was completed, or
    counted now in a file without that count (one written by other code, or before it was kept)."""
    if "regions" in attrs:
        return RegionCount(int(attrs["regions"]), int(attrs["region_images"]))
    return count_regions_in(f["paths"])


def _failed_by_class(f: h5py.File) -> dict[str, int]:
    """{class: images of it that failed}, most first (ties in class order); none where the file
    does not keep its failures' labels."""
    labels = failed_labels(f)
    counts = np.bincount(labels[labels >= 0], minlength=f["classes"].shape[0])
    classes = f["classes"].asstr()[:]
    return {str(classes[i]): int(counts[i]) for i in np.argsort(-counts, kind="stable") if counts[i]}


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_NUMBER = re.compile(r"\d+(?:,\d{3})*")


def reason_kind(reason: str) -> str:
    """A failure's reason without what is particular to its file: quoted names (an OS error's path)
    as '…', numbers (sizes, pixels, error numbers) as N; ``image is NxN; the smallest side must be
    at least N px``."""
    return _NUMBER.sub("N", _QUOTED.sub("'…'", reason))


def failures_by_reason(errors: h5py.Dataset, step: int = 2**18) -> list[dict]:
    """[{"reason", "failures", "example"}] by kind of reason (:func:`reason_kind`), most first, ties
    by reason, read a block at a time: how a collection's millions of failures divide. "reason" is
    the reason itself where all of its kind are the same, else the kind; "example", the first."""
    # Each reason as HDF5 gives it (bytes) counted first, in the order they first come: most
    # failures share a few reasons, whose kinds are then made once each.
    counts: collections.Counter[bytes] = collections.Counter()
    for start in range(0, errors.shape[0], step):
        counts.update(errors[start : start + step].tolist())
    by_kind: dict[str, dict] = {}
    for encoded, failures in counts.items():
        reason = encoded.decode("utf-8", "backslashreplace")
        kind = reason_kind(reason)
        entry = by_kind.get(kind)
        if entry is None:
            by_kind[kind] = {"reason": reason, "failures": failures, "example": reason}
        else:
            entry["failures"] += failures
            entry["reason"] = kind  # reasons of this kind differ
    return sorted(by_kind.values(), key=lambda entry: (-entry["failures"], entry["reason"]))


def _read_after_range(f: h5py.File, step: int = 2**20) -> list[str] | None:
    """[earliest, latest] of the file's /read_after and /failed/read_after, as ISO dates (UTC),
    read a block at a time; None where the file keeps none (written before they were added)."""
    earliest, latest = np.inf, -np.inf
    for dataset in (f[name] for name in ("read_after", "failed/read_after") if name in f):
        for start in range(0, dataset.shape[0], step):
            block = dataset[start : start + step]
            if not np.isnan(block).all():
                earliest, latest = min(earliest, np.nanmin(block)), max(latest, np.nanmax(block))
    if earliest > latest:
        return None
    return [datetime.fromtimestamp(value, timezone.utc).isoformat(timespec="seconds") for value in (earliest, latest)]


def _labelled(labels: h5py.Dataset, step: int = 2**20) -> int:
    """Rows with a label, counted a block at a time: the memory taken does not grow with the file."""
    return sum(int((labels[start : start + step] >= 0).sum()) for start in range(0, labels.shape[0], step))
