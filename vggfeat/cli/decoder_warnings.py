"""The decoding libraries' messages of damaged files, counted rather than printed through the progress bar.

torchvision and TorchCodec decode JPEGs with libjpeg-turbo, whose default handler prints each of
its warnings straight to the process's standard error (file descriptor 2), naming no file:
"Corrupt JPEG data: 767 extraneous bytes before marker 0xd9". Web collections hold such files by
the thousand (most decode as well as any; some have grey blocks where the data is damaged), and
Pillow decodes the same files as far as their data goes, silently; so does vggfeat, by either
library. Pillow decodes compressed TIFFs with libtiff, whose handler prints the same way, naming
every file "tempfile.tif" (Pillow's name for the data it hands over) or a function of its own:
"tempfile.tif: Using code not yet in table."; such a file fails, and its failure is recorded.

For a command's duration, descriptor 2 is a pipe whose reader drops those lines, counts them and
passes everything else on unchanged (other libraries' messages, and the output of the processes
that the command starts); Python's own output (the progress bar, warnings, errors) goes to the
terminal directly, as before. The command ends with a line for each library that spoke, saying
how many times and what it said first.
"""

from __future__ import annotations

import contextlib
import faulthandler
import io
import os
import re
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class DecoderLibrary:
    """A library whose handler prints its messages of damaged files to descriptor 2."""

    name: str
    pattern: re.Pattern  # its lines, as its handler prints them
    starts: tuple[bytes, ...]  # how they begin: a line not yet ended that may be one of them waits for its end
    summary: str  # what its lines say, and what became of the files: "{name} {summary} {times} (the first: ...)"


# libtiff's codecs, whose functions name themselves in its messages ("LZWDecode", "Fax3PreDecode").
_TIFF_CODECS = (b"LZW", b"PackBits", b"Fax3", b"Fax4", b"ZIP", b"NeXT", b"Thunder", b"DumpMode", b"LogLuv", b"PixarLog",
                b"Predictor", b"OJPEG", b"LERC", b"WebP", b"ZSTD", b"LZMA")

LIBRARIES = (
    # libjpeg(-turbo)'s warnings (its jerror.h, JWRN_*), as its output_message prints them.
    DecoderLibrary("libjpeg", re.compile(
        rb"Corrupt JPEG data: .*|Premature end of JPEG file|Invalid SOS parameters for sequential JPEG"
        rb"|Inconsistent progression sequence for component \d+ coefficient \d+|Unknown Adobe color transform code \d+"
        rb"|Warning: unknown JFIF revision number \d+\.\d+|Application transferred too many scanlines"),
        (b"Corrupt JPEG data: ", b"Premature end of JPEG", b"Invalid SOS ", b"Inconsistent progression ",
         b"Unknown Adobe ", b"Warning: unknown JFIF ", b"Application transferred "),
        "warned of damaged JPEG data {times} (the first: '{first}'); such files are described as far as their "
        "data goes, as Pillow decodes them"),
    # libtiff's errors and warnings ("%s: %s.\n"), of Pillow's data: their module is the file's
    # name, or the function that speaks ("TIFFFillStrip: Invalid strip byte count 0, strip 0.",
    # "LZWDecode: Not enough data at scanline 0 (short 1 bytes).").
    DecoderLibrary("libtiff", re.compile(rb"(?:tempfile\.tif|_?TIFF\w+|MissingRequired|(?:" + b"|".join(_TIFF_CODECS)
                                         + rb")(?:Pre|Setup)?Decode\w*): .*"),
                   (b"tempfile.tif: ", b"TIFF", b"_TIFF", b"MissingRequired: ", *_TIFF_CODECS),
                   "reported damaged TIFF data {times} (the first: '{first}'); the files it could not decode are "
                   "recorded as failed"),
)
_WARNING_AT_END = re.compile(rb"(?:" + b"|".join(library.pattern.pattern for library in LIBRARIES) + rb")\Z")
_WARNING_STARTS = tuple(start for library in LIBRARIES for start in library.starts)
_LINE_ENDS = re.compile(rb"(?<=[\r\n])")
# Written by this process through the pipe as the command ends: the reader has passed on all
# that came before it once it reads this line.
_END = b"\0vggfeat: end of the command's standard error\0"
# How long the command's end waits for the reader to reach _END (it is behind by a pipe's worth at most).
END_WAIT_S = 5.0


@dataclass
class DecoderWarnings:
    """What the reader dropped: how many lines of each library (by name), and the first of each."""

    counts: dict[str, int] = field(default_factory=dict)
    first: dict[str, str] = field(default_factory=dict)

    def add(self, line: bytes) -> None:
        library = next(library for library in LIBRARIES if library.pattern.fullmatch(line))
        self.counts[library.name] = self.counts.get(library.name, 0) + 1
        self.first.setdefault(library.name, line.decode("ascii", "replace"))

    def summary(self) -> list[str]:
        """A line for each library that spoke, for the end of the command."""
        return [f"{library.name} " + library.summary.format(
                    times="once" if self.counts[library.name] == 1 else f"{self.counts[library.name]:,} times",
                    first=self.first[library.name])
                for library in LIBRARIES if library.name in self.counts]


@contextlib.contextmanager
def decoder_warnings_counted(counted: DecoderWarnings) -> Iterator[None]:
    """Within: the decoding libraries' lines on descriptor 2 counted into ``counted``, not printed (see the
    module). Where descriptor 2 cannot be redirected (closed, say), nothing changes."""
    try:
        terminal = os.dup(2)
    except OSError:
        yield
        return
    read_end, write_end = os.pipe()
    reached_end = threading.Event()
    reader = threading.Thread(target=_pass_on, args=(read_end, terminal, counted, reached_end), daemon=True,
                              name="vggfeat-stderr")
    reader.start()
    python_stderr = sys.stderr
    direct = _writes_to_descriptor_2(python_stderr)
    if direct:
        python_stderr.flush()
        # Python's output goes to the terminal, not through the pipe: the progress bar sees a
        # terminal (its width, colours) and nothing of it waits for the reader.
        sys.stderr = io.TextIOWrapper(io.FileIO(os.dup(terminal), "w"), encoding=python_stderr.encoding,
                                      errors=python_stderr.errors, line_buffering=True)
    # python -X faulthandler: a crash's traceback goes to the terminal, not to a reader that dies with the process.
    crash_reports = faulthandler.is_enabled()
    if crash_reports:
        faulthandler.enable(file=terminal)
    os.dup2(write_end, 2)
    try:
        yield
    finally:
        if direct:  # flushed, not closed: a progress bar not yet collected may still write to it
            sys.stderr.flush()
            sys.stderr = python_stderr
        os.dup2(terminal, 2)
        if crash_reports:
            faulthandler.enable(file=2)
        # The processes started meanwhile (decoding, devices) keep the pipe as their descriptor 2:
        # the reader goes on passing their output on until the last of them ends.
        os.write(write_end, _END + b"\n")
        os.close(write_end)
        reached_end.wait(END_WAIT_S)


def _writes_to_descriptor_2(stream: object) -> bool:
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both of the last two
        return False


def _pass_on(read_end: int, terminal: int, counted: DecoderWarnings, reached_end: threading.Event) -> None:
    """The pipe's lines to the terminal but the decoding libraries', until every writer has closed it.
    Reads on whatever happens to the terminal: a writer must never wait on a full pipe."""
    pending = b""
    with open(read_end, "rb", buffering=0) as pipe:
        while chunk := pipe.read(1 << 16):
            # Lines end in a line feed, or in a carriage return (a progress bar's update).
            *lines, pending = _LINE_ENDS.split(pending + chunk)
            passed, ended = [], False
            for line in lines:
                text = line.rstrip(b"\r\n")
                # A library writes its message and the line feed at once: at most a line not yet
                # ended (a prompt) comes before it.
                warning = _WARNING_AT_END.search(text)
                if text == _END:
                    ended = True
                elif warning:
                    counted.add(warning[0])
                    passed.append(text[: warning.start()])
                else:
                    passed.append(line)
            # A line not yet ended (a prompt) is passed on as it comes, unless it may be a warning.
            if pending and not any(start.startswith(pending[: len(start)]) for start in (*_WARNING_STARTS, _END)):
                passed.append(pending)
                pending = b""
            _write(terminal, b"".join(passed))
            if ended:  # once the lines before the end are out: the command's own last words come after them
                reached_end.set()
        _write(terminal, pending)
    reached_end.set()
    with contextlib.suppress(OSError):
        os.close(terminal)


def _write(terminal: int, data: bytes) -> None:
    with contextlib.suppress(OSError):  # a terminal gone (a closed pipe): the lines are lost, not the run
        while data:
            data = data[os.write(terminal, data):]
