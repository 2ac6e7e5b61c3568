"""``vggfeat classify``: images in, ImageNet top-k predictions out (CSV), or every posterior (.h5), as the paper evaluates."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click
import numpy as np

from ..classifier import Classifier
from ..discover import ImageSet
from ..job import check_output
from ..features import FeatureFile
from ..predictions import (ClassificationResult, NetworkRun, are_imagenet_folders, check_fused_classifiers,
                           check_prediction_options, describe_posteriors, evaluate_file, folder_labels, keep_top_for,
                           other_networks_work, posteriors_categories, posteriors_file_of, posteriors_files_of,
                           read_labels, write_predictions)
from ..store import check_new_file, file_attributes, rows_and_failures
from ..update import check_rewritable
from . import common, options
from .extract import run_job, run_on, work_done, write_output


# --labels folders: the true classes are the images' class folders (ImageNet's WordNet ids).
FOLDERS = "folders"


@click.command()
@options.image_source
@options.networks
@options.scales
@click.option("--flip/--no-flip", default=True, show_default=True, help="Average the posteriors with the horizontally flipped image's.")
@click.option("--dense/--no-dense", default=True, show_default=True, help="The paper's dense evaluation (whole image, fc8 as a convolution).")
@click.option("--multi-crop", is_flag=True, help="Add the paper's multi-crop evaluation (5x5 crops of 224 per scale); with --dense the two are averaged.")
@click.option("--topk", default=5, show_default=True, type=click.IntRange(min=1), help="Classes written per image (CSV; an .h5 holds them all).")
@click.option("--labels", type=click.Path(),
              help="ImageNet-style list 'filename label' (or 'filename,label'), label 0..999, or 'folders': the class "
                   "folders are ImageNet's WordNet ids (ImageFolder's layout); report top-1/top-5 error.")
@options.devices
@options.precision
@options.image_pipeline
@options.shard
@options.part_size
@common.overwrite
@options.retry_failed
@options.update
@common.quiet
def classify(paths, file_list, root, models, weights, seed, scales, flip, dense, multi_crop, topk, labels, devices,
             precision, batch_size, workers, decoder, decode_in, jpeg_draft, max_pixels, min_side, autotune, compile, shard,
             part_size, overwrite, retry_failed, update, quiet) -> None:
    """Classify every image under IMAGES (or in --file-list) into OUTPUT (.csv): top-k ImageNet classes.

    The defaults are the paper's dense evaluation with VGG16: fc8 as a 1x1 convolution over the
    whole image at Q = 256, 384, 512, each class-score map averaged, softmax, posteriors averaged
    over the image and its flip and over the scales. Unusable files get a row with the reason.
    Each image's top classes are first kept in OUTPUT.posteriors.h5, from which a killed run resumes.
    Several models (--model vgg16,vgg19) are fused: each image's posteriors are averaged over them,
    each model's kept in OUTPUT.<model>.posteriors.h5 until the CSV is written.

    An OUTPUT .h5 holds every image's posteriors instead, as 'vggfeat extract' writes descriptors:
    for millions of images, in shards, and updated or retried as extract's files are.
    """
    output = options.output_of(paths, file_list)
    posteriors_file = output.suffix.lower() == ".h5"
    rewrite = options.rewrite_of(overwrite, retry_failed, update, shard)
    # Refused before the images are found, as in extract: the output, the labels, IMAGES, the options
    # (and, for a retry or an update, whether the output was made with them).
    if posteriors_file and len(models) > 1:
        raise click.UsageError(f"--model {','.join(models)}: networks fuse into a CSV OUTPUT; for every posterior, classify "
                               f"into an .h5 with each model, then 'vggfeat export A.h5 --to csv --fuse B.h5'")
    weights_files = options.weights_of(models, weights)
    if not posteriors_file:
        for given, name in ((shard, "--shard"), (retry_failed, "--retry-failed"), (update, "--update")):
            if given:
                raise click.UsageError(f"{name}: for an OUTPUT .h5 (a CSV is written whole, for every image)")
        check_new_file(output, overwrite)
    elif not rewrite:
        check_output(output, overwrite)  # or the run that left its work beside it goes on
    by_folders = labels == FOLDERS  # known once the images are found ("./folders" is a file)
    truth = read_labels(labels) if labels and not by_folders else None
    options.check_source(paths, file_list)
    say = common.reporter(quiet)
    classifiers = []
    for model, model_weights in zip(models, weights_files):
        say(f"loading {model} ({model_weights})")
        classifiers.append(Classifier(
            model, weights=model_weights, seed=seed, scales=scales, flip=flip, dense=dense, multi_crop=multi_crop,
            device=devices[0], precision=precision, batch_size=batch_size, workers=workers, decoder=decoder,
            decode_in=decode_in, jpeg_draft=jpeg_draft, max_pixels=max_pixels, min_side=min_side, autotune=autotune,
            compile=compile,
            # A CSV's posteriors: only what it needs; every posterior where networks are averaged.
            keep_top=None if posteriors_file or len(models) > 1 else keep_top_for(topk),
        ))
        check_prediction_options(classifiers[-1], None if posteriors_file else topk, truth)
    check_fused_classifiers(classifiers)
    if any(each.network.weights.is_random for each in classifiers):
        options.warn_random_weights(seed, "these predictions are meaningless")
    classifier = classifiers[0]
    if rewrite:
        check_rewritable(output, classifier, "float32", rewrite)
    images = options.read_images(paths, file_list, root, quiet)
    say(common.counted(len(images), "image"))
    if by_folders:
        truth = folder_labels(images.paths, images.labels, images.classes, classifier.classes)
        for each in classifiers:
            check_prediction_options(each, None, truth)
    elif truth is None and are_imagenet_folders(images.classes):
        say("note: the images' classes are ImageNet's WordNet ids: --labels folders reports the top-1/top-5 error")
    setting = setting_of(dense, multi_crop, scales)
    if posteriors_file:
        write_output(classifier, images, output, devices, shard=shard, rewrite=rewrite, dtype="float32",
                     part_size=part_size, overwrite=overwrite, quiet=quiet, precision=precision,
                     desc=f"{models[0]} {setting}")
        if truth is not None:
            _report_errors(evaluate_file(output, truth, classifier.categories()), labels, setting, say)
        return
    files, work = describe_networks(classifiers, images, output, devices, setting, overwrite=overwrite,
                                    part_size=part_size, quiet=quiet, precision=precision)
    if len(classifiers) > 1:
        setting += f"; {' + '.join(models)} fused"
    write_csv(output, classifier.categories(), topk, truth, labels, overwrite, quiet, setting,
              work="".join(f"; {done}" for done in work), posteriors=files[0], fuse=tuple(files[1:]), remove=True)


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


def setting_of(dense: bool, multi_crop: bool, scales) -> str:
    """The evaluation, in words: ``dense + multi-crop, Q=256,384,512``."""
    how = " + ".join(name for name, on in (("dense", dense), ("multi-crop", multi_crop)) if on)
    return f"{how}, Q={','.join(map(str, scales))}"


def write_csv(output: Path, names: list[str], topk: int, truth: dict[str, int] | None, labels: str | None,
              overwrite: bool, quiet: bool, setting: str, posteriors: Path | None = None, work: str = "",
              fuse: tuple[Path, ...] = (), remove: bool = False) -> None:
    """Write the CSV ``output`` from its own posteriors file, or from ``posteriors`` (an .h5 that
    classify wrote; fused with the files ``fuse``; all removed once it is written where ``remove``),
    under a progress bar; say what it holds, and the errors against ``truth`` (read from ``labels``)."""
    say = common.reporter(quiet)
    with common.progress_bar(quiet, total=rows_and_failures(posteriors or posteriors_file_of(output))[0], unit="images",
                              desc=f"writing {output.name}") as bar:
        result = write_predictions(output, names, topk, truth, overwrite, progress=bar.update, posteriors=posteriors,
                                   fuse=fuse, remove=remove)
    failed = click.style(f"{result.failed:,} failed", fg="red" if result.failed else None)
    say(f"wrote {result.output}: {common.counted(result.classified, 'image')} classified, {failed}{work}")
    for path, reason in result.first_failures:
        say(f"  failed: {path}: {reason}")
    if result.evaluation is not None:
        _report_errors(result, labels, setting, say)


def export_csv(posteriors: Path, output: Path, topk: int, labels: str | None, fuse: tuple[Path, ...], overwrite: bool,
               quiet: bool) -> None:
    """``vggfeat export POSTERIORS --to csv``: the CSV that classify writes, from every posterior
    that ``classify IMAGES OUT.h5`` kept, fused with those of ``fuse``."""
    check_new_file(output, overwrite)
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
    write_csv(output, names, topk, truth, labels, overwrite, quiet, setting, posteriors=posteriors, fuse=fuse)


def _report_errors(result: ClassificationResult, labels: str, setting: str, say: Callable[..., None]) -> None:
    evaluation = result.evaluation
    labels = "the class folders" if labels == FOLDERS else labels
    if evaluation.images == 0:
        say(f"no classified image has a label in {labels}: no top-1/top-5 error to report", fg="yellow")
    else:
        # The result goes to stdout: it is what the command was asked for.
        click.echo(f"top-1 error {evaluation.top1_error:.2%}, top-5 error {evaluation.top5_error:.2%} "
                   f"over {evaluation.images:,} labelled images ({setting})")
    if result.unlabelled or result.labelled_failed:
        say(f"not counted: {common.counted(result.unlabelled, 'image')} without a label in {labels}, "
            f"{common.counted(result.labelled_failed, 'labelled image')} that failed")
