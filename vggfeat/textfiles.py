"""Text files that a user hands in (label lists, image lists, ground truth): read as UTF-8, or
refused naming the file, the line and the byte, rather than ending the command in a
UnicodeDecodeError's traceback. Where a file's fields name files, bytes that are not UTF-8 are
kept as the file system keeps them in names (Python's ``surrogateescape``, as :mod:`vggfeat.discover`
reads folders and lists), so that such a name still finds its file."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from .errors import VggfeatError


def read_text(path: str | os.PathLike, *, names_files: bool = False) -> str:
    """The text of ``path``: UTF-8, a byte-order mark at its start skipped (spreadsheet programs
    write one); refused where it holds a NUL byte. With ``names_files``, other bytes are kept (see
    the module)."""
    data = Path(path).read_bytes()
    if b"\0" in data:  # no text holds one, nor can a name; HDF5 cannot store it in a label
        line = data[: data.index(b"\0")].count(b"\n") + 1
        raise VggfeatError(f"{path}, line {line}: a NUL byte: not a text file (a binary one, or a list written by "
                           "'find -print0'?)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        if names_files:
            return data.decode("utf-8-sig", "surrogateescape")
        line = data[: error.start].count(b"\n") + 1
        raise VggfeatError(f"{path}, line {line}: not UTF-8 text (byte 0x{data[error.start]:02x}); save it as UTF-8") from None


def text_lines(text: str) -> list[str]:
    """``text``'s lines, split at line feeds alone (a CRLF's CR dropped; a file of CRs alone, an
    old Mac's, at those): ``str.splitlines`` also splits at form feeds, U+2028 and other
    characters that a file name may hold, which ``find`` writes on one line."""
    if "\n" not in text:
        text = text.replace("\r", "\n")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def csv_cells(line: str) -> list[str] | None:
    """The cells of one line of CSV, as csv.reader reads them; None where it cannot (a quote not
    closed)."""
    try:
        return next(csv.reader([line]), [])
    except csv.Error:
        return None


def as_utf8(text: str) -> str:
    """``text`` with the bytes that Python decoded as lone surrogates (what the file system gives
    for a name that is not UTF-8) written as ``\\xNN``."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def not_utf8(text: str) -> bool:
    """Whether ``text`` holds bytes that are not UTF-8 (as lone surrogates)."""
    return not text.isascii() and as_utf8(text) != text


def printable(name: str) -> str:
    """A file name (or a reason naming one) as one line of a terminal: control characters, such as
    a line break or an escape sequence in a file's name, written as Python escapes (``\\n``)."""
    if name.isprintable():
        return name
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in name)
