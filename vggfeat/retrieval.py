"""Retrieval evaluation: mAP and recall@k of a descriptor file used as its own search database.

Two protocols:

- **Labelled** (:func:`evaluate_labels`): every labelled image, or a random sample of them (the
  time grows as the square of the rows: a sample's mAP estimates the whole's, with its standard
  error), queries all the others (leave one out); the images of its class are relevant, every
  other row (other classes, unlabelled rows) is not. AP is the non-interpolated average
  precision (mean of the precision at each relevant hit); recall@k is the fraction of queries
  with at least one relevant image in their top k (the metric-learning definition). Queries whose class has no other image are skipped and counted.
- **Oxford/Paris ground truth** (:func:`evaluate_ground_truth`): per query, ``ok`` images (good +
  ok) are relevant and ``junk`` images are removed from the ranking before scoring, and AP is the
  trapezoidal one of the datasets' ``compute_ap``, so numbers compare with published ones. The
  query is searched against every row, or, where the ground truth names its database (the
  revisited datasets' and cirtorch's ``imlist``), against those rows and any row that is no query
  image (a distractor): revisitop's database holds none of its query images. The query's
  descriptor is the whole query image's, or, as the datasets' protocol has it, that of the image
  cropped to the query's bounding box (:func:`vggfeat.search.describe_crops`,
  ``retrieval-eval --crop-queries``).

Descriptors are compared as the index compares them: L2-normalised, optionally PCA-whitened. In
either protocol a query may be expanded with its top hits first (``qe``), as ``search --qe`` does.
"""

from __future__ import annotations

import collections
import json
import os
import warnings
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np

from .errors import VggfeatError
from .files import file_attributes
from .rerun import MADE_FROM, fingerprint
from .textfiles import read_text
from .whitening import PCAWhitening, l2_normalize

RECALL_AT = (1, 5, 10)
_SCORE_BYTES = 128 * 2**20


def prepare(X: np.ndarray, whitening: PCAWhitening | None = None) -> np.ndarray:
    """Raw descriptors as the index compares them: whitened (which L2-normalises), else L2-normalised."""
    return whitening.transform(X) if whitening is not None else l2_normalize(X)


def whitening_record(whitening: str | os.PathLike, features: str | os.PathLike) -> dict:
    """What an evaluation of ``features`` records of the whitening file ``whitening`` it applies:
    its real path, the descriptor files it was learned on (``learned_on``), as 'whiten fit'
    recorded them, and whether ``features`` is one of them (``learned_on_features``: the same real
    path, or the same size and modification time, a copy that kept them); both None where the file
    records none (saved from Python). A whitening learned on the very images evaluated raises
    their mAP: benchmark figures learn it on another dataset."""
    try:
        inputs = json.loads(file_attributes(Path(whitening)).get(MADE_FROM, ""))["inputs"]
        recorded = [entry for entry in inputs if isinstance(entry, list) and len(entry) == 3]
    except (KeyError, TypeError, ValueError):
        return {"file": os.path.realpath(whitening), "learned_on": None, "learned_on_features": None}
    evaluated = fingerprint(features)
    same = evaluated is not None and any(entry[0] == evaluated[0] or entry[1:] == evaluated[1:] for entry in recorded)
    return {"file": os.path.realpath(whitening), "learned_on": [str(entry[0]) for entry in recorded],
            "learned_on_features": same}


def evaluate_labels(X: np.ndarray, labels: np.ndarray, ks: Sequence[int] = RECALL_AT, qe: int = 0,
                    sample: int | None = None, seed: int = 0) -> dict:
    """Leave-one-out retrieval on prepared descriptors ``X`` [N, d] with class ``labels`` (-1: none);
    ``qe``: average query expansion with each query's top ``qe`` other rows (:func:`expand_queries`).
    ``sample``: that many of the queries, drawn at random (``seed``), each still searching all rows."""
    X = np.asarray(X)
    if X.ndim != 2 or X.dtype.kind != "f":
        raise VggfeatError(f"X: descriptors [N, d] of floating-point numbers, got {X.dtype} of shape {X.shape}")
    if not all(np.isfinite(X[start : start + 2**16]).all() for start in range(0, len(X), 2**16)):  # (a mAP of 0.57)
        raise VggfeatError("X holds NaN or infinite values: no ranking of them means anything")
    qe = hits_to_expand_with(qe, len(X) - 1)
    if sample is not None and (not isinstance(sample, (int, np.integer)) or isinstance(sample, bool) or sample < 1):
        raise VggfeatError(f"sample: a count of queries >= 1, got {sample!r}")
    labels = np.asarray(labels)
    if labels.shape != (len(X),) or not np.issubdtype(labels.dtype, np.integer):
        raise VggfeatError(f"labels: a class index per row of X ({len(X)}), -1 for none; got {labels.dtype} of shape "
                           f"{labels.shape}")
    labelled = np.flatnonzero(labels >= 0)
    class_sizes = np.bincount(labels[labelled])
    queries = labelled[class_sizes[labels[labelled]] > 1]  # a class of one has nothing to retrieve
    if len(queries) == 0:
        raise VggfeatError("no labelled image has another image of its class: nothing to retrieve")
    eligible = len(queries)
    if sample is not None and sample < eligible:
        queries = np.sort(np.random.default_rng(seed).choice(queries, size=sample, replace=False))
    aps, first_hit = [], []
    # A block's scores [rows, N] float32 and what ranking them holds besides, per score: their
    # negation (4 bytes), the order (8), its labels (8), relevance (1), and the AP's hits and
    # precisions (24). Sized for the scores alone, a block took 10x the budget (1.2 GB).
    block = max(1, _SCORE_BYTES // (49 * len(X)))
    for start in range(0, len(queries), block):
        rows = queries[start : start + block]
        scores = X[rows] @ X.T
        scores[np.arange(len(rows)), rows] = -np.inf  # the query itself is not a result
        if qe:
            scores = expand_queries(X[rows], scores, X, qe) @ X.T
            scores[np.arange(len(rows)), rows] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")[:, :-1]  # drop the query (ranked last)
        relevant = labels[order] == labels[rows][:, None]
        aps.append(_average_precision(relevant))
        first_hit.append(np.where(relevant.any(axis=1), relevant.argmax(axis=1), np.inf))
    first = np.concatenate(first_hit)
    ap = np.concatenate(aps)
    return {
        "protocol": "labels (leave one out)",
        "queries": int(len(queries)),
        "skipped_queries": int(len(labelled) - eligible),
        "database": int(len(X)),
        "query_expansion": qe,
        "map": float(ap.mean()),
        **{f"recall@{k}": float((first < k).mean()) for k in ks},
        **(_sampled(ap, eligible, seed) if len(queries) < eligible else {}),
    }


def _sampled(ap: np.ndarray, eligible: int, seed: int) -> dict:
    """What a result of ``ap`` over queries sampled from ``eligible`` records besides: the
    population and seed, and the mAP's standard error (drawn without replacement: the finite
    population correction), so that a reader knows how far the whole's mAP may be."""
    n = len(ap)
    spread = ap.std(ddof=1) if n > 1 else 0.0
    return {"sampled_from": eligible, "sample_seed": seed,
            "map_standard_error": float(spread / np.sqrt(n) * np.sqrt((eligible - n) / (eligible - 1)))}


def expand_queries(queries: np.ndarray, scores: np.ndarray, X: np.ndarray, n: int) -> np.ndarray:
    """Average query expansion (Chum et al. 2007, as ``search --qe``): each of ``queries`` [m, d]
    replaced by the L2-normalised sum of itself and the rows of ``X`` [N, d] of its ``n`` best
    ``scores`` [m, N] (rows scored -inf, such as the query itself, are never among them)."""
    n = min(n, int(np.isfinite(scores).sum(axis=1).min()))
    top = np.argpartition(-scores, n - 1, axis=1)[:, :n] if n else np.zeros((len(queries), 0), dtype=np.int64)
    return l2_normalize(queries + X[top].sum(axis=1))


def hits_to_expand_with(qe: int, available: int) -> int:
    """``qe``, a query expansion's count of hits (0: none), checked and at most the ``available``
    rows a query can be expanded with; a warning where it is more: with all of them, every query
    becomes about their mean."""
    if not isinstance(qe, (int, np.integer)) or qe < 0:
        raise VggfeatError(f"query expansion needs N >= 0, got {qe!r}")
    available = max(available, 0)  # (a file of no row)
    if qe > available:
        warnings.warn(f"query expansion with the top {qe} hits asked for, of {available} images: each query is "
                      f"expanded with all {available}", RuntimeWarning, stacklevel=3)
    return min(qe, available)


def _average_precision(relevant: np.ndarray) -> np.ndarray:
    """Non-interpolated AP of each row of a ranked relevance matrix [n, N]."""
    hits = np.cumsum(relevant, axis=1)
    precision = hits / np.arange(1, relevant.shape[1] + 1)
    return (precision * relevant).sum(axis=1) / np.maximum(relevant.sum(axis=1), 1)


def precision_at(ranks: np.ndarray, k: int) -> float:
    """The share of relevant images among the first k of a ranking with junk removed (``ranks``:
    0-based, ascending), k cut to the last relevant one's rank where it comes sooner: the revisited
    datasets' mP@k (revisitop's compute_map); 0 for a query that finds none."""
    if len(ranks) == 0:
        return 0.0
    first_k = min(int(ranks[-1]) + 1, k)
    return float((ranks < first_k).sum() / first_k)


def compute_ap(ranks: np.ndarray, n_relevant: int) -> float:
    """The Oxford/Paris benchmark's AP: ``ranks`` (0-based, ascending) of the relevant images in a
    ranking with junk removed; precision interpolated by the trapezoid between ranks."""
    ap = 0.0
    for j, rank in enumerate(ranks):
        before = 1.0 if rank == 0 else j / rank
        after = (j + 1) / (rank + 1)
        ap += (before + after) / (2 * n_relevant)
    return ap


def evaluate_ground_truth(
    X: np.ndarray, paths: Sequence[str], Q: np.ndarray, query_paths: Sequence[str] | None, truth: list[dict],
    ks: Sequence[int] = RECALL_AT, qe: int = 0, failed_paths: Sequence[str] = (),
    database: Sequence[str] | None = None, query_images: Collection[str] = (),
) -> dict:
    """Oxford/Paris-style evaluation; ``truth`` items {"query", "ok": [...], "junk": [...]} name images
    by path or file name without extension, matched against ``paths`` (database) and ``query_paths``
    (None: ``Q`` holds a row for each item of ``truth``, in its order, as its query's box cropped:
    two items may crop one image). ``qe``: average query expansion with each query's top ``qe`` rows,
    junk included, as a search that knows no ground truth expands (:func:`expand_queries`).
    ``ap_per_query`` names each query by its image, a query of an image named before with its
    count (``"q (2)"``). An ok or junk image among ``failed_paths`` (the database's images that
    could not be described: Paris6k's 20 damaged files) is, ok, a relevant image never retrieved,
    as the benchmark's own evaluation counts one missing from its ranking, and junk, nothing;
    said in a warning. Any other image not in the database is refused.

    ``database``: the images the ground truth's database holds (:func:`ground_truth_database`:
    the revisited datasets' ``imlist``), None where it names none (every row is ranked). A row of
    one of ``query_images`` (``qimlist``) outside it is ranked for no query, as revisitop's
    database holds none of its query images; the other rows outside it are ranked as distractors,
    counted in ``distractors``; an image of it with no row is said in a warning."""
    left_out = np.zeros(0, dtype=np.int64)
    if database is not None:
        left_out, distractors, absent = _outside_database(paths, database, query_images)
        # (an image whose file failed is said below, where it matters: a relevant image not retrieved)
        failed_absent = _name_index(failed_paths, {*absent, *(Path(name).stem for name in absent)})
        absent = [name for name in absent if _find(failed_absent, name) is None]
        if absent:
            warnings.warn(f"{len(absent)} image(s) of the ground truth's database (its imlist) have no descriptor (e.g. "
                          f"{absent[0]}): every query is ranked without them", RuntimeWarning, stacklevel=2)
    qe = hits_to_expand_with(qe, len(X) - len(left_out))
    named = _names_in(truth)
    database_rows, failed = _name_index(paths, named), _name_index(failed_paths, named)
    missing: set[str] = set()

    def rows_of(names: Sequence[str], what: str) -> np.ndarray:
        """The rows of the images ``names`` held, without those that failed (added to ``missing``)."""
        held = [name for name in names if _find(database_rows, name) is not None or _find(failed, name) is None]
        missing.update(name for name in names if name not in held)
        return np.array(sorted({_lookup(database_rows, name, what) for name in held}), dtype=np.int64)

    if query_paths is None and len(Q) != len(truth):
        raise ValueError(f"{len(Q)} query rows for {len(truth)} queries of the ground truth")
    rows = range(len(truth)) if query_paths is None else query_rows(truth, query_paths)
    # A query with no relevant image (some of the revisited datasets' in their easy protocol) is
    # left out of the means and counted, as the datasets' own evaluation leaves it out.
    scored = [(item, q) for item, q in zip(truth, rows) if item["ok"]]
    if not scored:
        raise VggfeatError("no query of the ground truth has an ok image: nothing to retrieve")
    aps, first, precisions = [], [], []
    for item, q in scored:
        ok, junk = rows_of(item["ok"], "ok image"), rows_of(item.get("junk", []), "junk image")
        relevant = len(ok) + len({_find(failed, name) for name in item["ok"] if name in missing})
        query = Q[q : q + 1]
        if qe:
            scores = query @ X.T
            scores[:, left_out] = -np.inf  # not in the database: no hit to expand with
            query = expand_queries(query, scores, X, qe)
        order = np.argsort(-(X @ query[0]), kind="stable")
        order = order[~np.isin(order, np.concatenate([junk, left_out]))]
        ranks = np.flatnonzero(np.isin(order, ok))  # empty when every ok image is also junk
        aps.append(compute_ap(ranks, relevant))
        first.append(ranks[0] if len(ranks) else np.inf)
        precisions.append([precision_at(ranks, k) for k in ks])
    first = np.array(first)
    if missing:
        warnings.warn(f"{len(missing)} image(s) of the ground truth have no descriptor, their files having failed (e.g. "
                      f"{sorted(missing)[0]}): ok, each counts as a relevant image not retrieved; junk, as nothing",
                      RuntimeWarning, stacklevel=2)
    return {
        "protocol": "ground truth (ok / junk)",
        "queries": len(scored),
        "skipped_queries": len(truth) - len(scored),
        "database": int(len(X) - len(left_out)),
        **({"distractors": distractors, "query_images_left_out": len(left_out)} if database is not None else {}),
        "query_expansion": qe,
        "map": float(np.mean(aps)),
        **{f"recall@{k}": float((first < k).mean()) for k in ks},
        **{f"mp@{k}": float(mean) for k, mean in zip(ks, np.mean(precisions, axis=0))},
        "ap_per_query": dict(zip(_numbered([item["query"] for item, _ in scored]), map(float, aps))),
    }


def _outside_database(paths: Sequence[str], database: Sequence[str],
                      query_images: Collection[str]) -> tuple[np.ndarray, int, list[str]]:
    """The rows of ``paths`` that are ``query_images`` outside ``database`` (to rank for no
    query), the count of the other rows outside it (distractors), and the images of ``database``
    with no row, each image named by path or file name without extension."""
    wanted = {*database, *query_images}
    index = _name_index(paths, wanted | {Path(name).stem for name in wanted})
    inside = np.zeros(len(paths), dtype=bool)
    absent = []
    for name in database:
        row = _find(index, name)
        if row is None:
            absent.append(name)
        else:
            inside[row] = True
    queries = {_find(index, name) for name in query_images} - {None}
    left_out = np.array(sorted(row for row in queries if not inside[row]), dtype=np.int64)
    return left_out, int(len(paths) - inside.sum() - len(left_out)), absent


def _numbered(names: list[str]) -> list[str]:
    """``names``, each one named before with its count: ``["q", "q (2)"]``."""
    seen: collections.Counter[str] = collections.Counter()
    numbered = []
    for name in names:
        seen[name] += 1
        numbered.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return numbered


# The revisited Oxford and Paris protocols (Radenović et al. 2018): which of a query's easy and
# hard images are relevant, and which are left out of its ranking (with its junk).
REVISITED_PROTOCOLS = {"easy": (("easy",), ("junk", "hard")), "medium": (("easy", "hard"), ("junk",)),
                       "hard": (("hard",), ("junk", "easy"))}


def read_ground_truth(path: str | os.PathLike, protocol: str | None = None) -> list[dict]:
    """Ground truth from a JSON file ([{"query", "ok", "junk", "bbox"}, ...], or {"queries": [...]})
    or from a folder of the Oxford/Paris files ``NAME_query.txt`` (the query and its bounding box),
    ``NAME_good.txt``, ``NAME_ok.txt``, ``NAME_junk.txt`` (good and ok are both relevant; Oxford's
    ``oxc1_`` query prefix is dropped). "bbox", where given, is [x1, y1, x2, y2] in the query
    image's pixels.

    The revisited ROxford/RParis ground truth (its ``gnd_*.pkl`` re-saved as JSON, as it is:
    ``{"imlist", "qimlist", "gnd": [{"easy", "hard", "junk", "bbx"}, ...]}``, images by index) is
    read for one of its ``protocol``s: easy, medium or hard (:data:`REVISITED_PROTOCOLS`);
    cirtorch's of the original Oxford5k/Paris6k (``gnd_oxford5k.pkl``, ``gnd_paris6k.pkl``: ``gnd``
    entries of ``ok`` and ``junk``, no ``easy`` or ``hard``) as the original protocol, without one.
    Both name their database (:func:`ground_truth_database`). A pickle is refused, saying how to
    re-save it as JSON: loading one runs whatever code it holds.
    """
    path = Path(path)
    if protocol is not None and protocol not in REVISITED_PROTOCOLS:
        raise VggfeatError(f"unknown protocol {protocol!r}; choose one of {', '.join(REVISITED_PROTOCOLS)}")
    not_revisited = f"a protocol (easy, medium, hard) is the revisited Oxford/Paris ground truth's; {path} is not it"
    if path.is_dir():
        if protocol is not None:
            raise VggfeatError(not_revisited)
        truth = []
        for query_file in sorted(path.glob("*_query.txt")):
            stem = query_file.name[: -len("_query.txt")]
            words = read_text(query_file, names_files=True).split()
            if not words:
                raise VggfeatError(f"{query_file} is empty")
            lists = {kind: _lines(path / f"{stem}_{kind}.txt") for kind in ("good", "ok", "junk")}
            item = {"query": words[0].removeprefix("oxc1_"), "ok": lists["good"] + lists["ok"], "junk": lists["junk"]}
            if len(words) > 1:
                item["bbox"] = check_box(words[1:], query_file)
            truth.append(item)
        if not truth:
            raise VggfeatError(f"{path} holds no *_query.txt files (Oxford/Paris ground truth)")
        return truth
    data = _read_json(path)
    if _names_database(data) and _is_original(data):
        if protocol is not None:
            raise VggfeatError(f"{not_revisited} (its queries give ok and junk, no easy and hard: the original protocol)")
        return _indexed(data, path, {"ok": ("ok",), "junk": ("junk",)})
    if _names_database(data):
        if protocol is None:
            raise VggfeatError(f"{path} is the revisited Oxford/Paris ground truth: choose its protocol, easy, medium "
                               "or hard (--protocol)")
        return _revisited(data, protocol, path)
    if protocol is not None:
        raise VggfeatError(not_revisited)
    items = data.get("queries") if isinstance(data, dict) else data
    if not isinstance(items, list) or not items or not all(map(_is_ground_truth_item, items)):
        raise VggfeatError(f"{path}: expected a list of {{\"query\": ..., \"ok\": [...], \"junk\": [...]}}")
    for item in items:
        if "bbox" in item:
            item["bbox"] = check_box(item["bbox"], f"{path}, query {item['query']}")
    return items


def ground_truth_database(path: str | os.PathLike) -> tuple[list[str], list[str]] | None:
    """The images that the ground truth ``path`` (read by :func:`read_ground_truth`) names as its
    database and as its queries (``imlist``, ``qimlist``: the revisited datasets' and cirtorch's),
    for :func:`evaluate_ground_truth`; None where it names no database (Oxford/Paris files, a JSON
    list), every row being searched."""
    path = Path(path)
    if path.is_dir():
        return None
    data = _read_json(path)
    return (list(data["imlist"]), list(data["qimlist"])) if _names_database(data) else None  # type: ignore[index]


def _read_json(path: Path) -> object:
    if not path.is_file():
        raise VggfeatError(f"ground truth not found: {path}")
    with open(path, "rb") as f:
        start = f.read(1)
    # A pickle's first byte from protocol 2 on (PROTO), or a file named as a pickle that begins as
    # no JSON does (an older protocol's pickle): refused as a pickle, not as a text with a NUL byte.
    if start == b"\x80" or (path.suffix.lower() in (".pkl", ".pickle") and start not in b"[{ \t\r\n\xef"):
        saved = path.with_suffix(".json")
        saved = saved if saved != path else path.with_name(f"{path.stem}-resaved.json")  # a pickle named .json
        raise VggfeatError(f"{path} is a pickle, which vggfeat does not read (loading one runs any code it holds): re-save "
                           f"it as JSON, from a file you trust: python -c \"import json, pickle; json.dump(pickle.load(open("
                           f"{str(path)!r}, 'rb')), open({str(saved)!r}, 'w'), default=lambda a: a.tolist())\", then give "
                           f"--gt {saved}")
    try:
        return json.loads(read_text(path))
    except ValueError as error:
        raise VggfeatError(f"{path} is not JSON ({error}); give a JSON file or an Oxford/Paris ground-truth folder") from None


def _names_database(data: object) -> bool:
    """Whether ``data`` is ground truth of imlist, qimlist and gnd (the revisited datasets', cirtorch's)."""
    return isinstance(data, dict) and {"gnd", "imlist", "qimlist"} <= data.keys()


def _is_original(data: dict) -> bool:
    """Whether the gnd entries of ``data`` are the original protocol's (cirtorch's ``gnd_oxford5k.pkl``):
    ok and junk, no easy or hard."""
    entries = data["gnd"]
    return (isinstance(entries, list) and bool(entries) and all(isinstance(entry, dict) for entry in entries)
            and any("ok" in entry for entry in entries) and not any({"easy", "hard"} & entry.keys() for entry in entries))


def _revisited(data: dict, protocol: str, path: Path) -> list[dict]:
    """The items of the revisited ground truth ``data`` for ``protocol``, images named."""
    relevant, left_out = REVISITED_PROTOCOLS[protocol]
    return _indexed(data, path, {"ok": relevant, "junk": left_out})


def _indexed(data: dict, path: Path, lists: dict[str, tuple[str, ...]]) -> list[dict]:
    """The items of ground truth ``data`` naming images by their index in its imlist, images named:
    each item's ``ok`` and ``junk`` those of the gnd entry's lists that ``lists`` gives for them."""
    keys = [key for key in ("easy", "hard", "ok", "junk") if any(key in each for each in lists.values())]
    images, queries, gnd = data["imlist"], data["qimlist"], data["gnd"]
    if not (isinstance(gnd, list) and isinstance(images, list) and isinstance(queries, list) and len(gnd) == len(queries)
            and all(isinstance(name, str) for name in [*images, *queries])):
        raise VggfeatError(f"{path}: expected lists imlist and qimlist of names, and gnd, one gnd entry per query")
    truth = []
    for query, entry in zip(queries, gnd):
        given = [entry.get(key, []) for key in keys] if isinstance(entry, dict) else [None]
        if not all(isinstance(indices, list) and all(isinstance(i, int) and 0 <= i < len(images) for i in indices)
                   for indices in given):
            raise VggfeatError(f"{path}, query {query}: {', '.join(keys[:-1])} and {keys[-1]} are lists of imlist's indices")
        named = {key: [images[i] for i in indices] for key, indices in zip(keys, given)}
        item = {"query": query, **{kind: [name for key in lists[kind] for name in named[key]] for kind in ("ok", "junk")}}
        if "bbx" in entry:
            item["bbox"] = check_box(entry["bbx"], f"{path}, query {query}")
        truth.append(item)
    return truth


def check_box(values: object, where: object = None, given: object = None) -> list[float]:
    """A bounding box [x1, y1, x2, y2] (x1 < x2, y1 < y2), or a clear refusal naming ``where`` (if
    any) and what was ``given`` (default: ``values``)."""
    try:
        box = [float(value) for value in values]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        box = []
    if len(box) != 4 or not np.isfinite(box).all() or box[2] <= box[0] or box[3] <= box[1]:
        raise VggfeatError(f"{f'{where}: ' if where else ''}a bounding box is 4 numbers x1 y1 x2 y2 with x1 < x2 and y1 < y2, "
                           f"got {values if given is None else given!r}")
    return box


def query_rows(truth: list[dict], paths: Sequence[str]) -> list[int]:
    """The row of ``paths`` of each query of ``truth``, matched as :func:`evaluate_ground_truth` matches them."""
    queries = _name_index(paths, {name for item in truth for name in (item["query"], Path(item["query"]).stem)})
    return [_lookup(queries, item["query"], "query") for item in truth]


def _names_in(truth: list[dict]) -> set[str]:
    """The names of images that ``truth`` gives (queries, ok, junk), and their stems: what
    :func:`_find` looks up."""
    names = {name for item in truth for name in (item["query"], *item["ok"], *item.get("junk", []))}
    return names | {Path(name).stem for name in names}


def _is_ground_truth_item(item: object) -> bool:
    return (isinstance(item, dict) and isinstance(item.get("query"), str) and isinstance(item.get("ok"), list)
            and isinstance(item.get("junk", []), list))


def _lines(path: Path) -> list[str]:
    return read_text(path, names_files=True).split() if path.is_file() else []


def _name_index(paths: Sequence[str], wanted: Collection[str]) -> dict[str, int]:
    """Row of each path of ``wanted``, and of each file name without extension of ``wanted`` that
    only one path has (a ground truth names a few thousand images of a database of millions: an
    index of every path was most of an evaluation's time)."""
    index: dict[str, int] = {}
    stems: dict[str, list[int]] = {}
    for row, path in enumerate(paths):
        if path in wanted:
            index[path] = row
        stem = _stem(path)
        if stem in wanted:
            stems.setdefault(stem, []).append(row)
    for stem, rows in stems.items():
        if len(rows) == 1:
            index.setdefault(stem, rows[0])
    return index


def _stem(path: str) -> str:
    """``Path(path).stem`` in string operations, several times as fast: the last component without
    its last suffix (none where the only dot leads or ends the name)."""
    name = path.rpartition("/")[2]
    dot = name.rfind(".")
    return name[:dot] if 0 < dot < len(name) - 1 else name


def _find(index: dict[str, int], name: str) -> int | None:
    """The row of ``name`` (a path, or a file name without extension) in ``index`` (:func:`_name_index`)."""
    return index.get(name, index.get(Path(name).stem))


def _lookup(index: dict[str, int], name: str, what: str) -> int:
    row = _find(index, name)
    if row is None:
        raise VggfeatError(f"{what} {name} is not in the descriptors (or its name is ambiguous)")
    return row
