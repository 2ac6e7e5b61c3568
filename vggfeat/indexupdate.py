"""Index update: an index brought up to date with its descriptors file after ``extract --update``
(or ``--retry-failed``), without building it again.

Building an approximate index of millions of rows takes minutes (IVF-PQ's k-means, HNSW's graph;
``benchmarks/RESULTS.md``); a collection that grew by a few thousand images should not pay that.
The index keeps, for each row, when its image was described (the descriptors file's
``/read_after``), so the update knows which rows are new, which images are gone, and which were
described again since (a file edited or replaced):

- only new rows: FAISS appends them to an IVF-PQ or HNSW index;
- rows gone or described again: IVF-PQ keeps its trained lists and codebooks and adds every row
  again (FAISS cannot renumber what it removes); HNSW, which cannot remove a vector from its
  graph, is built again;
- a flat index, which is its vectors and learns nothing, takes every row again.

The index keeps its kind, parameters and whitening; its rows' paths, labels and classes become the
descriptors file's. It is replaced only once the new one is whole.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from .errors import VggfeatError
from .features import FeatureFile
from .index import BLOCK_BYTES, DESCRIBE_AGAIN, REBUILD, VectorIndex, check_paths_once, load_faiss
from .rerun import MADE_FROM, brought_up_to_date, fingerprint, record
from .files import file_attributes, open_h5, written_atomically


@dataclass(frozen=True)
class IndexUpdate:
    """What :func:`update_index` did."""

    output: Path
    kind: str  # flat, ivfpq or hnsw
    rows: int  # the index's rows now
    added: int  # rows of images the index did not hold
    removed: int  # rows of images the descriptors file no longer holds
    changed: int  # rows of images described again since the index took them (replaced)
    rebuilt: bool  # every row added again (IVF-PQ with its training kept; HNSW's graph anew; flat)
    seconds: float
    lists_fit_rows: int = 0  # IVF-PQ: rows its number of lists suits, where far fewer than it holds now
    relabelled: int = 0  # rows whose label changed, the descriptors file's rows being the same


def update_index(index_path: str | os.PathLike, features: str | os.PathLike,
                 progress: Callable[[int], object] | None = None) -> IndexUpdate:
    """Bring the index file ``index_path`` up to date with the descriptors file ``features`` that
    it was built from (see the module); ``progress(rows)`` after each block of rows added."""
    started = time.monotonic()
    index_path = Path(index_path)
    # How the index records it was made, with the descriptors file as it is before it is read: the
    # command that built it then finds it up to date (vggfeat.rerun).
    recorded = file_attributes(index_path)
    made = brought_up_to_date(recorded.get(MADE_FROM), fingerprint(features))
    # A flat index's vectors are not read: it takes them all from the descriptors file (_add).
    index = VectorIndex.load(index_path, vectors=False)
    kind = index.kind
    if index.read_after is None:
        raise VggfeatError(f"{index_path} does not record when its rows were described (it was built before indexes "
                           "did, or from arrays): build it again without --update; later updates add only what changed")
    # Built from a descriptors file, whose classes name its labels: the labels are compared by name below
    if len(index.labels) and index.labels.max() >= len(index.classes):
        raise VggfeatError(f"{index_path} is damaged: /labels holds indices outside /classes ({len(index.classes)} "
                           f"classes); {REBUILD}")
    # A descriptors file of other images (a shard's, say) would take every other row out of the index.
    if index.source and Path(index.source).name != Path(features).name:
        raise VggfeatError(f"{index_path} was built from {index.source}, not {features}: an index is updated from the "
                           "descriptors file it was built from (build it anew from another)")
    with FeatureFile(features) as f:
        index.check_config(f.config, f"descriptors in {features}")
        if not f.rows:
            raise VggfeatError(f"{features} holds no descriptors: there is nothing to index")
        if os.path.abspath(index.root or ".") != os.path.abspath(f.root or "."):
            raise VggfeatError(f"{index_path} holds images under {index.root or '.'}, {features} under {f.root or '.'}: "
                               "an index is updated from the descriptors file it was built from")
        # Rows are matched by path: a descriptors file holding one twice would make an index that
        # loading refuses (its later row taken, its earlier one counted as new)
        check_paths_once(f.paths, features, DESCRIBE_AGAIN)
        stamps = f.read_after()
        position = {path: row for row, path in enumerate(f.paths)}
        rows_in_file = np.array([position.get(path, -1) for path in index.paths], dtype=np.int64)
        present = rows_in_file >= 0
        kept = present.copy()
        kept[present] = _same_stamps(index.read_after[present], stamps[rows_in_file[present]])
        held = np.zeros(f.rows, dtype=bool)
        held[rows_in_file[kept]] = True
        new_rows = np.flatnonzero(~held)
        removed, changed = int((~present).sum()), int((present & ~kept).sum())
        if not len(new_rows) and not removed:  # the same rows: their labels may have changed (a list's), or the record
            labels, classes = f.labels[rows_in_file], list(f.classes)
            # Compared by name (-1, no class, takes the last: ""): classes added or removed renumber them.
            relabelled = int(np.count_nonzero(np.array(classes + [""])[labels] != np.array(index.classes + [""])[index.labels]))
            if relabelled or classes != index.classes or made is not None and made != recorded.get(MADE_FROM):
                updated = {"updated": datetime.now(timezone.utc).isoformat(timespec="seconds")} if relabelled else {}
                _written_again(index_path, labels, classes, updated | record(made))
            return IndexUpdate(index_path, kind, index.rows, 0, 0, 0, False, time.monotonic() - started,
                               relabelled=relabelled)
        # A flat index is its vectors: reading them all from the descriptors file costs what reading
        # them from the index would (benchmarks/RESULTS.md).
        rebuilt = kind == "flat" or bool(removed + changed)
        if rebuilt:
            _empty(index)
            order = np.arange(f.rows)
        else:
            order = np.concatenate([rows_in_file, new_rows])
        _add(index, f, order if rebuilt else new_rows, progress)
        index.paths = [f.paths[row] for row in order]
        index.labels, index.classes, index.read_after = f.labels[order], list(f.classes), stamps[order]
    index.updated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    kept = {key: recorded[key] for key in ("command",) if key in recorded}  # the command that built it
    index.save(index_path, kept | record(made))
    return IndexUpdate(index_path, kind, index.rows, len(new_rows) - changed, removed, changed, rebuilt,
                       time.monotonic() - started, _lists_fit_rows(index))


def _same_stamps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise: the same time, or neither known (a file that keeps none)."""
    return (a == b) | (np.isnan(a) & np.isnan(b))


def _empty(index: VectorIndex) -> None:
    """``index`` with no vector, keeping what it learned: IVF-PQ's lists and codebooks (a flat
    index's vectors were not read)."""
    if index.kind == "ivfpq":
        index.faiss_index.reset()
    elif index.kind == "hnsw":
        faiss = load_faiss()
        index.faiss_index = faiss.IndexHNSWFlat(index.dim, int(index.params["hnsw_m"]), faiss.METRIC_INNER_PRODUCT)
        index.apply_params()


def _add(index: VectorIndex, f: FeatureFile, rows: np.ndarray, progress: Callable[[int], object] | None) -> None:
    """The descriptors of ``f``'s ``rows``, prepared, added to ``index`` a block at a time (a flat
    index's are all its vectors: :func:`update_index` always takes every row of it)."""
    if index.kind == "flat":
        index.vectors = np.empty((len(rows), index.dim), dtype=np.float32)
    step = max(1, BLOCK_BYTES // (4 * f.dim))
    for start in range(0, len(rows), step):
        vectors = index.prepare(f.read(rows[start : start + step], dtype=np.float32))
        if index.kind == "flat":
            index.vectors[start : start + len(vectors)] = vectors
        else:
            index.faiss_index.add(vectors)
        if progress is not None:
            progress(len(vectors))


def _written_again(index_path: Path, labels: np.ndarray, classes: list[str], attributes: dict) -> None:
    """The index file written anew with these labels, classes and attributes, all else copied as it
    is, and renamed over the old: an index written in place is unreadable where a kill stops the
    write midway (HDF5 writes an attribute in several places)."""
    with written_atomically(index_path) as temporary, open_h5(index_path, "r") as old, open_h5(temporary, "w") as new:
        for name in old:
            if name not in ("labels", "classes"):
                old.copy(old[name], new, name)
        new.attrs.update(old.attrs)
        new.attrs.update(attributes)
        new["labels"] = np.asarray(labels, dtype=np.int32)
        new.create_dataset("classes", data=classes, dtype=h5py.string_dtype())


def _lists_fit_rows(index: VectorIndex) -> int:
    """For IVF-PQ, the rows for which its number of lists is the default (about 4 sqrt(rows), at
    most rows // 39), where the index now holds 16 times as many or more (its lists grow long,
    searches slow); 0 else."""
    if index.kind != "ivfpq":
        return 0
    nlist = int(index.params["nlist"])
    fit = max(1, int((nlist / 4) ** 2), 39 * nlist)  # the default is the lesser of 4 sqrt(rows) and rows // 39
    return fit if index.rows >= 16 * fit else 0
