"""``vggfeat whiten``, ``index``, ``retrieval-eval`` and ``export``: image search over descriptor files
(``search``, which describes query images, is in :mod:`.search`), and descriptor (or posteriors)
files for other tools."""

from __future__ import annotations

from pathlib import Path

import click
import h5py

from .. import export as exporting
from .. import retrieval
from ..archives import file_exists
from ..errors import VggfeatError, not_a_file
from ..features import FeatureFile, config_differences
from ..index import KINDS, MAX_EF_SEARCH, MAX_HNSW_M, MIN_HNSW_M, VectorIndex, index_features, index_summary
from ..rerun import check_output, own_outputs, recorded_in_file, recorder
from ..files import file_attributes
from ..store import INDEX_FORMAT, WHITENING_FORMAT, refuse_descriptors
from ..whitening import PCAWhitening, fit_whitening, whitening_summary
from . import common, options


@click.group()
def whiten() -> None:
    """PCA-whitening of descriptors (learned, then applied by 'vggfeat index' and 'retrieval-eval')."""


@whiten.command("fit")
@click.argument("features", type=click.Path(path_type=Path))
@click.argument("output", type=click.Path(path_type=Path))
@click.option("--dim", type=click.IntRange(min=1), help="Keep this many dimensions [default: all the data supports].")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUTPUT.")
@common.quiet
def whiten_fit(features, output, dim, overwrite, quiet) -> None:
    """Learn PCA-whitening on every descriptor of FEATURES; write it to OUTPUT (.h5, plain arrays).

    FEATURES is read in blocks: memory grows with the dimension (a D x D covariance), not the rows.
    """
    made = common.made_by_this_command([features])
    if check_output(output, overwrite, made, WHITENING_FORMAT, inputs=[features], hdf5="whitenings"):  # the same command again
        PCAWhitening.load(output)  # its checksum: one damaged since is not what this command made
        held = whitening_summary(output)
        click.echo(f"{output} already holds the whitening of this command on {features}, unchanged since: "
                   f"{held['input_dim']}-d -> {held['output_dim']}-d; nothing to do")
        return
    with common.progress_bar(quiet, total=common.feature_rows(features), unit="descriptors", desc="fitting the whitening") as bar:
        fitted = fit_whitening(features, output, dim=dim, progress=bar.update, provenance=common.provenance(made))
    click.echo(f"wrote {output}: {fitted.input_dim}-d -> {fitted.output_dim}-d whitening from {fitted.n_samples_:,} descriptors")


@click.command("index")
@click.argument("features", type=click.Path(path_type=Path))
@click.argument("output", type=click.Path(path_type=Path))
@click.option("--whiten", "whiten_file", type=click.Path(path_type=Path), help="Whitening from 'vggfeat whiten fit', applied to database and queries.")
@click.option("--kind", default="flat", show_default=True, type=click.Choice(KINDS),
              help="flat: exact; ivfpq: compressed, approximate (FAISS); hnsw: graph, approximate (FAISS).")
@click.option("--nlist", type=click.IntRange(min=1), help="ivfpq: inverted lists [default: about 4 sqrt(rows)].")
@click.option("--pq-m", type=click.IntRange(min=1), help="ivfpq: bytes per vector, must divide the dimension [default: the largest divisor up to dim / 8].")
@click.option("--nprobe", default=16, show_default=True, type=click.IntRange(min=1), help="ivfpq: lists searched per query.")
@click.option("--hnsw-m", default=32, show_default=True, type=click.IntRange(MIN_HNSW_M, MAX_HNSW_M),
              help="hnsw: links per vector (FAISS's M; 16 to 64 is usual).")
@click.option("--ef-search", default=128, show_default=True, type=click.IntRange(1, MAX_EF_SEARCH), help="hnsw: candidates per query.")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUTPUT.")
@click.option("--update", is_flag=True,
              help="Bring OUTPUT, an index of FEATURES, up to date with it after 'extract --update': add the new rows, "
                   "drop those gone, replace those described again; its kind, parameters and whitening are kept.")
@common.quiet
def index(features, output, whiten_file, kind, nlist, pq_m, nprobe, hnsw_m, ef_search, overwrite, update, quiet) -> None:
    """Index the descriptors of FEATURES into OUTPUT for 'vggfeat search' (inner product of unit vectors)."""
    if update:
        _update_index(features, output, quiet)
        return
    common.refuse_without("--kind ivfpq", kind == "ivfpq", "nlist", "pq_m", "nprobe")
    common.refuse_without("--kind hnsw", kind == "hnsw", "hnsw_m", "ef_search")
    made = common.made_by_this_command([features, whiten_file])
    if check_output(output, overwrite, made, INDEX_FORMAT, inputs=[features, whiten_file], hdf5="indexes",
                    update=(features, f"'vggfeat index {features} {output} --update' brings it up to date")):  # the same command again
        VectorIndex.load(output)  # its whitening's checksum, a flat index's unit vectors: one damaged since is refused
        held = index_summary(output)
        click.echo(f"{output} already holds the index of this command on {features}, unchanged since: {held['kind']} index "
                   f"of {held['rows']:,} descriptors ({held['dim']}-d); nothing to do")
        return
    whitening = PCAWhitening.load(whiten_file) if whiten_file else None
    with common.progress_bar(quiet, total=common.feature_rows(features), unit="descriptors", desc=f"indexing ({kind})") as bar:
        built = index_features(features, kind=kind, whitening=whitening, nlist=nlist, m=pq_m, nprobe=nprobe,
                               hnsw_m=hnsw_m, ef_search=ef_search, progress=bar.update)
    built.save(output, common.provenance(made))
    dims = f"{whitening.input_dim}-d, whitened to {built.dim}-d" if whitening else f"{built.dim}-d"
    click.echo(f"wrote {output}: {kind} index of {built.rows:,} descriptors ({dims})")


def _update_index(features: Path, output: Path, quiet: bool) -> None:
    from ..indexupdate import update_index

    context = click.get_current_context()
    given = common.given(*(param.name for param in context.command.params
                           if param.name not in ("features", "output", "update", "quiet")))
    if given:
        listed = ", ".join(given[:-1]) + " and " * (len(given) > 1) + given[-1]
        raise click.UsageError(f"--update keeps the index's own settings: drop {listed}, or build the index "
                               "again without --update")
    if not output.is_file():
        raise VggfeatError(f"{output} not found: --update brings an existing index up to date")
    with common.progress_bar(quiet, unit="descriptors", desc="updating the index") as bar:
        done = update_index(output, features, progress=bar.update)
    if not (done.added or done.removed or done.changed):
        relabelled = f"updated {output}: {done.relabelled:,} relabelled, as {features} labels them now"
        click.echo(f"{relabelled if done.relabelled else f'{output} is up to date with {features}'}: {done.rows:,} descriptors")
        return
    how = {"ivfpq": " (every row added again, to the lists and codebooks it had learned)",
           "hnsw": " (the graph built again: HNSW cannot remove a vector)"}.get(done.kind, "") if done.rebuilt else ""
    click.echo(f"updated {output}: {done.added:,} added, {done.removed:,} removed, {done.changed:,} described again"
               f"{how}; {done.rows:,} descriptors")
    if done.lists_fit_rows:
        click.secho(f"warning: the index's inverted lists suit about {done.lists_fit_rows:,} rows, and it holds "
                    f"{done.rows:,}: build it again without --update for searches as fast as before", err=True, fg="yellow")


@click.command("retrieval-eval")
@click.argument("features", type=click.Path(path_type=Path))
@click.option("--whiten", "whiten_file", type=click.Path(path_type=Path), help="Whitening from 'vggfeat whiten fit'.")
@click.option("--gt", "ground_truth", type=click.Path(path_type=Path),
              help="Oxford/Paris ground truth: a folder of *_query/_good/_ok/_junk.txt, a JSON list of {query, ok, junk, "
                   "bbox}, or a gnd_*.pkl of revisitop or cirtorch re-saved as JSON (its imlist is the database searched).")
@click.option("--protocol", type=click.Choice(list(retrieval.REVISITED_PROTOCOLS)),
              help="With the revisited ROxford/RParis --gt (its gnd_*.pkl re-saved as JSON): which images are relevant. "
                   "Its queries are cropped: give --crop-queries.")
@click.option("--queries", "queries_file", type=click.Path(path_type=Path), help="With --gt: query descriptors [default: looked up in FEATURES].")
@click.option("--qe", default=0, show_default=True, type=click.IntRange(min=0),
              help="Average query expansion with each query's top N hits (0: off), as 'search --qe'.")
@click.option("--sample", type=click.IntRange(min=1),
              help="Without --gt: this many labelled images, drawn at random, query all the others (the time grows as "
                   "the rows squared; the mAP's standard error is given) [default: every labelled image].")
@click.option("--seed", default=0, show_default=True, type=common.SEEDS, help="With --sample: seed of the draw.")
@click.option("--crop-queries", is_flag=True,
              help="With --gt: describe each query image cropped to its bounding box, as the Oxford and Paris protocols do "
                   "(the images and the network are needed) [default: the whole image's descriptor].")
@click.option("--root", type=click.Path(path_type=Path),
              help="With --crop-queries: folder of the query images [default: the one recorded at extraction].")
@click.option("--weights", help="With --crop-queries: weights file, when FEATURES were described with one (stacked: one for "
                                "each file made with one, comma-separated) [default: as recorded].")
# Checked as the network is built: this command's other uses need no torch.
@click.option("--device", default="auto", show_default=True, help="With --crop-queries: auto, cpu, cuda or cuda:N.")
@options.batch_size
@common.json_output
@common.overwrite_json
@common.quiet
def retrieval_eval(features, whiten_file, ground_truth, protocol, queries_file, qe, sample, seed, crop_queries, root, weights,
                   device, batch_size, json_out, overwrite, quiet) -> None:
    """mAP and recall@1/5/10 of FEATURES searched against itself (with --gt, mP@1/5/10 too).

    Without --gt: every labelled image queries all others; same class = relevant (leave one out).
    """
    for option, given in (("--protocol", protocol), ("--queries", queries_file), ("--crop-queries", crop_queries)):
        if given and ground_truth is None:
            raise click.UsageError(f"{option} goes with --gt")
    if sample and ground_truth is not None:
        raise click.UsageError("--sample draws labelled queries, without --gt: the ground truth names its queries")
    common.refuse_without("--sample", sample, "seed")
    # The network's options describe cropped queries, and nothing else: without them, whole-image mAP.
    common.refuse_without("--crop-queries", crop_queries, "root", "weights", "device", "batch_size")
    common.refuse_without("--json", json_out, "overwrite")
    # Queries cropped from their images are not compared (vggfeat.rerun): a --json file of such a
    # run is refused as before. A ground truth folder is compared by its files.
    inputs = [features, whiten_file, ground_truth, queries_file]
    made = None if crop_queries else common.made_by_this_command(inputs, outputs=[json_out])
    if common.json_again(json_out, overwrite, made, inputs):
        return
    truth = retrieval.read_ground_truth(ground_truth, protocol) if ground_truth else None
    # The ground truth's database (imlist), where it names one: revisitop's holds no query image.
    named = retrieval.ground_truth_database(ground_truth) if ground_truth else None
    database, query_images = named if named else (None, [])
    if crop_queries:
        _check_boxes(truth)
    elif protocol:  # said, not refused: whole-image queries are a measure of their own, not the benchmark's
        unless = f"unless {queries_file} describes the cropped images" if queries_file else "with whole-image queries"
        click.secho(f"warning: the revisited protocol crops each query image to its box (--crop-queries): {unless}, the "
                    "figures do not compare with published ones", err=True, fg="yellow")
    whitening = PCAWhitening.load(whiten_file) if whiten_file else None
    learned = retrieval.whitening_record(whiten_file, features) if whiten_file else None
    if learned and learned["learned_on_features"]:
        click.secho(f"warning: {whiten_file} was learned on {features}, the descriptors evaluated: a whitening fitted to "
                    "the test images raises their mAP; benchmark figures learn it on another dataset (Paris6k's for "
                    "Oxford5k, Oxford5k's for Paris6k)", err=True, fg="yellow")
    with FeatureFile(features) as f:
        if whitening is not None:
            whitening.check_config(f.config, str(features))
        X, labels, paths, config = retrieval.prepare(f.read(dtype="float32"), whitening), f.labels, f.paths, f.config
        failed_paths = f.failed().paths if truth is not None else []
        query_paths, query_root = paths, Path(f.root)
    if truth is None:
        result = retrieval.evaluate_labels(X, labels, qe=qe, sample=sample, seed=seed)
    else:
        Q = X
        if queries_file:
            with FeatureFile(queries_file) as q:
                differences = config_differences(config, q.config)
                if differences:
                    raise VggfeatError(f"{queries_file} was extracted differently from {features}: {'; '.join(differences)}")
                query_paths, query_root = q.paths, Path(q.root)
                if not crop_queries:
                    Q = retrieval.prepare(q.read(dtype="float32"), whitening)
        if crop_queries:
            crops = _describe_crops(truth, query_paths, root, query_root, config, quiet, weights=weights, device=device,
                                    batch_size=batch_size)
            Q, query_paths = retrieval.prepare(crops, whitening), None  # a row for each item of truth: one image may hold two
        result = retrieval.evaluate_ground_truth(X, paths, Q, query_paths, truth, qe=qe, failed_paths=failed_paths,
                                                 database=database, query_images=query_images)
        result["queries_cropped"] = crop_queries
        if protocol:
            result["revisited_protocol"] = protocol
    result["whitening"] = {**learned, "output_dim": whitening.output_dim} if learned else None
    said = _shown(result, labelled=truth is None)
    click.echo("\n".join(said))
    common.write_json_output(json_out, result, made, said)


def _shown(result: dict, labelled: bool) -> list[str]:
    """An evaluation's result for the terminal, a line each: what was evaluated, then each measure."""
    name = f"revisited ground truth, {result['revisited_protocol']}" if "revisited_protocol" in result else result["protocol"]
    how = [what for what, done in (("cropped to their boxes", result.get("queries_cropped")),
                                   (f"expanded with their top {result['query_expansion']}", result["query_expansion"])) if done]
    how = f" ({', '.join(how)})" if how else ""
    without = "another image of their class" if labelled else "a relevant image"
    skipped = f", {result['skipped_queries']} without {without} skipped" if result.get("skipped_queries") else ""
    # Rows of FEATURES beyond the ground truth's database (its imlist) are ranked too: say how many.
    beyond = (f" ({result['distractors']:,} of them distractors, beyond the ground truth's database)"
              if result.get("distractors") else "")
    sampled = (f" (drawn at random of {result['sampled_from']:,}, seed {result['sample_seed']})"
               if "sampled_from" in result else "")
    error = f" ± {result['map_standard_error']:.4f} (standard error of the sample)" if "sampled_from" in result else ""
    return [f"{name}: {common.counted(result['queries'], 'query', 'queries')}{sampled}{how} against "
            f"{common.counted(result['database'], 'image')}{beyond}{skipped}",
            f"  mAP        {result['map']:.4f}{error}",
            *(f"  {key.replace('mp', 'mP'):<10} {result[key]:.4f}"
              for key in (f"{measure}@{k}" for measure in ("recall", "mp") for k in retrieval.RECALL_AT)
              if key in result)]  # mP@k: with ground truth


def _check_boxes(truth: list[dict]) -> None:
    unboxed = [item["query"] for item in truth if "bbox" not in item]
    if unboxed:
        raise VggfeatError(f"--crop-queries: {common.counted(len(unboxed), 'query', 'queries')} of the ground truth "
                           f"without a bounding box (e.g. {unboxed[0]})")


def _describe_crops(truth: list[dict], query_paths: list[str], root: Path | None, recorded_root: Path, config: dict,
                    quiet: bool, **runtime):
    """Each query image of ``truth`` (among ``query_paths``, under ``root`` or else where they were
    described) cropped to its box, described by a network rebuilt from ``config``."""
    from ..search import describe_crops, extractor_for  # torch, only for this

    files = [(root or recorded_root) / query_paths[row] for row in retrieval.query_rows(truth, query_paths)]
    missing = [file for file in files if not file_exists(file)]
    if missing:  # said before the network loads
        where = (f"is --root {root} their folder?" if root else
                 f"they are looked for in {recorded_root}, where they were described: --root names another folder")
        raise VggfeatError(f"{common.counted(len(missing), 'query image')} not found (e.g. {missing[0]}); {where}")
    extractor = extractor_for(config, **runtime)
    with common.progress_bar(quiet, total=len(files), unit="images", desc="describing the query crops") as bar:
        return describe_crops(extractor, files, [item["bbox"] for item in truth], progress=bar.update)


@click.command("export")
@click.argument("features", type=click.Path(path_type=Path))
@click.argument("output", required=False, type=click.Path(path_type=Path))
@click.option("--to", "to", type=click.Choice((*exporting.FORMATS, "csv")),
              help="npy: OUTPUT.npy + OUTPUT.paths.csv; parquet: OUTPUT.parquet; either with OUTPUT.failed.csv (the "
                   "images that could not be described); csv: the top classes of a posteriors "
                   "file (vggfeat classify OUT.h5, shards merged) as classify writes a CSV. [default: by OUTPUT's "
                   "name: .npy, .parquet or .csv]")
@click.option("--topk", type=click.IntRange(min=1), help="With --to csv: classes written per image [default: 5].")
@click.option("--labels", type=click.Path(),
              help="With --to csv: an ImageNet-style list 'filename label', or 'folders' (the file's classes are ImageNet's "
                   "WordNet ids): report top-1/top-5 error.")
@click.option("--fuse", multiple=True, type=click.Path(path_type=Path),
              help="With --to csv: the posteriors of another network over the same images (classify --model vgg19, "
                   "say), averaged with FEATURES' (the paper's ConvNet fusion); repeat for more.")
@click.option("--overwrite", is_flag=True, help="Replace existing files.")
@common.quiet
def export(features, output, to, topk, labels, fuse, overwrite, quiet) -> None:
    """Write FEATURES as NumPy or Parquet files, or a posteriors file as CSV [default name: beside FEATURES]."""
    named = {".npy": "npy", ".parquet": "parquet", ".csv": "csv"}.get(output.suffix.lower()) if output else None
    to = to or named
    if to is None:
        raise click.UsageError("which format? --to npy, parquet or csv, or an OUTPUT named .npy, .parquet or .csv")
    if named and named != to:
        raise click.UsageError(f"OUTPUT {output.name} names a {output.suffix} file, but --to {to}: name it "
                               f"{output.with_suffix('.' + to).name}, or leave --to out")
    if to != "csv":
        if topk is not None or labels is not None or fuse:
            raise click.UsageError("--topk, --labels and --fuse go with --to csv")
        targets = exporting.export_targets(features, to, output)
        # The same command again, on its files as it left them, has nothing to do (vggfeat.rerun). The
        # list of failures is the same in either format, so it records the command without its format.
        made = common.made_by_this_command([features], leave_out=["to"], extra={"--to": to})
        failures_made = common.made_by_this_command([features], leave_out=["to"])
        if (all(check_output(target, overwrite, made, None, inputs=[features]) for target in targets[:-1])
                and recorded_in_file(targets[-1]) == failures_made):
            click.echo(f"{', '.join(map(str, targets))} already hold the export of this command on {features}, "
                       "unchanged since; nothing to do")
            return
        records = [failures_made if target == targets[-1] else made for target in targets]
        # Its own files, some left without the others as a kill stopped it, are written whole again.
        written = exporting.export(features, to, output, overwrite=overwrite or own_outputs(targets, records),
                                   records=[recorder(record, common.command_line()) for record in records])
        click.echo(f"wrote {', '.join(map(str, written))}")
        return
    if not features.is_file():  # before its name makes the CSV's (a folder such as "." has none)
        raise VggfeatError(not_a_file(features, "posteriors file"))
    if h5py.is_hdf5(features):  # a file of descriptors refused before torch is imported (seconds, most of a GB)
        refuse_descriptors(file_attributes(features), features)
    from .posteriors import export_csv  # the classifier's modules, torch with them, for a posteriors file only

    export_csv(features, output or features.with_suffix(".csv"), topk or 5, labels, fuse, overwrite, quiet)
