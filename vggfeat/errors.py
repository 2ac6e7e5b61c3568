"""The two kinds of trouble vggfeat reports instead of a traceback, and the commonest check."""

from __future__ import annotations

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
