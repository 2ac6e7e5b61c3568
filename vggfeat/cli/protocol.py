"""``vggfeat protocol caltech`` and ``vggfeat protocol voc``: the paper's evaluation protocols."""

from __future__ import annotations

import os
from pathlib import Path

import click

from ..errors import VggfeatError
from ..textfiles import as_utf8, read_text, text_lines
from ..voc import set_files
from . import common
from .svm import difficult_in_training, fits_progress, svm_options, svm_params, voc_difficult


@click.group()
def protocol() -> None:
    """The paper's evaluation protocols (Caltech-101/256 splits, VOC mAP of images or of persons' actions) on descriptor files."""


@protocol.command()
@click.argument("features", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--train-per-class", default=30, show_default=True, type=click.IntRange(min=1), help="Training images per class (N).")
@click.option("--test-per-class", default=50, show_default=True, type=click.IntRange(min=0),
              help="Most test images per class (M), from the rest; 0 for all the rest.")
@click.option("--splits", default=3, show_default=True, type=click.IntRange(min=1), help="Random splits.")
@click.option("--exclude-class", multiple=True, help="Leave this class out (repeatable), e.g. BACKGROUND_Google (the paper's Caltech-101 figures keep it).")
@common.json_output
@common.overwrite_json
@svm_options
def caltech(features, train_per_class, test_per_class, splits, exclude_class, json_out, overwrite, quiet, **svm) -> None:
    """Caltech-101/256: per split, N random training and up to M test images per class; mean class recall.

    FEATURES: one file of a labelled folder, or several of the same images to fuse. --seed draws
    the splits too.
    """
    from .. import protocol as protocols  # scikit-learn, which --help needs not

    common.refuse_without("--json", json_out, "overwrite")
    made = common.made_by_this_command(features)
    if common.json_again(json_out, overwrite, made, features):
        return
    with fits_progress(quiet) as progress:
        result = protocols.caltech(list(features), train_per_class, test_per_class or None, splits, seed=svm["seed"],
                                   exclude=exclude_class, progress=progress, **svm_params(**svm))
    said = [f"caltech protocol: {result['classes']} classes, {train_per_class} train / "
            f"{'up to ' + str(test_per_class) if test_per_class else 'all other'} test images per class, "
            f"{splits} split(s), seed {result['seed']}",
            "| split | train | test | C | mean class recall | accuracy |",
            "|---:|---:|---:|---:|---:|---:|",
            *(f"| {row['split']} | {row['train']} | {row['test']} | {row['C']:g} | {row['mean_class_recall']:.4f} | "
              f"{row['accuracy']:.4f} |" for row in result["splits"]),
            f"mean class recall: {100 * result['mean_class_recall_mean']:.2f}" + (
                f" ± {100 * result['mean_class_recall_std']:.2f} % (mean ± sample std over splits)" if splits > 1 else
                " % (one split: no spread to give)")]
    click.echo("\n".join(said))
    common.write_json_output(json_out, result, made, said)


@protocol.command()
@click.argument("features", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--labels", type=click.Path(path_type=Path), help="CSV of 'path,label' lines (several labels per path allowed).")
@click.option("--train-list", type=click.Path(path_type=Path), help="Training paths, one a line (when one file holds both sets).")
@click.option("--test-list", type=click.Path(path_type=Path), help="Test paths, one a line.")
@click.option("--voc-devkit", type=click.Path(path_type=Path),
              help="A VOC devkit folder (VOCdevkit/VOC2007): the sets, their labels and their difficult images from its "
                   "ImageSets/Main, in place of --labels and the lists.")
@click.option("--train-set", default="trainval", show_default=True, help="With --voc-devkit: the training image set.")
@click.option("--test-set", default="test", show_default=True, help="With --voc-devkit: the test image set.")
@voc_difficult
@click.option("--results", type=click.Path(path_type=Path),
              help="With --voc-devkit: also write the test scores here as VOC's result files for its evaluation server "
                   "(comp2_cls_<set>_<class>.txt; persons: comp10_action_<set>_<action>.txt); all there is for a test set "
                   "without labels (VOC2012's).")
@common.json_output
@click.option("--overwrite", is_flag=True, help="Replace an existing --json file and --results files.")
@svm_options
def voc(features, labels, train_list, test_list, voc_devkit, train_set, test_set, voc_difficult, results, json_out, overwrite,
        quiet, **svm) -> None:
    """VOC-style: multi-label SVMs on a training set, per-class AP and mAP on a test set.

    FEATURES: TRAIN.h5 TEST.h5, or one file with --train-list and --test-list; with --voc-devkit,
    a file of its JPEGImages, which holds both sets, or several of the same images to fuse (Net-D &
    Net-E). An image that the devkit marks difficult for a class is left out of that class's AP,
    as VOC's own evaluation does, and of its SVM (see --voc-difficult). A file of persons' regions
    ('protocol voc-persons') is classified by VOC2012's action sets, fused with a file of their
    images whole to stack each box with its image.
    """
    from .. import protocol as protocols  # scikit-learn, which --help needs not

    difficult = difficult_in_training(voc_devkit, voc_difficult)
    common.refuse_without("--voc-devkit", voc_devkit, "train_set", "test_set")
    common.refuse_without("--json or --results", json_out or results, "overwrite")
    if voc_devkit:
        if labels or train_list or test_list:
            raise click.UsageError("--voc-devkit gives the sets and their labels: no --labels, --train-list or --test-list")
        train_files = test_files = list(features)  # each holds both sets; several are fused
        train_paths = test_paths = None
    elif len(features) == 2 and not (train_list or test_list):
        train_files, test_files, train_paths, test_paths = features[0], features[1], None, None
    elif len(features) == 1 and train_list and test_list:
        train_files = test_files = features[0]
        train_paths, test_paths = _read_list(train_list), _read_list(test_list)
    else:
        raise click.UsageError("give TRAIN.h5 TEST.h5, or one features file with --train-list and --test-list")
    # The same command again has nothing to do where its --json file records these inputs unchanged
    # (vggfeat.rerun); not with --results, whose files it does not compare.
    inputs = [*features, labels, train_list, test_list, *set_files(voc_devkit, train_set), *set_files(voc_devkit, test_set)]
    made = None if results else common.made_by_this_command(inputs)
    if common.json_again(json_out, overwrite, made, inputs):
        return
    with fits_progress(quiet) as progress:
        result = protocols.voc(train_files, test_files, labels, train_paths, test_paths, devkit=voc_devkit, train_set=train_set,
                               test_set=test_set, difficult=difficult, results=results, overwrite=overwrite, progress=progress,
                               **svm_params(**svm))
    difficult_images = {"ignore": "left out of each class's SVM and AP", "negative": "negatives in each class's SVM, left out of its AP",
                        "positive": "positives in each class's SVM, left out of its AP"}[difficult]
    sets = f" ({train_set} / {test_set} of {voc_devkit}; difficult images {difficult_images})" if voc_devkit else ""
    members = "persons" if result.get("persons") else "images"
    said = [f"voc protocol: {result['train_rows']:,} training / {result['test_rows']:,} test {members}{sets}, "
            f"{len(result['classes'])} classes, C={result['C']:g}"]
    if results:
        files, task = ("comp10_action", "Action") if result["persons"] else ("comp2_cls", "Main")
        said.append(f"wrote {len(result['results'])} result files into {results} ({files}_{test_set}_<class>.txt): "
                    f"VOC's evaluation server takes them in results/VOC2012/{task}/")
    if "per_class" in result:  # not for a test set without labels: the result files are all there is
        ignored = "ignored" in result["per_class"][0]
        said += [f"| class | positives |{' difficult |' if ignored else ''} AP (VOC2007 11-point) | AP (area) |",
                 f"|---|---:|{'---:|' if ignored else ''}---:|---:|"]
        for row in result["per_class"]:
            cells = [f"{row[k]:.4f}" if row[k] is not None else "–" for k in ("ap_voc07_11pt", "ap_area")]
            difficult = f" {row['ignored']} |" if ignored else ""
            said.append(f"| {row['class']} | {row['support']} |{difficult} {cells[0]} | {cells[1]} |")
        if result["map_area"] is None:  # no class with a test positive: every AP undefined
            said.append("mAP: – (no class has a positive test image)")
        else:
            said.append(f"mAP: {100 * result['map_voc07_11pt']:.2f} % (VOC2007 11-point), {100 * result['map_area']:.2f} % (area)")
    click.echo("\n".join(said))
    common.write_json_output(json_out, result, made, said)


def _read_list(path: Path) -> list[str]:
    if not path.is_file():
        raise VggfeatError(f"list not found: {path}")
    # As /paths names them; spaces before a path kept, for a file so named (' a.jpg'): protocol.voc
    # leaves them out where the file holds no such row.
    paths = [as_utf8(line) for line in text_lines(read_text(path, names_files=True))
             if line.strip() and not line.startswith("#")]
    if not paths:
        raise VggfeatError(f"{path} lists no paths")
    return paths


@protocol.command("voc-persons")
@click.argument("devkit", type=click.Path(path_type=Path))
@click.argument("output", type=click.Path(path_type=Path))
@click.option("--set", "sets", multiple=True, default=("trainval", "test"), show_default=True,
              help="Action set whose persons to list (repeatable); a set the devkit lacks is refused.")
@click.option("--images", type=click.Path(path_type=Path),
              help="Also list their images whole here, to stack each box with its image (the paper's I+B).")
@click.option("--overwrite", is_flag=True, help="Replace existing lists.")
def voc_persons(devkit, output, sets, images, overwrite) -> None:
    """List the persons of VOC2012's action sets (DEVKIT: VOCdevkit/VOC2012) as regions, into OUTPUT.

    Each line names a person's box of its image (JPEGImages/<id>.jpg#xywh=X,Y,W,H, from the
    annotation), relative to OUTPUT's folder: 'vggfeat extract --file-list OUTPUT persons.h5' describes
    them, and 'protocol voc persons.h5 --voc-devkit DEVKIT' classifies them by the action sets.
    """
    from ..files import write_text_file
    from ..store import check_new_file
    from ..voc import person_lists

    if images is not None and os.path.abspath(images) == os.path.abspath(output):
        raise click.UsageError(f"--images {images} is OUTPUT too: name each list a file of its own")
    read = [file for name in sets for file in set_files(devkit, name)]  # never written over, even with --overwrite
    for path in (output, images) if images else (output,):
        check_new_file(path, overwrite, inputs=read)
    persons, whole = person_lists(devkit, sets, output.parent)
    write_text_file(output, "".join(f"{line}\n" for line in persons))
    if images:
        write_text_file(images, "".join(f"{line}\n" for line in whole))
    also = f", and their {len(whole):,} images whole into {images}" if images else ""
    click.echo(f"wrote {output}: {len(persons):,} persons of {len(whole):,} images ({', '.join(sets)}){also}")
