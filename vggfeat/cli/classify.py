"""``vggfeat classify``: images in, ImageNet top-k predictions out (CSV), or every posterior (.h5), as the paper evaluates."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from ..classifier import Classifier
from ..job import check_output
from ..predictions import ClassificationResult, Evaluation, classify_images, match_labels, read_labels
from ..store import check_new_file, open_features_file
from ..update import check_rewritable
from . import options
from .extract import write_output

ERROR_ROWS = 8192  # posteriors read at a time to count the errors


@click.command()
@options.image_source
@options.network
@options.scales
@click.option("--flip/--no-flip", default=True, show_default=True, help="Average the posteriors with the horizontally flipped image's.")
@click.option("--dense/--no-dense", default=True, show_default=True, help="The paper's dense evaluation (whole image, fc8 as a convolution).")
@click.option("--multi-crop", is_flag=True, help="Add the paper's multi-crop evaluation (5x5 crops of 224 per scale); with --dense the two are averaged.")
@click.option("--topk", default=5, show_default=True, type=click.IntRange(min=1), help="Classes written per image (CSV; an .h5 holds them all).")
@click.option("--labels", type=click.Path(path_type=Path), help="ImageNet-style list 'filename label' (or 'filename,label'), label 0..999: report top-1/top-5 error.")
@click.option("--device", "devices", default="auto", show_default=True, callback=options.check_devices,
              help="auto, cpu, cuda or cuda:N; several, such as cuda:0,cuda:1, for an OUTPUT .h5.")
@options.precision
@options.image_pipeline
@options.shard
@options.part_size
@options.overwrite
@options.retry_failed
@options.update
@options.quiet
def classify(paths, file_list, root, model, weights, seed, scales, flip, dense, multi_crop, topk, labels, devices,
             precision, batch_size, workers, decoder, decode_in, jpeg_draft, max_pixels, min_side, autotune, compile, shard,
             part_size, overwrite, retry_failed, update, quiet) -> None:
    """Classify every image under IMAGES (or in --file-list) into OUTPUT (.csv): top-k ImageNet classes.

    The defaults are the paper's dense evaluation with VGG16: fc8 as a 1x1 convolution over the
    whole image at Q = 256, 384, 512, each class-score map averaged, softmax, posteriors averaged
    over the image and its flip and over the scales. Unusable files get a row with the reason.

    An OUTPUT .h5 holds every image's posteriors instead, as 'vggfeat extract' writes descriptors:
    for millions of images, on several devices, in shards, resumed where a killed run stopped, and
    updated or retried as extract's files are.
    """
    output = options.output_of(paths, file_list)
    posteriors_file = output.suffix.lower() == ".h5"
    rewrite = options.rewrite_of(overwrite, retry_failed, update, shard)
    # Refused before the images are found, as in extract: the output, the labels, IMAGES, the options
    # (and, for a retry or an update, whether the output was made with them).
    if not posteriors_file:
        for given, name in ((len(devices) > 1, "several devices"), (shard, "--shard"), (retry_failed, "--retry-failed"),
                            (update, "--update")):
            if given:
                raise click.UsageError(f"{name}: for an OUTPUT .h5 (a CSV is written in one pass on one device)")
        check_new_file(output, overwrite)
    elif not rewrite:
        check_output(output, overwrite)  # or the run that left its work beside it goes on
    truth = read_labels(labels) if labels else None
    options.check_source(paths, file_list)
    say = options.reporter(quiet)
    say(f"loading {model} ({weights})")
    classifier = Classifier(
        model, weights=weights, seed=seed, scales=scales, flip=flip, dense=dense, multi_crop=multi_crop,
        device=devices[0], precision=precision, batch_size=batch_size, workers=workers, decoder=decoder, decode_in=decode_in,
        jpeg_draft=jpeg_draft, max_pixels=max_pixels, min_side=min_side, autotune=autotune, compile=compile,
    )
    if classifier.network.weights.is_random:
        options.warn_random_weights(seed, "these predictions are meaningless")
    if rewrite:
        check_rewritable(output, classifier, "float32", rewrite)
    images = options.read_images(paths, file_list, root, quiet)
    say(options.counted(len(images), "image"))
    how = " + ".join(name for name, on in (("dense", dense), ("multi-crop", multi_crop)) if on)
    setting = f"{how}, Q={','.join(map(str, scales))}"
    if posteriors_file:
        write_output(classifier, images, output, devices, shard=shard, rewrite=rewrite, dtype="float32",
                     part_size=part_size, overwrite=overwrite, quiet=quiet, precision=precision, desc=f"{model} {setting}")
        if truth is not None:
            _report_errors(_errors_of_file(output, truth), labels, setting, say)
        return
    say(options.describe_settings(classifier, len(images)))
    options.advise_precision(classifier, precision, say)
    with options.progress_bar(quiet, total=len(images), unit="images", desc=f"{model} {setting}") as bar:
        result = classify_images(classifier, images, output, topk=topk, labels=truth, overwrite=overwrite,
                                 progress=bar.update)
    failed = click.style(f"{result.failed:,} failed", fg="red" if result.failed else None)
    say(f"wrote {result.output}: {options.counted(result.classified, 'image')} classified, {failed}, in {result.seconds:.1f} s "
        f"on {classifier.device}")
    for path, reason in result.first_failures:
        say(f"  failed: {path}: {reason}")
    if result.evaluation is not None:
        _report_errors(result, labels, setting, say)


def _errors_of_file(output: Path, truth: dict[str, int]) -> ClassificationResult:
    """Top-1 and top-5 error of a posteriors file's rows against ``truth``, a block of rows at a time."""
    result = ClassificationResult(output, evaluation=Evaluation())
    with open_features_file(output) as f:
        paths, failed = f["paths"].asstr(), f["failed/paths"].asstr()[:]
        for start in range(0, f["features"].shape[0], ERROR_ROWS):
            block = f["features"][start : start + ERROR_ROWS]
            for probabilities, label in zip(block, match_labels(paths[start : start + len(block)], truth)):
                result.count_classified(probabilities, label)
    result.labelled_failed = sum(label is not None for label in match_labels(failed, truth))
    result.failed = len(failed)
    return result


def _report_errors(result: ClassificationResult, labels: Path, setting: str, say: Callable[..., None]) -> None:
    evaluation = result.evaluation
    if evaluation.images == 0:
        say(f"no classified image is named in {labels}: no top-1/top-5 error to report", fg="yellow")
    else:
        # The result goes to stdout: it is what the command was asked for.
        click.echo(f"top-1 error {evaluation.top1_error:.2%}, top-5 error {evaluation.top5_error:.2%} "
                   f"over {evaluation.images:,} labelled images ({setting})")
    if result.unlabelled or result.labelled_failed:
        say(f"not counted: {options.counted(result.unlabelled, 'image')} missing from {labels}, "
            f"{options.counted(result.labelled_failed, 'labelled image')} that failed")
