"""Running an extraction job at the terminal, for ``extract`` and ``classify``: what it will do, a
progress bar, what a stop keeps, and what was written. (Apart from the commands' declarations,
which must not import torch: see :mod:`vggfeat.choices`.)"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ..classifier import Classifier
from ..discover import ImageSet
from ..extractor import Extractor
from ..fileinfo import failures_by_reason
from ..job import ExtractionJob, JobResult
from ..multidevice import MultiDeviceJob
from ..parts import interrupted_on_several
from ..store import open_features_file, rows_and_failures
from ..update import OutputUpdate
from . import common, options

R = TypeVar("R")


def write_output(extractor: Extractor, images: ImageSet, output: Path, devices: tuple[str, ...], *,
                 shard: tuple[int, int] | None, rewrite: str | None, dtype: str, part_size: int, overwrite: bool,
                 quiet: bool, precision: str, desc: str) -> None:
    """``extractor``'s rows of ``images`` (or of its ``shard``) into the HDF5 ``output`` on
    ``devices``, and what was done said: a run (resumed if it was interrupted) or, with ``rewrite``,
    an update (:func:`update_output`). ``desc`` names the run on its progress bar."""
    say = common.reporter(quiet)
    described = images.shard(*shard) if shard else images
    if rewrite:
        update_output(extractor, described, output, devices, describe=rewrite, dtype=dtype, part_size=part_size,
                      quiet=quiet, precision=precision)
        return
    if shard:
        say(f"shard {shard[0]}/{shard[1]}: {len(described):,} of the {len(images):,} images")
    result = run_job(extractor, described, output, devices, overwrite=overwrite, dtype=dtype, part_size=part_size,
                     quiet=quiet, precision=precision, desc=desc)
    failed = click.style(f"{result.failed:,} failed", fg="red" if result.failed else None)
    if result.already_done:
        common.say_result(f"{output} already holds this extraction: {rows_held(extractor, result.rows, dtype)}, {failed}; "
                          "nothing to do (--update describes the images added or changed since, --overwrite all of them "
                          "again)")
        exit_if_none_described(result.rows, result.failed, result.output, shard)
        return
    work = work_done(result.computed, result.seconds, run_on(extractor, devices)) if len(described) else "no image to describe"  # an empty shard
    common.say_result(f"wrote {result.output}: {rows_held(extractor, result.rows, dtype)}, {failed}; {work}")
    if shard:
        say(f"this is shard {shard[0]}/{shard[1]}: once all {shard[1]} are written, 'vggfeat merge SHARD_FILES... OUTPUT' joins them")
    if result.failed:
        common.say_result("\n".join([f"failures by reason (listed in /failed of the file; 'vggfeat info {result.output}' "
                                      "shows the first):", *common.reason_lines(_failures_by_reason(result.output))]))
    exit_if_none_described(result.rows, result.failed, result.output, shard)


def exit_if_none_described(rows: int, failed: int, output: Path, shard: tuple[int, int] | None = None) -> None:
    """Exit 1 where every image failed (a run, an update, a retry, classify's CSV): a script's next
    step (train-svm, index) would otherwise go on to fail, later and less clearly, on a file of
    failures alone. Not for a shard, whose images may all be in one damaged archive: its file is
    merged with the others as it is."""
    if failed and not rows and not shard:
        remedy = (f"which {output} lists with their reasons" if output.suffix.lower() == ".csv" else
                  f"which {output} records ('vggfeat info {output}'); --retry-failed describes them again once they "
                  "are repaired")
        click.secho(f"Error: no image could be described: {failed:,} failed, {remedy}", err=True, fg="red")
        sys.exit(1)


def _failures_by_reason(output: Path) -> list[dict]:
    with open_features_file(output) as f:
        return failures_by_reason(f["failed/errors"])


def run_job(extractor: Extractor, images: ImageSet, output: Path, devices: tuple[str, ...], *, overwrite: bool,
            dtype: str, part_size: int, quiet: bool, precision: str, desc: str, provenance: dict | None = None,
            disk_after: int = 0) -> JobResult:
    """The job that writes ``extractor``'s rows of ``images`` into ``output`` on ``devices`` (resuming
    an interrupted one), announced and run under a progress bar named ``desc``; ``provenance``:
    attributes for the file besides the command; ``disk_after``: bytes of disk that the work after
    this job needs too (counted in the disk warning)."""
    job = extraction_job(extractor, images, output, devices, overwrite=overwrite, dtype=dtype, part_images=part_size,
                         provenance=provenance or {})
    if job.already_done:
        return job.run()
    say = common.reporter(quiet)
    announce(job, extractor, dtype, say, devices, disk_needed=job.disk_needed() + disk_after)
    options.advise_precision(extractor, precision, say)
    return running(job, job.run, quiet, desc=desc)


def rows_held(extractor: Extractor, rows: int, dtype: str) -> str:
    """What a file of ``rows`` rows by ``extractor`` holds, in words."""
    if isinstance(extractor, Classifier) and extractor.keep_top is not None:
        return f"the top {extractor.keep_top} classes of {common.counted(rows, 'image')} (of {extractor.classes})"
    if isinstance(extractor, Classifier):
        return f"the posteriors of {common.counted(rows, 'image')} ({extractor.classes} classes)"
    return f"{common.counted(rows, 'descriptor')} ({extractor.dim}-d {dtype})"


def run_on(extractor: Extractor, devices: tuple[str, ...]) -> str:
    """The devices a run goes on, in words."""
    return ", ".join(devices) if len(devices) > 1 else str(extractor.device)


def extraction_job(extractor: Extractor, images: ImageSet, output: Path, devices: tuple[str, ...], **job: Any
                   ) -> ExtractionJob | MultiDeviceJob:
    """The job that writes ``output`` on ``devices``: a :class:`MultiDeviceJob` on several, or to go
    on with a run interrupted on several (one device resumes it too); else an :class:`ExtractionJob`.
    ``job``: their keyword arguments (overwrite, dtype, part_images, provenance), the command added
    to its provenance."""
    job = {**job, "provenance": {"command": common.command_line(), **job.get("provenance", {})}}
    if len(devices) > 1 or (interrupted_on_several(output) and not job.get("overwrite")):
        return MultiDeviceJob(extractor, devices, images, output, **job)
    return ExtractionJob(extractor, images, output, **job)


def announce(job: ExtractionJob | MultiDeviceJob, extractor: Extractor, dtype: str, say: Callable[..., None],
              devices: tuple[str, ...] = (), disk_needed: int | None = None) -> None:
    """What the job will do, before it does it; ``disk_needed``: bytes of disk for more than the
    job itself (an update), if not ``job.disk_needed()``."""
    say(options.describe_settings(extractor, job.total - job.done, devices))
    if isinstance(job, MultiDeviceJob) and len(devices) == 1:
        say(f"the interrupted run on several devices goes on here, its {job.blocks} blocks one after another")
    elif isinstance(job, MultiDeviceJob) and job.blocks > len(devices):
        say(f"{job.blocks} blocks of {job.total // job.blocks:,} images or more: each device takes the next one left "
            "as it finishes one")
    if job.done:
        say(f"resuming: {job.done:,} of {job.total:,} images were done by an interrupted run")
    warn_if_the_disk_is_short(job.disk_needed() if disk_needed is None else disk_needed, job.output.parent, extractor, dtype)
    if job.unlocked_because:
        say(f"note: the file system of {job.work} has no locks ({job.unlocked_because}): nothing stops a second run "
            "on the same output while this one runs", fg="yellow")


def running(job: ExtractionJob | MultiDeviceJob, run: Callable[..., R], quiet: bool, desc: str, kept: str = "") -> R:
    """``run(progress=...)`` under a progress bar over ``job``'s images; a stop says where its work
    is kept: ``kept``, or in the job's work folder."""
    kept = kept or f"finished parts are kept in {job.work}"
    with common.progress_bar(quiet, total=job.total, initial=job.done, unit="images", desc=desc) as bar:
        try:
            return run(progress=bar.update)
        except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (common.Terminated)
            bar.close()
            terminated = isinstance(stop, common.Terminated)
            click.secho(f"{'terminated' if terminated else 'interrupted'}: {kept}; run the same command to resume",
                        err=True, fg="yellow")
            sys.exit(143 if terminated else 130)
        except OSError as error:  # a full disk, say: what is done is kept
            bar.close()
            raise OSError(f"{error}; {kept}: run the same command to resume") from error


def work_done(computed: int, seconds: float, device: str) -> str:
    if not computed:
        return "every image was described by the interrupted run"
    rate = computed / seconds if seconds > 0 else 0.0
    return f"{common.counted(computed, 'image')} in {seconds:.1f} s ({common.per_second(rate)} images/s) on {device}"


def warn_if_the_disk_is_short(needed: int, folder: Path, extractor: Extractor, dtype: str) -> None:
    """That ``needed`` bytes are more than ``folder``'s disk has free; said even with ``--quiet``,
    before the work: a full disk after days of it costs the run's end."""
    free = shutil.disk_usage(folder).free
    if needed > free:
        # classify keeps its posteriors in float32, and has no --dtype.
        halve = "; --dtype float16 halves it" if dtype == "float32" and not isinstance(extractor, Classifier) else ""
        click.secho(f"WARNING: this run needs up to {common.size_text(needed)} more disk and {common.size_text(free)} "
                    f"is free in {folder}{halve}. If the "
                    "disk fills, the run stops, keeping its finished parts: free space and run the same command.",
                    err=True, fg="yellow", bold=True)


def update_output(extractor: Extractor, images: ImageSet, output: Path, devices: tuple[str, ...], *, describe: str,
                  dtype: str, part_size: int, quiet: bool, precision: str) -> None:
    """--update (``describe="new"``) or --retry-failed (``"failed"``) of ``output``, on ``devices``."""
    say, retry = common.reporter(quiet), describe == "failed"
    update = OutputUpdate(extractor, images, output, describe=describe, dtype=dtype, part_images=part_size,
                          provenance={"retry_command" if retry else "update_command": common.command_line()},
                          devices=devices)
    if update.unlocked_because:
        say(f"note: the file system of {output} has no locks ({update.unlocked_because}): nothing stops a second run "
            "from writing it while this one rewrites it", fg="yellow")
    if update.unchanged:
        update.run()  # removes what a killed update may have left
        common.say_result(f"{output} lists no failed image: nothing to retry" if retry else
                          f"{output} is up to date: it holds every one of the {len(images):,} images, and no other")
        exit_if_none_described(*rows_and_failures(output), output)
        return
    if not retry:
        changed = f", {update.changed:,} whose file changed since it was read" if update.changed else ""
        new = update.described - update.changed
        say(f"{new:,} image{'' if new == 1 else 's'} that {output} does not hold{changed}, {update.dropped:,} that "
            "it holds no longer found")
        if update.moved_from:
            say(f"{output} was made from the images in {update.moved_from}: it records {os.path.abspath(images.root)} "
                "from now on")
    if update.job:
        announce(update.job, extractor, dtype, say, devices, disk_needed=update.disk_needed())
        options.advise_precision(extractor, precision, say)
        # Stopped while the images are described, or after, while the file is written anew.
        kept = f"finished parts are kept in {update.job.work}, then the images described in {update.staging}"
        result = running(update.job, update.run, quiet, desc="failed images" if retry else "new images", kept=kept)
    else:
        warn_if_the_disk_is_short(update.disk_needed(), output.parent, extractor, dtype)
        result = update.run()
    failed = click.style(f"{result.failed:,} failed", fg="red" if result.failed else None)
    if retry:  # every failure was described again: those left failed again
        outcome = f"{result.described - result.failed:,} of the {result.described:,} images that had failed are described now"
    else:
        again = f", {result.changed:,} described again" if result.changed else ""
        outcome = f"{common.counted(result.described - result.changed, 'image')} added{again}, {result.dropped:,} left out"
    work = work_done(result.computed, result.seconds, run_on(extractor, devices)) if result.described else "no image to describe"
    common.say_result(f"{'wrote' if retry else 'updated'} {result.output}: {rows_held(extractor, result.rows, dtype)}, "
                      f"{failed}; {outcome}; {work}")
    exit_if_none_described(result.rows, result.failed, result.output)
