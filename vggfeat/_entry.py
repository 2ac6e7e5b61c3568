"""The ``vggfeat`` command's entry point: what a stop (Ctrl-C, SIGTERM) in its first moments does.

Loading the CLI's libraries (NumPy, click, ...) takes a few tenths of a second, before
:func:`vggfeat.cli.main` handles stops. A stop then said nothing (SIGTERM: exit -15) or a
traceback of the import (Ctrl-C); this module imports nothing heavy, so that the command handles
them from its start, as ``main`` does: one line, and exit code 143 or 130.
"""

from __future__ import annotations

import signal
import sys


class _Stopped(BaseException):
    """A stop that came as the CLI loaded: its ``Error:`` word and exit code."""


def _stop(signum: int, frame: object) -> None:
    raise _Stopped(*(("terminated", 143) if signum == signal.SIGTERM else ("interrupted", 130)))


def run() -> None:
    """Run the ``vggfeat`` command (``python -m vggfeat`` too)."""
    # (a stop that the command was started to ignore, SIG_IGN, as nohup's or a background job's, stays ignored)
    handlers = {number: signal.signal(number, _stop) for number in (signal.SIGINT, signal.SIGTERM)
                if signal.getsignal(number) is not signal.SIG_IGN}
    try:
        try:
            from .cli import main
        finally:  # main handles them from here on
            for number, handler in handlers.items():
                signal.signal(number, handler)
    except _Stopped as stopped:
        word, code = stopped.args
        sys.stderr.write(f"Error: {word}\n")
        sys.exit(code)
    main()
