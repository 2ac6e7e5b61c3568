"""Images inside tar archives: ``shards/000123.tar/photos/cat.jpg`` names the member
``photos/cat.jpg`` of the archive ``shards/000123.tar``.

Collections of millions of images are often kept as tar files of thousands of images each
(WebDataset's shards, ImageNet's archives of a class each): a file system copes with ten thousand
large files better than with ten million small ones. vggfeat reads a member in place, at its
offset in the archive, unpacking nothing: an archive's table of members (the headers, not the
data) is read once, then each image in one read. A process reads each table once however many of
its threads read the archive (kept for the archives read last); decoding processes are given
their files' places by the process they decode for (:func:`member_tables`, :func:`given`), which
had the table read once for them all: 16 processes would otherwise each read every table.

An archive is a file that holds images, not a folder: its members take the label of the folder
it lies in (none at the top), or their WebDataset sample's (:func:`sample_classes`). An archive
inside an archive (``train.tar/n0123.tar/x.jpg``: ImageNet's training set is an archive of an
archive per class) is read in place as well, its members' offsets counted in the outermost file.
Only uncompressed archives (``.tar``) can be read at an offset; a compressed one is refused as it
is found.
"""

from __future__ import annotations

import collections
import contextlib
import io
import os
import posixpath
import tarfile
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import BinaryIO

from .errors import ImageError, VggfeatError

ARCHIVE_EXTENSION = ".tar"
# A WebDataset sample's class: a file of this extension holding its class index or name as text,
# of at most CLASS_BYTES that count.
CLASS_EXTENSION, CLASS_BYTES = ".cls", 256
# Tables of members kept per process: paths come sorted, so readers work through an archive or
# two at a time; a table of 10,000 members takes about 2 MB.
TABLES_KEPT = 8

# An archive's table, for the archive as it was (its modification time, size and inode):
# member -> (offset, size) of its data.
Version = tuple[int, int, int]
Table = tuple[Version, dict[str, tuple[int, int]]]
_tables: collections.OrderedDict[str, Table] = collections.OrderedDict()
_reading: dict[tuple[str, Version], Future] = {}  # tables being read, for the threads that want them meanwhile
_given: dict[str, Table] = {}  # the places of the files that this process is decoding (given)
_lock = threading.Lock()
_warned: set[tuple[str, str]] = set()  # (archive, what was left out of its table) warned of


def is_archive(name: str) -> bool:
    """Whether a file's name is a tar archive's that vggfeat looks into."""
    return name.lower().endswith(ARCHIVE_EXTENSION)


def split_member(path: str | os.PathLike) -> tuple[str, str] | None:
    """(archive, member) where ``path`` names a member of a tar archive (a component that ends in
    ``.tar`` and is a file, then the member's name), else None. Only paths with such a
    component are looked at on the disk."""
    parts = os.fspath(path).split("/")
    for end, part in enumerate(parts[:-1], start=1):
        if is_archive(part):
            archive = "/".join(parts[:end])
            # A folder named like an archive is a folder. An archive whose table is kept is looked
            # at as its member is read (_table): not twice.
            if archive in _tables or archive in _given or os.path.isfile(archive):
                return archive, "/".join(parts[end:])
    return None


def file_exists(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file, or a member of an archive that is there (its table not read)."""
    return os.path.isfile(path) or split_member(path) is not None


def modified(path: str | os.PathLike, archives: dict[str, float]) -> float:
    """The modification time of ``path``'s file: of its archive, for a member (an archive written
    anew changes every member as far as one can tell without reading them). OSError if neither
    is there. ``archives``: the times of the archives looked at so far, added to, so that each is
    looked at once for all its members."""
    name = os.fspath(path)
    for archive, time in archives.items():
        if name.startswith(archive) and name[len(archive) : len(archive) + 1] == "/":
            return time
    inside = split_member(name)
    if inside is None:
        return os.stat(name).st_mtime
    if len(archives) >= TABLES_KEPT:  # paths come sorted: the archives before are done with
        archives.clear()
    archives[inside[0]] = time = os.stat(inside[0]).st_mtime
    return time


def members(archive: str | os.PathLike) -> dict[str, str | None]:
    """The regular files in ``archive``, in its order (of one cut short, those before the cut),
    each with its sample's class where it has one (:func:`sample_classes`); VggfeatError, naming
    it, where it is not an uncompressed tar archive."""
    try:
        table = read_table(os.fspath(archive))
        classes = sample_classes(archive, table)
    except (tarfile.TarError, OSError) as error:
        outer = _file_of(os.fspath(archive))
        remedy = "unpack or repair it, or move it out of the folder" if outer == os.fspath(archive) else f"repair or unpack {outer}"
        why = _compression(outer) if outer == os.fspath(archive) else None
        why = f"{why}-compressed, though named .tar" if why else str(error)  # tarfile said "bad checksum"
        raise VggfeatError(f"cannot read the tar archive {archive} ({why}); vggfeat reads images from uncompressed "
                           f"tar archives: {remedy}") from None
    if not classes:
        return dict.fromkeys(table)
    return {member: classes.get(_sample_key(member)) for member in table}


# The first bytes of the compressed files that a tar archive is often packed into.
_COMPRESSIONS = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}


def _compression(file: str) -> str | None:
    """The compression whose magic bytes ``file`` begins with, if one of :data:`_COMPRESSIONS`."""
    try:
        with open(file, "rb") as opened:
            start = opened.read(6)
    except OSError:
        return None
    return next((name for magic, name in _COMPRESSIONS.items() if start.startswith(magic)), None)


def sample_classes(archive: str | os.PathLike, table: dict[str, tuple[int, int]]) -> dict[str, str]:
    """The class of each sample of a WebDataset shard that has one: the text of its ``.cls`` file
    (``n0123/x.cls`` for ``n0123/x.jpg``: a sample's files share the name up to its first dot), by
    the sample's key (:func:`_sample_key`). An empty one gives none."""
    files = [(member, place) for member, place in table.items() if member.lower().endswith(CLASS_EXTENSION)]
    if not files:
        return {}
    classes = {}
    with open(_file_of(os.fspath(archive)), "rb", buffering=0) as file:
        for member, (offset, size) in files:
            text = os.pread(file.fileno(), min(size, CLASS_BYTES), offset).decode("utf-8", "replace").strip()
            if "\0" in text:  # refused before the run: HDF5 cannot store the label, the run could never end
                raise VggfeatError(f"{archive}: {member}: its class holds a NUL byte, which no class name can (a binary "
                                   "file, not a class's text): mend that member, or leave the archive out")
            if text:
                classes[_sample_key(member)] = text
    return classes


def _sample_key(member: str) -> str:
    """WebDataset's key of a member: its folder and its name up to the first dot (``a/x.seg.png``: ``a/x``)."""
    folder, _, name = member.rpartition("/")
    return f"{folder}/{name.split('.', 1)[0]}" if folder else name.split(".", 1)[0]


def open_member(archive: str, member: str) -> BinaryIO:
    """The bytes of ``member`` of ``archive``, to read as a file; ImageError where the archive
    does not hold it, or ends before its end."""
    try:
        archive, member = _innermost(archive, member)
        given = _given.get(archive)
        if given is not None and member in given[1]:
            data = _read_member(archive, *given[1][member], version=given[0])
            if data is not None:
                return data  # else the archive was written anew since: its table is read again
        version, table = _table(archive)
    except tarfile.TarError as error:
        raise ImageError(f"its archive is not an uncompressed tar archive that can be read ({error})") from None
    if member not in table:
        raise ImageError(f"not in its archive {archive}")
    data = _read_member(archive, *table[member])
    assert data is not None
    return data


def member_tables(paths: Iterable[str], read: Callable[[str], dict[str, tuple[int, int]]] | None = None
                  ) -> dict[str, Table]:
    """The places of the members among ``paths``: their archives' tables, each cut down to the
    members named, for a decoding process to read them by (:func:`given`) without reading the
    tables itself. ``read(archive)`` reads a table that this process has not kept (another
    process may read it, sparing this one's lock for Python's objects). An archive whose table
    cannot be read is left out: the decoding process fails its members, saying why."""
    tables: dict[str, Table | None] = {}
    wanted: dict[str, Table] = {}
    for path in paths:
        inside = split_member(path)
        if inside is None:
            continue
        try:
            archive, member = _innermost(*inside)
        except (tarfile.TarError, OSError):
            continue
        if archive not in tables:
            try:
                tables[archive] = _table(archive, read)
            except (tarfile.TarError, OSError):
                tables[archive] = None
                continue
            wanted[archive] = (tables[archive][0], {})
        table = tables[archive]
        if table is not None and member in table[1]:
            wanted[archive][1][member] = table[1][member]
    return wanted


@contextlib.contextmanager
def given(tables: dict[str, Table]) -> Iterator[None]:
    """Members of the archives in ``tables`` read at the places given there (:func:`member_tables`),
    while the archives are as they were then, without this process reading their tables."""
    _given.update(tables)
    try:
        yield
    finally:
        _given.clear()


def _read_member(archive: str, offset: int, size: int, version: Version | None = None) -> BinaryIO | None:
    """The member at ``offset``; None if the archive's version is not ``version`` (if given). A
    member of up to :data:`MEMBER_IN_MEMORY_BYTES` is read whole; a larger one is read from the
    archive as it is read (a 40 GB member, a few KB of JPEG and a hole, stopped the run with a
    MemoryError; large ones, read by every decoding thread at once, would take as much memory)."""
    if size == 0:
        raise ImageError("empty file (0 bytes)")
    file = open(_file_of(archive), "rb", buffering=0)
    try:
        status = os.fstat(file.fileno())
        if version is not None and _version(status) != version:
            file.close()
            return None
        if status.st_size < offset + size:
            raise ImageError("truncated: its archive ends before it does")
        if size > MEMBER_IN_MEMORY_BYTES:
            return io.BufferedReader(_MemberReader(file, offset, size), buffer_size=2**20)
        data = os.pread(file.fileno(), size, offset)
    except BaseException:
        file.close()
        raise
    file.close()
    if len(data) < size:
        raise ImageError("truncated: its archive ends before it does")
    return io.BytesIO(data)


# Members up to this size are read whole into memory, larger ones as they are read (see _read_member).
MEMBER_IN_MEMORY_BYTES = 64 * 2**20


class _MemberReader(io.RawIOBase):
    """A member of an archive as a file of its own: ``size`` bytes of ``file`` from ``offset``,
    read where asked (``os.pread``); closing it closes ``file``."""

    def __init__(self, file: BinaryIO, offset: int, size: int) -> None:
        self._file, self._offset, self._size, self._position = file, offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        wanted = max(0, min(len(buffer), self._size - self._position))
        data = os.pread(self._file.fileno(), wanted, self._offset + self._position) if wanted else b""
        buffer[: len(data)] = data
        self._position += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._position = base + offset
        return self._position

    def tell(self) -> int:
        return self._position

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()


def _version(status: os.stat_result) -> Version:
    return status.st_mtime_ns, status.st_size, status.st_ino


def _table(archive: str, read: Callable[[str], dict[str, tuple[int, int]]] | None = None) -> Table:
    """``archive``'s table, read once while it is unchanged, by one thread while others wait for it."""
    version = _version(os.stat(_file_of(archive)))
    with _lock:
        kept = _tables.get(archive)
        if kept is not None and kept[0] == version:
            _tables.move_to_end(archive)
            return kept
        reading = _reading.get((archive, version))
        mine = reading is None
        if mine:
            reading = _reading[archive, version] = Future()
    if not mine:
        return version, reading.result()
    try:  # outside the lock: other threads read other archives meanwhile
        table = (read or read_table)(archive)
    except BaseException as error:
        with _lock:
            del _reading[archive, version]
        reading.set_exception(error)
        raise
    with _lock:
        del _reading[archive, version]
        _tables[archive] = (version, table)
        _tables.move_to_end(archive)
        while len(_tables) > TABLES_KEPT:
            _tables.popitem(last=False)
    reading.set_result(table)
    return version, table


def read_table(archive: str) -> dict[str, tuple[int, int]]:
    """``archive``'s members: name -> (offset, size) of their data in its file (for an archive
    inside an archive, in the outermost one's file), read from its headers."""
    file, start, length = _span(archive)
    links: dict[str, tuple[bool, str]] = {}
    table = _plain_table(file, start, length, links)
    if table is None:
        links.clear()
        table = _tarfile_table(file, start, length, name=archive, links=links)
    unnamed = [member for member in table if "\0" in member]
    if unnamed:  # no path holds a NUL byte (nor can HDF5 store one): a damaged header's name
        _warn_once(archive, f"the tar archive {archive} has {len(unnamed)} member(s) whose name holds a NUL byte (a "
                            f"damaged header; the first: {unnamed[0]!r}): left out")
        table = {member: place for member, place in table.items() if member not in unnamed}
    return _as_paths(archive, table, links)


def _warn_once(archive: str, message: str) -> None:
    """Warn of what was left out of ``archive``'s table once per process: its images are found,
    then read, and each reads the table."""
    if (archive, message) not in _warned:
        _warned.add((archive, message))
        warnings.warn(message, stacklevel=4)


def _as_paths(archive: str, table: dict[str, tuple[int, int]], links: dict[str, tuple[bool, str]]
              ) -> dict[str, tuple[int, int]]:
    """``table`` under its members' names as paths give them (:func:`_inside`), with each link
    (``links``: name -> (symbolic, target), as ``tar`` stores a second name of a file, or a
    symbolic link) given its target's data, as unpacking would. A member named outside the
    archive (``../a.jpg``), or a link that leads to no file in it, is left out, with a warning:
    joined to the archive's path, such a name would read another file on the disk, or none."""
    named: dict[str, tuple[int, int]] = {}
    left_out = []
    for member, place in table.items():
        name = _inside(member)
        if name is None:
            left_out.append(member)
        else:
            named[name] = place
    link_of = {_inside(link): target for link, target in links.items()}
    folders: set[str] | None = None  # of the members, made where a link leads to no file
    for link, (symbolic, target) in links.items():
        name = at = _inside(link)
        to, place = None, None
        for _ in range(LINK_HOPS):  # a link to a link, at most so many
            if at is None or (symbolic and target.startswith("/")):
                break
            to = _inside(posixpath.join(posixpath.dirname(at), target) if symbolic else target)
            if to in named:
                place = named[to]
                break
            if to not in link_of:
                break
            at, (symbolic, target) = to, link_of[to]
        if place is not None:
            named[name] = place
            continue
        if folders is None:
            folders = {member.rsplit("/", depth)[0] for member in named for depth in range(1, member.count("/") + 1)}
        if to not in folders:  # (a link to a folder: its files are members under their own names)
            left_out.append(link)
    if left_out:
        _warn_once(archive, f"the tar archive {archive} has {len(left_out)} member(s) named outside it ('..'), or links "
                            f"that lead to no file in it (the first: {left_out[0]!r}): left out")
    return named


def _inside(member: str) -> str | None:
    """``member``'s name as paths give it, without empty or ``.`` components and with ``..`` taken
    back (``/a//./b.jpg``: ``a/b.jpg``; ``tar -C dir -cf x.tar .`` stores ``./b.jpg``: ``b.jpg``);
    None where it leads outside the archive, or to the archive itself."""
    parts: list[str] = []
    for part in member.split("/"):
        if part == "..":
            if not parts:
                return None
            parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return "/".join(parts) or None


def _span(archive: str) -> tuple[str, int, int | None]:
    """Where ``archive`` lies: (the file, the offset of its first byte, its length, None for the
    whole file). An archive inside another (``train.tar/n0123.tar``) lies where its member's data does."""
    inside = split_member(archive)
    if inside is None:
        return archive, 0, None
    outer, inner = _innermost(*inside)
    table = _table(outer)[1]
    if inner not in table:
        raise tarfile.ReadError(f"{inner} is not in {outer}")
    offset, size = table[inner]
    return _file_of(outer), offset, size


def _innermost(archive: str, member: str) -> tuple[str, str]:
    """(archive, member) of the innermost archive that holds ``member`` of ``archive``:
    ``("train.tar/n0123.tar", "x.jpg")`` for ``("train.tar", "n0123.tar/x.jpg")``. Places given to
    this process (:func:`given`) say so without the tables being read."""
    if member in _given.get(archive, (None, {}))[1]:
        return archive, member
    parts = member.split("/")
    for end, part in enumerate(parts[:-1], start=1):
        if is_archive(part):
            inner = "/".join(parts[:end])
            if f"{archive}/{inner}" in _given or inner in _table(archive)[1]:
                return _innermost(f"{archive}/{inner}", "/".join(parts[end:]))
    return archive, member


def _file_of(archive: str) -> str:
    """The file that ``archive`` lies in: itself, or for one inside another the outermost's."""
    inside = split_member(archive)
    return archive if inside is None else inside[0]


def _tarfile_table(file: str, start: int = 0, length: int | None = None, name: str | None = None,
                   links: dict[str, tuple[bool, str]] | None = None) -> dict[str, tuple[int, int]]:
    """As :func:`_plain_table`, by tarfile, for archives of any header; warns where a header it
    cannot read (a damaged one) ends the archive before its end: the members after it, whose
    names it cannot know, are left out (``name``: the archive, as the message names it)."""
    table: dict[str, tuple[int, int]] = {}
    # "r:" reads only uncompressed archives: a compressed one cannot be read at an offset. tarfile
    # counts offsets from where the file is when it opens it.
    with open(file, "rb") as raw:
        raw.seek(start)
        with tarfile.open(fileobj=raw, mode="r:") as tar:
            try:
                for info in tar:
                    if length is not None and info.offset_data + info.size > start + length:
                        break  # past an archive inside another: the outer one's next member
                    if info.size < 0:  # tarfile takes a PAX record's "size=-1536" as it is
                        raise tarfile.ReadError(f"{info.name} has a negative size ({info.size}): a damaged header")
                    if info.isreg():
                        table[info.name] = (info.offset_data, info.size)
                        if links:
                            links.pop(info.name, None)  # the last member of a name is the one unpacked
                    elif (info.islnk() or info.issym()) and links is not None:
                        links[info.name] = (info.issym(), info.linkname)
                        table.pop(info.name, None)
                else:
                    _warn_if_cut(raw, tar.offset, os.fstat(raw.fileno()).st_size if length is None else start + length,
                                 name or file)
            except tarfile.ReadError:
                if not table:
                    raise
                # It ends within a member (an interrupted copy): those before it are read, and that
                # one fails as it is read (open_member), as a truncated file would.
        if not table and start:  # tarfile takes a first header that is not one for the end, but at the file's start
            raw.seek(start)
            first = raw.read(tarfile.BLOCKSIZE)
            if first != bytes(tarfile.BLOCKSIZE):
                tarfile.TarInfo.frombuf(first, tarfile.ENCODING, "surrogateescape")  # raises what it finds wrong
    return table


def _warn_if_cut(raw: BinaryIO, stopped: int, end: int, name: str) -> None:
    """Warn where tarfile stopped reading at ``stopped`` short of ``end`` at a block that is not
    the end of the archive (zeros): tarfile ends an archive silently at a header it cannot read."""
    if stopped >= end:
        return
    raw.seek(stopped)
    if raw.read(tarfile.BLOCKSIZE).strip(b"\0"):
        warnings.warn(f"the tar archive {name} cannot be read past byte {stopped:,} of its {end:,} (a damaged or cut "
                      "header): the images after it are left out; repair it, or unpack what can be read", stacklevel=2)


def _plain_table(file: str, start: int = 0, length: int | None = None, links: dict[str, tuple[bool, str]] | None = None
                 ) -> dict[str, tuple[int, int]] | None:
    """The members of an archive of plain headers (ustar or v7), with the long names and PAX
    records of GNU tar and Python's tarfile (which writes one for every file it adds: its time
    has a fraction), read without tarfile's objects: 4x as fast as tarfile, 10 us a member
    (``benchmarks/bench_archives.py``). None at a header of another kind, one that is not sound,
    or where the archive is cut short: tarfile reads those. The archive is the ``length`` bytes
    of ``file`` from ``start`` (None: to its end). Names are as stored; ``links``, if given, is
    added each hard or symbolic link: name -> (symbolic, target)."""
    table: dict[str, tuple[int, int]] = {}
    pending: dict[str, bytes] = {}  # what a long name's or PAX header says of the next member
    with open(file, "rb", buffering=0) as raw:
        descriptor = raw.fileno()
        end = os.fstat(descriptor).st_size if length is None else start + length
        offset = start
        while offset < end:
            header = os.pread(descriptor, tarfile.BLOCKSIZE, offset)
            if header == bytes(tarfile.BLOCKSIZE):  # the end-of-archive blocks
                break
            member = _plain_member(header)
            if member is None or offset + tarfile.BLOCKSIZE + member[1] > end:
                return None
            name, size, kind = member
            data_offset = offset + tarfile.BLOCKSIZE
            if kind in _TYPES_NEXT_NAMED:
                said = _next_member(kind, os.pread(descriptor, size, data_offset))
                if said is None:
                    return None
                pending.update(said)
            else:
                name, member_size = pending.get("path", name), int(pending.get("size", size))
                pending_link = pending.get("linkpath")
                pending.clear()
                if data_offset + member_size > end:
                    return None
                if kind in _TYPES_REGULAR:
                    table[os.fsdecode(name)] = (data_offset, member_size)
                    if links:
                        links.pop(os.fsdecode(name), None)  # the last member of a name is the one unpacked
                elif kind in _TYPES_LINK and links is not None:
                    target = pending_link or header[157:257].split(b"\0", 1)[0]
                    links[os.fsdecode(name)] = (kind == b"2", os.fsdecode(target))
                    table.pop(os.fsdecode(name), None)
                size = member_size
            offset = data_offset + -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    return table or None  # an empty file, or an empty archive: tarfile tells which


# Type flags of a plain header: regular files; hard and symbolic links (read as their targets);
# devices, folders and FIFOs (left out); a GNU long name or a PAX header, which name the next member.
_TYPES_REGULAR, _TYPES_LINK = (b"0", b"\0", b"7"), (b"1", b"2")
_TYPES_OTHER, _TYPES_NEXT_NAMED = (b"3", b"4", b"5", b"6"), (b"L", b"x")
LINK_HOPS = 8  # links followed from a link, at most


def _plain_member(header: bytes) -> tuple[bytes, int, bytes] | None:
    """(name, size, type flag) of a plain header; None for any other."""
    if len(header) < tarfile.BLOCKSIZE or header[124] & 0x80:  # cut short; a size in base 256
        return None
    try:
        checksum = int(header[148:156].strip(b"\0 ") or b"-1", 8)
        size = int(header[124:136].strip(b"\0 ") or b"0", 8)
    except ValueError:
        return None
    if checksum != 256 + sum(header[:148]) + sum(header[156:]) or size < 0:  # the checksum counts its field as spaces
        return None
    kind = header[156:157]
    if kind not in (*_TYPES_REGULAR, *_TYPES_LINK, *_TYPES_OTHER, *_TYPES_NEXT_NAMED):
        return None
    name = header[:100].split(b"\0", 1)[0]
    if header[257:265] == b"ustar\x0000":  # POSIX: a long name's first part is the prefix
        prefix = header[345:500].split(b"\0", 1)[0]
        name = prefix + b"/" + name if prefix else name
    return name, size, kind


def _next_member(kind: bytes, data: bytes) -> dict[str, bytes] | None:
    """What a GNU long name (``L``) or a PAX header (``x``: records "LENGTH KEY=VALUE\n") says of
    the next member: its ``path`` (as bytes of the file system's encoding, as a plain header's
    name) and ``size``; None where it cannot be read."""
    if kind == b"L":
        return {"path": data.split(b"\0", 1)[0]}
    said: dict[str, bytes] = {}
    position = 0
    while position < len(data) and data[position] != 0:
        space = data.find(b" ", position)
        try:
            length = int(data[position:space])
        except ValueError:
            return None
        key, equals, value = data[space + 1 : position + length - 1].partition(b"=")
        if not equals or length <= 0:
            return None
        if key in (b"path", b"linkpath"):  # UTF-8 in a PAX header
            said[key.decode()] = os.fsencode(value.decode("utf-8", "surrogateescape"))
        elif key == b"size":
            if not value.isdigit():  # a size that is not one (damaged): tarfile reads the archive
                return None
            said["size"] = value
        position += length
    return said


