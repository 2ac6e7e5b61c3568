"""Scores files: an SVM model's scores of every row of descriptor files, in HDF5.

What ``vggfeat predict MODEL FEATURES scores.h5`` writes, for collections whose CSV would be too
large to read back (10 million rows of 1,000 classes: about 90 GB of text; here 40 GB of float32,
read a slice at a time)::

    /scores          float32 [N, C], chunked by rows (each chunk Fletcher-32 checksummed, as /predicted's):
                     each row's decision values, in /classes' order
    /paths           UTF-8 [N], the rows' image paths, in the descriptor file's order (sorted)
    /classes         UTF-8 [C]
    /predicted       single-label: int32 [N], the index of each row's highest score;
                     multi-label: bool [N, C], each class whose score is above 0
    /failed/paths    UTF-8 [F], the images without a descriptor (in the file, or in one fused with it)
    /failed/errors   UTF-8 [F], why
    attributes       format ("vggfeat-scores"), format_version, multilabel, model (its file; "" for
                     one not read from a file), model_checksum, features (the files, in order),
                     created, vggfeat_version, and command where a command wrote it
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from ._version import __version__
from .files import reading_hdf5
from .store import FORMAT_VERSION, SCORES_FORMAT, STRING

_CHUNK_BYTES = 2**20  # about 1 MiB of scores a chunk: good for reading rows in order or in slices
# Each chunk of scores and predictions checksummed by HDF5's Fletcher-32 filter, which every HDF5
# reader (h5py's too) checks as it reads: a damaged chunk is refused, not read as other numbers.
# Writing costs no more than the run-to-run spread, reading 0.3 s more a GB (benchmarks/bench_scores.py).
FLETCHER32 = True


class ScoresWriter:
    """Writes a scores file into the open, empty HDF5 file ``f``: :meth:`append` each block of
    scored rows, then :meth:`finish`."""

    def __init__(self, f: h5py.File, classes: Sequence[str], multilabel: bool) -> None:
        self.f, self.classes, self.multilabel, self.rows = f, list(classes), multilabel, 0
        width, rows_a_chunk = len(classes), max(1, _CHUNK_BYTES // (4 * len(classes)))
        self.scores = f.create_dataset("scores", (0, width), "float32", maxshape=(None, width), chunks=(rows_a_chunk, width),
                                       fletcher32=FLETCHER32)
        self.paths = f.create_dataset("paths", (0,), STRING, maxshape=(None,), chunks=(2**14,))
        self.predicted = (f.create_dataset("predicted", (0, width), bool, maxshape=(None, width), chunks=(rows_a_chunk, width),
                                           fletcher32=FLETCHER32)
                          if multilabel else f.create_dataset("predicted", (0,), "int32", maxshape=(None,), chunks=(2**16,),
                                                              fletcher32=FLETCHER32))

    def append(self, paths: Sequence[str], scores: np.ndarray) -> None:
        """The next rows: their paths and scores [rows, classes]."""
        end = self.rows + len(paths)
        for dataset in (self.scores, self.paths, self.predicted):
            dataset.resize(end, axis=0)
        self.scores[self.rows : end] = scores
        self.paths[self.rows : end] = list(paths)
        self.predicted[self.rows : end] = scores > 0 if self.multilabel else scores.argmax(axis=1)
        self.rows = end

    def finish(self, failed: Sequence[tuple[str, str]], model: str, model_checksum: str, features: Sequence[str],
               provenance: dict | None = None) -> None:
        """The images without a descriptor, (path, reason), and what made the scores."""
        self.f.create_dataset("classes", data=self.classes, dtype=STRING)
        self.f.create_dataset("failed/paths", data=[path for path, _ in failed], shape=(len(failed),), dtype=STRING)
        self.f.create_dataset("failed/errors", data=[reason for _, reason in failed], shape=(len(failed),), dtype=STRING)
        self.f.attrs.update({
            "format": SCORES_FORMAT, "format_version": FORMAT_VERSION, "multilabel": bool(self.multilabel),
            "model": model, "model_checksum": model_checksum, "features": json.dumps(list(features)),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "vggfeat_version": __version__,
            **(provenance or {}),
        })


def scores_summary(path: str | os.PathLike) -> dict:
    """What a scores file holds, for ``vggfeat info``."""
    with reading_hdf5(Path(path), "scores") as f:
        attrs = f.attrs
        return {"format": SCORES_FORMAT, "path": str(path), "rows": f["scores"].shape[0],
                "classes": list(f["classes"].asstr()[:]), "multilabel": bool(attrs["multilabel"]),
                "failed": f["failed/paths"].shape[0], "model": str(attrs["model"]),
                "model_checksum": str(attrs["model_checksum"]), "features": json.loads(attrs["features"]),
                "created": str(attrs["created"]), "vggfeat_version": str(attrs["vggfeat_version"]),
                "command": str(attrs.get("command", ""))}
