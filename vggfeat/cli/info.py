"""``vggfeat info``: what a descriptor file holds and how it was made."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import click
import h5py

from ..errors import VggfeatError
from ..fileinfo import JSON_ATTRS, read_info
from ..index import index_summary
from ..modelfile import model_summary, normalised_words
from ..regions import RegionCount
from ..rerun import MADE_FROM, file_record, inputs_changed
from ..scoresfile import scores_summary
from ..files import file_attributes
from ..parts import shards_progress, work_progress
from ..store import (INDEX_FORMAT, SCORES_FORMAT, SVM_MODEL_FORMAT, UPDATE_MODES, WHITENING_FORMAT, posteriors_file_of,
                     shards_folder, work_folder)
from ..whitening import whitening_summary
from . import common


def _extraction_lines(a: dict, read_after: list[str] | None) -> list[str]:
    """How a file's rows were described: network, layer, resize, when and where."""
    return [
        _models_line(a),
        _network_line(a),
        f"  resize       {a.get('resize_side', 'short')} side = Q"
        + ("; its central 224 x 224 (--center-crop)" if a.get("center_crop") else "")
        + f"; per-view normalisation {a.get('normalize', 'none')}"
        + (f"; GeM p = {a['gem_p']}" if "gem_p" in a else "")
        + ("; large JPEGs drafted (--jpeg-draft)" if a.get("jpeg_draft") else ""),
        f"  made         {a.get('created')} on {a.get('device')} with vggfeat {a.get('vggfeat_version', 'per shard')}, "
        f"torch {a.get('torch_version', 'per shard')}, torchvision {a.get('torchvision_version', 'per shard')}",
        _read_after_line(read_after),
    ]


def _models_line(a: dict) -> str:
    """The network and its weights; each network's, of descriptors side by side ('extract --model vgg16,vgg19')."""
    config = json.loads(a.get("config", "{}"))
    if "stacked" not in config:
        return f"  model        {a.get('model')}  weights {a.get('weights')}  sha256 {str(a.get('weights_sha256'))[:16]}…"
    models = [f"{part.get('model')} ({part.get('weights')} weights, sha256 {str(part.get('weights_sha256'))[:16]}…, "
              f"{part.get('dim')}-d)" for part in config["stacked"]]
    return f"  models       {', '.join(models)}, side by side"


def _stacked_lines(a: dict) -> list[str]:
    """What a stacked file's rows are made of ('vggfeat stack')."""
    return [_descriptors_line(json.loads(a["config"])),
            f"  stacked      from {', '.join(json.loads(a['stacked_from']))} (rows matched by path)",
            f"  made         {a.get('created')} with vggfeat {a.get('vggfeat_version')}"]


def _network_line(a: dict) -> str:
    """What the network computed: a layer's pooled map (extract), or class posteriors (classify)."""
    scales, flip, precision = ",".join(map(str, a.get("scales", []))), "on" if a.get("flip") else "off", a.get("precision")
    if "dense" in a:
        how = " + ".join(name for name, on in (("dense", a.get("dense")), ("multi-crop", a.get("multi_crop"))) if on)
        kept = f"; the top {a['keep_top']} classes of each image kept" if "keep_top" in a else ""
        return f"  posteriors   {how} evaluation (softmax of fc8){kept}; scales {scales}; flip {flip}; precision {precision}"
    return (f"  layer        {a.get('layer')}, {a.get('pooling')}-pooled; scales {scales} ({a.get('aggregate')}); "
            f"flip {flip}; precision {precision}")


def _not_written_yet(output: Path, command: str) -> str | None:
    """How far the run writing ``output`` got, by its work; None where there is none."""
    run = "extraction" if command == "extract" else "classification"
    work = work_folder(output)
    if work.is_dir():
        progress = work_progress(output)
        done = f" has done {progress[0]:,} of {progress[1]:,} images and" if progress else ""
        return f"an interrupted or running {run}{done} keeps its work in {work}; run the same {command} command to finish it"
    blocks = shards_progress(output)
    if blocks:
        finished, count, held = blocks
        return (f"an interrupted or running {run} on several devices has finished {finished} of its {count} blocks, and "
                f"holds {held:,} images, in {shards_folder(output)}; run the same {command} command, on any number of "
                "devices, to finish it")
    if command == "classify" and output.is_file():
        return f"its images are described, in {output}; run the same {command} command to write it"
    return None


def _fused_models(output: Path) -> list[str]:
    """The networks whose posteriors (or their work) lie beside ``output``, a CSV of several fused."""
    prefix, suffix = f"{output.name}.", ".posteriors.h5"
    names = (path.name for path in output.parent.glob(f"{glob.escape(output.name)}.*.posteriors.h5*"))
    return sorted({name[len(prefix):name.index(suffix)] for name in names})


def _regions_line(rows: int, regions: RegionCount) -> list[str]:
    """The line that says which rows are regions of images (none for a file of whole images)."""
    if not regions.regions:
        return []
    which = "all rows are" if regions.regions == rows else f"{regions.regions:,} rows are"
    return [f"  regions      {which} regions (path#xywh=X,Y,W,H) of {common.counted(regions.images, 'image')}"]


def _first(names: list[str], shown: int = 8) -> str:
    """``a, b, c, … (5 more)``: the first names of a list."""
    return ", ".join(names[:shown]) + (f", … ({len(names) - shown} more)" if len(names) > shown else "")


def _read_after_line(read_after: list[str] | None) -> str:
    """When the file's images were read: after which --update sees a file as changed."""
    if read_after is None:
        return "  read after   not recorded (a file of an earlier vggfeat): --update cannot see files changed since"
    earliest, latest = read_after
    when = earliest if earliest == latest else f"{earliest} to {latest}, each row its run's start"
    return f"  read after   {when}; --update describes again files modified since"


def _failed_classes(by_class: dict[str, int], shown: int = 3) -> str:
    """`` (4 labelled: dogs 3, cats 1)``: the failures of each class, the most first."""
    if not by_class:
        return ""
    most = [f"{name} {count:,}" for name, count in list(by_class.items())[:shown]]
    more = [f"… {common.counted(len(by_class) - shown, 'more class', 'more classes')}"] if len(by_class) > shown else []
    return f" ({sum(by_class.values()):,} labelled: {', '.join(most + more)})"


def _descriptors_line(config: dict) -> str:
    """How the descriptors that a file was made from were extracted: a line, or one for each
    network's part of stacked ones."""
    if not config:  # fitted from arrays in Python, without their configuration
        return "  descriptors  their extraction is not recorded"
    first, *rest = _extraction(config)
    return "\n".join([f"  descriptors  {first}", *(f"               {line}" for line in rest)])


def _extraction(config: dict) -> list[str]:
    """An extraction's network, layer, pooling, scales and dimension; each part's, of stacked descriptors."""
    if "stacked" in config:
        return [f"{config.get('dim')}-d, stacked:", *(f"  {line}" for each in config["stacked"] for line in _extraction(each))]
    weights = f" ({config['weights']} weights)" if "weights" in config else ""
    return [f"{config.get('model')}{weights} {config.get('layer')}, {config.get('pooling')}-pooled, "
            f"scales {','.join(map(str, config.get('scales', [])))}, {config.get('dim')}-d"]


def _index_lines(summary: dict) -> list[str]:
    vectors = f"{summary['dim']}-d unit vectors" + (f", whitened from {summary['whitened_from']}-d" if summary["whitened_from"] else "")
    params = ", ".join(f"{key} {value}" for key, value in summary["params"].items())
    return [f"{summary['path']}: a vggfeat index ({summary['kind']}{', ' + params if params else ''}), for 'vggfeat search'",
            f"  rows         {summary['rows']:,} ({summary['labelled']:,} labelled), {summary['classes']} classes",
            f"  vectors      {vectors}", _descriptors_line(summary["config"]),
            f"  made         {summary['created']}" + (f" from {summary['features']}" if summary["features"] else "")
            + (f", updated {summary['updated']}" if summary["updated"] else "")
            + (f"; images under {summary['root']}" if summary["root"] else ""),
            "  update       " + ("'vggfeat index FEATURES INDEX --update' after 'extract --update'" if summary["updatable"] else
                                 "not possible: it does not record when its rows were described (build it again)"),
            *_command_line(summary)]


def _whitening_lines(summary: dict) -> list[str]:
    return [f"{summary['path']}: a vggfeat whitening, {summary['input_dim']}-d -> {summary['output_dim']}-d, fitted on "
            f"{summary['n_samples']:,} descriptors{' (L2-normalised first)' if summary['normalize_input'] else ''}",
            _descriptors_line(summary["config"]), *_command_line(summary)]


def _model_lines(summary: dict) -> list[str]:
    classes, training = summary["classes"], summary["training"]
    labels = "the file's own" if training.get("labels") == "stored" else training.get("labels")
    how = "by cross-validation" if summary["C_by_cross_validation"] else "fixed"
    if summary["holdout"] is not None:
        how = summary["C_chosen"]  # "chosen on a 20% hold-out" (or "fixed", C given)
    return [f"{summary['path']}: a vggfeat linear SVM model, {'multi-label' if summary['multilabel'] else 'one-vs-rest'}",
            f"  classes      {len(classes)}: {_first(classes)}",
            f"  input        {summary['dim']}-d{normalised_words(summary['normalize'], summary['part_dims'])}; "
            f"C = {summary['C']:g} ({how}); solver {summary['solver']}",
            f"  trained on   {training.get('rows', 0):,} rows of {', '.join(training.get('files', []))}; labels: {labels}"
            if training.get("files") else "  trained on   not recorded (saved from Python without its training)",
            *map(_descriptors_line, summary["extraction_configs"]), *_command_line(summary)]


def _scores_lines(summary: dict) -> list[str]:
    classes = summary["classes"]
    predicted = "each class scored above 0" if summary["multilabel"] else "the class of the highest score"
    model = f"{summary['model'] or '(not from a file)'}" + (f", checksum {summary['model_checksum'][:16]}…"
                                                            if summary["model_checksum"] else "")
    return [f"{summary['path']}: a vggfeat scores file, {'multi-label' if summary['multilabel'] else 'one-vs-rest'}",
            f"  rows         {summary['rows']:,}, {len(classes)} scores each (/scores); /predicted: {predicted}",
            f"  classes      {len(classes)}: {_first(classes)}",
            f"  failed       {summary['failed']:,} (no descriptor; /failed)",
            f"  model        {model}",
            f"  features     {', '.join(summary['features'])}",
            f"  made         {summary['created']} with vggfeat {summary['vggfeat_version']}", *_command_line(summary)]


def _command_line(summary: dict) -> list[str]:
    """The line of the command that made a file, where it records one."""
    return [f"  command      {summary['command']}"] if summary.get("command") else []


def _printable(value):
    """``value`` (what a file records, as read) with each text in it as one line of a terminal
    (:func:`~vggfeat.cli.common.printable`)."""
    if isinstance(value, str):
        return common.printable(value)
    if isinstance(value, dict):
        return {_printable(key): _printable(each) for key, each in value.items()}
    if isinstance(value, list):
        return [_printable(each) for each in value]
    return value


# The other files that vggfeat writes, by their "format" attribute: how to read and show each.
OTHER_FILES = {INDEX_FORMAT: (index_summary, _index_lines), WHITENING_FORMAT: (whitening_summary, _whitening_lines),
               SVM_MODEL_FORMAT: (model_summary, _model_lines), SCORES_FORMAT: (scores_summary, _scores_lines)}


def _plain_file(file: Path, record: dict) -> dict:
    """What a file of another format (a CSV) records of how it was made, and whether it and its
    inputs changed since."""
    inputs = inputs_changed(record[MADE_FROM], file)
    images = json.loads(record[MADE_FROM])["options"].get("images")  # classify's: how many, where, their digest
    return {"file": str(file), "command": record["command"], "changed_since": record["changed"],
            "inputs": [{"path": path, "changed_since": changed} for path, changed in inputs],
            **({"images": images} if images else {}), "result": record["said"]}


def _plain_file_lines(file: Path, record: dict) -> list[str]:
    summary = _printable(_plain_file(file, record))
    changed = click.style("changed since it was written (its size or time differ)", fg="yellow")
    lines = [f"{file}: written by {summary['command'] or 'vggfeat'}"
             + (f", {changed}" if summary["changed_since"] else "")]
    if "images" in summary:
        lines.append(f"  {'images':<12} {summary['images']}")
    for k, each in enumerate(summary["inputs"]):
        since = click.style("changed since, or gone", fg="yellow") if each["changed_since"] else "unchanged since"
        lines.append(f"  {'made from' if k == 0 else '':<12} {each['path']} ({since})")
    lines += [f"  {'result' if k == 0 else '':<12} {line}" for k, line in enumerate(summary["result"])]
    return lines


@click.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON.")
def info(file: Path, as_json: bool) -> None:
    """Show rows, dimension, classes, failures, provenance and whether FILE is complete.

    FILE is a descriptor (or posteriors) file, or an index, a whitening or an SVM model file; or
    a CSV of predictions or a file of 'vggfeat export', which records the command that wrote it
    and from what files.
    """
    if file.is_dir():
        output = file.with_suffix("") if file.suffix in (".parts", ".shards") else None
        if output is not None:  # a run's work folder (work_folder, shards_folder)
            raise VggfeatError(f"{file} is the work of a run writing {output}: 'vggfeat info {output}' says how far it got")
        raise VggfeatError(f"{file} is a folder: give a file that vggfeat wrote")
    if not file.exists():
        # A file whose run is under way or was interrupted: an extraction's (or classify's .h5), or
        # the posteriors of classify's CSV.
        for output, command in ((file, "extract"), (posteriors_file_of(file), "classify")):
            if (why := _not_written_yet(output, command)) is not None:
                raise VggfeatError(f"{file} is not written yet: {why}")
        fused = [f"{model}: {why}" for model in _fused_models(file)  # a CSV of several networks: each one's posteriors
                 if (why := _not_written_yet(posteriors_file_of(file, model), "classify")) is not None]
        if fused:
            raise VggfeatError(f"{file} is not written yet, the posteriors of its networks: {'; '.join(fused)}")
        raise VggfeatError(f"file not found: {file}")
    record = file_record(file) if not h5py.is_hdf5(file) else None
    if record is not None:  # a CSV that records how it was made
        click.echo(json.dumps(_plain_file(file, record), indent=2) if as_json else "\n".join(_plain_file_lines(file, record)))
        return
    if file.suffix.lower() in (".csv", ".json", ".npy", ".parquet") and not h5py.is_hdf5(file):
        raise VggfeatError(f"{file} records no vggfeat command that wrote it (vggfeat's CSV, JSON and export files keep "
                           "it in an extended attribute, which a copy or another program may drop, as do changes since)")
    kind = file_attributes(file).get("format")
    show_other = OTHER_FILES.get(kind) if isinstance(kind, str) else None
    if show_other:  # an index, a whitening or an SVM model
        summary = show_other[0](file)
        click.echo(json.dumps(summary, indent=2) if as_json else "\n".join(show_other[1](_printable(summary))))
        return
    try:
        summary = read_info(file)
    except (OSError, KeyError, IndexError, ValueError, TypeError, RuntimeError) as error:  # RuntimeError: HDF5's, damaged
        raise VggfeatError(f"{file} is not a readable vggfeat features file ({' '.join(str(error).split())})") from None
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    # What the file records, shown as text: a file edited to hold escape sequences (in a class, a
    # command, or the JSON of its configuration) never sends them to the terminal.
    summary = _printable({**summary, "attrs": {key: json.dumps(_printable(json.loads(value))) if key in JSON_ATTRS
                                               else value for key, value in summary["attrs"].items()}})
    a = summary["attrs"]
    state = click.style("complete", fg="green") if summary["complete"] else click.style("INCOMPLETE", fg="red", bold=True)
    if not summary["complete"] and not work_folder(file).is_dir():  # vggfeat renames its files into place once whole
        state += click.style(" (and no run is under way into it: written so by other code than vggfeat's, or damaged)",
                             fg="red")
    classes = summary["classes"]
    lines = [
        f"{file}: {state}",
        f"  rows         {summary['rows']:,} ({summary['labelled']:,} labelled)"
        + (f" of {int(a['images_found']):,} {'listed' if summary['regions']['regions'] else 'images found'}"
           if "images_found" in a else ""),  # a file vggfeat did not write may lack it
        *_regions_line(summary["rows"], RegionCount(**summary["regions"])),
        f"  descriptor   {summary['dim']}-d {summary['dtype']}",
        f"  classes      {len(classes)}{': ' + _first(classes) if classes else ''}",
        f"  failed       {summary['failed']:,}{_failed_classes(summary['failed_by_class'])}",
        *(_stacked_lines(a) if "stacked_from" in a else _extraction_lines(a, summary["read_after"])),
    ]
    if "shard_index" in a:
        lines.append(f"  shard        {a['shard_index']} of {a['shard_count']} (the collection has {a['collection_images']:,} images; "
                     "'vggfeat merge' joins all shards)")
    shards = json.loads(a.get("shards", "[]"))  # of a merged file: how each was made
    if a.get("command"):
        lines.append(f"  command      {a['command']}")
    elif shards:
        lines.append(f"  commands     one per shard ('vggfeat info --json' lists them); shard 1's: {shards[0].get('command')}")
    if a.get("merge_command"):
        lines.append(f"  merged       from {len(shards) or 'the'} shards by {a['merge_command']}")
    if a.get("retry_command"):
        lines.append(f"  retried      {a.get('failures_retried')} by {a['retry_command']}")
    for shard in shards:
        if shard.get("retry_command"):
            lines.append(f"  retried      shard {shard['shard']}/{len(shards)}: {shard.get('failures_retried')} by {shard['retry_command']}")
    if a.get("update_command"):
        lines.append(f"  updated      {a.get('updated')} by {a['update_command']}")
    for option, suffix, _ in UPDATE_MODES.values():
        staging = file.with_name(file.name + suffix)
        progress, blocks = work_progress(staging), shards_progress(staging)
        if progress:
            lines.append(click.style(f"  under way    {option}, running or interrupted: {progress[0]:,} of {progress[1]:,} "
                                     "images described; the same command finishes it", fg="yellow"))
        elif blocks:
            lines.append(click.style(f"  under way    {option} on several devices, running or interrupted: {blocks[2]:,} "
                                     f"images described, {blocks[0]} of {blocks[1]} blocks finished; the same command, "
                                     "on any number of devices, finishes it", fg="yellow"))
    click.echo("\n".join(lines))
    if a.get("random_weights"):
        click.secho("  WARNING: made with random weights: not ImageNet features (smoke tests only)", fg="yellow", bold=True)
    for path, error in summary["first_failures"]:
        click.echo(f"  failed: {path}: {error}")
    if summary["failed"] > len(summary["first_failures"]):
        click.echo(f"  … and {summary['failed'] - len(summary['first_failures']):,} more in /failed")
        click.echo("\n".join(["  failures by reason:", *common.reason_lines(summary["failures_by_reason"])]))
