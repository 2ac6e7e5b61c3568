"""Stacking: the descriptors of the same images from several files, side by side in one file.

The paper's Net-D & Net-E descriptor (each image's VGG16 and VGG19 descriptors stacked) or its
I+B (each region's descriptor stacked with its image's), as one descriptor file that every command
(``index``, ``search --queries``, ``retrieval-eval``, ``export``, the SVM commands) and one's own
code read as any other: ``vggfeat stack d.h5 e.h5 de.h5``. Rows are matched by path as
``train-svm --features d.h5 --features e.h5`` matches them (:func:`vggfeat.features.fused_files`);
an image that another file could not describe is a failure of the stacked file, with the reason.
Labels, classes and sizes are the first file's. The configuration records each file's:
``{"stacked": [config, ...], "dim": D1 + D2 + ...}``; so a model trained on a stacked file scores
only files stacked alike, and ``search`` takes query descriptors (``--queries``) stacked alike.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ._version import __version__
from .features import Files, Fused, file_list, fused_files
from .store import check_descriptor_output, check_new_file, create_datasets, mark_complete, open_h5, written_atomically


@dataclass(frozen=True)
class StackResult:
    """What :func:`stack_files` wrote."""

    output: Path
    rows: int
    failed: int
    dim: int


def stack_files(files: Files, output: str | os.PathLike, *, overwrite: bool = False,
                progress: Callable[[int], object] | None = None, provenance: dict | None = None) -> StackResult:
    """Write the descriptors of two or more ``files`` side by side into the descriptor file
    ``output`` (see the module), a block of rows at a time, whole or not at all; ``progress(rows)``
    after each block. ``provenance``: attributes to record besides (the command, say)."""
    names = file_list(files)
    if len(names) < 2:
        raise ValueError("stacking takes two or more files")
    output = Path(output)
    check_descriptor_output(output)
    check_new_file(output, overwrite, inputs=names)
    with fused_files(names) as fused:
        first, rows_of_first = fused.opened[0], fused.rows_per_file[0]
        dtype = np.result_type(*(f.features.dtype for f in fused.opened)).name
        failed = _failures(fused)
        with written_atomically(output) as temporary, open_h5(temporary, "w") as out:
            (features, paths, labels, sizes, read_after, failed_paths, failed_errors, failed_labels,
             _) = create_datasets(out, len(fused.paths), len(failed), fused.width, dtype, first.classes)
            first_sizes, first_read_after = first.sizes(), first.read_after()
            start = 0
            for block_paths, X in fused.blocks(dtype):
                rows = rows_of_first[start : start + len(block_paths)]
                written = slice(start, start + len(block_paths))
                features[written], paths[written], labels[written] = X, block_paths, first.labels[rows]
                sizes[written], read_after[written] = first_sizes[rows], first_read_after[rows]
                start = written.stop
                if progress is not None:
                    progress(len(block_paths))
            if failed:
                failed_paths[:], failed_errors[:], failed_labels[:] = (list(column) for column in zip(*failed))
            mark_complete(out, {
                "config": json.dumps({"stacked": [f.config for f in fused.opened], "dim": fused.width}, sort_keys=True),
                "stacked_from": json.dumps([str(f.path) for f in fused.opened]),
                "dtype": dtype, "input_root": first.root, "images_found": len(fused.paths) + len(failed),
                "random_weights": any(f.random_weights for f in fused.opened),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "vggfeat_version": __version__,
                **(provenance or {}),
            })
    return StackResult(output, len(fused.paths), len(failed), fused.width)


def _failures(fused: Fused) -> list[tuple[str, str, int]]:
    """(path, reason, label) of the images that the stacked file has no row of, in path order: the
    first file's failures, and its images that another file could not describe."""
    first = fused.opened[0]
    own = first.failed()
    failures = list(zip(own.paths, own.reasons, own.labels.tolist()))
    if fused.left_out:
        failures += [(path, fused.left_out[path], int(label)) for path, label in zip(first.paths, first.labels)
                     if path in fused.left_out]
    return sorted(failures)
