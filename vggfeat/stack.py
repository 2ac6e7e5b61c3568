"""Stacking: the descriptors of the same images from several files, side by side in one file.

The paper's Net-D & Net-E descriptor (each image's VGG16 and VGG19 descriptors stacked) or its
I+B (each region's descriptor stacked with its image's), as one descriptor file that every command
(``index``, ``search --queries``, ``retrieval-eval``, ``export``, the SVM commands) and one's own
code read as any other: ``vggfeat stack d.h5 e.h5 de.h5``. Rows are matched by path as
``train-svm --features d.h5 --features e.h5`` matches them (:func:`vggfeat.features.fused_files`);
an image that another file could not describe is a failure of the stacked file, with the reason.
Sizes are the first file's; labels and classes the first labelled file's (files that
label an image differently are refused). The configuration records each file's:
``{"stacked": [config, ...], "dim": D1 + D2 + ...}`` (and for I+B ``"whole_image"``: which files
hold whole images); so a model trained on a stacked file scores files stacked alike, or the
same networks' files fused in that order (``--features d.h5 --features e.h5``), and a model of
those scores their stacked file (:func:`vggfeat.features.check_configs`); ``search`` takes query
descriptors (``--queries``) stacked alike.

:class:`StackedExtractor` describes images as such a file's rows, each network's descriptor side by
side: ``search`` and ``retrieval-eval --crop-queries`` describe query images with it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ._version import __version__
from .features import Files, Fused, file_list, fused_files, network_parts, part_flags
from .parts import check_no_extraction_into, written_unless_done
from .rerun import check_output, made_from, record
from .files import open_h5, written_atomically
from .store import DESCRIPTORS, check_descriptor_output, create_datasets, mark_complete, open_features_file

if TYPE_CHECKING:  # torch loads only where images are described
    from .chunks import Chunk
    from .extractor import Extractor
    from .regions import Region

# Images that each network describes in turn before their descriptors are stacked: bounds the
# descriptors held (and a progress bar's step).
STACKED_CHUNK_IMAGES = 256


@dataclass(frozen=True)
class StackResult:
    """What :func:`stack_files` wrote."""

    output: Path
    rows: int
    failed: int
    dim: int
    already_done: bool = False  # the output was the stack of these very files, unchanged since: nothing was written


def stack_files(files: Files, output: str | os.PathLike, *, overwrite: bool = False,
                progress: Callable[[int], object] | None = None, provenance: dict | None = None) -> StackResult:
    """Write the descriptors of two or more ``files`` side by side into the descriptor file
    ``output`` (see the module), a block of rows at a time, whole or not at all; ``progress(rows)``
    after each block. ``provenance``: attributes to record besides (the command, say). An
    ``output`` that is the stack of these very files, unchanged since, is left as it is
    (``already_done``; :mod:`vggfeat.rerun`)."""
    names = file_list(files)
    if len(names) < 2:
        raise ValueError("stacking takes two or more files")
    output = Path(output)
    check_descriptor_output(output)
    check_no_extraction_into(output)
    made = made_from(names, {"command": "stack"})

    def already_done() -> StackResult | None:
        if not check_output(output, overwrite, made, DESCRIPTORS, inputs=names):
            return None
        with open_features_file(output, "output") as f:
            rows, dim = f["features"].shape
            return StackResult(output, rows, f["failed/paths"].shape[0], dim, already_done=True)

    return written_unless_done(output, already_done, lambda: _stack_files(names, output, made, progress, provenance))


def _stack_files(names: list[str], output: Path, made: str | None, progress: Callable[[int], object] | None,
                 provenance: dict | None) -> StackResult:
    with fused_files(names) as fused:
        first, labels = fused.opened[0], fused.labels
        dtype = np.result_type(*(f.features.dtype for f in fused.opened)).name
        failed = _failures(fused)
        with written_atomically(output) as temporary, open_h5(temporary, "w") as out:
            (features, paths, labels_out, sizes, read_after, failed_paths, failed_errors, failed_labels,
             _) = create_datasets(out, len(fused.paths), len(failed), fused.width, dtype, fused.classes)
            # A row was described after the earliest of its parts' starts: a file changed since then
            # is changed for the stacked row (--update; NaN, unknown, where a file keeps none).
            first_sizes, each_read_after = first.sizes(), [f.read_after() for f in fused.opened]
            start = 0
            for block_paths, X in fused.blocks(dtype):
                rows = [each[start : start + len(block_paths)] for each in fused.rows_per_file]
                written = slice(start, start + len(block_paths))
                features[written], paths[written], labels_out[written] = X, block_paths, labels[written]
                sizes[written] = first_sizes[rows[0]]
                read_after[written] = np.minimum.reduce([times[rows_k] for times, rows_k in zip(each_read_after, rows)])
                start = written.stop
                if progress is not None:
                    progress(len(block_paths))
            if failed:
                failed_paths[:], failed_errors[:], failed_labels[:] = (list(column) for column in zip(*failed))
            mark_complete(out, {
                # Each file's own dimension: a file written by other code may not record it
                "config": json.dumps(stacked_config([{"dim": f.dim, **f.config} for f in fused.opened], fused.whole_image),
                                     sort_keys=True),
                "stacked_from": json.dumps([str(f.path) for f in fused.opened]),
                "dtype": dtype, "input_root": first.root, "images_found": len(fused.paths) + len(failed),
                "random_weights": any(f.random_weights for f in fused.opened),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "vggfeat_version": __version__,
                **record(made), **(provenance or {}),
            })
    return StackResult(output, len(fused.paths), len(failed), fused.width)


def _failures(fused: Fused) -> list[tuple[str, str, int]]:
    """(path, reason, label) of the images that the stacked file has no row of, in path order: the
    first file's failures, and its images that another file could not describe."""
    first = fused.opened[0]
    reasons = {path: fused.left_out[path] for path in first.paths if path in fused.left_out}
    reasons.update(first.failed().reasons_by_path())
    paths = sorted(reasons)
    return list(zip(paths, [reasons[path] for path in paths], fused.labels_of(paths)))


def stacked_config(configs: Sequence[dict], whole_image: Sequence[bool]) -> dict:
    """The configuration of descriptors stacked from those of ``configs``; ``whole_image``: for
    each, whether it describes the first's regions by their whole image (I+B), recorded only then.
    Stacked ones among ``configs`` (a file of 'extract --model vgg16,vgg19', say) give their parts
    in their place: stacking D & E with C is stacking D, E and C."""
    parts, flags = network_parts(configs), part_flags(configs, whole_image)
    stacked = {"stacked": parts, "dim": sum(int(each["dim"]) for each in parts)}
    return {**stacked, "whole_image": flags} if any(flags) else stacked


def flat_config(config: dict) -> dict:
    """``config`` as one level of a file's attributes: of stacked descriptors, each key with the
    value their parts share, or where they differ (the model, the weights) their values
    comma-separated (``"vgg16,vgg19"``), and the whole's keys (its dimension)."""
    if "stacked" not in config:
        return config
    parts = config["stacked"]
    flat = {}
    for key in dict.fromkeys(key for part in parts for key in part):
        values = [part.get(key) for part in parts]
        flat[key] = values[0] if all(value == values[0] for value in values) else ",".join(map(str, values))
    return {**flat, **{key: value for key, value in config.items() if key != "stacked"}}


class StackedExtractor:
    """Describes images as a stacked file's rows (:func:`stack_files`): each of ``parts``'
    descriptor side by side, ``whole_image[i]``: part ``i`` describes a region's whole image.

    Built by :func:`vggfeat.search.extractor_for` from a stacked index's configuration, for query
    images; it offers what those callers use of an :class:`~vggfeat.extractor.Extractor`
    (``dim``, ``config()``, ``iter_chunks``). Each network describes a chunk of images in turn: an
    image is decoded once per network.
    """

    def __init__(self, parts: Sequence[Extractor], whole_image: Sequence[bool] | None = None) -> None:
        if len(parts) < 2:
            raise ValueError("stacking takes two or more extractors")
        self.parts = list(parts)
        self.whole_image = list(whole_image) if whole_image is not None else [False] * len(self.parts)
        if len(self.whole_image) != len(self.parts) or self.whole_image[0]:
            raise ValueError(f"whole_image: one flag per part, the first False; got {whole_image}")

    @property
    def dim(self) -> int:
        return sum(part.dim for part in self.parts)

    def config(self) -> dict:
        return stacked_config([part.config() for part in self.parts], self.whole_image)

    def iter_chunks(self, paths: Sequence[str | os.PathLike], chunk_images: int | None = None,
                    regions: Sequence[Region | None] | None = None) -> Iterator[Chunk]:
        """As :meth:`Extractor.iter_chunks`: an image fails with the reason of the first network
        that failed it; its sizes are the first network's (of its region, where it has one)."""
        if regions is not None and len(regions) != len(paths):
            raise ValueError(f"{len(paths)} paths but {len(regions)} regions")
        step = chunk_images or STACKED_CHUNK_IMAGES
        for start in range(0, len(paths), step):
            end = min(start + step, len(paths))
            yield self._chunk(paths[start:end], None if regions is None else regions[start:end], start)

    def _chunk(self, paths: Sequence[str | os.PathLike], regions: Sequence[Region | None] | None, start: int) -> Chunk:
        from .chunks import Chunk

        columns = [np.empty((len(paths), part.dim), dtype=np.float32) for part in self.parts]
        described = np.ones(len(paths), dtype=bool)
        failures: dict[int, str] = {}
        sizes: dict[int, tuple[int, int]] = {}
        for number, (part, whole, column) in enumerate(zip(self.parts, self.whole_image, columns)):
            for chunk in part.iter_chunks(paths, regions=None if whole else regions):
                column[chunk.indices] = chunk.features
                for index, reason in chunk.failures:
                    described[index] = False
                    failures.setdefault(index, reason)
                if number == 0:
                    sizes.update(zip(chunk.indices, chunk.sizes))
        indices = np.flatnonzero(described)
        return Chunk(start, start + len(paths), indices=[start + int(i) for i in indices],
                     features=np.hstack([column[indices] for column in columns]),
                     sizes=[sizes[int(i)] for i in indices],
                     failures=sorted((start + index, reason) for index, reason in failures.items()))
