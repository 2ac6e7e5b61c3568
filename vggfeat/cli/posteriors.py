"""``classify``'s outputs at the terminal: each network's posteriors described, the CSV written
from them (by ``classify``, or ``export --to csv``), and the top-1/top-5 errors reported."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click
import numpy as np

from .. import rerun
from ..classifier import Classifier
from ..discover import ImageSet
from ..features import FeatureFile
from ..predictions import (ClassificationResult, NetworkRun, describe_posteriors, folder_labels, other_networks_work,
                           posteriors_categories, posteriors_file_of, posteriors_files_of, read_labels,
                           write_predictions)
from ..files import file_attributes
from ..store import rows_and_failures
from . import common
from .classify import FOLDERS, setting_of
from .jobs import run_job, run_on, work_done


def describe_networks(classifiers: list[Classifier], images: ImageSet, output: Path, devices: tuple[str, ...],
                      setting: str, *, overwrite: bool, part_size: int, quiet: bool, precision: str
                      ) -> tuple[list[Path], list[str]]:
    """Each network's posteriors of ``images`` beside the CSV ``output`` (:func:`describe_posteriors`),
    each network's job run as extract runs one, on ``devices``; returns their files and what was
    done, in words."""
    say, work = common.reporter(quiet), []

    def run(network: NetworkRun) -> None:
        arch = network.classifier.network.arch
        named = f"{arch}: " if len(classifiers) > 1 else ""
        if network.described:
            say(f"{named}the posteriors of every image were described by an interrupted run ({network.posteriors})")
            return
        if named:
            say(f"{arch}, network {network.number} of {len(classifiers)} fused")
        # The networks after this one need their disk too: the warning comes before hours of work.
        job = run_job(network.classifier, images, network.posteriors, devices, overwrite=overwrite, dtype="float32",
                      part_size=part_size, quiet=quiet, precision=precision, desc=f"{arch} {setting}",
                      provenance={"posteriors_of": output.name}, disk_after=network.disk_after)
        work.append(named + work_done(job.computed, job.seconds, run_on(network.classifier, devices)))

    files = posteriors_files_of(output, classifiers)
    for path in other_networks_work(output, files):
        say(f"note: {path} was left by an interrupted run of this CSV with other --model networks; remove it if it "
            "is not needed", fg="yellow")
    return describe_posteriors(classifiers, images, output, run), work


def write_csv(output: Path, names: list[str], topk: int, truth: dict[str, int] | None, labels: str | None,
              overwrite: bool, quiet: bool, setting: str, posteriors: Path | None = None, work: str = "",
              fuse: tuple[Path, ...] = (), remove: bool = False, made: str | None = None
              ) -> tuple[list[str], ClassificationResult]:
    """Write the CSV ``output`` from its own posteriors file, or from ``posteriors`` (an .h5 that
    classify wrote; fused with the files ``fuse``; all removed once it is written where ``remove``),
    under a progress bar, recording that ``made`` it (:mod:`vggfeat.rerun`); say what it holds, and
    the errors against ``truth`` (read from ``labels``): the lines of the result on standard
    output, returned with the result."""
    say = common.reporter(quiet)

    def record(temporary: Path, result: ClassificationResult) -> None:
        rerun.record_in_file(temporary, made, common.command_line(), errors_said(result, setting))

    with common.progress_bar(quiet, total=rows_and_failures(posteriors or posteriors_file_of(output))[0], unit="images",
                              desc=f"writing {output.name}") as bar:
        result = write_predictions(output, names, topk, truth, overwrite, progress=bar.update, posteriors=posteriors,
                                   fuse=fuse, remove=remove, record=record)
    failed = click.style(f"{result.failed:,} failed", fg="red" if result.failed else None)
    common.say_result(f"wrote {result.output}: {common.counted(result.classified, 'image')} classified, {failed}{work}")
    for path, reason in result.first_failures:
        common.say_result(f"  failed: {common.printable(path)}: {common.printable(reason)}")
    return (report_errors(result, labels, setting, say) if result.evaluation is not None else []), result


def export_csv(posteriors: Path, output: Path, topk: int, labels: str | None, fuse: tuple[Path, ...], overwrite: bool,
               quiet: bool) -> None:
    """``vggfeat export POSTERIORS --to csv``: the CSV that classify writes, from every posterior
    that ``classify IMAGES OUT.h5`` kept, fused with those of ``fuse``; the same command again on
    its CSV, with these files unchanged, has nothing to do (:mod:`vggfeat.rerun`)."""
    made = common.made_by_this_command([posteriors, *fuse, Path(labels) if labels and labels != FOLDERS else None],
                                       leave_out=["fuse"])
    if rerun.check_output(output, overwrite, made, None, inputs=[posteriors, *fuse]):
        click.echo(f"{output} already holds the CSV of this command on these files, unchanged since; nothing to do")
        for line in rerun.file_record(output)["said"]:
            click.echo(line)
        return
    truth = read_labels(labels) if labels and labels != FOLDERS else None
    names = posteriors_categories(posteriors)
    attrs = file_attributes(posteriors)
    setting = setting_of(attrs.get("dense"), attrs.get("multi_crop"), attrs.get("scales", []))
    if fuse:
        models = [attrs.get("model"), *(file_attributes(path).get("model") for path in fuse)]
        setting += f"; {' + '.join(map(str, models))} fused"
    if labels == FOLDERS:  # the file's classes, with its paths and labels (10 million paths: a GB of memory)
        with FeatureFile(posteriors) as f:
            failed = f.failed()
            truth = folder_labels([*f.paths, *failed.paths], np.concatenate([f.labels, failed.labels]), f.classes,
                                  len(names))
    write_csv(output, names, topk, truth, labels, overwrite, quiet, setting, posteriors=posteriors, fuse=fuse, made=made)


def errors_said(result: ClassificationResult, setting: str) -> list[str]:
    """The line of ``result``'s top-1/top-5 errors, where it has any (an image labelled): the result
    that :func:`report_errors` says, and a CSV records (:mod:`vggfeat.rerun`) to say again."""
    evaluation = result.evaluation
    if evaluation is None or evaluation.images == 0:
        return []
    return [f"top-1 error {evaluation.top1_error:.2%}, top-5 error {evaluation.top5_error:.2%} "
            f"over {evaluation.images:,} labelled images ({setting})"]


def report_errors(result: ClassificationResult, labels: str, setting: str, say: Callable[..., None]) -> list[str]:
    """Say the top-1/top-5 errors of ``result``; returns the lines of the result (standard output)."""
    said = errors_said(result, setting)
    labels = "the class folders" if labels == FOLDERS else labels
    if not said:
        common.say_result(f"warning: no classified image has a label in {labels}: no top-1/top-5 error to report",
                          fg="yellow")  # with --quiet too: the errors asked for are not there
    else:
        click.echo(said[0])  # the result goes to stdout: it is what the command was asked for
    if result.unlabelled or result.labelled_failed:
        say(f"not counted: {common.counted(result.unlabelled, 'image')} without a label in {labels}, "
            f"{common.counted(result.labelled_failed, 'labelled image')} that failed")
    return said
