"""The two kinds of trouble vggfeat reports instead of a traceback, the commonest checks, and the
warnings of other libraries that it keeps quiet."""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import warnings
from collections.abc import Sequence

import numpy as np


class VggfeatError(Exception):
    """A problem with what the user asked for (arguments, files, configuration).

    The CLI prints the message on one line and exits with code 2.
    """


class InvalidInput(VggfeatError, ValueError):
    """A parameter or data that an estimator (:class:`~vggfeat.svm.LinearSVM`,
    :class:`~vggfeat.whitening.PCAWhitening`) refuses: a ValueError too, as scikit-learn's are, so
    that code written for them (GridSearchCV's ``error_score``, a caller's ``except ValueError``)
    takes it for theirs."""


def __getattr__(name: str) -> type:
    """``NotFitted``, made on first use (PEP 562): it subclasses scikit-learn's ``NotFittedError``,
    and importing scikit-learn takes over a second, which every command would pay here."""
    if name == "NotFitted":
        return _not_fitted_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _not_fitted_class() -> type:
    """The class ``NotFitted``, made once (``except NotFitted`` must match what was raised)."""
    with _not_fitted_lock:
        if "NotFitted" not in globals():
            from sklearn.exceptions import NotFittedError

            class NotFitted(VggfeatError, NotFittedError):
                """An estimator used before it was fitted, raised by those that do not import
                scikit-learn (:class:`~vggfeat.whitening.PCAWhitening`): scikit-learn's
                ``NotFittedError``, so that ``except NotFittedError`` catches it (a ValueError and an
                AttributeError too, so that ``hasattr`` of a fitted property is False), and a
                VggfeatError, so that the CLI reports it on one line."""

            # Named as a class of this module's (module __getattr__ finds it), not of this function's,
            # so that pickle, which carries a fit's error back from GridSearchCV's worker processes, finds it again.
            NotFitted.__qualname__ = "NotFitted"
            globals()["NotFitted"] = NotFitted
        return globals()["NotFitted"]


_not_fitted_lock = threading.Lock()  # two threads' first estimators unfitted at once would make two classes


def dense_array(X: object) -> np.ndarray:
    """``X`` as an array for an estimator, refusing a sparse matrix, which NumPy would make a 0-d
    array of objects (refused then as of "shape ()"): descriptors are dense; and complex numbers,
    whose imaginary parts the estimators' cast to float would drop with a mere ComplexWarning."""
    import scipy.sparse  # (scikit-learn's, loaded with the estimators)

    if scipy.sparse.issparse(X):
        raise InvalidInput("descriptors must be a dense array: pass X.toarray() (a sparse matrix was given)")
    X = np.asarray(X)
    if np.iscomplexobj(X):  # (worded as scikit-learn's own refusal, which its estimator checks look for)
        raise InvalidInput(f"Complex data not supported: descriptors must be real numbers, got {X.dtype}")
    return X


class ImageError(Exception):
    """One image cannot be used (corrupt, truncated, not an image, too small or too large).

    Extraction records the message under ``/failed`` and goes on with the next image.
    """


def not_a_file(path: str | os.PathLike, what: str) -> str:
    """Why ``path``, which is not a file, is not the ``what`` asked for ("file list"): not found, or a folder."""
    article = "an" if what[:1] in "aeiou" else "a"
    return f"{path} is a folder, where {article} {what} was expected" if os.path.isdir(path) else f"{what} not found: {path}"


def check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    """Refuse ``value`` of the option ``name`` unless it is one of ``choices``."""
    if value not in choices:
        raise VggfeatError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")


def check_flags(**flags: object) -> None:
    """Refuse a flag that is not True or False: ``flip="no"`` would be taken as true."""
    for name, value in flags.items():
        if not isinstance(value, (bool, np.bool_)):
            raise VggfeatError(f"{name} is True or False, got {value!r}")


def quiet_decoding_libraries() -> None:
    """Keep off the terminal what the decoding libraries say of damaged files, naming no file; for
    vggfeat's own processes (a command's, its decoding and device processes).

    Pillow's TIFF plugin warns of each damaged EXIF block it reads ("Corrupt EXIF data. Expecting to
    read 12 bytes but only got 4.", "Tag data larger than file. Skipping tag 274"), the image decoded
    as Pillow reads it all the same, and logs an error before it refuses a file ("More samples per
    pixel than can be decoded: 45"), which logging's last resort prints where no handler is set, the
    refusal being the image's recorded failure: both kept quiet (warning filters are the process's,
    not a thread's), as is Pillow's DecompressionBombWarning ("Image size (209193152 pixels) exceeds
    limit of 178956970 pixels, could be decompression bomb DOS attack."): vggfeat refuses each such
    image itself, naming it (--max-pixels).

    libtiff writes a message in three pieces ("%s: ", the message, ".\n"), each a write of its own
    to an unbuffered standard error: C's standard error is made line-buffered, so that a message
    reaches the command's filter (:mod:`vggfeat.cli.decoder_warnings`) whole, not interleaved with
    another process's."""
    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.TiffImagePlugin")
    warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit", module=r"PIL\.Image")
    pillow = logging.getLogger("PIL")
    if not any(isinstance(handler, logging.NullHandler) for handler in pillow.handlers):
        pillow.addHandler(logging.NullHandler())
    _line_buffered_c_stderr()


def _line_buffered_c_stderr() -> None:
    global _c_stderr_buffer
    if _c_stderr_buffer is not None:  # once a process: C's stderr keeps using the buffer
        return
    try:
        libc = ctypes.CDLL(None)
        buffer = ctypes.create_string_buffer(_LINE_BUFFER_BYTES)  # given none, glibc went on writing each call at once
        if libc.setvbuf(ctypes.c_void_p.in_dll(libc, "stderr"), buffer, _IOLBF, _LINE_BUFFER_BYTES) == 0:
            _c_stderr_buffer = buffer
    except (OSError, ValueError, AttributeError):  # no C library to ask, or its stderr by another name (macOS): unchanged
        pass


_IOLBF = 1  # setvbuf's mode of line buffering (glibc, musl)
_LINE_BUFFER_BYTES = 4096  # a line up to this long is one write, which a pipe takes whole
_c_stderr_buffer: ctypes.Array | None = None  # kept for as long as the process lives: C's stderr writes into it


def check_sequence(value: object, what: str) -> None:
    """Refuse one value given where a sequence of them belongs (``what``: "image paths"): a
    string is a sequence of characters, each of which would be taken for one."""
    if isinstance(value, (str, bytes, os.PathLike)):
        raise TypeError(f"expected a sequence of {what}, got one: {value!r}; give [{value!r}]")
