"""``vggfeat classify``: images in, ImageNet top-k predictions out (CSV), as the paper evaluates."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from ..classifier import Classifier
from ..predictions import ClassificationResult, classify_images, read_labels
from ..store import check_new_file
from . import options


@click.command()
@options.image_source
@options.network
@options.scales
@click.option("--flip/--no-flip", default=True, show_default=True, help="Average the posteriors with the horizontally flipped image's.")
@click.option("--dense/--no-dense", default=True, show_default=True, help="The paper's dense evaluation (whole image, fc8 as a convolution).")
@click.option("--multi-crop", is_flag=True, help="Add the paper's multi-crop evaluation (5x5 crops of 224 per scale); with --dense the two are averaged.")
@click.option("--topk", default=5, show_default=True, type=click.IntRange(min=1), help="Classes written per image.")
@click.option("--labels", type=click.Path(path_type=Path), help="ImageNet-style list 'filename label' (or 'filename,label'), label 0..999: report top-1/top-5 error.")
@options.device
@options.precision
@options.image_pipeline
@options.overwrite
@options.quiet
def classify(paths, file_list, root, model, weights, seed, scales, flip, dense, multi_crop, topk, labels, device,
             precision, batch_size, workers, decoder, decode_in, jpeg_draft, max_pixels, min_side, autotune, compile, overwrite,
             quiet) -> None:
    """Classify every image under IMAGES (or in --file-list) into OUTPUT (.csv): top-k ImageNet classes.

    The defaults are the paper's dense evaluation with VGG16: fc8 as a 1x1 convolution over the
    whole image at Q = 256, 384, 512, each class-score map averaged, softmax, posteriors averaged
    over the image and its flip and over the scales. Unusable files get a row with the reason.
    """
    output = options.output_of(paths, file_list)
    # Refused before the images are found, as in extract: the output, the labels, IMAGES, the options.
    check_new_file(output, overwrite)
    truth = read_labels(labels) if labels else None
    options.check_source(paths, file_list)
    say = options.reporter(quiet)
    say(f"loading {model} ({weights})")
    classifier = Classifier(
        model, weights=weights, seed=seed, scales=scales, flip=flip, dense=dense, multi_crop=multi_crop,
        device=device, precision=precision, batch_size=batch_size, workers=workers, decoder=decoder, decode_in=decode_in,
        jpeg_draft=jpeg_draft, max_pixels=max_pixels, min_side=min_side, autotune=autotune, compile=compile,
    )
    if classifier.network.weights.is_random:
        options.warn_random_weights(seed, "these predictions are meaningless")
    images = options.read_images(paths, file_list, root, quiet)
    say(options.counted(len(images), "image"))
    say(options.describe_settings(classifier, len(images)))
    options.advise_precision(classifier, precision, say)
    how = " + ".join(name for name, on in (("dense", dense), ("multi-crop", multi_crop)) if on)
    setting = f"{how}, Q={','.join(map(str, scales))}"
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


def _report_errors(result: ClassificationResult, labels: Path, setting: str, say: Callable[..., None]) -> None:
    evaluation = result.evaluation
    if evaluation.images == 0:
        say(f"no classified image is named in {labels}: no top-1/top-5 error to report", fg="yellow")
    else:
        # The result goes to stdout: it is what the command was asked for.
        click.echo(f"top-1 error {evaluation.top1_error:.2%}, top-5 error {evaluation.top5_error:.2%} "
                   f"over {evaluation.images:,} labelled images ({setting})")
    if result.unlabelled or result.labelled_failed:
        say(f"not counted: {result.unlabelled:,} images missing from {labels}, "
            f"{result.labelled_failed:,} labelled images that failed")
