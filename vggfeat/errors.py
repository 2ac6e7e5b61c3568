"""The two kinds of trouble vggfeat reports instead of a traceback, the commonest check, and the
warnings of other libraries that it keeps quiet."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence


class VggfeatError(Exception):
    """A problem with what the user asked for (arguments, files, configuration).

    The CLI prints the message on one line and exits with code 2.
    """


class ImageError(Exception):
    """One image cannot be used (corrupt, truncated, not an image, too small or too large).

    Extraction records the message under ``/failed`` and goes on with the next image.
    """


def check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    """Refuse ``value`` of the option ``name`` unless it is one of ``choices``."""
    if value not in choices:
        raise VggfeatError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")


def quiet_pillow_messages() -> None:
    """Keep off the terminal what Pillow's TIFF plugin says of damaged files, naming no file: its
    warnings of each damaged EXIF block it reads ("Corrupt EXIF data. Expecting to read 12 bytes but
    only got 4.", "Tag data larger than file. Skipping tag 274"), the image decoded as Pillow reads
    it all the same; and what it logs before it refuses a file ("More samples per pixel than can be
    decoded: 45"), which logging's last resort prints where no handler is set, the refusal being
    the image's recorded failure. For vggfeat's own processes (a command's, its decoding and device
    processes), whose threads decode at once: warning filters are the process's, not a thread's."""
    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.TiffImagePlugin")
    pillow = logging.getLogger("PIL")
    if not any(isinstance(handler, logging.NullHandler) for handler in pillow.handlers):
        pillow.addHandler(logging.NullHandler())
