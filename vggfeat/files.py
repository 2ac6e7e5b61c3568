"""Files read and written safely: HDF5 files opened on any file system, the system's refusals and
damaged files said in one line that names the file, and new files written whole or not at all.

Every vggfeat file goes through here: :func:`open_h5` opens an HDF5 file (without HDF5's write
buffers, so that a full disk fails the write that meets it), :func:`open_hdf5` and
:func:`reading_hdf5` open one a user named and turn what HDF5 refuses into a one-line error, and
:func:`written_atomically` gives a new file its final name only once it is whole.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import posixpath
import re
import secrets
import socket
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import h5py
import numpy as np

from .errors import VggfeatError, not_a_file


def open_h5(path: str | os.PathLike, mode: str = "r", file_class: type[h5py.File] = h5py.File) -> h5py.File:
    """``h5py.File(path, mode)``, also on file systems without locks (NFS without its lock daemon,
    some Lustre and GPFS mounts), where HDF5's own lock fails every open ("unable to lock file").

    vggfeat writes only new files under temporary names, and a run's own files in its work folder,
    which its lock keeps (:func:`~vggfeat.parts.lock_folder`): no other process opens them, and
    they take no HDF5 lock. A file that is read takes HDF5's shared lock where the file system has
    locks. ``file_class``: what a file read is opened as (:class:`DamageNamingFile`, say).

    A file opened to write ("w" or "r+") has neither sieve buffer nor chunk cache: each write of a
    dataset goes to the file at once, and one that fails (a full disk) raises there, leaving no data
    unwritten in HDF5's buffers. HDF5 cannot close a file whose buffers it could not flush, and
    crashes the process as it exits (h5py issue 914). vggfeat writes rows in blocks, which the
    buffers would not speed up (``benchmarks/bench_store.py``).
    """
    if mode in ("w", "r+"):
        if _held_open(path):  # HDF5 would share that file's state, which may be that of a failed write
            raise VggfeatError(f"{path} is open in this process already: close it first. HDF5 cannot close a file it "
                               "failed to write (a full disk, say): a run stopped so resumes in a new process")
        fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
        fapl.set_libver_bounds(h5py.h5f.LIBVER_EARLIEST, h5py.h5f.LIBVER_LATEST)  # h5py.File's default
        fapl.set_file_locking(False, True)
        fapl.set_sieve_buf_size(0)
        cache = list(fapl.get_cache())
        fapl.set_cache(*cache[:2], 0, cache[3])  # no bytes of chunk cache
        name = os.fsencode(path)
        if mode == "w":
            fid = h5py.h5f.create(name, h5py.h5f.ACC_TRUNC, fapl=fapl)
        else:
            fid = h5py.h5f.open(name, h5py.h5f.ACC_RDWR, fapl=fapl)
        return h5py.File(fid, locking=False)
    if mode != "r":
        raise ValueError(f"mode {mode!r}: vggfeat opens files with 'r', 'r+' or 'w'")
    try:
        return file_class(path, "r")
    except OSError as error:
        if "unable to lock file" not in str(error):
            raise
    return file_class(path, "r", locking=False)


def _held_open(path: str | os.PathLike) -> bool:
    """Whether this process holds the HDF5 file ``path`` open."""
    if not os.path.exists(path):
        return False
    held = (h5py.h5f.get_name(file) for file in h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE))
    return any(os.path.exists(name) and os.path.samefile(name, path) for name in held)


# How HDF5 names the system call that failed under its error (h5py raises it as a RuntimeError or
# an OSError without errno): "... filename = 'x.h5', ..., errno = 28, error message = 'No space ...'",
# or without the file's name.
_FAILED_CALL = re.compile(r"filename = '(?P<file>[^']*)'.*?errno = (?P<errno>\d+),", re.DOTALL)
_FAILED_CALL_UNNAMED = re.compile(r"errno = (?P<errno>\d+),")


def system_error(error: Exception, file: str | os.PathLike | None = None) -> OSError | None:
    """The system's refusal behind ``error`` (a full disk, an I/O error) as an OSError that says
    it in one line, ``[Errno 28] No space left on device: 'x.h5'`` (``file``, where HDF5 does not
    name it); None where ``error`` is no such refusal (a bug, say)."""
    failed = _FAILED_CALL.search(str(error)) or _FAILED_CALL_UNNAMED.search(str(error))
    if isinstance(error, (OSError, RuntimeError)) and failed is not None and failed["errno"] != "0":
        number = int(failed["errno"])
        named = failed.groupdict().get("file") or (None if file is None else str(file))
        return OSError(number, os.strerror(number), named)
    return error if isinstance(error, OSError) and error.errno is not None else None


@contextlib.contextmanager
def as_system_errors(file: str | os.PathLike | None = None) -> Iterator[None]:
    """Raise the system's refusal behind an HDF5 error (:func:`system_error`) as that OSError."""
    try:
        yield
    except (OSError, RuntimeError) as error:
        refusal = system_error(error, file)
        if refusal is None or refusal is error:
            raise
        raise refusal from error


def open_hdf5_files() -> set[int]:
    """The identifiers of the HDF5 files that this process holds open."""
    return {file.id for file in h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE)}


def exit_if_hdf5_files_open(but: set[int], code: int) -> None:
    """As a process ends on a system's refusal (a full disk): where it holds an HDF5 file open, ``but``
    those (:func:`open_hdf5_files`), end it at once, with exit code ``code`` and without the exit's
    clean-up. Such a file is one that HDF5 failed to close, having failed to write it; HDF5 crashes
    the process as it exits, or as the file is touched again (h5py issue 914). Whatever a run
    finished is on disk already."""
    if any(file.id not in but for file in h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE)):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def file_attributes(path: Path) -> dict:
    """The attributes of the HDF5 file ``path`` as plain values (:func:`plain_value`: an array
    edited into one compares as a list, not as no truth value); {} if it cannot be read as one
    (damaged too: h5py raises TypeError for an attribute whose type is damaged, "Unknown string
    encoding")."""
    try:
        with open_h5(path) as f:
            return {key: plain_value(value) for key, value in f.attrs.items()}
    except (OSError, RuntimeError, TypeError, ValueError):
        return {}


def open_hdf5(path: Path, what: str, hint: str = "", file_class: type[h5py.File] = h5py.File) -> h5py.File:
    """``path`` opened read-only (as ``file_class``), or a one-line error: ``{what} file not found``
    (plus ``hint``), a folder, or not an HDF5 file."""
    if not path.is_file():
        raise VggfeatError(not_a_file(path, f"{what} file") + ("" if path.is_dir() else hint))
    try:
        return open_h5(path, file_class=file_class)
    except OSError as error:
        if error.errno is not None:  # the system's refusal (permissions, I/O), not the file's content
            raise
        with open(path, "rb") as file:
            damaged = file.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE  # HDF5's start, HDF5 cannot read the rest
        raise VggfeatError(f"{path} is a damaged HDF5 file (cut short, or still being written or copied?)" if damaged
                           else f"{path} is not an HDF5 file") from None


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"  # the first bytes of an HDF5 file (without a user block)


@contextlib.contextmanager
def reading_hdf5(path: Path, what: str, remedy: str = "") -> Iterator[h5py.File]:
    """:func:`open_hdf5`'s file for the block, closed after it. Within it, what HDF5, JSON or a part
    gone refuse (KeyError, ValueError, TypeError, RuntimeError, an OSError that is not the system's:
    a flipped bit, a bad copy) ends in one line naming the file, "is a damaged {what} file
    (...){remedy}", not in a traceback."""
    with open_hdf5(path, what) as f:
        try:
            yield f
        except (KeyError, ValueError, TypeError, RuntimeError, OSError) as error:
            if isinstance(error, OSError) and system_error(error) is not None:  # the system's refusal: an I/O error
                raise
            raise VggfeatError(f"{path} is a damaged {what} file ({refusal_reason(error)}){remedy}") from None


def read_damage(error: BaseException | None, f: h5py.File) -> VggfeatError | None:
    """Where ``error`` is HDF5's failure to read an object of the open file ``f`` (a flipped bit, a
    bad copy: :func:`failed_read`), the one-line error that names the file and the object; else
    None. Said while ``f`` is open: HDF5's own words name neither."""
    unread = failed_read(error, f)
    if unread is None:
        return None
    return VggfeatError(f"{f.filename} is damaged: HDF5 cannot read its {unread} ({refusal_reason(error)}); a bad copy or "
                        "disk?")


class DamageNamingFile(h5py.File):
    """An HDF5 file opened to be read whose ``with`` block, ending in HDF5's failure to read one of
    its objects (a flipped bit, a bad copy), ends in :func:`read_damage`'s one-line error, which
    names the file and the object: HDF5's own words name neither."""

    def __exit__(self, *raised: object) -> None:
        damage = read_damage(raised[1], self) if self.id.valid else None  # said while the file is open
        super().__exit__(*raised)
        if damage is not None:
            raise damage from raised[1]


def damage_in(error: BaseException, files: Sequence[h5py.File]) -> VggfeatError | None:
    """:func:`read_damage` of the first of ``files`` (open) that ``error`` failed to read; else None."""
    return next((found for f in files if (found := read_damage(error, f)) is not None), None)


def failed_read(error: BaseException | None, f: h5py.File) -> str | None:
    """The name of the object of the open file ``f`` (a dataset read, or one opened by name) that
    ``error`` is HDF5's failure to read (not the system's refusal, :func:`system_error`); else None."""
    if not isinstance(error, (OSError, RuntimeError, KeyError)) or system_error(error) is not None:
        return None
    name, frame = None, error.__traceback__
    while frame is not None:  # to the innermost object that was reading
        local = frame.tb_frame.f_locals
        owner, opened = local.get("self"), local.get("name")
        with contextlib.suppress(Exception):  # one HDF5 cannot name: no name to give
            if isinstance(owner, h5py.Dataset) and owner.file == f:
                name = owner.name
            elif isinstance(owner, h5py.Group) and isinstance(opened, str) and owner.file == f:
                name = posixpath.join(owner.name, opened)
        frame = frame.tb_next
    return name


def storage_problem(data: h5py.Dataset) -> str | None:
    """What makes ``data`` a dataset whose values are not in its file, or None: they lie in other
    files (HDF5's external storage, a virtual dataset: any other file's bytes read as this one's), or
    it declares far more bytes than the file stores of it, more than deflate (the strongest of
    HDF5's usual filters, about 1,000 to 1) expands: a file of kilobytes that declares gigabytes,
    which reading the dataset whole would allocate. A file vggfeat writes, compressed since or not,
    stores every value; datasets under a MiB are not judged."""
    if data.external or data.is_virtual:
        return f"{data.name} lies in other files (HDF5 external or virtual storage)"
    declared = (data.size or 0) * data.dtype.itemsize  # (size: None for an empty dataspace)
    if declared > 2**20 and data.id.get_storage_size() * 1100 < declared:
        return f"{data.name} declares {data.size:,} values, far more than the file stores"
    return None


def refusal_reason(error: Exception) -> str:
    """``error``'s message on one line, at most 300 characters (a KeyError's not quoted)."""
    reason = str(error.args[0] if isinstance(error, KeyError) and error.args else error)
    return " ".join(reason.split())[:300]


def write_json(path: Path, data: dict) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with naming(path):
        temporary.write_text(json.dumps(data, indent=2, sort_keys=True))
    replace_durably(temporary, path)


@contextlib.contextmanager
def naming(path: str | os.PathLike) -> Iterator[None]:
    """A refusal of the system's in the block that names no file (a write's: "[Errno 28] No space
    left on device", and nothing to say where) raised naming ``path``, the file being written."""
    try:
        yield
    except OSError as error:
        if error.errno is None or error.filename is not None:
            raise
        raise OSError(error.errno, error.strerror, str(path)) from error


# A file name's most bytes on common file systems, and those that a temporary file's name adds to
# its file's: "." and ".", 8 hex digits of the writer, a process id, 8 hex digits, ".tmp".
NAME_BYTES, TEMPORARY_BYTES = 255, 2 + 8 + 1 + 10 + 1 + 8 + 4


@contextlib.contextmanager
def written_atomically(path: str | os.PathLike) -> Iterator[Path]:
    """A new temporary file beside ``path`` for the block to write; renamed over ``path`` only when
    the block completes. ``path`` then holds the old file or the whole new one, never a part, and
    the temporary name is one no other file had. The temporary files of ``path`` that writers
    killed outright left are removed first (:func:`remove_dead_writers_files`). Where ``path`` did
    not exist as the block began (its command checked it would not replace one unasked), one that
    another run wrote meanwhile is not replaced: :class:`WrittenMeanwhile` is raised."""
    path = Path(path)
    remove_dead_writers_files(path)
    new = not os.path.lexists(path)
    while True:
        temporary = path.with_name(f"{_temporary_prefix(path)}{_writer()}-{os.getpid()}-{secrets.token_hex(4)}.tmp")
        try:  # created here, so no one else's; with the umask's permissions, as the final file gets
            os.close(os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            break
        except FileExistsError:
            continue
    try:
        yield temporary
        replace_durably(temporary, path, replace=not new)
    except (OSError, RuntimeError) as error:
        refusal = system_error(error)
        if refusal is None or refusal.filename not in (None, str(temporary)):
            raise
        raise OSError(refusal.errno, refusal.strerror, str(path)) from error  # the file as the user named it
    finally:
        with contextlib.suppress(OSError):  # (a folder made read-only meanwhile: the error above says so)
            temporary.unlink(missing_ok=True)


class WrittenMeanwhile(VggfeatError):
    """A file that another run wrote while this one wrote it too (:func:`written_atomically`)."""


@contextlib.contextmanager
def written_together(paths: Sequence[str | os.PathLike]) -> Iterator[list[Path]]:
    """A temporary file for each of ``paths`` (:func:`written_atomically`'s), all renamed into place
    only once the block has written them all: an interrupted run leaves the old set of files or
    the new one (but for the moment of the renames), never files of two runs side by side."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(written_atomically(path)) for path in paths]


def remove_dead_writers_files(path: Path) -> None:
    """Remove the temporary files of ``path`` (:func:`written_atomically`'s) whose writer was
    killed outright (SIGKILL, the out-of-memory killer, a crash): hidden, as large as the file,
    never to be renamed. Only those of this machine's processes that are gone; another machine's
    (a shared disk), or a living process's, may be being written."""
    if os.name == "nt":  # where os.kill(pid, 0) would end the process
        return
    name = re.compile(rf"{re.escape(_temporary_prefix(path))}{_writer()}-(\d+)-[0-9a-f]{{8}}\.tmp")
    try:
        entries = os.listdir(path.parent)
    except OSError:  # a folder that cannot be listed: the write says why, if it fails
        return
    for entry in entries:
        found = name.fullmatch(entry)
        if found and not _running(int(found[1])):
            with contextlib.suppress(OSError):
                (path.parent / entry).unlink()


def _temporary_prefix(path: Path) -> str:
    """How the temporary files of ``path`` begin: ``.NAME.``, or for a name too long to take the
    rest (a file system's 255 bytes), ``.~`` and 16 hex digits of its SHA-256."""
    name = path.name
    if len(os.fsencode(name)) > NAME_BYTES - TEMPORARY_BYTES:
        name = "~" + hashlib.sha256(os.fsencode(name)).hexdigest()[:16]
    return f".{name}."


@functools.cache
def _writer() -> str:
    """This machine, and its namespace of process ids (a container's), in 8 hex digits: the
    writers whose process ids this process can look up."""
    where = socket.gethostname()
    with contextlib.suppress(OSError):
        where += f"/{os.stat('/proc/self/ns/pid').st_ino}"
    return hashlib.sha256(where.encode()).hexdigest()[:8]


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: running
        pass
    return True


def file_version(path: Path) -> str:
    """Which file ``path`` is, as a rewrite changes it: its inode, size and modification time."""
    status = path.stat()
    return json.dumps([status.st_ino, status.st_size, status.st_mtime_ns])


def write_text_file(path: str | os.PathLike, text: str) -> None:
    """``text`` into ``path`` as UTF-8, whole or not at all (see :func:`written_atomically`)."""
    with written_atomically(path) as temporary, naming(path):
        temporary.write_text(text, encoding="utf-8", newline="")  # as given: a CSV's \r\n stays one


def replace_durably(source: Path, destination: Path, replace: bool = True) -> None:
    """Rename ``source`` over ``destination`` after its bytes are on disk, then record the rename;
    without ``replace``, only where no ``destination`` is there (:class:`WrittenMeanwhile`)."""
    with open(source, "rb") as f:
        os.fsync(f.fileno())
    if replace or not _linked(source, destination):
        os.replace(source, destination)
    else:
        source.unlink()
    directory = os.open(destination.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _linked(source: Path, destination: Path) -> bool:
    """Whether ``source`` is now linked as ``destination`` too, which must not exist: a rename that
    replaces nothing (no such rename is portable; a hard link fails where the name exists). False
    where the file system makes no hard links (FAT, some network ones): a plain rename then."""
    try:
        os.link(source, destination)
    except FileExistsError:
        raise WrittenMeanwhile(f"{destination} was written by another run while this one ran: its file is kept, this "
                               "run's result is not (pass --overwrite to replace it)") from None
    except OSError:
        return False
    return True


def whole_number(value: object) -> int | None:
    """An HDF5 attribute's value where it is a whole number, as vggfeat writes them; None for
    anything else (a float such as 1e9, text, a boolean, an array)."""
    value = plain_value(value)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def plain_value(value: object) -> object:
    """An HDF5 attribute's value as JSON holds it: str, a list, or a Python number."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
