"""Search: queries (image files, a folder, or a descriptors file) against a :class:`VectorIndex`.

Query images are described by an :class:`Extractor` rebuilt from the index's recorded configuration
(model, weights, layer, pooling, scales, resize side, ...), or for a stacked index (``vggfeat
stack``) one per network side by side, and that extractor's configuration is
compared with the index's before any image is read, so a query is described exactly as the
database was or refused. Descriptor files are checked the same way. Queries then go through the
index's own whitening and L2-normalisation (:meth:`VectorIndex.prepare`).

Average query expansion (``qe=N``, Chum et al. 2007): the query is replaced by the normalised sum
of itself and its top N results, and searched again.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .textfiles import as_utf8
from .errors import VggfeatError
from .features import FeatureFile, config_differences
from .index import VectorIndex
from .regions import file_and_region, from_corners
from .retrieval import hits_to_expand_with
from .stack import StackedExtractor
from .files import naming
from .rerun import written_recorded_file
from .whitening import l2_normalize

if TYPE_CHECKING:
    from .extractor import Extractor


@dataclass
class Result:
    """The ranked hits of one query, best first."""

    query: str
    rows: np.ndarray  # [k] rows of the index
    paths: list[str]
    scores: np.ndarray  # [k] inner products of unit vectors (cosines)


def search(index: VectorIndex, X: np.ndarray, names: Sequence[str], k: int = 10, qe: int = 0) -> list[Result]:
    """Search raw descriptors ``X`` [n, D] (as extracted); ``names`` label the queries in the results."""
    if np.ndim(X) != 2:
        raise VggfeatError(f"query descriptors are rows [n, D], got an array of shape {np.shape(X)} (one query: X[None])")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise VggfeatError(f"k: a whole number of hits, 1 or more, got {k!r}")
    if len(X) != len(names):
        raise VggfeatError(f"{len(X)} query descriptors but {len(names)} names")
    qe = hits_to_expand_with(qe, len(index.paths))
    Q = index.prepare(X)
    if qe and len(Q):
        _, top = index.search(Q, qe)
        expanded = index.reconstruct(np.where(top >= 0, top, 0).ravel()).reshape(len(Q), top.shape[1], -1)
        expanded *= (top >= 0)[:, :, None]  # FAISS pads missing hits with -1
        Q = l2_normalize(Q + expanded.sum(axis=1))
    scores, rows = index.search(Q, k) if len(Q) else (np.zeros((0, 0)), np.zeros((0, 0), dtype=np.int64))
    results = []
    for name, row_scores, row_ids in zip(names, scores, rows):
        found = row_ids >= 0
        results.append(Result(str(name), row_ids[found], [index.paths[i] for i in row_ids[found]], row_scores[found]))
    return results


def extractor_for(config: dict, weights: str | os.PathLike | Sequence[str | os.PathLike] | None = None, **runtime
                  ) -> Extractor | StackedExtractor:
    """An :class:`Extractor` that describes images as the descriptors of ``config`` (an index's or a
    features file's recorded configuration) were described; for stacked descriptors
    (:mod:`vggfeat.stack`), a :class:`~vggfeat.fused.FusedExtractor` of their networks where they
    describe whole images alike, else a :class:`StackedExtractor` of one per stacked file.

    ``weights`` is needed when they were made with a weights file (the configuration records only
    its name and hash); of stacked descriptors, one file for each part made with one, in their
    order, as a sequence or comma-separated. ``runtime`` takes settings that do not change the
    numbers (device, batch_size, workers, precision). The result is checked against ``config``:
    a mismatch raises.
    """
    if "stacked" in config:
        # Every weights file is settled before a network loads.
        parts, files = config["stacked"], _stacked_weights(config["stacked"], weights)
        _check_recorded(parts)
        if _networks_alike(config):  # read each image once for all the networks
            from .fused import FusedExtractor

            extractor = FusedExtractor([part["model"] for part in parts],
                                       weights=[_weights(part, file) for part, file in zip(parts, files)],
                                       **_keywords(parts[0]), **runtime)
        else:
            extractor = StackedExtractor([_extractor(part, file, runtime) for part, file in zip(parts, files)],
                                         config.get("whole_image"))
    else:
        extractor = _extractor(config, weights, runtime)
    differences = config_differences(config, extractor.config())
    if differences:
        raise VggfeatError(f"query images would be described differently from the database: {'; '.join(differences)}")
    return extractor


# What describing images again takes of a recorded configuration (of each part of stacked ones),
# beside its weights: Extractor.config records them all.
_RECORDED = ("model", "layer", "pooling", "scales", "aggregate", "flip")


def _check_recorded(parts: Sequence[dict]) -> None:
    """Refuse a configuration that no vggfeat run recorded (its index or descriptors file edited by
    hand), once the weights it needs are settled: a key that rebuilding the extractor takes missing
    was a KeyError's traceback."""
    if any("dense" in part for part in parts):  # (a classifier's configuration records no layer)
        raise VggfeatError("the database holds posteriors ('vggfeat classify'), to which query images are not described "
                           "here: classify them into an .h5 as the database was, and give it as --queries")
    missing = sorted({key for part in parts for key in _RECORDED if key not in part})
    seeds = [part.get("weights_seed", 0) for part in parts]
    if missing or not all(isinstance(seed, int) and not isinstance(seed, bool) for seed in seeds):
        lacks = ", ".join(missing) or "a whole weights_seed"
        raise VggfeatError(f"the database's recorded configuration lacks {lacks}; describe and index the database again")


def _made_with_file(config: dict) -> bool:
    name = str(config.get("weights", ""))
    return name != "random" and not name.startswith("imagenet")


def _stacked_weights(parts: Sequence[dict], weights: str | os.PathLike | Sequence[str | os.PathLike] | None
                     ) -> list[str | os.PathLike | None]:
    """The weights to give each stacked part's extractor: a file of ``weights`` for each made with one."""
    needed = [number for number, part in enumerate(parts, 1) if _made_with_file(part)]
    if isinstance(weights, (str, os.PathLike)):
        weights = [name.strip() for name in str(weights).split(",")]
    given = list(weights or [])
    if given and not needed:
        raise VggfeatError(f"none of the {len(parts)} files that the database's descriptors are stacked from was "
                           "described with weights from a file: drop --weights")
    if len(given) != len(needed):
        made = ", ".join(f"{number}: {parts[number - 1].get('weights')}" for number in needed)
        raise VggfeatError(f"the database's descriptors are stacked from {len(parts)} files, of which these were "
                           f"described with weights from a file ({made}); pass --weights with one file for each, "
                           f"comma-separated in that order (got {len(given)})")
    files = dict(zip(needed, given))
    return [files.get(number) for number in range(1, len(parts) + 1)]


def _networks_alike(config: dict) -> bool:
    """Whether stacked descriptors are several networks' of whole images, described alike
    (``extract --model vgg16,vgg19``, or ``vggfeat stack`` of files that such runs made)."""
    network_keys = ("model", "weights", "weights_sha256", "weights_seed", "dim", "dtype", "precision")
    first, *rest = ({key: value for key, value in part.items() if key not in network_keys} for part in config["stacked"])
    return not any(config.get("whole_image", [])) and all(part == first for part in rest)


def _extractor(config: dict, weights: str | os.PathLike | None, runtime: dict) -> Extractor:
    from .extractor import Extractor  # torch loads only when images are to be described

    weights = _weights(config, weights)  # what to pass said first
    _check_recorded([config])
    return Extractor(config["model"], weights=weights, **_keywords(config), **runtime)


def _weights(config: dict, weights: str | os.PathLike | None) -> str | os.PathLike:
    """The weights that made the descriptors of ``config``: ``weights`` (a file), where they came from one."""
    if weights is not None:
        return weights
    name = str(config.get("weights", ""))
    if _made_with_file(config):
        raise VggfeatError(f"the database was described with weights from a file ({name}); pass --weights PATH")
    return "random" if name == "random" else "imagenet"


def _keywords(config: dict) -> dict:
    """The :class:`Extractor` keywords, weights aside, that describe images as ``config`` records."""
    keywords = {
        "seed": max(0, int(config.get("weights_seed", 0))), "layer": config["layer"],
        "pooling": config["pooling"], "scales": config["scales"], "aggregate": config["aggregate"],
        "flip": config["flip"], "max_pixels": config.get("max_pixels"), "min_side": config.get("min_side"),
    }
    # Keys that older files lack take the Extractor's defaults, which are what those files used.
    for key in ("resize_side", "center_crop", "normalize", "gem_p", "jpeg_draft"):
        if config.get(key) is not None:
            keywords[key] = config[key]
    return {key: value for key, value in keywords.items() if value is not None}


def describe_images(
    index: VectorIndex, paths: Sequence[str | os.PathLike], extractor: Extractor | StackedExtractor | None = None,
    progress: Callable[[int], object] | None = None, **kwargs
) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
    """Describe query images for ``index``: (descriptors of the usable ones, their paths, failures).
    A path may name a region of its image, ``query.jpg#xywh=X,Y,W,H`` (:mod:`vggfeat.regions`).

    ``extractor`` defaults to :func:`extractor_for` (``kwargs`` go to it); a given one is checked.
    ``progress(images)`` after each chunk of images, described or failed.
    """
    try:
        files, regions = zip(*map(file_and_region, paths)) if paths else ((), ())
    except ValueError as error:
        raise VggfeatError(f"query {error}") from None
    if extractor is None:
        extractor = extractor_for(index.config, **kwargs)
    else:
        index.check_config(extractor.config(), "query images")
    descriptors, described, failures = [], [], []
    whole = all(region is None for region in regions)
    for chunk in extractor.iter_chunks([Path(file) for file in files], regions=None if whole else regions):
        descriptors.append(chunk.features)
        # Names to print and write: valid UTF-8 (see ImageSet), whatever bytes name the files.
        described += [as_utf8(str(paths[i])) for i in chunk.indices]
        failures += [(as_utf8(str(paths[i])), reason) for i, reason in chunk.failures]
        if progress:
            progress(len(chunk.indices) + len(chunk.failures))
    X = np.concatenate(descriptors) if descriptors else np.zeros((0, extractor.dim), dtype=np.float32)
    return X, described, failures


def describe_crops(
    extractor: Extractor | StackedExtractor, files: Sequence[str | os.PathLike], boxes: Sequence[Sequence[float]],
    progress: Callable[[int], object] | None = None,
) -> np.ndarray:
    """Descriptors [len(files), dim] of each image cropped to its box: the query of the Oxford and
    Paris protocols, the object that the box holds rather than the whole picture.

    A box is [x1, y1, x2, y2] in the upright image's pixels, rounded to whole pixels as PIL's crop
    rounds it, and clipped to the image (:mod:`vggfeat.regions`). An image that cannot be read, or
    whose crop is empty or smaller than the extractor's ``min_side``, raises: an evaluation missing
    a query would not compare with published numbers. ``progress(images)`` after each chunk.
    """
    if len(files) != len(boxes):
        raise VggfeatError(f"{len(files)} query images but {len(boxes)} boxes")
    descriptors = []
    for chunk in extractor.iter_chunks(files, regions=[from_corners(box) for box in boxes]):
        if chunk.failures:
            index, reason = chunk.failures[0]
            raise VggfeatError(f"query {as_utf8(str(files[index]))} cropped to {list(boxes[index])}: {reason}")
        descriptors.append(chunk.features)
        if progress:
            progress(len(chunk.indices))
    return np.concatenate(descriptors) if descriptors else np.zeros((0, extractor.dim), dtype=np.float32)


def read_queries(index: VectorIndex, path: str | os.PathLike) -> tuple[np.ndarray, list[str], Path]:
    """Descriptors and paths of a features file, and the folder its paths are relative to;
    refused unless extracted as the index's database."""
    with FeatureFile(path) as f:
        index.check_config(f.config, f"descriptors in {path}")
        return f.read(dtype=np.float32), list(f.paths), Path(f.root or ".")


def write_results(results: Sequence[Result], output: str | os.PathLike,
                  record: Callable[[Path], object] | None = None) -> None:
    """``.csv``: query, rank, path, score per line; ``.json``: a list of {query, hits: [...]}.
    ``record`` (:func:`~vggfeat.rerun.recorder`) records how it was made, before it is in place."""
    output = Path(output)
    if output.suffix.lower() not in (".csv", ".json"):
        raise VggfeatError(f"results go to a .csv or .json file, got {output.name}")
    with written_recorded_file(output, record) as temporary, naming(output):
        if output.suffix.lower() == ".json":
            data = [{"query": r.query, "hits": [{"rank": i + 1, "path": p, "score": float(s)}
                                                for i, (p, s) in enumerate(zip(r.paths, r.scores))]} for r in results]
            temporary.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        else:
            _write_csv(results, temporary)


def _write_csv(results: Sequence[Result], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["query", "rank", "path", "score"])
        for r in results:
            for i, (p, s) in enumerate(zip(r.paths, r.scores)):
                writer.writerow([r.query, i + 1, p, f"{float(s):.6f}"])
