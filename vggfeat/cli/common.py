"""What every command shares, without torch: progress bars (and progress lines in log files),
stopping on SIGTERM, the --quiet, --overwrite and --json options, and numbers for people. Commands
that only read files (info, train-svm, predict, index, ...) import this and not :mod:`.options`, the
network's options, so that they start without importing torch."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

from ..discover import ImageSet
from ..regions import RegionCount, count_regions
from ..rerun import check_output, file_record, made_from, record, recorder, written_recorded_file
from ..store import HDF5_SUFFIXES, open_features_file
from ..textfiles import printable

# The seeds that --seed takes: NumPy's and scikit-learn's range (torch's is wider, negative ones
# too, but a file records -1 for weights of no seed).
SEEDS = click.IntRange(0, 2**32 - 1)


def given(*names: str) -> list[str]:
    """The options among ``names`` (their parameter names) given on the command line, by their flags."""
    context = click.get_current_context()
    return [param.opts[0] for param in context.command.params if param.name in names
            and context.get_parameter_source(param.name) not in (None, click.core.ParameterSource.DEFAULT)]


def refuse_without(needed: str, present: object, *names: str) -> None:
    """Refuse the options ``names`` given without ``needed`` (``present`` false): they would do nothing, silently."""
    unused = given(*names) if not present else []
    if unused:
        raise click.UsageError(f"{', '.join(unused)} {'goes' if len(unused) == 1 else 'go'} with {needed}, not given")


overwrite = click.option("--overwrite", is_flag=True, help="Replace an existing OUTPUT (only once the new one is complete).")
quiet = click.option("--quiet", "-q", is_flag=True, help="No progress bar, nor progress lines (what was done is said).")

# Results also written as JSON (the evaluations), refused over an existing file unless --overwrite.
OTHER_FORMATS = (".csv", *HDF5_SUFFIXES, ".npy", ".npz", ".parquet", ".index")  # suffixes of vggfeat's other files


def _json_file(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    if value is not None and value.suffix.lower() in OTHER_FORMATS:  # JSON in x.csv or x.h5 misleads whoever opens it
        raise click.BadParameter(f"{value} names a {value.suffix} file: --json writes JSON, give a .json file")
    return value


json_output = click.option("--json", "json_out", type=click.Path(path_type=Path), callback=_json_file,
                           help="Also write the results as JSON here.")
overwrite_json = click.option("--overwrite", is_flag=True, help="Replace an existing --json file.")


def reason_lines(by_reason: list[dict], shown: int = 5) -> list[str]:
    """Failures counted by kind of reason, most first (``fileinfo.failures_by_reason``), a line each
    for the first ``shown`` and one for the others: what a collection's failures were, which the
    first few in path order need not show."""
    width = len(f"{by_reason[0]['failures']:,}")
    lines = [f"    {entry['failures']:>{width},}  {printable(entry['reason'])}" for entry in by_reason[:shown]]
    if len(by_reason) > shown:
        others, kinds = sum(entry["failures"] for entry in by_reason[shown:]), len(by_reason) - shown
        lines.append(f"    {others:>{width},}  for {kinds:,} other reason{'s' if kinds > 1 else ''} ('vggfeat info --json' "
                     f"lists {'them' if kinds > 1 else 'it'})")
    return lines


def json_again(path: Path | None, overwrite: bool, made: str | None, inputs: Sequence[Path | None]) -> bool:
    """Before the work: True where the --json file ``path`` records that this very command made it
    (``made``: :func:`made_by_this_command`) from its ``inputs``, unchanged since, having said so
    and said its result again (:mod:`vggfeat.rerun`): there is nothing to do. Otherwise refuse one
    that exists (unless ``overwrite``), saying what differs, or that cannot be written."""
    if not path or not check_output(path, overwrite, made, None, inputs=inputs):
        return False
    click.echo(f"{path} already holds the results of this command on these files, unchanged since; nothing to do")
    for line in file_record(path)["said"]:
        click.echo(line)
    return True


def write_json_output(path: Path | None, result: dict, made: str | None = None, said: Sequence[str] = ()) -> None:
    """``result`` into ``path`` (--json), if given, whole or not at all, recording ``made``
    (:func:`json_again`) and the lines that ``said`` the result."""
    if path:
        with written_recorded_file(path, recorder(made, command_line(), said)) as temporary:
            temporary.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8", newline="")
        click.echo(f"wrote {path}")


def feature_rows(features: Path, failed: bool = False) -> int:
    """The rows of a features file, for a progress bar over them (refusing what is not one): its
    shape only, where FeatureFile would read every path. ``failed``: and the images it lists as
    failed (a CSV has a row for each)."""
    with open_features_file(features, required=("features",)) as f:
        return f["features"].shape[0] + (f["failed/paths"].shape[0] if failed and "failed/paths" in f else 0)


# Without a terminal (a batch job's log file), progress is a line this often (seconds), not a bar
# redrawn ten times a second into the file, nor nothing for days.
LOG_EVERY = 60.0


def progress_bar(quiet: bool, **bar: Any) -> tqdm | ProgressLines:
    """A tqdm bar (``bar``: its options) on a terminal; in a log file, or on a terminal that says
    it has no columns or no rows (some containers' and CI runners' pseudo-terminals, where tqdm
    would draw nothing at all), :class:`ProgressLines`; nothing with ``--quiet``."""
    if quiet or (sys.stderr.isatty() and min(_terminal_size()) > 0):
        return tqdm(disable=quiet, dynamic_ncols=True, **bar)
    return ProgressLines(bar.get("total"), bar.get("initial", 0), bar.get("unit", "it"), bar.get("desc", ""))


def _terminal_size() -> tuple[int, int]:
    """(columns, rows) of the terminal that stderr is, as the terminal says (0 where it does not)."""
    try:
        return tuple(os.get_terminal_size(sys.stderr.fileno()))
    except (OSError, ValueError):
        return 0, 0


class ProgressLines:
    """tqdm's ``update`` for a log file: a line of progress, rate and time left every LOG_EVERY seconds."""

    def __init__(self, total: int | None, initial: int, unit: str, desc: str) -> None:
        self.total, self.n, self.initial, self.unit, self.desc = total, initial, initial, unit, desc
        self.started = self.said = time.monotonic()

    def __enter__(self) -> ProgressLines:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def close(self) -> None:
        pass

    def update(self, count: int = 1) -> None:
        self.n += count
        now = time.monotonic()
        if now - self.said >= LOG_EVERY:
            self.said = now
            click.echo(self.line(now), err=True)

    def line(self, now: float) -> str:
        rate = (self.n - self.initial) / max(now - self.started, 1e-9)
        if not self.total:
            return f"{self.desc}: {self.n:,} {self.unit}, {per_second(rate)} {self.unit}/s"
        left = f", about {_duration((self.total - self.n) / rate)} left" if rate > 0 else ""
        return (f"{self.desc}: {self.n:,} of {self.total:,} {self.unit} ({100 * self.n / self.total:.1f}%), "
                f"{per_second(rate)} {self.unit}/s{left}")


def per_second(rate: float) -> str:
    """A rate for the terminal: one decimal, or two significant digits below one (a CPU's 0.046
    images/s was said as 0.0)."""
    return f"{rate:,.1f}" if rate >= 1 or rate == 0 else f"{rate:.2g}"


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    if minutes >= 60:
        return f"{minutes // 60} h {minutes % 60:02d} min"
    return f"{minutes} min" if minutes else f"{round(seconds)} s"


class Terminated(KeyboardInterrupt):
    """SIGTERM, which batch systems send at a job's time limit (and ``kill`` by default): the
    command stops as Ctrl-C stops it, keeping what is done, rather than dying where it stands."""


@contextlib.contextmanager
def stopping_on_sigterm() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` in the main thread while the block runs."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread has handlers
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise Terminated()

    resent: list[threading.Timer] = []

    def stop_again(unraisable: Any) -> None:
        # A stop (SIGTERM, Ctrl-C) that came as an object was being finalised (an h5py or numpy
        # object's __del__) is an exception Python can only print there ("Exception ignored in")
        # and drop, and the command went on. Sent again, once this hook has returned (a signal
        # sent from here would be handled here, and dropped), it stops the command where it goes on.
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            again = signal.SIGTERM if isinstance(unraisable.exc_value, Terminated) else signal.SIGINT
            resent.append(threading.Timer(0.05, os.kill, (os.getpid(), again)))
            resent[-1].daemon = True
            resent[-1].start()
        else:
            previous_hook(unraisable)

    previous, previous_hook = signal.signal(signal.SIGTERM, terminate), sys.unraisablehook
    sys.unraisablehook = stop_again
    try:
        yield
    finally:
        for timer in resent:  # the block ended first (stopped, or done): nothing to stop
            timer.cancel()
        signal.signal(signal.SIGTERM, previous)
        sys.unraisablehook = previous_hook


def command_line() -> str:
    """The command as given, for the files to record what made them."""
    obj = click.get_current_context().find_root().obj
    return shlex.join(["vggfeat", *(obj["argv"] if isinstance(obj, dict) and "argv" in obj else sys.argv[1:])])


def made_by_this_command(inputs: Sequence[Path | None], leave_out: Sequence[str] = (), extra: dict | None = None,
                         outputs: Sequence[Path | None] = ()) -> str | None:
    """How this command makes its output (:func:`vggfeat.rerun.made_from`), for the output to record
    and the same command run again to find: its ``inputs`` (None: not given), its name and every
    option but --overwrite, --quiet and ``leave_out`` (those that name ``inputs`` another way: the
    same files as arguments or as --features), by their flags, paths as real paths; and ``extra``
    (what else it is made from: the images it describes, say). ``outputs``: the files it writes,
    which a folder among ``inputs`` may hold."""
    context = click.get_current_context()
    left_out = {*leave_out, "overwrite", "quiet"}
    options = {param.opts[0]: _plain(context.params[param.name]) for param in context.command.params
               if isinstance(param, click.Option) and param.name not in left_out and param.name in context.params}
    names, each = [], context
    while each.parent is not None:  # "whiten fit", not "fit"
        names.append(each.command.name)
        each = each.parent
    return made_from([path for path in inputs if path is not None],
                     {"command": " ".join(reversed(names)), **options, **(extra or {})},
                     [path for path in outputs if path is not None])


def provenance(made: str | None) -> dict:
    """What an output records of how it was made: the command line, and ``made``
    (:func:`made_by_this_command`) where there is one."""
    return {"command": command_line(), **record(made)}


def _plain(value: object) -> object:
    if isinstance(value, Path):
        return os.path.realpath(value)
    return [_plain(each) for each in value] if isinstance(value, (tuple, list)) else value


def reporter(quiet: bool) -> Callable[..., None]:
    """``say(text, **style)``: a progress line on stderr, or nothing with ``--quiet``."""
    if quiet:
        return lambda text, **style: None
    return say_result


def say_result(text: str, **style) -> None:
    """What a command did (the file written, its failures), on stderr as its progress lines are,
    and with ``--quiet`` too, which hides the progress alone: a batch job must learn what failed."""
    click.secho(text, err=True, **style)


def counted(count: int, noun: str, plural: str = "") -> str:
    """``count`` things for people: "1 image", "2,048 images" (``plural``: where not noun + s)."""
    return f"{count:,} {noun if count == 1 else plural or noun + 's'}"


def images_counted(images: ImageSet) -> str:
    """An image set's size for people: "16 images", "16 regions of 8 images", "4 images and 16
    regions of 8 images"."""
    regions = count_regions(images.paths) if images.has_regions else RegionCount(0, 0)
    if not regions.regions:
        return counted(len(images), "image")
    of_regions = f"{counted(regions.regions, 'region')} of {counted(regions.images, 'image')}"
    whole = len(images) - regions.regions
    return f"{counted(whole, 'image')} and {of_regions}" if whole else of_regions


def size_text(count: int) -> str:
    """``count`` bytes for people: 1.5 GiB, 12.0 MiB, 100 B."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"
