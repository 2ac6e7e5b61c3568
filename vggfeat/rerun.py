"""What a command's output records of how it was made (``stack``'s, ``train-svm``'s, ``whiten
fit``'s, ``index``'s, ``predict``'s into an .h5), so that the same command run again on it has
nothing to do (a script run twice, a requeued batch job) where it would refuse the output as
existing: its inputs as they were then (the real path, size and modification time of each: a file
written anew since, by ``--update`` or ``--overwrite``, is another) and its options, compared whole.

A folder among the inputs is not looked into (a VOC devkit's annotations), so a command given one
records nothing and is refused as before. Extraction and merge check their outputs their own way
(:func:`vggfeat.job.holds_extraction`, :mod:`vggfeat.merge`): their inputs are whole collections.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from .errors import VggfeatError
from .store import check_new_file, file_attributes

# The attribute of an output that records it (JSON: {"inputs": [[path, size, mtime_ns], ...], "options": {...}}).
MADE_FROM = "made_from"


def made_from(inputs: Sequence[str | os.PathLike], options: dict) -> str | None:
    """How an output of ``inputs`` (files) and ``options`` (plain values) is made, as recorded in
    it; None where an input is not a regular file (a folder, a device), which cannot be compared."""
    entries = []
    for path in inputs:
        try:
            status = os.stat(path)
        except OSError:
            return None
        if not stat.S_ISREG(status.st_mode):
            return None
        entries.append([os.path.realpath(path), status.st_size, status.st_mtime_ns])
    return json.dumps({"inputs": entries, "options": options}, sort_keys=True, default=str)


def holds(output: Path, made: str | None) -> bool:
    """Whether ``output`` records that it was made as ``made`` says (:func:`made_from`)."""
    return made is not None and output.is_file() and file_attributes(output).get(MADE_FROM) == made


def check_output(output: Path, overwrite: bool, made: str | None, inputs: Sequence[str | os.PathLike | None] = (),
                 hdf5: str | None = None) -> bool:
    """:func:`~vggfeat.store.check_new_file` for an output recorded as made (:func:`made_from`):
    True where ``output`` holds what ``made`` says (there is nothing to do); otherwise an existing
    one is refused, saying what differs where it records how it was made."""
    check_new_file(output, overwrite=True, hdf5=hdf5, inputs=inputs)  # all but the refusal of an existing output
    if overwrite or not output.exists():
        return False
    if holds(output, made):
        return True
    raise VggfeatError(f"{output} already exists{_differences(output, made)}; pass --overwrite to replace it")


def _differences(output: Path, made: str | None) -> str:
    """``", made ..."``: how what ``output`` records differs from ``made``; "" where it records nothing."""
    try:
        then, now = json.loads(file_attributes(output)[MADE_FROM]), json.loads(made or "")
        if then["options"].get("command") != now["options"].get("command"):
            return f", made by 'vggfeat {then['options']['command']}'"
        options = [f"{key}: {_shown(then['options'].get(key))} then, {_shown(now['options'].get(key))} now"
                   for key in dict.fromkeys([*now["options"], *then["options"]])
                   if then["options"].get(key) != now["options"].get(key)]
        if options:
            return f", made with other options ({'; '.join(options)})"
        paths_then, paths_now = ([entry[0] for entry in each["inputs"]] for each in (then, now))
        if paths_then != paths_now:
            order = " in another order" if sorted(paths_then) == sorted(paths_now) else ""
            return f", made from {'these' if order else 'other'} files{order} ({', '.join(Path(path).name for path in paths_then)})"
        changed = [Path(entry[0]).name for entry, was in zip(now["inputs"], then["inputs"]) if entry != was]
        if not changed:
            return ""
        return f", made from {', '.join(changed)} before {'it' if len(changed) == 1 else 'they'} last changed"
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):  # records nothing, or something else
        return ""


def _shown(value: object) -> str:
    return "none" if value is None else ",".join(map(str, value)) if isinstance(value, list) else str(value)
