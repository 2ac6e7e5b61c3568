"""``vggfeat train-svm``, ``predict`` and ``evaluate``: the linear-SVM stage over descriptor files."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click
import numpy as np

from ..choices import DEFAULT_C_GRID, LOSSES, SOLVERS
from ..errors import VggfeatError
from ..metrics import one_hot
from ..modelfile import how_C_was_chosen, normalised_words, read_model_file
from ..report import report_files, write_report
from ..rerun import check_output, file_record, own_outputs, recorded_in_file, recorder
from ..scoresfile import scores_summary
from ..store import HDF5_SUFFIXES, SCORES_FORMAT, SVM_MODEL_FORMAT, check_new_file
from ..voc import DIFFICULT, set_files
from .common import (SEEDS, command_line, counted, feature_rows, given, made_by_this_command, progress_bar, provenance, quiet,
                     refuse_without)

if TYPE_CHECKING:
    from ..transfer import Scored

# scikit-learn (a second or more to import) comes with vggfeat.transfer and vggfeat.svm, which the
# commands import when they run: their --help, and a mistyped option, need none of it.


def floats(ctx: click.Context, param: click.Parameter, value: str) -> tuple[float, ...]:
    """Click callback: ``"0.1,1,10"`` as a tuple of floats."""
    try:
        return tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers such as 0.1,1,10, got {value!r}") from None


def split_files(paths: tuple[Path, ...], features: tuple[Path, ...], names: list[str]) -> tuple[list[Path], list[Path]]:
    """``[FEATURES] OTHER...`` positionals, or ``--features`` (repeatable, fused) and ``OTHER...``."""
    got = " ".join(map(str, paths)) or "none"
    if features:
        if len(paths) != len(names):
            expected = f"{' '.join(names)} alone" if names else "no other path"
            raise click.UsageError(f"--features gives FEATURES: expected {expected}, got {got}")
        return list(features), list(paths)
    if len(paths) != len(names) + 1:
        raise click.UsageError(f"expected {' '.join(['FEATURES', *names])}, got {got}")
    return [paths[0]], list(paths[1:])


voc_difficult = click.option(
    "--voc-difficult", type=click.Choice(DIFFICULT),
    help="With --voc-devkit: a difficult image, in training, is left out of its class's SVM (ignore, the default, as "
         "VOC's evaluation leaves it out of the AP, and the devkit's example classifier out of its examples), a negative or a positive.")


def svm_options(command):
    """The SVM's options, shared by train-svm and the protocols (and --quiet, for their fits' progress bar)."""
    options = [
        click.option("--C", "C", type=click.FloatRange(min=0, min_open=True), help="Fix C instead of choosing it by cross-validation."),
        click.option("--C-grid", "C_grid", default=",".join(map(str, DEFAULT_C_GRID)), show_default=True, callback=floats,
                     help="Values of C tried by cross-validation."),
        click.option("--cv", default=3, show_default=True, type=click.IntRange(min=2), help="Cross-validation folds."),
        click.option("--holdout", type=click.FloatRange(0, 1, min_open=True, max_open=True), metavar="FRACTION",
                     help="Choose C on one hold-out of this share of the training images (stratified by class; the "
                          "paper's Caltech protocol held out 0.2) instead of by --cv-fold cross-validation."),
        click.option("--loss", default="squared_hinge", show_default=True, type=click.Choice(LOSSES)),
        click.option("--class-weight", default="none", show_default=True, type=click.Choice(["none", "balanced"]),
                     help="'balanced' weighs each binary problem's positives and negatives equally (unbalanced data)."),
        click.option("--normalize/--no-normalize", default=True, show_default=True, help="L2-normalise descriptors first (the paper's)."),
        click.option("--normalize-parts", is_flag=True,
                     help="L2-normalise each network's part of fused (--features repeated) or stacked ('vggfeat stack') "
                          "descriptors, rather than the row as a whole."),
        click.option("--max-iter", default=2000, show_default=True, type=click.IntRange(min=1),
                     help="Most iterations of the solver per fit (a warning says if some fits reach it)."),
        click.option("--n-jobs", default=1, show_default=True, type=click.IntRange(min=1),
                     help="Classes trained in parallel by liblinear (each holds one liblinear copy of the data)."),
        click.option("--solver", default="auto", show_default=True, type=click.Choice(("auto", *SOLVERS)),
                     help="liblinear: a class at a time, each on its own copy of the descriptors; lbfgs: the same SVMs "
                          "(squared hinge), every class at once on the descriptors as they are, on the CPU or a GPU "
                          "(--device): for large sets. auto: lbfgs on the CPU where rows x dims x classes x fits is "
                          "2e8 or more (1.6-6x as fast there), else liblinear; lbfgs where liblinear's copies would not "
                          "fit in memory (said), and with --device cuda."),
        click.option("--device", default="auto", show_default=True,
                     help="Where --solver lbfgs runs: auto, cpu, cuda or cuda:N (auto: CUDA where there is one)."),
        click.option("--seed", default=0, show_default=True, type=SEEDS,
                     help="Seed of the cross-validation folds (or the hold-out) and the solver."),
        quiet,
    ]
    for option in reversed(options):
        command = option(command)
    return command


@contextlib.contextmanager
def fits_progress(quiet: bool) -> Iterator[Callable[[int, int], None]]:
    """A progress bar over a training's liblinear fits (minutes each on large sets), for its
    ``progress(fits done, fits in all)``; drawn from the first fit on, so that a command refused
    before (its labels, its files) shows none; none at all where ``quiet``."""
    bars: list = []

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(progress_bar(quiet, total=total, unit="fits", desc="training SVMs"))
        bars[0].update(done - bars[0].n)

    try:
        yield progress
    finally:
        for bar in bars:
            bar.close()


def svm_params(C: float | None, C_grid: tuple[float, ...], cv: int, holdout: float | None, loss: str, class_weight: str,
               normalize: bool, normalize_parts: bool, max_iter: int, n_jobs: int, solver: str, device: str, seed: int) -> dict:
    """The values of :func:`svm_options` as :class:`~vggfeat.svm.LinearSVM` keyword arguments
    (with --normalize-parts, the parts' dimensions are the files', which train_svm and the protocols read)."""
    chosen_by = given("C_grid", "cv")
    if C is not None and chosen_by:
        raise click.UsageError(f"--C {C:g} fixes C; {', '.join(chosen_by)}: how cross-validation would choose it: give "
                               "one or the other")
    if holdout is not None and C is not None:
        raise click.UsageError(f"--C {C:g} fixes C; --holdout {holdout:g}: how a hold-out would choose it: give one or the other")
    if holdout is not None and given("cv"):
        raise click.UsageError(f"--holdout {holdout:g} chooses C on one hold-out, --cv {cv} by cross-validation folds: give "
                               "one or the other")
    if normalize_parts and not normalize:
        raise click.UsageError("--normalize-parts L2-normalises each part of the row, --no-normalize nothing: give one or "
                               "the other")
    if solver == "lbfgs" and given("n_jobs"):
        raise click.UsageError("--n-jobs is liblinear's (a class per thread); --solver lbfgs trains every class at once")
    if solver == "lbfgs" and C is not None and given("seed"):  # (lbfgs starts from zero: nothing random but folds)
        raise click.UsageError("--seed draws the cross-validation folds and liblinear's order; lbfgs with a fixed --C "
                               "uses neither")
    if solver == "liblinear" and device not in ("auto", "cpu"):
        raise click.UsageError(f"--device {device} is where --solver lbfgs runs; liblinear runs on the CPU")
    if loss == "hinge" and device not in ("auto", "cpu"):  # before auto picks lbfgs for the device
        raise click.UsageError(f"--loss hinge is liblinear's, which runs on the CPU: leave out --device {device}, or "
                               "train the squared hinge (--loss squared_hinge) with lbfgs on it")
    return {"C": C, "C_grid": C_grid, "cv": cv, "holdout": holdout, "loss": loss,
            "class_weight": None if class_weight == "none" else class_weight,
            "normalize": "parts" if normalize_parts else normalize, "max_iter": max_iter, "n_jobs": n_jobs, "solver": solver,
            "device": device, "random_state": seed}


@click.command("train-svm")
@click.argument("paths", nargs=-1, metavar="[FEATURES] MODEL", type=click.Path(path_type=Path))
@click.option("--features", multiple=True, type=click.Path(path_type=Path), help="Features file; repeat to fuse networks (same images).")
@click.option("--labels", type=click.Path(path_type=Path), help="CSV of 'path,label' lines instead of the file's own labels.")
@click.option("--multilabel", is_flag=True, help="An independent binary SVM per label (VOC-style): several per path from --labels, or one, the file's own.")
@click.option("--exclude-class", multiple=True, help="Leave this class out (repeatable), e.g. BACKGROUND_Google.")
@click.option("--voc-devkit", type=click.Path(path_type=Path),
              help="Labels from a VOC devkit folder's image set (--voc-set), multi-label; its difficult images are left "
                   "out of their class's SVM.")
@click.option("--voc-set", default="trainval", show_default=True, help="With --voc-devkit: the image set to train on.")
@voc_difficult
@click.option("--overwrite", is_flag=True, help="Replace an existing MODEL.")
@svm_options
def train_svm(paths, features, labels, multilabel, exclude_class, voc_devkit, voc_set, voc_difficult, overwrite, quiet,
              **svm) -> None:
    """Train one-vs-rest linear SVMs on FEATURES (an HDF5 file from 'vggfeat extract') and write MODEL."""
    from .. import transfer

    files, (model,) = split_files(paths, features, ["MODEL"])
    voc = _voc_labels(voc_devkit, voc_set, labels)
    difficult = difficult_in_training(voc_devkit, voc_difficult)
    made = made_by_this_command([*files, labels, *set_files(voc_devkit, voc_set)], leave_out=["features"])
    if check_output(model, overwrite, made, SVM_MODEL_FORMAT, inputs=files, hdf5="SVM models"):  # the same command again
        held = read_model_file(model)  # a damaged one is refused: --overwrite
        click.echo(f"{model} already holds the SVMs of this command on these files, unchanged since: "
                   f"{counted(len(held.classes), 'label' if held.params.get('multilabel') else 'class', 'classes')}, "
                   f"C={held.C:g}; nothing to do")
        return
    multilabel = multilabel or voc is not None
    with fits_progress(quiet) as progress:
        saved = transfer.train_svm(files, model, labels_csv=labels, exclude=exclude_class, voc=voc, difficult=difficult,
                                   multilabel=multilabel, progress=progress, **svm_params(**svm),
                                   provenance=provenance(made))
    svm, training = saved.svm, saved.training
    how = how_C_was_chosen(svm.get_params(), svm.cv_scores_)
    if svm.cv_scores_:
        how += f", score {max(svm.cv_scores_.values()):.4f}"
    if svm.solver == "lbfgs":
        from ..settings import resolve_device  # torch, which lbfgs has imported

        solver = f"lbfgs on {resolve_device(svm.device)}"
    else:
        solver = svm.solver
    click.echo(f"trained {len(svm.classes_)} {'labels' if multilabel else 'classes'} on {training['rows']:,} rows "
               f"({svm.n_features_in_}-d{normalised_words(svm.normalize, svm.part_dims)}); C={svm.C_:g} ({how}); {solver}; "
               f"wrote {model}")


@click.command()
@click.argument("paths", nargs=-1, metavar="MODEL [FEATURES] OUTPUT", type=click.Path(path_type=Path))
@click.option("--features", multiple=True, type=click.Path(path_type=Path), help="Features file; repeat as for train-svm.")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUTPUT.")
@quiet
def predict(paths, features, overwrite, quiet) -> None:
    """Score every row of FEATURES with MODEL; write OUTPUT: a CSV of path, predicted class(es), scores
    (and the images FEATURES could not describe, with the reason), or, named .h5, the scores in HDF5.

    The HDF5 file (/scores, /paths, /classes, /predicted, /failed: see the README) is the one to
    read back from code for millions of rows (10 million rows of 1,000 classes are about 90 GB of
    CSV), and about 6 times as fast to write."""
    from .. import transfer
    from ..svm import load_model

    if not paths:
        raise click.UsageError("expected MODEL [FEATURES] OUTPUT")
    files, (output,) = split_files(paths[1:], features, ["OUTPUT"])
    scores_file = output.suffix.lower() in HDF5_SUFFIXES
    if not scores_file and output.suffix.lower() != ".csv":  # as classify: a CSV named .npy or .json, or '-', misleads
        raise click.UsageError(f"OUTPUT {output.name}: name it .csv (each row's predicted classes and scores) or .h5 "
                               "(the scores in HDF5)")
    made = made_by_this_command([paths[0], *files], leave_out=["features"])
    if check_output(output, overwrite, made, SCORES_FORMAT if scores_file else None, inputs=[paths[0], *files]):  # the same command again
        # A CSV's rows are not counted: that would read it all (90 GB for 10 million rows of 1,000 classes).
        if scores_file:
            held = scores_summary(output)
            holds = f"scores of this command on these files, unchanged since: {held['rows']:,} rows, {len(held['classes'])} class scores each"
        else:
            holds = "predictions of this command on these files, unchanged since"
        click.echo(f"{output} already holds the {holds}; nothing to do")
        return
    model = load_model(paths[0])
    with progress_bar(quiet, total=feature_rows(files[0], failed=True), unit="rows", desc="scoring") as bar:
        if scores_file:
            written = transfer.write_scores(output, model, files, progress=bar.update, provenance=provenance(made))
        else:
            written = transfer.write_predictions(output, model, files, progress=bar.update,
                                                 record=recorder(made, command_line()))
    failed = f"; {counted(written.failed, 'image')} without a descriptor (failed), with the reason" if written.failed else ""
    click.echo(f"wrote {output}: {written.rows:,} rows, {len(written.classes)} class scores each{failed}")


@click.command()
@click.argument("paths", nargs=-1, metavar="MODEL [FEATURES]", type=click.Path(path_type=Path))
@click.option("--features", multiple=True, type=click.Path(path_type=Path), help="Features file; repeat as for train-svm.")
@click.option("--labels", type=click.Path(path_type=Path), help="CSV of 'path,label' lines: the test rows and their truth.")
@click.option("--report", type=click.Path(path_type=Path), help="Folder for metrics.json, per-class tables and plots.")
@click.option("--voc-devkit", type=click.Path(path_type=Path),
              help="The test rows and their truth from a VOC devkit folder's image set (--voc-set); its difficult "
                   "images are left out of their class's AP.")
@click.option("--voc-set", default="test", show_default=True, help="With --voc-devkit: the image set to score.")
@click.option("--overwrite", is_flag=True, help="Replace the files of an earlier report in the --report folder.")
def evaluate(paths, features, labels, report, voc_devkit, voc_set, overwrite) -> None:
    """Score MODEL on the labelled rows of FEATURES: accuracy, mean class recall, per-class AP, mAP."""
    from .. import transfer
    from ..svm import load_model

    refuse_without("--report", report, "overwrite")
    if not paths:
        raise click.UsageError("expected MODEL [FEATURES]")
    files, _ = split_files(paths[1:], features, [])
    voc = _voc_labels(voc_devkit, voc_set, labels)
    model = load_model(paths[0])
    # The same command again on these files, unchanged since, has nothing to do where each file of
    # its report records so (vggfeat.rerun).
    made = (made_by_this_command([paths[0], *files, labels, *set_files(voc_devkit, voc_set)], leave_out=["features"])
            if report else None)
    if report:
        written = report_files(report, model.svm.multilabel)
        if not overwrite and made is not None and all(recorded_in_file(path) == made for path in written):
            click.echo(f"{report} already holds the report of this command on these files, unchanged since; nothing to do")
            click.echo("\n".join(file_record(written[0])["said"]))
            return
        if not overwrite and recorded_in_file(written[0]) is not None:  # a report made otherwise: say how
            check_output(written[0], overwrite, made, None)
        _check_report_folder(report, model.svm.multilabel, overwrite,
                             inputs=[paths[0], *files, labels, *set_files(voc_devkit, voc_set)], made=made)
    metrics, scored = transfer.evaluate(model, files, labels, voc=voc)
    lines = [f"{metrics['task']}, {metrics['examples']:,} test rows, {len(metrics['classes'])} classes"]
    for key, name in (("accuracy", "accuracy"), ("mean_class_recall", "mean class recall"),
                      ("map_voc07_11pt", "mAP (VOC2007 11-point)"), ("map_area", "mAP (area under PR curve)")):
        if metrics.get(key) is not None:
            lines.append(f"  {name:<26} {metrics[key]:.4f}")
        elif key in metrics:  # every class's AP undefined, as protocol voc says it
            lines.append(f"  {name:<26} undefined (no class has a positive test example)")
    click.echo("\n".join(lines))
    if report:
        written = write_report(report, metrics, scored.scores, _indicators(scored), ignore=scored.ignore,
                               record=recorder(made, command_line(), lines))
        click.echo(f"wrote {', '.join(str(p) for p in written)}")


def difficult_in_training(devkit: Path | None, difficult: str | None) -> str:
    """--voc-difficult's choice ("ignore" unless given), which only a VOC devkit's sets take."""
    if difficult is not None and devkit is None:
        raise click.UsageError("--voc-difficult is for the difficult images of a VOC devkit's sets: give --voc-devkit")
    return difficult or "ignore"


def _voc_labels(devkit: Path | None, image_set: str, labels: Path | None) -> tuple[Path, str] | None:
    """(devkit, image set) where --voc-devkit is given, which takes no --labels."""
    refuse_without("--voc-devkit", devkit, "voc_set")
    if devkit is None:
        return None
    if labels is not None:
        raise click.UsageError("--voc-devkit gives the labels: no --labels with it")
    return devkit, image_set


def _check_report_folder(folder: Path, multilabel: bool, overwrite: bool, inputs: list[Path | None],
                         made: str | None) -> None:
    """Refuse, before the work, a report folder that is a file, or that holds an earlier report's
    files (unless ``overwrite``): they were named by no one; nor ever one of the command's
    ``inputs`` under a report file's name (``--labels rep/per_class.csv --report rep``). Files
    that each record this very command (``made``) are its own: some of a report, the rest not
    renamed into place as a kill stopped it, which it writes whole."""
    if folder.exists() and not folder.is_dir():
        raise VggfeatError(f"--report {folder} is a file; name a folder")
    earlier = [path for path in report_files(folder, multilabel) if path.exists()]
    for path in earlier:
        check_new_file(path, overwrite=True, inputs=inputs)
    if earlier and not overwrite and not own_outputs(earlier, [made] * len(earlier)):
        raise VggfeatError(f"{folder} already holds a report ({', '.join(path.name for path in earlier)}); pass "
                           "--overwrite to replace it, or name another folder")


def _indicators(scored: Scored) -> np.ndarray:
    """[N, K] bool truth for the report's per-class curves."""
    return scored.targets if scored.multilabel else one_hot(scored.targets, len(scored.classes))
