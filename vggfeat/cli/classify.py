"""``vggfeat classify``: images in, ImageNet top-k predictions out (CSV), or every posterior (.h5), as the paper evaluates."""

from __future__ import annotations

import os
from pathlib import Path

import click

from . import common, options


# --labels folders: the true classes are the images' class folders (ImageNet's WordNet ids).
FOLDERS = "folders"


@click.command()
@options.image_source
@options.networks
@options.class_scales
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
def classify(paths, file_list, root, archive_classes, models, weights, seed, scales, flip, dense, multi_crop, topk, labels, devices,
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
    # Imported here: torch comes with them, and the options above (--help, a typo) need none of it.
    from .. import rerun
    from ..classifier import Classifier
    from ..job import check_existing_output, check_output
    from ..parts import output_locked
    from ..predictions import (are_imagenet_folders, check_csv_output, check_fused_classifiers, check_prediction_options,
                               evaluate_file, folder_labels, keep_top_for, match_labels, other_networks_work, read_labels,
                               rows_classified)
    from ..processes import start_process_server
    from ..settings import check_scales
    from ..store import POSTERIORS
    from ..update import check_rewritable
    from .jobs import exit_if_none_described, write_output
    from .posteriors import describe_networks, report_errors, write_csv

    check_scales(scales, "fc8")  # as in extract
    output = options.output_of(paths, file_list)
    if output.suffix.lower() not in (".csv", ".h5"):  # a CSV called out.hdf5 or out.json would mislead
        raise click.UsageError(f"OUTPUT {output.name}: name it .csv (each image's top classes) or .h5 (every posterior)")
    posteriors_file = output.suffix.lower() == ".h5"
    common.refuse_without("an OUTPUT .csv (an .h5 holds every posterior)", not posteriors_file, "topk")
    rewrite = options.rewrite_of(overwrite, retry_failed, update, shard)
    # Refused before the images are found, as in extract: the output, the labels, IMAGES, the options
    # (and, for a retry or an update, whether the output was made with them).
    if posteriors_file and len(models) > 1:
        raise click.UsageError(f"--model {','.join(models)}: networks fuse into a CSV OUTPUT; for every posterior, classify "
                               f"into an .h5 with each model, then 'vggfeat export A.h5 --to csv --fuse B.h5'")
    weights_files = options.weights_of(models, weights)
    options.refuse_unused(weights_files, devices, decoder, autotune)
    # A CSV that records how it was made, with no run's work beside it: the same command run again
    # has nothing to do where it is over the same images (known once they are found, below).
    again = False
    if not posteriors_file:
        for given, name in ((shard, "--shard"), (retry_failed, "--retry-failed"), (update, "--update")):
            if given:
                raise click.UsageError(f"{name}: for an OUTPUT .h5 (a CSV is written whole, for every image)")
        again = (not overwrite and output.is_file() and rerun.command_of(rerun.recorded_in_file(output)) == "classify"
                 and not other_networks_work(output, []))
        if not again:
            check_csv_output(output, overwrite, inputs=[file_list, None if labels == FOLDERS else labels])
    elif not rewrite:  # or the run that left its work beside it goes on, or finds its file done
        check_output(output, overwrite, options.images_root(paths, file_list, root), makes=POSTERIORS)
    by_folders = labels == FOLDERS  # known once the images are found ("./folders" is a file)
    truth = read_labels(labels) if labels and not by_folders else None
    options.check_source(paths, file_list, archive_classes)
    # The labels and weights files, and the images themselves (their list or folder named as the
    # images' root and digest), are what the CSV is made from.
    made_of = [Path(labels) if truth is not None else None, *(Path(each) for each in weights_files if Path(each).is_file())]

    def made(images) -> str | None:
        held = f"{len(images):,} in {os.path.realpath(images.root)}, sha256 {images.digest()[:16]}"  # as a refusal shows them
        return common.made_by_this_command(made_of, leave_out=["file_list", "root"], extra={"images": held})

    if again:  # before any network loads
        images = options.read_images(paths, file_list, root, archive_classes, quiet)
        rerun.check_output(output, overwrite, made(images), None, inputs=[file_list, *made_of])  # refused where it differs
        common.say_result(f"{output} already holds the classes of this command's {common.counted(len(images), 'image')}, "
                          "unchanged since; nothing to do")  # on stderr, as its run's closing lines are
        for line in rerun.file_record(output)["said"]:
            click.echo(line)
        exit_if_none_described(*rows_classified(output), output)  # as the run did
        return
    if len(devices) > 1:  # a process per device to come
        start_process_server()
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
    if rewrite:  # its rows too: one that no classifier writes is refused now, not by the file's CSV after the work
        check_rewritable(output, classifier, "float32", rewrite)
    elif posteriors_file:
        check_existing_output(output, overwrite, classifier.config(), "float32")
    images = options.read_images(paths, file_list, root, archive_classes, quiet)
    say(common.images_counted(images))
    if not rewrite:
        options.check_archive_classes(images, archive_classes)
    if by_folders:
        truth = folder_labels(images.paths, images.labels, images.classes, classifier.classes)
        for each in classifiers:
            check_prediction_options(each, None, truth)
    elif truth is not None:
        match_labels(images.paths, truth)  # a file name that several images have refused before the work
    elif are_imagenet_folders(images.classes):
        say("note: the images' classes are ImageNet's WordNet ids: --labels folders reports the top-1/top-5 error")
    setting = setting_of(dense, multi_crop, scales)
    if posteriors_file:
        write_output(classifier, images, output, devices, shard=shard, rewrite=rewrite, dtype="float32",
                     part_size=part_size, overwrite=overwrite, quiet=quiet, precision=precision,
                     desc=f"{models[0]} {setting}")
        if truth is not None:
            report_errors(evaluate_file(output, truth, classifier.categories()), labels, setting, say)
        return
    # Held from the posteriors' first check to the CSV's writing: two runs into one CSV took each
    # other's posteriors files (removed as "made otherwise", or written into the other's CSV).
    with output_locked(output):
        files, work = describe_networks(classifiers, images, output, devices, setting, overwrite=overwrite,
                                        part_size=part_size, quiet=quiet, precision=precision)
        if len(classifiers) > 1:
            setting += f"; {' + '.join(models)} fused"
        _, result = write_csv(output, classifier.categories(), topk, truth, labels, overwrite, quiet, setting,
                              work="".join(f"; {done}" for done in work), posteriors=files[0], fuse=tuple(files[1:]),
                              remove=True, made=made(images))
    exit_if_none_described(result.classified, result.failed, output)


def setting_of(dense: bool, multi_crop: bool, scales) -> str:
    """The evaluation, in words: ``dense + multi-crop, Q=256,384,512``."""
    how = " + ".join(name for name, on in (("dense", dense), ("multi-crop", multi_crop)) if on)
    return f"{how}, Q={','.join(map(str, scales))}"
