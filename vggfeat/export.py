"""Export: a descriptor file as NumPy ``.npy`` or Apache Parquet, for pipelines that do not read HDF5.

- ``npy``: ``OUTPUT.npy`` holds the descriptors [N, D] as stored (float32 or float16) and
  ``OUTPUT.paths.csv`` the rows: ``row,path,label`` (label: class name, empty when none).
- ``parquet``: one table, a row per image: ``path`` (string), ``label`` (string, null when none),
  ``features`` (fixed-size list of float32, D); the extraction configuration is the schema's
  ``vggfeat_config`` metadata (JSON). Needs ``pyarrow`` (``pip install 'vggfeat[export]'``).

Either way ``OUTPUT.failed.csv`` lists the images that could not be described: ``path,label,reason``
(a header alone when none failed; it is always written, so that no earlier export's list is left
beside new rows). Exports to both formats share it.

Rows are copied in blocks, so files larger than memory export too.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from .errors import VggfeatError, not_a_file
from .features import FeatureFile
from .rerun import written_recorded
from .store import check_new_file, check_output_path

FORMATS = ("npy", "parquet")
_BLOCK_BYTES = 64 * 2**20


def export(features: str | os.PathLike, to: str, output: str | os.PathLike | None = None, overwrite: bool = False,
           records: Sequence[Callable[[Path], object] | None] = ()) -> list[Path]:
    """Write ``features`` as ``to`` (npy or parquet) at ``output`` (default: beside it); return the
    files written. ``records``: what records how each of them (:func:`export_targets`) was made
    (:func:`vggfeat.rerun.recorder`), before it is renamed into place; none where not given."""
    targets = export_targets(features, to, output)
    for target in targets:  # never over the file exported, even with overwrite (a slip of the keyboard)
        check_new_file(target, overwrite=True, inputs=[features])
    with FeatureFile(features) as f:
        failed_csv = _failed_csv(f)
        # The failures of an export to the other format, the same list: no file of the user's to lose.
        existing = [str(t) for t in targets if t.exists() and not (t == targets[-1] and t.read_bytes() == failed_csv)]
        if existing and not overwrite:
            raise VggfeatError(f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; pass --overwrite "
                               "to replace")
        step = max(1, _BLOCK_BYTES // (max(1, f.dim) * 4))
        # The files appear together once all are written: an interrupted export leaves the old ones
        # intact, never a new .npy beside the old rows' paths.
        with written_recorded(targets, records or [None] * len(targets)) as temporaries:
            if to == "npy":
                _npy(f, temporaries[0], step)
                with open(temporaries[1], "w", newline="") as out:
                    writer = csv.writer(out)
                    writer.writerow(["row", "path", "label"])
                    for start, paths, labels in _rows(f, step):
                        writer.writerows([start + i, path, label] for i, (path, label) in enumerate(zip(paths, labels)))
            else:
                _parquet(f, temporaries[0], step)
            temporaries[-1].write_bytes(failed_csv)
    return targets


def export_targets(features: str | os.PathLike, to: str, output: str | os.PathLike | None = None) -> list[Path]:
    """The files that exporting ``features`` as ``to`` at ``output`` writes (see :func:`export`),
    the list of failures last."""
    if to not in FORMATS:
        raise VggfeatError(f"unknown export format {to!r}; choose one of {', '.join(FORMATS)}")
    if not Path(features).is_file():  # before its name makes the outputs' (a folder such as "." has none)
        raise VggfeatError(not_a_file(features, "features file"))
    if output:  # a folder's name made files beside it ("imgs" -> ./imgs.npy)
        example = Path(output) / "db"
        check_output_path(Path(output), f"a file without its suffix ({example} writes {example}.{to}, ...)")
    base = Path(output) if output else Path(features).with_suffix("")
    if output and base.suffix.lower() in (".npy", ".parquet"):  # (not of FEATURES' own name: db.npy.h5)
        if base.suffix.lower() != f".{to}":
            raise VggfeatError(f"{base.name} names a {base.suffix} file, but the export is to {to}: name it "
                               f"{base.with_suffix('.' + to).name}")
        base = base.with_suffix("")
    suffixes = (".npy", ".paths.csv") if to == "npy" else (".parquet",)
    return [base.with_name(base.name + suffix) for suffix in (*suffixes, ".failed.csv")]


def _failed_csv(f: FeatureFile) -> bytes:
    """The CSV of the images that ``f`` could not describe: ``path,label,reason``."""
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["path", "label", "reason"])
    failed = f.failed()
    writer.writerows(zip(failed.paths, _class_names(failed.labels, f.classes), failed.reasons))
    return text.getvalue().encode()


def _rows(f: FeatureFile, step: int) -> Iterator[tuple[int, list[str], list[str]]]:
    """(first row, paths, class names) of ``f``'s rows, ``step`` at a time (one empty block where
    there is none): ten million paths are a GB held as a list."""
    for start in range(0, max(f.rows, 1), step):
        stop = min(start + step, f.rows)
        yield start, f.paths_of(start, stop), _class_names(f.labels[start:stop], f.classes)


def _class_names(labels: np.ndarray, classes: list[str]) -> list[str]:
    return [classes[y] if y >= 0 else "" for y in labels]


def _npy(f: FeatureFile, target: Path, step: int) -> None:
    # Written a block at a time, not through a memory map of the whole file: its written pages
    # counted in the process's memory (a batch job's limit) until the system wrote them out.
    with open(target, "wb") as out:
        np.lib.format.write_array_header_1_0(
            out, {"descr": np.lib.format.dtype_to_descr(f.features.dtype), "fortran_order": False, "shape": (f.rows, f.dim)})
        for start in range(0, f.rows, step):  # refusing a damaged row (NaN, infinite), as every reader does
            # (ndarray.tofile would say "requested and written" of a full disk, not the system's error)
            out.write(memoryview(f.read(np.arange(start, min(start + step, f.rows)), dtype=f.features.dtype)))


def _parquet(f: FeatureFile, target: Path, step: int) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise VggfeatError("Parquet export needs pyarrow: pip install 'vggfeat[export]' (or pyarrow)") from None
    schema = pa.schema(
        [("path", pa.string()), ("label", pa.string()), ("features", pa.list_(pa.float32(), f.dim))],
        metadata={"vggfeat_config": json.dumps(f.config, sort_keys=True)},
    )
    with pq.ParquetWriter(target, schema) as writer:
        for start, paths, labels in _rows(f, step):
            block = f.read(np.arange(start, start + len(paths)), dtype=np.float32)
            vectors = pa.FixedSizeListArray.from_arrays(pa.array(block.ravel(), pa.float32()), f.dim)
            writer.write_table(pa.table({
                "path": pa.array(paths, pa.string()),
                "label": pa.array([label or None for label in labels], pa.string()),
                "features": vectors,
            }, schema=schema))
