"""Index: descriptors of a database in a vector index for nearest-neighbour search by inner product.

Every vector is L2-normalised (after the optional PCA-whitening), so the inner product is the cosine.

- ``flat`` (default): exact search. With FAISS (``pip install 'vggfeat[retrieval]'``) an
  ``IndexFlatIP``; without it, the same result by NumPy matrix products (slower, same ranking).
  Fine up to a few million rows (1M x 512 float32 is 2 GiB).
- ``ivfpq``: FAISS inverted lists with product quantization (``IVF{nlist},PQ{m}``): compressed
  (``m`` bytes per vector), approximate; ``nprobe`` lists are visited per query.
- ``hnsw``: FAISS HNSW graph over the full vectors: approximate, fast, not smaller.

The index file is plain HDF5: ``/paths``, ``/labels``, ``/classes``, ``/read_after`` (when each
row's image was described, for :mod:`vggfeat.indexupdate`), the database's extraction
configuration (attribute ``config``), the whitening (group ``/whitening``, as ``vggfeat whiten``
writes it), and either ``/vectors`` (flat) or ``/faiss``, FAISS's own serialisation of the index as
bytes. Nothing is pickled. Queries must be described exactly as the database was:
:meth:`VectorIndex.check_config` refuses any other configuration, naming the differences.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from .discover import check_paths_given_once, repeated_path
from .errors import VggfeatError
from .features import FeatureFile, config_differences
from .files import open_h5, reading_hdf5, storage_problem, whole_number, written_atomically
from .store import INDEX_FORMAT, check_written, config_problem, kind_of
from .whitening import PCAWhitening, l2_normalize

FORMAT_VERSION = 1
KINDS = ("flat", "ivfpq", "hnsw")
BACKENDS = ("auto", "faiss", "numpy")
_STRING = h5py.string_dtype("utf-8")
_SCORE_BYTES = 256 * 2**20  # NumPy search: one block of query x database scores and argpartition's int64 rows
BLOCK_BYTES = 64 * 2**20  # building: raw float32 descriptors read and prepared at a time
FAISS_MISSING = "FAISS is not installed; pip install 'vggfeat[retrieval]' (or faiss-cpu)"
REBUILD = "build it again with 'vggfeat index'"
DESCRIBE_AGAIN = "describe the images again, each once (extract --overwrite)"  # a descriptors file's remedy
# HNSW candidates per query: FAISS allocates them for each query (2^31 of them: 16 GiB, std::bad_alloc),
# and a search of more finds nothing that one of fewer misses.
MAX_EF_SEARCH = 2**20
# HNSW links per vector (FAISS's M; twice as many in the bottom layer): FAISS's wiki suggests 4 to 64,
# papers use 16 to 64. Each vector keeps room for all of them, filled or not: M 10^5 made an index
# of 300 vectors 240 MB, 2^31 - 1 a C++ exception; M 1 a segmentation fault as vectors were added.
MIN_HNSW_M, MAX_HNSW_M = 2, 512
# Search parameters of each kind of index, as _write records them (nprobe after nlist: it is at most nlist).
_PARAMS = {"flat": (), "ivfpq": ("nlist", "m", "nprobe"), "hnsw": ("ef_search", "hnsw_m")}
# Each dataset of an index file: its number of dimensions and what it holds (text, numbers of the
# numpy dtype kinds of _NUMBERS, or one dtype by name).
_LAYOUT = {"paths": (1, "text"), "labels": (1, "integers"), "classes": (1, "text"), "read_after": (1, "floats"),
           "vectors": (2, "float32"), "faiss": (1, "uint8")}
_NUMBERS = {"integers": "iu", "floats": "f"}


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def load_faiss() -> types.ModuleType:
    """The ``faiss`` module; refused, saying how to install it, where it is not."""
    try:
        import faiss
    except ImportError:
        raise VggfeatError(FAISS_MISSING) from None
    return faiss


@dataclass
class VectorIndex:
    """A searchable database: vectors (or a FAISS index of them) with their paths and how they were made."""

    paths: list[str]
    config: dict  # extraction configuration of the database descriptors
    kind: str = "flat"
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    classes: list[str] = field(default_factory=list)
    whitening: PCAWhitening | None = None
    root: str = ""  # folder the paths are relative to (for montages)
    params: dict = field(default_factory=dict)  # nlist, m, nprobe, ef_search ...
    vectors: np.ndarray | None = None  # flat: [N, d] float32, unit rows
    # When each row's image was described (the descriptors file's /read_after), for update_index;
    # None in an index built from arrays or before indexes kept it.
    read_after: np.ndarray | None = None
    source: str = ""  # the descriptors file it was built from, where it was one
    created: str = ""  # when it was built (ISO 8601, UTC); set on saving where empty
    updated: str = ""  # when update_index last changed it
    faiss_index: object | None = None
    backend: str = "numpy"

    def __repr__(self) -> str:  # (the dataclass's would list every path and vector)
        return (f"VectorIndex(kind={self.kind!r}, rows={self.rows:,}, dim={self.dim}, classes={len(self.classes)}, "
                f"backend={self.backend!r})")

    @property
    def rows(self) -> int:
        return len(self.paths)

    @property
    def dim(self) -> int:
        return self.whitening.output_dim if self.whitening is not None else int(self.config.get("dim", 0))

    def check_config(self, config: dict, what: str = "the queries") -> None:
        """Refuse query descriptors made differently from the database's (model, weights, layer, ...)."""
        differences = config_differences(self.config, config)
        if differences:
            raise VggfeatError(f"{what} were described differently from the indexed database: {'; '.join(differences)}")

    def prepare(self, X: np.ndarray) -> np.ndarray:
        """Raw descriptors as the index holds them: whitened if the index is, and L2-normalised."""
        X = np.asarray(X, dtype=np.float32)
        expected = self.whitening.input_dim if self.whitening is not None else int(self.config.get("dim", X.shape[-1]))
        if X.ndim != 2 or X.shape[1] != expected:
            raise VggfeatError(f"the index takes {expected}-d descriptors, got shape {X.shape}")
        if not np.isfinite(X).all():
            raise VggfeatError("descriptors hold NaN or infinite values")
        return self.whitening.transform(X) if self.whitening is not None else l2_normalize(X)

    def search(self, Q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Prepared queries [n, d] -> (scores [n, k], rows [n, k]), best first; k is capped at the rows."""
        if k < 1:
            raise VggfeatError(f"k must be at least 1, got {k}")
        k = min(k, self.rows)
        Q = np.ascontiguousarray(Q, dtype=np.float32)
        width = self.vectors.shape[1] if self.vectors is not None else self.faiss_index.d
        if Q.ndim != 2 or Q.shape[1] != width:  # (FAISS's refusal is a bare AssertionError)
            raise VggfeatError(f"prepared queries are [n, {width}] (prepare(X) makes them), got shape {Q.shape}")
        if self.faiss_index is not None:
            scores, rows = self.faiss_index.search(Q, k)
            outside = rows[(rows >= self.rows) | (rows < -1)]  # FAISS pads missing hits with -1
            if len(outside):  # what damaged bytes of an index without a checksum (an older one) gave
                raise VggfeatError(f"the index is damaged: FAISS found row {outside[0]} of {self.rows}; build it again "
                                   "with 'vggfeat index'")
            rows, scores = _best_first(rows.astype(np.int64), scores)
            return scores, rows
        return exact_search(self.vectors, Q, k)

    def reconstruct(self, rows: np.ndarray) -> np.ndarray:
        """The stored (prepared) vectors of ``rows`` [n] -> [n, d]; approximate for ``ivfpq``."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.vectors is not None:
            return self.vectors[rows]
        return np.stack([self.faiss_index.reconstruct(int(row)) for row in rows]) if len(rows) else np.zeros((0, self.dim), np.float32)

    # ------------------------------------------------------------------- file

    def save(self, path: str | os.PathLike, provenance: dict | None = None) -> None:
        """Write the index file, under a temporary name renamed once complete; ``provenance``:
        attributes to record besides (how it was made, see :mod:`vggfeat.rerun`). A file of
        another kind than an index is not replaced (:func:`~vggfeat.store.check_written`)."""
        check_written(path, INDEX_FORMAT)
        with written_atomically(path) as temporary, open_h5(temporary, "w") as f:
            self._write(f)
            f.attrs.update(provenance or {})

    def _write(self, f: h5py.File) -> None:
        f.create_dataset("paths", data=self.paths, dtype=_STRING)
        f["labels"] = np.asarray(self.labels, dtype=np.int32)
        f.create_dataset("classes", data=self.classes, dtype=_STRING)
        if self.read_after is not None:
            f["read_after"] = np.asarray(self.read_after, dtype=np.float64)
        if self.kind == "flat":
            f.create_dataset("vectors", data=self.vectors, chunks=(max(1, min(len(self.vectors), 2048)), self.vectors.shape[1]))
        else:
            serialized = load_faiss().serialize_index(self.faiss_index)
            f["faiss"] = serialized
            f.attrs["faiss_sha256"] = hashlib.sha256(serialized).hexdigest()
        if self.whitening is not None:
            self.whitening.write(f.create_group("whitening"))
        f.attrs.update({
            "format": INDEX_FORMAT, "format_version": FORMAT_VERSION, "kind": self.kind, "metric": "inner_product",
            "dim": self.dim, "config": json.dumps(self.config, sort_keys=True), "root": self.root,
            "params": json.dumps(self.params, sort_keys=True),
            "created": self.created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **({"updated": self.updated} if self.updated else {}),
            **({"features": self.source} if self.source else {}),
        })

    @classmethod
    def load(cls, path: str | os.PathLike, backend: str = "auto", vectors: bool = True) -> VectorIndex:
        """Read an index file; ``backend`` for a flat index: ``faiss``, ``numpy``, or ``auto`` (FAISS if installed).
        ``vectors=False``: without a flat index's vectors (its update takes them all anew)."""
        _check_backend(backend)
        path = Path(path)
        # FAISS's refusal of its damaged bytes is a RuntimeError too
        with reading_hdf5(path, "index", remedy="; build it again with 'vggfeat index'") as f:
            if f.attrs.get("format") != INDEX_FORMAT:
                raise VggfeatError(f"{path} is not a vggfeat index (made by 'vggfeat index'){kind_of(f)}")
            return cls._read(f, path, backend, vectors)

    @classmethod
    def _read(cls, f: h5py.File, path: Path, backend: str, vectors: bool) -> VectorIndex:
        kind = _check_layout(f, path)
        index = cls(
            paths=list(f["paths"].asstr()[:]), config=_json_object(f, "config", path), kind=kind,
            labels=f["labels"][:].astype(np.int64), classes=list(f["classes"].asstr()[:]),
            whitening=PCAWhitening.read(f["whitening"], f"{path}/whitening") if "whitening" in f else None,
            root=_text(f, "root", path), params=_json_object(f, "params", path),
            read_after=f["read_after"][:] if "read_after" in f else None,
            source=_text(f, "features", path), created=_text(f, "created", path), updated=_text(f, "updated", path),
        )
        _check_values(index, path)
        if index.kind == "flat":
            _check_rows(f, kind, path)
            if index.dim and f["vectors"].shape[1] != index.dim:  # queries would be prepared to another width
                raise VggfeatError(f"{path} is damaged: its vectors are {f['vectors'].shape[1]}-d, its configuration "
                                   f"says {index.dim}-d; {REBUILD}")
            index.vectors = f["vectors"][:] if vectors else None
            if index.vectors is not None:
                _check_unit_rows(index.vectors, path, index.paths)
        elif backend == "numpy":
            raise VggfeatError(f"{path} is a compressed '{index.kind}' index, which only FAISS can search")
        else:
            if not faiss_available():
                raise VggfeatError(f"{path} is a '{index.kind}' index: {FAISS_MISSING}")
            serialized = f["faiss"][:]
            # FAISS checks little of what it reads: damaged IVF-PQ bytes gave wrong hits, or rows of no
            # path. Files written before the checksum was added have none: read as they are.
            if "faiss_sha256" in f.attrs and f.attrs["faiss_sha256"] != hashlib.sha256(serialized).hexdigest():
                raise VggfeatError(f"{path} was modified or is damaged (checksum mismatch of its FAISS index); build it "
                                   "again with 'vggfeat index'")
            index.faiss_index = load_faiss().deserialize_index(serialized)
            if index.faiss_index.ntotal != len(index.paths):
                raise VggfeatError(f"{path} is damaged: its FAISS index holds {index.faiss_index.ntotal} vectors, its "
                                   f"/paths {len(index.paths)}; build it again with 'vggfeat index'")
            _check_faiss(index, path)
            _check_rows(f, kind, path)  # (its paths and FAISS's vectors: said above)
        if index.vectors is not None and _flat_uses_faiss(backend):
            index.faiss_index = _FlatFaiss(index.vectors)
        index.backend = "faiss" if index.faiss_index is not None else "numpy"
        index.apply_params()
        return index

    def apply_params(self) -> None:
        """FAISS's search parameters from ``params`` (nprobe, efSearch), and IVF-PQ's direct map for ``reconstruct``."""
        if self.kind == "ivfpq":
            self.faiss_index.nprobe = int(self.params["nprobe"])
            load_faiss().extract_index_ivf(self.faiss_index).make_direct_map()  # for reconstruct (query expansion)
        elif self.kind == "hnsw":
            self.faiss_index.hnsw.efSearch = int(self.params["ef_search"])


def index_summary(path: str | os.PathLike) -> dict:
    """What an index file holds, read from its attributes and shapes (no vector is read): for ``vggfeat info``."""
    with reading_hdf5(Path(path), "index") as f:
        if f.attrs.get("format") != INDEX_FORMAT:
            raise VggfeatError(f"{path} is not a vggfeat index (made by 'vggfeat index'){kind_of(f)}")
        kind = _check_layout(f, Path(path))  # before /labels is read whole
        _check_rows(f, kind, Path(path))
        config = _json_object(f, "config", path)
        _check_config(config, path)
        return {
            "format": INDEX_FORMAT, "path": str(path), "kind": kind, "rows": f["paths"].shape[0],
            "dim": int(f.attrs["dim"]), "labelled": int((f["labels"][:] >= 0).sum()), "classes": f["classes"].shape[0],
            "whitened_from": f["whitening/projection"].shape[1] if "whitening" in f else None,
            "params": _json_object(f, "params", path), "config": config,
            "root": _text(f, "root", path), "created": _text(f, "created", path), "updated": _text(f, "updated", path),
            "updatable": "read_after" in f, "features": _text(f, "features", path),
            "command": str(f.attrs.get("command", "")),
        }


def build_index(
    X: np.ndarray,
    paths: list[str],
    config: dict,
    *,
    kind: str = "flat",
    whitening: PCAWhitening | None = None,
    labels: np.ndarray | None = None,
    classes: list[str] | None = None,
    root: str = "",
    read_after: np.ndarray | None = None,
    backend: str = "auto",
    nlist: int | None = None,
    m: int | None = None,
    nprobe: int = 16,
    hnsw_m: int = 32,
    ef_search: int = 128,
    progress: Callable[[int], object] | None = None,
) -> VectorIndex:
    """Index descriptors ``X`` [N, D] (raw, as extracted) of ``paths``, made with ``config``.

    ``ivfpq``: ``nlist`` inverted lists (default about 4 sqrt(N)), ``m`` bytes per vector (default
    the largest divisor of d up to d / 8; must divide d), ``nprobe`` lists searched. ``hnsw``:
    ``hnsw_m`` links per node, ``ef_search`` candidates per query. Both need FAISS; ``flat`` does not. The rows are prepared
    (whitened, L2-normalised) and added a block at a time, ``progress(rows)`` after each.
    ``read_after``: when each row's image was described, which :func:`vggfeat.indexupdate.update_index` needs.
    """
    if kind not in KINDS:
        raise VggfeatError(f"unknown index kind {kind!r}; choose one of {', '.join(KINDS)}")
    _check_backend(backend)
    X = X if hasattr(X, "shape") else np.asarray(X, dtype=np.float32)  # an array, or a file's rows (index_features)
    if X.ndim != 2:
        raise VggfeatError(f"need descriptors [N, D], got shape {X.shape}")
    if len(X) != len(paths) or len(X) == 0:
        raise VggfeatError(f"need one descriptor per path and at least one row, got {len(X)} descriptors, {len(paths)} paths")
    if not all(isinstance(path, str) for path in paths):  # (HDF5 stores text: a Path failed as the index was saved)
        raise VggfeatError("paths must be text (str), as a descriptor file's /paths holds them")
    # Each path once, as loading the index refuses otherwise (_check_values); a descriptors file's
    # rows (index_features) refused naming the file, and what to do.
    if isinstance(X, _Rows):
        check_paths_once(paths, X.file.path, DESCRIBE_AGAIN)
    else:
        check_paths_given_once(paths, "rows")
    for name, given in (("labels", labels), ("read_after", read_after)):  # (else an index that loading refuses)
        if given is not None and np.shape(given) != (len(paths),):
            raise VggfeatError(f"need one of {name} per path, got {np.shape(given)} for {len(paths)} paths")
    if not isinstance(config, dict) or (whitening is not None and not hasattr(whitening, "config_")):
        raise VggfeatError("config must be the descriptors' extraction configuration (a dict), and whitening fitted")
    if whitening is not None:
        whitening.check_config(config, "the indexed descriptors")
    if kind != "flat" and backend == "numpy":
        raise VggfeatError(f"a '{kind}' index needs FAISS; use --kind flat for the NumPy backend")
    # What loading the index refuses (_check_values), refused before the work of building it
    if kind == "ivfpq" and nprobe < 1 or kind == "hnsw" and not 1 <= ef_search <= MAX_EF_SEARCH:
        raise VggfeatError(f"nprobe must be 1 or more, ef_search from 1 to {MAX_EF_SEARCH}; got {nprobe}, {ef_search}")
    if kind == "hnsw" and (whole_number(hnsw_m) is None or not MIN_HNSW_M <= hnsw_m <= MAX_HNSW_M):
        raise VggfeatError(f"hnsw_m must be a whole number from {MIN_HNSW_M} to {MAX_HNSW_M}, got {hnsw_m}")
    index = VectorIndex(paths=list(paths), config=dict(config), kind=kind, whitening=whitening, root=root,
                        labels=np.full(len(paths), -1) if labels is None else np.asarray(labels),
                        classes=list(classes or []), read_after=read_after)
    # Rows read (from a file, where X is one) and prepared a block at a time: the host holds the
    # index being built and one block, not every raw descriptor beside it.
    dim = whitening.output_dim if whitening is not None else X.shape[1]
    step = max(1, BLOCK_BYTES // (4 * X.shape[1]))
    blocks = ((start, index.prepare(X[start : start + step])) for start in range(0, len(X), step))
    if kind == "flat":
        index.vectors = np.empty((len(X), dim), dtype=np.float32)
        for start, vectors in blocks:
            index.vectors[start : start + len(vectors)] = vectors
            if progress:
                progress(len(vectors))
        if _flat_uses_faiss(backend):
            index.faiss_index = _FlatFaiss(index.vectors)
    else:
        if kind == "ivfpq":
            index.faiss_index, index.params = _ivfpq(X, index.prepare, dim, nlist, m, nprobe)
        else:
            faiss = load_faiss()
            index.faiss_index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.params = {"hnsw_m": hnsw_m, "ef_search": ef_search}
        for _, vectors in blocks:
            index.faiss_index.add(vectors)
            if progress:
                progress(len(vectors))
        index.apply_params()
    index.backend = "faiss" if index.faiss_index is not None else "numpy"
    return index


def index_features(features: str | os.PathLike, **kwargs) -> VectorIndex:
    """:func:`build_index` on every row of a features file (its paths, labels, classes, input root),
    read a block at a time."""
    with FeatureFile(features) as f:
        if not f.rows:  # (as index --update says it)
            raise VggfeatError(f"{features} holds no descriptors: there is nothing to index")
        index = build_index(_Rows(f), f.paths, f.config, labels=f.labels, classes=f.classes, root=f.root,
                            read_after=f.read_after(), **kwargs)
    index.source = str(features)
    return index


class _Rows:
    """A features file's descriptors as :func:`build_index` reads them: ``len``, ``shape`` and
    float32 rows by slice or by sorted indices, read from the file when asked for."""

    def __init__(self, f: FeatureFile) -> None:
        self.file, self.shape, self.ndim = f, (f.rows, f.dim), 2

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice | np.ndarray) -> np.ndarray:
        rows = np.arange(*rows.indices(len(self))) if isinstance(rows, slice) else rows
        return self.file.read(rows, dtype=np.float32)


def exact_search(vectors: np.ndarray, Q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product in NumPy: blocks of queries against all rows, best first."""
    n = len(Q)
    scores_out = np.empty((n, k), dtype=np.float32)
    rows_out = np.empty((n, k), dtype=np.int64)
    block = max(1, _SCORE_BYTES // (12 * max(1, len(vectors))))  # 4 bytes a score, 8 its row in argpartition's
    for start in range(0, n, block):
        scores = Q[start : start + block] @ vectors.T
        columns = scores.shape[1]
        top = np.argpartition(scores, columns - k, axis=1)[:, columns - k :] if k < columns else np.tile(np.arange(k), (len(scores), 1))
        top_scores = np.take_along_axis(scores, top, axis=1)
        if k < scores.shape[1]:
            _first_rows_of_ties(scores, top, top_scores)
        rows_out[start : start + block], scores_out[start : start + block] = _best_first(top, top_scores)
    return scores_out, rows_out


def _first_rows_of_ties(scores: np.ndarray, top: np.ndarray, top_scores: np.ndarray) -> None:
    """``top`` (and ``top_scores``), the k best rows of each query's ``scores`` in any order, made
    the k best with the lowest rows among those tied at the k-th score, in place: argpartition takes
    any of them (exact duplicates in a collection score the same), and a top-5 would then not be the
    first five of the top-10."""
    kth = top_scores.min(axis=1)
    for i in np.flatnonzero((scores >= kth[:, None]).sum(axis=1) > top.shape[1]):  # rare: a tie at the k-th
        above = np.flatnonzero(scores[i] > kth[i])
        top[i] = np.concatenate([above, np.flatnonzero(scores[i] == kth[i])[: top.shape[1] - len(above)]])
        top_scores[i] = scores[i, top[i]]


def _best_first(rows: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each query's hits by score, best first, those of equal scores by row: the order whichever
    backend found them (FAISS's heap orders ties otherwise)."""
    order = np.lexsort((rows, -scores), axis=1)
    return np.take_along_axis(rows, order, axis=1), np.take_along_axis(scores, order, axis=1)


def _check_unit_rows(vectors: np.ndarray, path: Path, paths: Sequence[str], step: int = 2**16) -> None:
    """Refuse a flat index with a vector that is neither of unit length nor zero (a descriptor of
    zeros stays one): its bytes were changed since it was written (no checksum covers them), and its
    searches would rank by it, silently."""
    for start in range(0, len(vectors), step):
        block = vectors[start : start + step]
        squared = np.einsum("ij,ij->i", block, block)
        # float32's rounding leaves a unit vector's squared norm within about 1e-6 of 1 (4096-d: 1.2e-6)
        bad = np.flatnonzero(~((np.abs(squared - 1) < 1e-4) | (squared == 0)))  # NaN fails both
        if len(bad):
            row = start + int(bad[0])
            raise VggfeatError(f"{path} is damaged: the vector of row {row} ({paths[row]}) is not of unit length "
                               f"(squared norm {squared[bad[0]]:.6g}); build it again with 'vggfeat index'")


def _check_layout(f: h5py.File, path: Path) -> str:
    """Refuse, before any array is read, a file laid out otherwise than :meth:`VectorIndex._write`
    lays it out: a kind of :data:`KINDS`, its datasets there, of their kinds and agreeing lengths,
    and stored in the file (a compressed dataset of a file of kilobytes can declare gigabytes, which
    reading it whole would allocate). Returns the kind."""
    kind = f.attrs.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise VggfeatError(f"{path} is damaged: its kind {str(kind)[:40]!r} is none of {', '.join(KINDS)}; {REBUILD}")
    names = ["paths", "labels", "classes", "vectors" if kind == "flat" else "faiss"]
    names += ["read_after"] if "read_after" in f else []
    for name in names:
        # A link to another file's dataset would be read as this one's
        data = f.get(name) if isinstance(f.get(name, getlink=True), h5py.HardLink) else None
        if not isinstance(data, h5py.Dataset):
            missing = "missing" if data is None else "not a dataset"
            raise VggfeatError(f"{path} is damaged: /{name} is {missing}; {REBUILD}")
        dims, holds = _LAYOUT[name]
        text = h5py.check_string_dtype(data.dtype) is not None
        right = text if holds == "text" else not text and (data.dtype.kind in _NUMBERS[holds] if holds in _NUMBERS
                                                           else data.dtype == holds)
        if data.ndim != dims or not right:
            raise VggfeatError(f"{path} is damaged: /{name} is {data.ndim}-d of {'text' if text else data.dtype}, "
                               f"where an index holds {dims}-d {holds}; {REBUILD}")
        _refuse_unstored(data, path)
    whitening = f.get("whitening") if isinstance(f.get("whitening", getlink=True), h5py.HardLink) else None
    if isinstance(whitening, h5py.Group):  # PCAWhitening.read reads its arrays whole
        for data in whitening.values():
            if isinstance(data, h5py.Dataset):
                _refuse_unstored(data, path)
    return kind


def _check_rows(f: h5py.File, kind: str, path: Path) -> None:
    """Refuse an index (:func:`_check_layout`'s) whose /labels, /read_after or flat /vectors hold
    another number of rows than its /paths."""
    names = ["labels", *(["read_after"] if "read_after" in f else []), *(["vectors"] if kind == "flat" else [])]
    rows = f["paths"].shape[0]
    other = next((name for name in names if f[name].shape[0] != rows), None)
    if other is not None:
        raise VggfeatError(f"{path} is damaged: /{other} holds {f[other].shape[0]} rows, /paths {rows}; {REBUILD}")


def _json_object(f: h5py.File, name: str, path: str | os.PathLike) -> dict:
    """The attribute ``name`` (``config``; ``params``, {} where there is none) as the JSON object it
    records; refused where it is JSON of another kind (a list, a number)."""
    # Not JSON, or no config: reading_hdf5's line, "(Expecting ...)", "(config)"
    value = json.loads(f.attrs[name] if name == "config" else f.attrs.get(name, "{}"))
    if not isinstance(value, dict):
        raise VggfeatError(f"{path} is damaged: its {name} is a JSON {type(value).__name__}, not an object; {REBUILD}")
    return value


def _check_values(index: VectorIndex, path: Path) -> None:
    """Refuse what no 'vggfeat index' writes in an index read without its vectors: a configuration
    of ill-kinded parts, labels outside its classes, a path twice, search parameters out of range."""
    _check_config(index.config, path)
    # An index built from arrays may hold labels without class names (classes=None), not one of a file
    if len(index.labels) and (index.labels.min() < -1 or index.classes and index.labels.max() >= len(index.classes)):
        raise VggfeatError(f"{path} is damaged: /labels holds indices outside /classes ({len(index.classes)} classes); "
                           f"{REBUILD}")
    if len(set(index.classes)) != len(index.classes):  # update_index matches labels by class name
        raise VggfeatError(f"{path} is damaged: a class is named twice in /classes; {REBUILD}")
    # No index holds an image twice (a region is a path of its own): searches would find it twice,
    # and update_index, matching rows by path, miscount them.
    check_paths_once(index.paths, path, REBUILD)
    # FAISS took nprobe -1 as an OverflowError, 0 as an error mid-search, ef_search 0 or -1 as
    # fewer hits (silently), 2^31 - 1 as 16 GiB per query.
    for name in _PARAMS[index.kind]:
        value = index.params[name]  # one gone: reading_hdf5's line, "(ef_search)"
        # (hnsw_m has no upper bound here: an index built before MAX_HNSW_M holds what it cost already)
        least = MIN_HNSW_M if name == "hnsw_m" else 1
        most = index.params["nlist"] if name == "nprobe" else MAX_EF_SEARCH if name == "ef_search" else None
        if whole_number(value) is None or not least <= value <= (most or value):
            raise VggfeatError(f"{path} is damaged: its parameter {name} is {json.dumps(value)[:40]}, not a whole "
                               f"number from {least}{f' to {most}' if most else ''}; {REBUILD}")


def _check_config(config: dict, path: str | os.PathLike) -> None:
    """Refuse an extraction configuration whose dimension or stacked parts are of other kinds than
    vggfeat records (each a traceback where it is used: info, prepare, config_differences)."""
    problem = config_problem(config)
    if problem is not None:
        raise VggfeatError(f"{path} is damaged: {problem}; {REBUILD}")


def check_paths_once(paths: Sequence[str], path: str | os.PathLike, remedy: str) -> None:
    """Refuse the /paths of the file at ``path`` (an index, damaged; or the descriptors file of
    one, which Python code may have written so) where they hold one path twice, naming it and
    saying ``remedy``."""
    repeated = repeated_path(paths)
    if repeated is not None:
        earlier, row = repeated
        holds = f"/paths holds {paths[row]} twice (rows {earlier} and {row})"
        raise VggfeatError(f"{path} is damaged: {holds}; {remedy}" if remedy == REBUILD else
                           f"{path}: {holds}, where an index holds each image once; {remedy}")


def _text(f: h5py.File, name: str, path: str | os.PathLike) -> str:
    """The text attribute ``name`` that :meth:`VectorIndex._write` writes ("" where there is none);
    refused where it is not text (a number, an array), which str() turned into other text silently:
    a root of 5 named the images' folder "5"."""
    value = f.attrs.get(name, "")
    if isinstance(value, bytes):  # h5py's fixed-length string (numpy.bytes_), as other HDF5 tools write one
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise VggfeatError(f"{path} is damaged: its {name} is bytes that are not UTF-8 text; {REBUILD}") from None
    if not isinstance(value, str):
        raise VggfeatError(f"{path} is damaged: its {name} is {type(value).__name__} {str(value)[:40]!r}, not "
                           f"text; {REBUILD}")
    return value


def _refuse_unstored(data: h5py.Dataset, path: Path) -> None:
    """Refuse a dataset whose values are not in the file (:func:`~vggfeat.files.storage_problem`)."""
    problem = storage_problem(data)
    if problem is not None:
        raise VggfeatError(f"{path} is damaged: {problem}; {REBUILD}")


def _check_faiss(index: VectorIndex, path: Path) -> None:
    """Refuse FAISS bytes (checksummed again, or of an older file without a checksum) of another
    kind or width than the file says, or built with other parameters than it records."""
    faiss = load_faiss()
    kind = {"ivfpq": faiss.IndexIVFPQ, "hnsw": faiss.IndexHNSWFlat}[index.kind]
    if not isinstance(index.faiss_index, kind) or (index.dim and index.faiss_index.d != index.dim):
        raise VggfeatError(f"{path} is damaged: its FAISS index is not the {index.kind} index of {index.dim}-d vectors "
                           f"that it says; {REBUILD}")
    held = ({"nlist": index.faiss_index.nlist, "m": index.faiss_index.pq.M} if index.kind == "ivfpq"
            else {"hnsw_m": index.faiss_index.hnsw.nb_neighbors(1)})  # HNSW keeps M links per node above level 0
    differ = [name for name, value in held.items() if index.params[name] != value]
    if differ:
        raise VggfeatError(f"{path} is damaged: its parameter {differ[0]} is {index.params[differ[0]]}, its FAISS "
                           f"index's {held[differ[0]]}; {REBUILD}")


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise VggfeatError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def _flat_uses_faiss(backend: str) -> bool:
    """Whether a flat index searches with FAISS: asked for, or ``auto`` and installed."""
    return backend == "faiss" or (backend == "auto" and faiss_available())


class _FlatFaiss:
    """FAISS's exact inner-product search (``faiss.knn``) over a flat index's own vectors: an
    ``IndexFlatIP`` would hold a copy of them, twice the index in memory."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)  # (already so: no copy)

    def search(self, Q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        faiss = load_faiss()
        return faiss.knn(Q, self.vectors, k, metric=faiss.METRIC_INNER_PRODUCT)


def _ivfpq(X: np.ndarray, prepare: Callable[[np.ndarray], np.ndarray], d: int, nlist: int | None, m: int | None,
           nprobe: int):
    """An IVF-PQ index of the raw descriptors ``X`` (``d`` once ``prepare``d), trained on a sample
    of them, with nothing added yet; and its parameters."""
    faiss = load_faiss()
    n = len(X)
    # FAISS wants ~39 training points per list and 256 per PQ centroid set (8-bit codes).
    nlist = nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))
    # The default: the most bytes per vector up to d / 8 that divides d (100-d: 10, not 12).
    m = m or max(divisor for divisor in range(1, max(1, d // 8) + 1) if d % divisor == 0)
    if d % m:
        raise VggfeatError(f"--pq-m {m} must divide the dimension {d}")
    if n < max(256, 39 * nlist):
        raise VggfeatError(f"an ivfpq index with {nlist} lists needs at least {max(256, 39 * nlist)} rows to train, "
                           f"got {n}; use --kind flat (exact) for a database this small")
    # k-means cost grows with rows x lists: a random sample of 64 rows per list (and enough for the
    # 256 centroids of each PQ sub-quantizer) trains as well as the whole set.
    sample = min(n, max(64 * nlist, 16_384))
    rows = np.sort(np.random.default_rng(0).choice(n, size=sample, replace=False)) if sample < n else slice(None)
    index = faiss.index_factory(d, f"IVF{nlist},PQ{m}", faiss.METRIC_INNER_PRODUCT)
    # The factory turns on polysemous training, which reorders each PQ's centroids for Hamming
    # filtering that search never uses (ranks are the same either way): 97% of training time,
    # 25 s of 26 on 3,000 rows on 2 cores, whatever the collection's size.
    index.do_polysemous_training = False
    index.train(np.ascontiguousarray(prepare(X[rows])))
    return index, {"nlist": nlist, "m": m, "nprobe": min(nprobe, nlist)}
