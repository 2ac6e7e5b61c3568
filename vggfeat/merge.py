"""Merge: the files of all shards of one collection (``vggfeat extract --shard K/N``) into the file
that one run over the whole collection writes.

Shards are contiguous blocks of the sorted image set, so the merged rows are the shards' rows in
shard order. Everything is checked before a byte is written: every shard from 1 to N exactly once,
complete, of the same collection and the same extraction configuration. Rows are copied a block at a
time, so memory stays small whatever the collection's size, and the output appears only when whole.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from .discover import ImageSet, ShardOf
from .errors import VggfeatError
from .output import OutputFile, RowsBlock, holds_rows, recover_rows
from .parts import check_no_extraction_into, written_unless_done
from .features import not_finite_rows
from .files import damage_in, file_attributes, open_h5, plain_value, replace_durably, whole_number, written_atomically
from .store import (DESCRIPTORS, PLACED_ATTRS, already_exists, block_rows, check_descriptor_output, check_replaceable,
                    create_datasets, failed_labels, kind_key, mark_complete, open_features_file, place_rows, read_after,
                    rows_and_failures)

SHARD_ATTRS = ("shard_index", "shard_count", "collection_images", "collection_sha256")
# What says how one shard was made: by which command, when, on what, and a retry of its failed
# images. The merged file keeps each shard's in ``shards``, and at its top level only what all
# shards agree on (one command run on several devices, say), so that no shard's passes for all.
PROVENANCE = ("command", "created", "device", "vggfeat_version", "torch_version", "torchvision_version", "h5py_version",
              "decoder_library", "failures_retried", "retry_command", "failures_retried_with")
_BLOCK_BYTES = 64 * 2**20  # of descriptors per copy
_MAKE_AGAIN = "make that shard again (its extract or classify --shard command, with --overwrite)"
# A block of a run on several devices, in its work folder: a resumed run describes a missing one again.
_DESCRIBE_AGAIN = "remove that file and run the same command again, which describes its images again"


@dataclass(frozen=True)
class MergeResult:
    output: Path
    rows: int
    failed: int
    shards: int
    already_done: bool = False  # the output was the merge of these very shards: nothing was written


def merge_shards(
    shards: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    overwrite: bool = False,
    provenance: dict | None = None,
    progress: Callable[[int, int], None] | None = None,
    shard_of: ShardOf | None = None,
) -> MergeResult:
    """Write ``output`` from the descriptor files of all shards of one extraction, in any order;
    ``progress(rows, total)`` after each block of ``rows`` copied, of ``total``. ``shard_of``: the
    set they were cut from is itself that shard of a collection (``extract --shard K/N`` on several
    devices), and ``output`` is written as that shard's file, for a merge with the others. An
    ``output`` that is the merge of these very shards is left as it is (``already_done``)."""
    output = Path(output)
    paths = [Path(shard) for shard in shards]
    if not paths:
        raise VggfeatError("no shard files given")
    check_descriptor_output(output)
    check_no_extraction_into(output)
    for path in paths:  # a shard being written (again): its file is not there yet, or is the one it replaces
        check_no_extraction_into(path)

    def already_done() -> MergeResult | None:
        if not _check_output(output, paths, overwrite):
            return None
        rows, failed = rows_and_failures(output)
        return MergeResult(output, rows, failed, len(paths), already_done=True)

    return written_unless_done(output, already_done, lambda: _merge_shards(paths, output, provenance, progress, shard_of))


def _merge_shards(paths: list[Path], output: Path, provenance: dict | None,
                  progress: Callable[[int, int], None] | None, shard_of: ShardOf | None) -> MergeResult:
    files: list[h5py.File] = []
    try:
        files.extend(_open_shard(path) for path in paths)
        files.sort(key=lambda f: int(f.attrs["shard_index"]))
        first = files[0]
        _check_together(files)
        rows = sum(f["features"].shape[0] for f in files)
        failed = sum(f["failed/paths"].shape[0] for f in files)
        dim, dtype = first["features"].shape[1], first["features"].dtype
        with written_atomically(output) as temporary, open_h5(temporary, "w") as out:
            classes = list(first["classes"].asstr()[:])
            targets = create_datasets(out, rows, failed, dim, dtype.name, classes)
            block = max(1, _BLOCK_BYTES // (dim * dtype.itemsize))
            _copy_rows(files, targets, block, lambda copied: progress(copied, rows) if progress else None)
            mark_complete(out, _merged_attrs(files, paths, provenance or {}, shard_of))
    except (OSError, RuntimeError, KeyError) as error:  # a shard HDF5 cannot read: named, while it is open
        damage = damage_in(error, files)
        if damage is not None:
            raise damage from error
        raise
    finally:
        for f in files:
            f.close()
    return MergeResult(output, rows, failed, len(files))


def merge_blocks(blocks: Sequence[Path], output: Path, images: ImageSet, *, shard_of: ShardOf | None = None) -> MergeResult:
    """:func:`merge_shards` of the files of the blocks 1..N that a run on several devices cut
    ``images`` into (:class:`~vggfeat.multidevice.MultiDeviceJob`), in its work folder, with each
    descriptor on disk once. Each block's rows go into the folder's ``merged-of-N.h5`` (an
    :class:`OutputFile` of ``images``, taken up again after a kill), flushed, before the block's
    file is written anew without them, recording where they are: the disk holds every row once,
    and one block's twice for a moment. The rest is then written from the blocks' files, and the
    merged file, complete, is renamed to ``output``: by then the blocks' files are small."""
    blocks = list(blocks)
    merged = merged_file(blocks)
    files: list[h5py.File] = []
    try:
        files.extend(_open_shard(path) for path in blocks)
        _check_together(files)
        dim, dtype = files[0]["features"].shape[1], files[0]["features"].dtype
        if any("first_row" in f.attrs for f in files) and not holds_rows(merged, images, dim, dtype.name):
            raise RuntimeError(f"blocks merged into {merged} by a killed run, which is not there")  # keep_merged's to see to
        output_file = OutputFile(merged, images, dim, dtype.name)
        try:
            step, start = max(1, _BLOCK_BYTES // (dim * dtype.itemsize)), 0
            for k, f in enumerate(files):
                held = block_rows(f)
                end = start + held + f["failed/paths"].shape[0]
                if "first_row" in f.attrs:  # merged by a killed run
                    output_file.taken(start, end, int(f.attrs["first_row"]), held, blocks[k].name)
                else:  # a block a resumed run took as finished may have been damaged since (a bad disk, an edit)
                    checked = (_finite(f["features"][row : row + step], f, row, _DESCRIBE_AGAIN) for row in range(0, held, step))
                    first = output_file.append(start, end, checked)
                    f.close()
                    files[k] = _without_rows(blocks[k], first, held, output_file.chunks_of(first, held))
                start = end
            rows, failed = output_file.complete(_described(files, step), _merged_attrs(files, blocks, {}, shard_of))
        except BaseException:
            output_file.abandon()
            raise
        replace_durably(merged, output)
    finally:
        for f in files:
            f.close()
    return MergeResult(output, rows, failed, len(files))


def keep_merged(blocks: Sequence[Path], images: ImageSet, dim: int, dtype: str) -> None:
    """Before the blocks of a run on several devices are described: the rows of blocks that a
    killed :func:`merge_blocks` merged are read back from the merged file's bytes if HDF5 cannot
    open it (broken by a kill as it was completed); the files of blocks whose rows are lost (the
    merged file removed by hand) are removed, so that their images are described again."""
    merged = [path for path in blocks if path.exists() and _placed(path)]
    if merged and not (holds_rows(merged_file(blocks), images, dim, dtype)
                       or recover_rows(merged_file(blocks), merged, images, dim, dtype)):
        for path in merged:
            path.unlink()


def _placed(path: Path) -> bool:
    try:
        with open_h5(path) as f:
            return "first_row" in f.attrs
    except OSError:
        return False


def merged_file(blocks: Sequence[Path]) -> Path:
    """The file that :func:`merge_blocks` merges ``blocks`` into."""
    return blocks[0].with_name(f"merged-of-{len(blocks)}.h5")


def _without_rows(path: Path, first_row: int, rows: int, chunks: tuple[int, np.ndarray] | None) -> h5py.File:
    """Write block file ``path`` anew with no row of descriptors (its /features cut to none),
    recording where its ``rows`` are (:func:`place_rows`); returns it, opened."""
    temporary = path.with_name(path.name + ".tmp")
    with open_h5(path) as f, open_h5(temporary, "w") as out:
        for name in ("paths", "labels", "classes", "sizes", "read_after", "failed"):
            if name in f:  # read_after: not in a file of an earlier vggfeat
                f.copy(f[name], out, name)
        features = f["features"]
        out.create_dataset("features", shape=(0, features.shape[1]), dtype=features.dtype, maxshape=(None, features.shape[1]))
        out.attrs.update(f.attrs)
        place_rows(out, first_row, rows, chunks)
    replace_durably(temporary, path)
    return _open_shard(path)


def _described(files: list[h5py.File], step: int) -> Iterator[RowsBlock]:
    """The rows (paths, labels, sizes, read_after) and failures of the blocks' ``files``, ``step`` rows at a time."""
    for f in files:
        rows = block_rows(f)
        for start in range(0, max(rows, 1), step):
            last = start + step >= rows
            yield RowsBlock(f["paths"].asstr()[start : start + step], f["labels"][start : start + step],
                            f["sizes"][start : start + step], read_after(f, start, min(start + step, rows)),
                            f["failed/paths"].asstr()[:] if last else [],
                            f["failed/errors"].asstr()[:] if last else [],
                            failed_labels(f) if last else np.zeros(0, dtype=np.int64),
                            read_after(f, failed=True) if last else np.zeros(0))


def _check_output(output: Path, inputs: list[Path], overwrite: bool) -> bool:
    """Refuse an ``output`` that cannot be written; True where it is the merge of these very
    ``inputs`` (the same command run again): there is nothing to do."""
    makes = _kind_of(inputs[0])
    check_replaceable(output, makes)
    if output.exists():
        if any(path.exists() and path.samefile(output) for path in inputs):
            raise VggfeatError(f"{output} is one of the shards; name a new file as the output (the last argument)")
        if not overwrite:
            if _merged_from(output, inputs):
                return True
            raise VggfeatError(already_exists(output, makes))
    return False


def _kind_of(shard: Path) -> str:
    """What the shards hold, and so their merge: descriptors, or classify's posteriors."""
    try:
        with open_h5(shard) as f:
            return kind_key(f) or DESCRIPTORS
    except (OSError, RuntimeError):  # not there, or not HDF5: said as the shards are opened
        return DESCRIPTORS


def _merged_from(output: Path, inputs: list[Path]) -> bool:
    """Is ``output`` a complete merge of ``inputs`` as they are now: their names, and the shard
    and provenance (the command, when it was made, a retry) that it recorded of each?"""
    attrs = file_attributes(output)
    if not attrs.get("complete") or attrs.get("merged_from") != json.dumps(sorted(path.name for path in inputs)):
        return False
    try:
        recorded = json.loads(attrs["shards"])
    except (KeyError, TypeError, ValueError):
        return False
    now = []
    for path in inputs:
        shard = file_attributes(path)
        index = whole_number(shard.get("shard_index"))
        if index is None:  # not a shard, or one edited since: merged anew, which refuses it
            return False
        now.append({"shard": index, "file": path.name, **_provenance(shard)})
    return sorted(now, key=lambda entry: entry["shard"]) == recorded


def _open_shard(path: Path) -> h5py.File:
    f = open_features_file(path, "shard")
    if any(key not in f.attrs for key in SHARD_ATTRS):
        f.close()
        raise VggfeatError(f"{path} is not a shard: it was not written with --shard")
    problem = _shard_numbers_problem(f.attrs)
    if problem is not None:
        f.close()
        raise VggfeatError(f"{path} is damaged: {problem}; {_MAKE_AGAIN}")
    return f


def _shard_numbers_problem(attrs) -> str | None:
    """What is wrong with a shard's index, count and collection size (edited by hand, damaged),
    checked before any of them is used (a count of 1e9 would be a set of 1e9 numbers); else None."""
    shown = {key: repr(plain_value(attrs[key]))[:40] for key in SHARD_ATTRS[:3]}
    index, count, images = (whole_number(attrs[key]) for key in SHARD_ATTRS[:3])
    if count is None or count < 1:
        return f"its shard_count {shown['shard_count']} is not a whole number of shards, 1 or more"
    if index is None or not 1 <= index <= count:
        return f"its shard_index {shown['shard_index']} is not a shard of 1..{count}"
    if images is None or images < 0:
        return f"its collection_images {shown['collection_images']} is not a number of images"
    return None


def _check_together(files: list[h5py.File]) -> None:
    """All shards 1..N once each, of one collection, made alike; raises naming what differs."""
    first = files[0]
    for key in ("shard_count", "collection_sha256", "config"):
        for f in files[1:]:
            if plain_value(f.attrs[key]) != plain_value(first.attrs[key]):  # an array edited in: no truth value
                what = "extraction configuration" if key == "config" else "image collection" if key == "collection_sha256" else "shard count"
                raise VggfeatError(f"{f.filename} and {first.filename} differ in {what}: they are not shards of one extraction")
    count = int(first.attrs["shard_count"])
    indices = [int(f.attrs["shard_index"]) for f in files]
    duplicated = sorted({i for i in indices if indices.count(i) > 1})
    if duplicated:
        raise VggfeatError(f"shard {', '.join(f'{i}/{count}' for i in duplicated)} given more than once")
    missing = count - len(indices)
    if missing:  # the first few named: a count of a billion is a whole number too, and not a list to build
        given = set(indices)
        named = list(itertools.islice((i for i in range(1, count + 1) if i not in given), 5))
        more = f" and {missing - len(named):,} more" if missing > len(named) else ""
        raise VggfeatError(f"missing shard {', '.join(f'{i}/{count}' for i in named)}{more}: a merge needs all {count:,}")
    described = sum(block_rows(f) + f["failed/paths"].shape[0] for f in files)
    if described != int(first.attrs["collection_images"]):
        raise VggfeatError(f"the shards hold {described:,} images, the collection {int(first.attrs['collection_images']):,}: "
                           "a shard file is damaged")


def _copy_rows(files: list[h5py.File], targets: tuple[h5py.Dataset, ...], block: int, progress: Callable[[int], None]) -> None:
    features, paths, labels, sizes, read_after_rows, failed_paths, failed_errors, labels_of_failed, failed_read_after = targets
    row = fail = 0
    for f in files:
        n = f["features"].shape[0]
        for start in range(0, n, block):
            end = min(start + block, n)
            features[row + start : row + end] = _finite(f["features"][start:end], f, start)
            paths[row + start : row + end] = f["paths"][start:end]
            labels[row + start : row + end] = f["labels"][start:end]
            sizes[row + start : row + end] = f["sizes"][start:end]
            read_after_rows[row + start : row + end] = read_after(f, start, end)
            progress(end - start)
        bad = f["failed/paths"].shape[0]
        failed_paths[fail : fail + bad] = f["failed/paths"][:]
        failed_errors[fail : fail + bad] = f["failed/errors"][:]
        labels_of_failed[fail : fail + bad] = failed_labels(f)
        failed_read_after[fail : fail + bad] = read_after(f, failed=True)
        row, fail = row + n, fail + bad


def _finite(rows: np.ndarray, f: h5py.File, start: int, again: str = _MAKE_AGAIN) -> np.ndarray:
    """``rows`` (of ``f``'s /features, from row ``start``), refused where one holds NaN or an
    infinite value: extraction never writes one (such an image is a failure), so the shard or
    block was edited or damaged, and the merged file would pass its NaN on to every search and
    SVM. ``again``: what to do."""
    bad = not_finite_rows(rows)
    if len(bad):
        row = start + int(bad[0])
        raise VggfeatError(f"{f.filename} is damaged: row {row:,} of its /features{_path_of(f, row)} holds NaN or "
                           f"infinite values, which extraction never writes; {again}")
    return rows


def _path_of(f: h5py.File, row: int) -> str:
    """`` (the image's path)`` of row ``row`` of ``f``, for a refusal; "" where it cannot be read."""
    try:
        return f" ({f['paths'][row].decode('utf-8', 'replace')})"
    except (OSError, RuntimeError, KeyError, IndexError, ValueError, AttributeError):
        return ""


def _merged_attrs(files: list[h5py.File], paths: list[Path], provenance: dict, shard_of: ShardOf | None) -> dict:
    """The shards' common attributes, made those of the whole collection (or of the shard it is,
    ``shard_of``), and each one's provenance."""
    first = files[0]
    attrs = {key: value for key, value in first.attrs.items() if key not in (*SHARD_ATTRS, *PROVENANCE, *PLACED_ATTRS, "complete")}
    made = [_provenance(f.attrs) for f in files]
    attrs.update({key: value for key, value in made[0].items() if all(m.get(key) == value for m in made[1:])})
    attrs.update(
        images_found=int(first.attrs["collection_images"]),
        images_sha256=first.attrs["collection_sha256"],
        device=", ".join(sorted({m.get("device", "") for m in made})),
        created=min(m.get("created", "") for m in made),
        merged_from=json.dumps(sorted(path.name for path in paths)),
        shards=json.dumps([{"shard": int(f.attrs["shard_index"]), "file": Path(f.filename).name, **m}
                           for f, m in zip(files, made)]),
        **provenance,
    )
    if shard_of:
        attrs.update(shard_index=shard_of.index, shard_count=shard_of.count, collection_images=shard_of.collection_images,
                     collection_sha256=shard_of.collection_sha256)
    return attrs


def _provenance(attrs) -> dict:
    """What of a shard's attributes says how it was made (:data:`PROVENANCE`), as plain values."""
    return {key: plain_value(attrs[key]) for key in PROVENANCE if key in attrs}
