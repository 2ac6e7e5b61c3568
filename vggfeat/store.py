"""Store: descriptors go to one HDF5 file with a fixed schema; the names of the files beside it.

The output file (read it with plain h5py)::

    /features        float32 or float16 [N, D], chunked by rows
    /paths           UTF-8 [N], relative to the input root, sorted
    /labels          int32 [N], index into /classes, -1 where the image has no class
    /classes         UTF-8 [C]
    /sizes           int32 [N, 2], decoded (height, width), EXIF orientation applied (the full size, drafted or not)
    /read_after      float64 [N], Unix time (s) that each row's file was read after: when the run that
                     described it began; NaN where not known (files written before it was added).
                     ``extract --update`` describes again the images whose file changed since.
    /failed/paths    UTF-8 [F], files that could not be used
    /failed/errors   UTF-8 [F], why
    /failed/labels   int32 [F], as /labels (files written before it was added lack it: read it
                     with :func:`failed_labels`)
    /failed/read_after  float64 [F], as /read_after
    attributes       format_version, versions, model, weights, weights_sha256, layer, pooling,
                     scales, aggregate, flip, preprocessing, precision, dtype, created, complete,
                     regions and region_images (rows that are regions, of how many images),
                     archive_classes (the archives in the images' folder were classes),
                     and "config": all of the extraction configuration as JSON; a shard
                     (``extract --shard``) adds shard_index, shard_count, collection_images
                     and collection_sha256; a merged file merged_from, merge_command and shards
                     (how each shard was made: its command, date, versions, device, retry); an
                     updated file (``extract --update``) updated, update_command and updated_with,
                     a retried one failures_retried, retry_command and failures_retried_with.

While it is written, an extraction keeps its work beside it, in parts (:mod:`vggfeat.parts`); its
rows go to the file as they are described (:class:`vggfeat.output.OutputFile`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import h5py
import numpy as np

from .errors import VggfeatError
from .files import (DamageNamingFile, open_h5, open_hdf5, plain_value, refusal_reason, storage_problem, system_error,
                    whole_number)
from .regions import FRAGMENT, RegionCount, count_regions
from .textfiles import as_utf8

FORMAT_VERSION = 1
# The "format" attribute of vggfeat's other files, by which 'vggfeat info' tells them apart.
INDEX_FORMAT = "vggfeat-index"
WHITENING_FORMAT = "vggfeat-whitening"
SVM_MODEL_FORMAT = "vggfeat-linear-svm"
SCORES_FORMAT = "vggfeat-scores"
# The kinds of vggfeat's files (:func:`kind_key`): each of the formats above, and the two that
# extraction writes, which have none.
DESCRIPTORS, POSTERIORS = "descriptors", "posteriors"
KINDS = {SVM_MODEL_FORMAT: "an SVM model (made by 'vggfeat train-svm')", INDEX_FORMAT: "an index (made by 'vggfeat index')",
         WHITENING_FORMAT: "a whitening (made by 'vggfeat whiten fit')",
         SCORES_FORMAT: "a scores file (made by 'vggfeat predict')",
         POSTERIORS: "a posteriors file (made by 'vggfeat classify')",
         DESCRIPTORS: "a descriptor file (made by 'vggfeat extract')"}
STRING = h5py.string_dtype("utf-8")  # of every text dataset
# The datasets of the schema above that every finished extraction holds; /failed/labels is not
# among them, as files written before it was added lack it.
SCHEMA_DATASETS = ("features", "paths", "labels", "classes", "sizes", "failed/paths", "failed/errors")
_CHUNK_BYTES = 2**20  # rows per HDF5 chunk: about 1 MiB, good for reading rows in order or in slices


# What an update describes: the images the file does not hold, or those it lists as failed; the
# option that asks for it, where its work goes, and the attribute that dates it.
UPDATE_MODES = {
    "new": ("--update", ".new-images.h5", "updated"),
    "failed": ("--retry-failed", ".retried-images.h5", "failures_retried"),
}


def work_folder(output: Path) -> Path:
    """Where an extraction into ``output`` keeps its work (manifest and parts) until it is done."""
    return output.with_name(output.name + ".parts")


def shards_folder(output: Path) -> Path:
    """Where an extraction on several devices into ``output`` keeps its shards until they are merged."""
    return output.with_name(output.name + ".shards")


def posteriors_file_of(output: str | os.PathLike, model: str | None = None) -> Path:
    """Where the posteriors of a CSV ``output`` are kept until it is written: ``OUTPUT.posteriors.h5``
    (and, while they are described, its work folder ``OUTPUT.posteriors.h5.parts``); those of
    ``model``, one of several networks fused, in ``OUTPUT.<model>.posteriors.h5``."""
    output = Path(output)
    return output.with_name(f"{output.name}{'.' + model if model else ''}.posteriors.h5")


def rows_and_failures(path: Path) -> tuple[int, int]:
    """The rows and the failures of the complete descriptor file ``path``."""
    with open_features_file(path, "output") as f:
        return f["features"].shape[0], f["failed/paths"].shape[0]


def block_rows(f: h5py.File) -> int:
    """The rows of a descriptor file: of its /features, or those it placed in a merged file."""
    return int(f.attrs["rows"]) if "first_row" in f.attrs else f["features"].shape[0]


PLACED_ATTRS = ("first_row", "rows", "chunk_rows")  # the attributes place_rows records


def place_rows(f: h5py.File, first_row: int, rows: int, chunks: tuple[int, np.ndarray] | None) -> None:
    """Record in ``f`` (a part, or a block's file) that its ``rows`` rows are in an
    :class:`~vggfeat.output.OutputFile` from ``first_row``; and, where known, ``chunks``: (rows per
    HDF5 chunk, the byte offset in that file of each chunk they lie in, from the first)."""
    f.attrs.update(first_row=first_row, rows=rows)
    if chunks is not None:
        f.attrs["chunk_rows"] = chunks[0]
        f.create_dataset("chunk_offsets", data=np.asarray(chunks[1], dtype=np.int64))


def chunk_rows(rows: int, dim: int, dtype: str) -> int:
    """Rows of ``dim`` values of ``dtype`` per HDF5 chunk of a file of ``rows`` rows."""
    return max(1, min(max(rows, 1), _CHUNK_BYTES // (dim * np.dtype(dtype).itemsize)))


def rows_datasets(out: h5py.File, rows: int, classes: Sequence[str]) -> tuple[h5py.Dataset, ...]:
    """The schema's datasets of one value per row, and /classes, in ``out``: (paths, labels, sizes,
    read_after)."""
    out.create_dataset("classes", data=list(classes), dtype=STRING)
    return (
        out.create_dataset("paths", shape=(rows,), dtype=STRING, maxshape=(None,)),
        out.create_dataset("labels", shape=(rows,), dtype=np.int32, maxshape=(None,)),
        out.create_dataset("sizes", shape=(rows, 2), dtype=np.int32, maxshape=(None, 2)),
        out.create_dataset("read_after", shape=(rows,), dtype=np.float64, maxshape=(None,), fillvalue=np.nan),
    )


def read_after(f: h5py.File, start: int = 0, stop: int | None = None, failed: bool = False) -> np.ndarray:
    """/read_after of rows ``start:stop`` of ``f`` (``failed``: /failed/read_after of its failures):
    NaN (not known) for a file written before it was added."""
    name = "failed/read_after" if failed else "read_after"
    if name in f:
        return f[name][start:stop]
    return np.full(len(range(*slice(start, stop).indices(f["failed/paths" if failed else "paths"].shape[0]))), np.nan)


def create_datasets(out: h5py.File, rows: int, failed: int, dim: int, dtype: str, classes: Sequence[str]) -> tuple[h5py.Dataset, ...]:
    """The schema's datasets in ``out``, sized: (features, paths, labels, sizes, read_after, failed
    paths, failed errors, failed labels, failed read_after)."""
    # Resizable (maxshape), so that a file can be cut to fewer rows; that also lets a chunk be
    # larger than the data, which HDF5 otherwise refuses (rows == 0).
    features = out.create_dataset("features", shape=(rows, dim), dtype=dtype, chunks=(chunk_rows(rows, dim, dtype), dim),
                                  maxshape=(None, dim))
    return (
        features,
        *rows_datasets(out, rows, classes),
        *failed_datasets(out, failed),
    )


def failed_datasets(out: h5py.File, failed: int) -> tuple[h5py.Dataset, ...]:
    """/failed's datasets in ``out``, sized: (paths, errors, labels, read_after)."""
    return (
        out.create_dataset("failed/paths", shape=(failed,), dtype=STRING, maxshape=(None,)),
        out.create_dataset("failed/errors", shape=(failed,), dtype=STRING, maxshape=(None,)),
        out.create_dataset("failed/labels", shape=(failed,), dtype=np.int32, maxshape=(None,)),
        out.create_dataset("failed/read_after", shape=(failed,), dtype=np.float64, maxshape=(None,), fillvalue=np.nan),
    )


def failed_labels(f: h5py.File) -> np.ndarray:
    """The labels of the images that ``f`` lists as failed (-1: none); -1 for each in a file written
    before /failed/labels was added."""
    if "failed/labels" in f:
        return f["failed/labels"][:].astype(np.int64)
    return np.full(f["failed/paths"].shape[0], -1, dtype=np.int64)


def mark_complete(out: h5py.File, attrs: dict) -> None:
    """Write the attributes, ``complete`` last: readers refuse a file without it. Text is written
    as valid UTF-8 (a folder or command line may name files in other bytes). How many rows are
    regions, of how many images, is counted here, once, for ``info`` (which would otherwise read
    every path: seconds for ten million rows)."""
    regions = count_regions_in(out["paths"])
    attrs = {**attrs, "regions": regions.regions, "region_images": regions.images}
    for key, value in attrs.items():
        out.attrs[key] = as_utf8(value) if isinstance(value, str) else value
    out.attrs["format_version"] = FORMAT_VERSION
    out.attrs["complete"] = True


def count_regions_in(paths: h5py.Dataset, step: int = 2**18) -> RegionCount:
    """How many of ``paths`` (a file's /paths) name regions, and of how many images, read a block
    at a time."""
    def blocks_with_regions() -> Iterator[str]:
        for start in range(0, paths.shape[0], step):
            block = paths[start : start + step].tolist()
            if FRAGMENT.encode() in b"\n".join(block):  # most files hold none: one pass in C says so
                yield from (path.decode("utf-8", "surrogateescape") for path in block)
    return count_regions(blocks_with_regions())


# Names of the formats that a user may mean instead of HDF5: an HDF5 output named so is a slip (an
# HDF5 file called out.csv, or model.pkl), refused before the work.
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")
OTHER_FORMATS = (".csv", ".tsv", ".txt", ".json", ".npy", ".npz", ".parquet", ".pkl", ".pt", ".pth", ".jpg", ".jpeg", ".png")


def check_output_path(path: Path, kind: str = "an .h5 file") -> None:
    """Refuse an output path that names a folder, or whose folder does not exist."""
    if path.is_dir():
        raise VggfeatError(f"output {path} is a folder; name {kind}")
    if not path.parent.is_dir():
        raise VggfeatError(f"folder of the output does not exist: {path.parent}")


def check_descriptor_output(path: Path) -> None:
    """:func:`check_output_path` for a descriptor file (HDF5), refusing too a name of another format."""
    check_output_path(path)
    _check_hdf5_name(path, "descriptor files", " ('vggfeat export' then writes NumPy or Parquet files)")


def _check_hdf5_name(path: Path, what: str, hint: str = "") -> None:
    if path.suffix.lower() in OTHER_FORMATS:
        raise VggfeatError(f"output {path} names a {path.suffix} file, but {what} are HDF5: name it "
                           f"{path.with_suffix('.h5').name}{hint}")


def check_new_file(path: Path, overwrite: bool, hdf5: str | None = None,
                   inputs: Sequence[str | os.PathLike | None] = (), makes: str | None = None) -> None:
    """Refuse, before any work, an output file that names a folder, whose folder does not exist, or
    that exists, unless ``overwrite``: no command replaces a file unasked; nor, ever, one of the
    command's ``inputs`` (a slip of the keyboard: ``predict model.h5 test.h5 test.h5``). ``hdf5``:
    what the file is ("SVM models"), an HDF5 file, which a name of another format must not pass for.
    ``makes``: the kind of vggfeat file written (:data:`KINDS`; None: a CSV, JSON), which alone
    ``overwrite`` replaces (:func:`check_replaceable`)."""
    check_output_path(path, "a file")
    if hdf5:
        _check_hdf5_name(path, hdf5)
    if path.exists() and any(given is not None and os.path.exists(given) and os.path.samefile(path, given)
                             for given in inputs):
        raise VggfeatError(f"{path} is an input of this command too: name another output (--overwrite replaces "
                           "outputs, never inputs)")
    check_replaceable(path, makes)
    if path.exists() and not overwrite:
        raise VggfeatError(already_exists(path))


def check_written(path: str | os.PathLike, makes: str | None, inputs: Sequence[str | os.PathLike | None] = ()) -> None:
    """For a writer of the Python API, which replaces a file of the kind it ``makes`` as a command
    given --overwrite does: refuse ``path`` where it is one of ``inputs`` (``train_svm("f.h5",
    "f.h5")`` replaced the features with the model) or a vggfeat file of another kind
    (:func:`check_new_file`)."""
    check_new_file(Path(path), overwrite=True, inputs=inputs, makes=makes)


def check_replaceable(path: Path, makes: str | None) -> None:
    """Refuse an existing ``path`` that is a vggfeat file of another kind than the command ``makes``,
    ``--overwrite`` or not: a slip (``train-svm d.h5 e.h5 --overwrite``, meaning to fuse them) would
    otherwise replace hours of extraction with a model."""
    kind = existing_kind(path, makes) if path.is_file() else ""
    if kind:
        raise VggfeatError(f"{path} already exists{kind}: --overwrite replaces only a file of the kind this command "
                           "writes; name another output (or remove that file first)")


def already_exists(path: Path, makes: str | None = None) -> str:
    """The refusal of an existing output ``path``, saying what it is where it is a vggfeat file of
    another kind than the command ``makes``: a slip (``train-svm d.h5 e.h5``, meaning to fuse
    them) that --overwrite would turn into hours of work lost."""
    return f"{path} already exists{existing_kind(path, makes)}; pass --overwrite to replace it"


def existing_kind(path: Path, makes: str | None = None) -> str:
    """:func:`kind_of` the file ``path`` where it is of another kind than ``makes``; "" otherwise,
    or where it cannot be read."""
    try:
        with open_h5(path) as f:
            kind = kind_key(f)
    except (OSError, RuntimeError, TypeError, ValueError, KeyError):
        return ""
    return f": it is {KINDS[kind]}" if kind is not None and kind != makes else ""


def kind_key(group: h5py.Group) -> str | None:
    """Which of :data:`KINDS` ``group`` (an open file) is; None for a file that is none of vggfeat's."""
    kind = plain_value(group.attrs.get("format"))
    if isinstance(kind, str) and kind in KINDS:
        return kind
    if "features" in group and "config" in group.attrs:
        return POSTERIORS if "dense" in group.attrs else DESCRIPTORS
    return None


def refuse_descriptors(attrs, path: str | os.PathLike) -> None:
    """Refuse a file of descriptors (its ``attrs``) where classify's posteriors belong."""
    if "dense" not in attrs:  # set by the Classifier's configuration only
        raise VggfeatError(f"{path} holds descriptors, not the posteriors that 'vggfeat classify' writes, of which a CSV "
                           "is made (descriptors are exported as .npy or .parquet)")


def kind_of(group: h5py.Group) -> str:
    """``": it is ..."``, what vggfeat file ``group`` (an open file) is, for the error of a command
    given the wrong one (arguments swapped, say); "" for a file that is none of vggfeat's."""
    kind = kind_key(group)
    return f": it is {KINDS[kind]}" if kind is not None else ""


def open_features_file(path: Path, what: str = "features", hint: str = "",
                       required: Sequence[str] = SCHEMA_DATASETS) -> h5py.File:
    """``path`` opened read-only, once it is known to be a complete vggfeat descriptor file holding
    the ``required`` datasets, laid out as the schema says (:func:`layout_problem`); otherwise a
    one-line error (see :func:`~vggfeat.files.open_hdf5`)."""
    f = open_hdf5(path, what, hint, DamageNamingFile)  # a dataset HDF5 then fails to read is named
    try:
        missing = [name for name in required if name not in f]
        has_config = "config" in f.attrs
        damage = None if missing or not has_config else layout_problem(f)
    except (OSError, RuntimeError, ValueError, TypeError, KeyError, RecursionError) as error:  # HDF5's own structures damaged (a bad disk, a flipped bit), or its JSON
        f.close()
        if isinstance(error, OSError) and system_error(error) is not None:  # the system's refusal (an I/O error): as it is
            raise
        raise VggfeatError(f"{path} is a damaged HDF5 file ({refusal_reason(error)})") from None
    if missing or not has_config:
        problem = "is not a vggfeat features file" + (kind_of(f) or f" (no {', '.join(missing) or 'config attribute'})")
    elif damage is not None:
        problem = f"is damaged: {damage}"
    elif not f.attrs.get("complete", False):
        problem = ("is incomplete (complete=False): finish its extraction (the same command resumes it) first"
                   if work_folder(path).is_dir() else  # vggfeat renames its files into place once they are whole
                   "is incomplete (complete=False) and no run is under way into it: written so by other code than "
                   "vggfeat's, or damaged; extract it again (--overwrite)")
    else:
        return f
    f.close()
    raise VggfeatError(f"{path} {problem}")


# Each dataset of the schema: its shape, in the file's rows (N), failures (F), classes (C) and
# dimension (D), and the kind of its values (text, or numpy's kinds).
_LAYOUT = {
    "features": (("N", "D"), "f"), "paths": (("N",), "text"), "labels": (("N",), "iu"), "classes": (("C",), "text"),
    "sizes": (("N", 2), "iu"), "read_after": (("N",), "f"), "failed/paths": (("F",), "text"),
    "failed/errors": (("F",), "text"), "failed/labels": (("F",), "iu"), "failed/read_after": (("F",), "f"),
}
_KINDS = {"text": "text", "iu": "integers", "f": "floating-point numbers"}


def layout_problem(f: h5py.File) -> str | None:
    """What in ``f``, a descriptor (or posteriors) file, is laid out otherwise than the schema says,
    found before any of its data is read (a compressed dataset of a file of kilobytes can declare
    gigabytes, which a reader would allocate; a group or a dataset of another shape where a dataset
    is expected was a traceback); None where nothing is. ``config``, where there is one, must be
    a JSON object (:func:`config_problem`)."""
    if "failed" in f and not isinstance(f["failed"], h5py.Group):
        return "/failed is not a group"
    datasets = {}
    for name in _LAYOUT:
        if name in f:
            if not isinstance(f[name], h5py.Dataset):
                return f"/{name} is not a dataset"
            datasets[name] = f[name]

    if "features" in datasets and datasets["features"].ndim != 2:
        return f"/features has the shape {datasets['features'].shape}, not (rows, dimension)"

    def length(names: Sequence[str], axis: int) -> int | None:
        data = next((datasets[name] for name in names if name in datasets), None)
        return data.shape[axis] if data is not None and data.ndim > axis else None

    placed = "first_row" in f.attrs  # a block whose rows are in a merged file (place_rows): its /features holds none
    lengths = {"N": int(f.attrs["rows"]) if placed else length(("features", "paths"), 0), "D": length(("features",), 1),
               "C": length(("classes",), 0), "F": length(("failed/paths", "failed/errors"), 0)}
    for name, data in datasets.items():
        dims, kind = _LAYOUT[name]
        expected = tuple(lengths[each] if isinstance(each, str) else each for each in dims)
        if placed and name == "features":
            expected = (0, lengths["D"])
        if data.shape != expected:
            return f"/{name} has the shape {data.shape}, where the file's {_shape_words(dims, lengths)} make {expected}"
        text = h5py.check_string_dtype(data.dtype) is not None
        if (kind == "text") != text or (not text and data.dtype.kind not in kind):
            return f"/{name} holds {'text' if text else data.dtype}, not {_KINDS[kind]}"
        if (unstored := storage_problem(data)) is not None:
            return unstored
    if "config" not in f.attrs:
        return None
    return config_problem(json.loads(f.attrs["config"]), None if "dense" in f.attrs else lengths["D"])


def _shape_words(dims: Sequence[str | int], lengths: dict) -> str:
    words = {"N": "rows", "D": "dimension", "C": "classes", "F": "failures"}
    return " and ".join(f"{lengths[each]} {words[each]}" for each in dims if isinstance(each, str))


def config_problem(config: object, dim: int | None = None) -> str | None:
    """What makes ``config`` (a file's, parsed) other than an extraction's configuration that
    every reader takes it for: a JSON object (stacked, a list of them), stating whole dimensions;
    ``dim``, where given, those of the descriptors the file holds. None where nothing does."""
    if not isinstance(config, dict):
        return "its config attribute is not a JSON object"
    parts = config.get("stacked", [config])
    if not isinstance(parts, list) or not parts or not all(isinstance(part, dict) for part in parts):
        return "its config's stacked is not a list of configurations"
    whole_image = config.get("whole_image", [False] * len(parts))
    if not isinstance(whole_image, list) or len(whole_image) != len(parts) or not all(isinstance(flag, bool) for flag in whole_image):
        return "its config's whole_image is not a flag for each stacked configuration"
    stated = [config.get("dim", dim or 1)] + ([part.get("dim") for part in parts] if "stacked" in config else [])
    if not all(whole_number(each) is not None and each >= 1 for each in stated):
        return f"its config's dim {repr(config.get('dim'))[:40]} is not a number of dimensions"
    if dim is not None and (stated[0] != dim or sum(stated[1:]) not in (0, dim)):
        return f"its config says descriptors of dimension {config.get('dim')}, its /features holds {dim}"
    return None
