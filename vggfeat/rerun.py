"""What a command's output records of how it was made (``stack``'s, ``train-svm``'s, ``whiten
fit``'s, ``index``'s, ``predict``'s, the CSVs of ``classify`` and ``export``, ``export``'s NumPy
and Parquet files, ``search``'s results, the ``--json`` files of ``protocol`` and
``retrieval-eval``, and ``evaluate``'s report), so that the same command run again on it has nothing to do (a script run
twice, a requeued batch job) where it would refuse the output as existing: its inputs as they were
then (the real path, size and modification time of each: a file written anew since, by
``--update`` or ``--overwrite``, is another) and its options, compared whole.

An HDF5 output records it as an attribute. Another file (a CSV) records it as an extended attribute
(``user.vggfeat.made_from``, as ``wget --xattr`` records where a file came from), with the file's own
size and modification time then, so that a file changed since records nothing; where the file
system keeps no extended attributes (or a copy dropped them), the file records nothing, and the
command refuses it as before.

A folder among the inputs (query images, a ground truth's files) is recorded by its files: how
many, and a SHA-256 of each one's path in it, size and modification time; one added, removed or
written anew since is a change. A VOC devkit is given as the files its sets are read from
(:func:`vggfeat.voc.set_files`), not as its thousands of images. Extraction and merge check their
outputs their own way (:func:`vggfeat.job.holds_extraction`, :mod:`vggfeat.merge`): their inputs
are whole collections.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import stat
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path

from .errors import VggfeatError
from .files import file_attributes, written_together
from .store import already_exists, check_new_file
from .textfiles import printable

# The attribute of an output that records it (JSON: {"inputs": [[path, size, mtime_ns], ...], "options": {...}}).
MADE_FROM = "made_from"
# The extended attribute of a CSV that records it (JSON: {"made_from": ..., "command": the command
# line, "said": its result's lines, "file": [the CSV's size, mtime_ns]}).
FILE_ATTRIBUTE = "user.vggfeat.made_from"


def made_from(inputs: Sequence[str | os.PathLike], options: dict, outputs: Sequence[str | os.PathLike] = ()) -> str | None:
    """How an output of ``inputs`` (files or folders) and ``options`` (plain values) is made, as
    recorded in it; None where an input is neither (a device), which cannot be compared. The
    command's ``outputs`` are not among a folder's files (results written among query images)."""
    written = {os.path.realpath(path) for path in outputs}
    entries = [fingerprint(path, written) for path in inputs]
    if any(entry is None for entry in entries):
        return None
    return json.dumps({"inputs": entries, "options": options}, sort_keys=True, default=str)


def fingerprint(path: str | os.PathLike, leave_out: Collection[str] = ()) -> list | None:
    """[real path, size, modification time in ns] of the file ``path``; of a folder, [real path,
    "folder", its files (in its tree) but those of ``leave_out`` (real paths), SHA-256 of (path in
    it, size, modification time) of each]; None for what is neither (or cannot be read)."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    if stat.S_ISREG(status.st_mode):
        return [os.path.realpath(path), status.st_size, status.st_mtime_ns]
    if not stat.S_ISDIR(status.st_mode):
        return None
    root, digest, files = os.path.realpath(path), hashlib.sha256(), 0
    try:
        for folder, subfolders, names in os.walk(path, onerror=_raise):  # not into links to folders
            subfolders.sort()  # walked in order: the same tree, the same digest
            for name in sorted(names):
                entry = fingerprint(os.path.join(folder, name))
                if entry is not None and entry[0] not in leave_out:
                    digest.update(json.dumps([os.path.relpath(entry[0], root), *entry[1:]]).encode() + b"\n")
                    files += 1
    except OSError:  # a folder in it that cannot be read: nothing to compare
        return None
    return [root, "folder", files, digest.hexdigest()]


def _raise(error: OSError) -> None:
    raise error


def brought_up_to_date(made: str | None, entry: list | None) -> str | None:
    """``made`` with the input of ``entry``'s path as ``entry`` (:func:`fingerprint`) says it is
    now: what an output brought up to date with that input records (``index --update``); None
    where ``made`` records nothing or not that input."""
    try:
        recorded = json.loads(made or "")
        inputs = recorded["inputs"]
        at = [each[0] for each in inputs].index(entry[0])
    except (KeyError, TypeError, ValueError, IndexError):
        return None
    inputs[at] = entry
    return json.dumps(recorded, sort_keys=True, default=str)


def record(made: str | None) -> dict:
    """The attribute an output records ``made`` (:func:`made_from`) in; none where it is None."""
    return {MADE_FROM: made} if made else {}


def record_in_file(path: str | os.PathLike, made: str | None, command: str | None = None, said: Sequence[str] = ()) -> bool:
    """Record ``made`` (and the ``command`` line, for ``info``; what the command ``said`` of its
    result, to say again when run again) in the extended attributes of the file ``path`` just
    written (a CSV); False where there is nothing to record or the file system keeps no such
    attributes (or none on Windows and macOS, where Python has no call for them)."""
    if made is None or not hasattr(os, "setxattr"):
        return False
    try:
        status = os.stat(path)
        record = {MADE_FROM: made, "command": command, "said": list(said), "file": [status.st_size, status.st_mtime_ns]}
        os.setxattr(path, FILE_ATTRIBUTE, json.dumps(record).encode())
    except OSError:  # ENOTSUP, or a file system's limit on their size
        return False
    return True


def recorder(made: str | None, command: str | None = None, said: Sequence[str] = ()) -> Callable[[Path], bool]:
    """What records ``made``, ``command`` and ``said`` (:func:`record_in_file`) in a file written
    whole: for :func:`written_recorded`."""
    return functools.partial(record_in_file, made=made, command=command, said=said)


@contextlib.contextmanager
def written_recorded(paths: Sequence[str | os.PathLike],
                     records: Sequence[Callable[[Path], object] | None]) -> Iterator[list[Path]]:
    """:func:`~vggfeat.files.written_together`, each temporary file recorded by its record of
    ``records`` (:func:`recorder`; None: none) once the block has written them all, before any is
    renamed into place. A rename keeps a file's extended attributes, size and modification time,
    so each output appears with its record: recorded after its rename, a kill in between left an
    output that the same command again refused as another's (``--overwrite``)."""
    with written_together(paths) as temporaries:
        yield temporaries
        for temporary, record in zip(temporaries, records, strict=True):
            if record is not None:
                record(temporary)


@contextlib.contextmanager
def written_recorded_file(path: str | os.PathLike, record: Callable[[Path], object] | None) -> Iterator[Path]:
    """:func:`written_recorded` of the one file ``path``: its temporary file for the block to write."""
    with written_recorded([path], [record]) as (temporary,):
        yield temporary


def file_record(path: str | os.PathLike) -> dict | None:
    """What the file ``path`` records of how it was made (:func:`record_in_file`): {"made_from",
    "command", "said", "changed": whether its size or modification time differ from those
    recorded}; None where it records nothing."""
    if not hasattr(os, "getxattr"):
        return None
    try:
        record = json.loads(os.getxattr(path, FILE_ATTRIBUTE))
        made = json.loads(record[MADE_FROM])  # as made_from writes it: what a damaged one would not be
        if not isinstance(made["options"], dict) or not all(isinstance(entry, list) and entry for entry in made["inputs"]):
            return None
        status = os.stat(path)
        # What it said is said again, and shown by info: never sent to a terminal as escape sequences.
        return {MADE_FROM: record[MADE_FROM], "command": record.get("command") and printable(str(record["command"])),
                "said": [printable(str(line)) for line in record.get("said", [])],
                "changed": record["file"] != [status.st_size, status.st_mtime_ns]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return None


def recorded_in_file(path: str | os.PathLike) -> str | None:
    """What the file ``path`` records of how it was made; None where it records nothing, or has
    changed since (:func:`file_record`)."""
    record = file_record(path)
    return record[MADE_FROM] if record and not record["changed"] else None


def own_outputs(paths: Sequence[str | os.PathLike], records: Sequence[str | None]) -> bool:
    """Whether each of ``paths`` that exists records its own of ``records`` (:func:`made_from`, this
    very command's; False where one is None): the command's own files, some of its outputs with the
    others not renamed into place as a kill stopped it, which it writes whole again without
    --overwrite."""
    return None not in records and all(recorded_in_file(path) == made
                                       for path, made in zip(paths, records, strict=True) if os.path.exists(path))


def command_of(made: str | None) -> str | None:
    """The command that ``made`` (:func:`made_from`) says made an output ("train-svm"); None if none."""
    try:
        return str(json.loads(made or "")["options"]["command"])
    except (KeyError, TypeError, ValueError):
        return None


def inputs_changed(made: str, output: str | os.PathLike) -> list[tuple[str, bool]]:
    """(real path, whether it changed since: size or modification time, or gone) of each input
    that ``made`` records, of which ``output`` is the output (not counted among a folder's files)."""
    written = {os.path.realpath(output)}
    return [(str(entry[0]), fingerprint(entry[0], written) != entry) for entry in json.loads(made)["inputs"]]


def check_output(output: Path, overwrite: bool, made: str | None, makes: str | None,
                 inputs: Sequence[str | os.PathLike | None] = (), hdf5: str | None = None,
                 update: tuple[str | os.PathLike, str] | None = None) -> bool:
    """:func:`~vggfeat.store.check_new_file` for an output of the kind ``makes`` (one of
    :data:`~vggfeat.store.KINDS`; None: a CSV, :func:`record_in_file`) recorded as made (:func:`made_from`): True where
    ``output`` holds what ``made`` says (there is nothing to do); otherwise an existing one is
    refused, saying what differs where it records how it was made, or what it is where it is
    another kind of file.
    ``update``: (an input, how the output is brought up to date with it), said where that input
    alone changed since."""
    check_new_file(output, overwrite=True, hdf5=hdf5, inputs=inputs, makes=makes)  # all but the refusal of an existing output
    if overwrite or not output.exists():
        return False
    recorded = recorded_in_file(output) if makes is None else file_attributes(output).get(MADE_FROM)
    if made is not None and recorded == made:
        return True
    differences, changed = _differences(recorded, made)
    if not differences:
        raise VggfeatError(already_exists(output, makes))
    if update is not None and changed == [os.path.realpath(update[0])]:
        raise VggfeatError(f"{output} already exists{differences}: {update[1]}, or --overwrite replaces it")
    raise VggfeatError(f"{output} already exists{differences}; pass --overwrite to replace it")


def _differences(recorded: object, made: str | None) -> tuple[str, list[str]]:
    """``", made ..."``: how what an output ``recorded`` differs from ``made`` ("" where it records
    nothing, or was made by another command), and the inputs that changed since where nothing else
    differs."""
    try:
        then, now = json.loads(recorded), json.loads(made or "")
        if then["options"].get("command") != now["options"].get("command"):  # another kind of file: said as such
            return "", []
        options = [f"{key}: {_shown(then['options'].get(key))} then, {_shown(now['options'].get(key))} now"
                   for key in dict.fromkeys([*now["options"], *then["options"]])
                   if then["options"].get(key) != now["options"].get(key)]
        if options:
            return f", made with other options ({'; '.join(options)})", []
        paths_then, paths_now = ([entry[0] for entry in each["inputs"]] for each in (then, now))
        if paths_then != paths_now:
            order = " in another order" if sorted(paths_then) == sorted(paths_now) else ""
            return f", made from {'these' if order else 'other'} files{order} ({', '.join(Path(path).name for path in paths_then)})", []
        changed = [entry[0] for entry, was in zip(now["inputs"], then["inputs"]) if entry != was]
        if not changed:
            return "", []
        names = ", ".join(Path(path).name for path in changed)
        return f", made from {names} before {'it' if len(changed) == 1 else 'they'} last changed", changed
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RecursionError):  # records nothing, or else
        return "", []


def _shown(value: object) -> str:
    return "none" if value is None or value == [] else ",".join(map(str, value)) if isinstance(value, list) else str(value)
