"""``vggfeat whiten``, ``index``, ``search``, ``retrieval-eval`` and ``export``: image search over descriptor files,
and descriptor (or posteriors) files for other tools."""

from __future__ import annotations

from pathlib import Path

import click

from .. import export as exporting
from .. import retrieval
from ..discover import find_images
from ..errors import VggfeatError
from ..features import FeatureFile, config_differences
from ..index import BACKENDS, KINDS, VectorIndex, index_features
from ..search import Result, describe_images, read_queries, search as run_search, write_results
from ..store import check_new_file, open_features_file
from ..whitening import PCAWhitening, fit_whitening
from . import options
from .classify import export_csv

RESULT_SUFFIXES = (".csv", ".json")


@click.group()
def whiten() -> None:
    """PCA-whitening of descriptors (learned, then applied by 'vggfeat index' and 'retrieval-eval')."""


@whiten.command("fit")
@click.argument("features", type=click.Path(path_type=Path))
@click.argument("output", type=click.Path(path_type=Path))
@click.option("--dim", type=click.IntRange(min=1), help="Keep this many dimensions [default: all the data supports].")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUTPUT.")
@options.quiet
def whiten_fit(features, output, dim, overwrite, quiet) -> None:
    """Learn PCA-whitening on every descriptor of FEATURES; write it to OUTPUT (.h5, plain arrays).

    FEATURES is read in blocks: memory grows with the dimension (a D x D covariance), not the rows.
    """
    check_new_file(output, overwrite)
    with options.progress_bar(quiet, total=_rows_of(features), unit="descriptors", desc="fitting the whitening") as bar:
        fitted = fit_whitening(features, output, dim=dim, progress=bar.update)
    click.echo(f"wrote {output}: {fitted.input_dim}-d -> {fitted.output_dim}-d whitening from {fitted.n_samples_:,} descriptors")


@click.command("index")
@click.argument("features", type=click.Path(path_type=Path))
@click.argument("output", type=click.Path(path_type=Path))
@click.option("--whiten", "whiten_file", type=click.Path(path_type=Path), help="Whitening from 'vggfeat whiten fit', applied to database and queries.")
@click.option("--kind", default="flat", show_default=True, type=click.Choice(KINDS),
              help="flat: exact; ivfpq: compressed, approximate (FAISS); hnsw: graph, approximate (FAISS).")
@click.option("--nlist", type=click.IntRange(min=1), help="ivfpq: inverted lists [default: about 4 sqrt(rows)].")
@click.option("--pq-m", type=click.IntRange(min=1), help="ivfpq: bytes per vector, must divide the dimension [default: dim / 8].")
@click.option("--nprobe", default=16, show_default=True, type=click.IntRange(min=1), help="ivfpq: lists searched per query.")
@click.option("--hnsw-m", default=32, show_default=True, type=click.IntRange(min=2), help="hnsw: links per vector.")
@click.option("--ef-search", default=128, show_default=True, type=click.IntRange(min=1), help="hnsw: candidates per query.")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUTPUT.")
@options.quiet
def index(features, output, whiten_file, kind, nlist, pq_m, nprobe, hnsw_m, ef_search, overwrite, quiet) -> None:
    """Index the descriptors of FEATURES into OUTPUT for 'vggfeat search' (inner product of unit vectors)."""
    check_new_file(output, overwrite)
    whitening = PCAWhitening.load(whiten_file) if whiten_file else None
    with options.progress_bar(quiet, total=_rows_of(features), unit="descriptors", desc=f"indexing ({kind})") as bar:
        built = index_features(features, kind=kind, whitening=whitening, nlist=nlist, m=pq_m, nprobe=nprobe,
                               hnsw_m=hnsw_m, ef_search=ef_search, progress=bar.update)
    built.save(output)
    dims = f"{whitening.input_dim}-d, whitened to {built.dim}-d" if whitening else f"{built.dim}-d"
    click.echo(f"wrote {output}: {kind} index of {built.rows:,} descriptors ({dims})")


@click.command()
@click.argument("paths", nargs=-1, metavar="INDEX [QUERY_IMAGES_OR_FOLDERS...] [OUTPUT.csv|.json]", type=click.Path(path_type=Path))
@click.option("--queries", "queries_file", type=click.Path(path_type=Path), help="Query descriptors: a features file extracted as the database.")
@click.option("--k", default=10, show_default=True, type=click.IntRange(min=1), help="Hits per query.")
@click.option("--qe", default=0, show_default=True, type=click.IntRange(min=0), help="Average query expansion with the top N hits (0: off).")
@click.option("--montage", type=click.Path(path_type=Path), help="Draw the queries and their top hits into this PNG.")
@click.option("--montage-hits", default=8, show_default=True, type=click.IntRange(min=1), help="Hits per query in the montage.")
@click.option("--montage-queries", default=10, show_default=True, type=click.IntRange(min=1), help="Most queries (rows) in the montage.")
@click.option("--tile", default=160, show_default=True, type=click.IntRange(min=32), help="Montage cell size in pixels.")
@click.option("--root", type=click.Path(path_type=Path), help="Folder of the database images [default: the one recorded at extraction].")
@click.option("--backend", default="auto", show_default=True, type=click.Choice(BACKENDS), help="For a flat index: FAISS or NumPy.")
@click.option("--weights", help="Weights file, when the database was described with one [default: as recorded].")
@options.device
@options.batch_size
@options.workers
@click.option("--overwrite", is_flag=True, help="Replace an existing OUTPUT or --montage file.")
@options.quiet
def search(paths, queries_file, k, qe, montage, montage_hits, montage_queries, tile, root, backend, weights, device,
           batch_size, workers, overwrite, quiet) -> None:
    """Search INDEX with query images (files or folders) or --queries; print or write ranked paths and scores.

    Query images are described exactly as the database was (the index records how); a query file
    made differently is refused. OUTPUT (.csv or .json) receives query, rank, path, score.
    """
    if not paths:
        raise click.UsageError("expected INDEX [QUERY_IMAGES...] [OUTPUT]")
    index_file, rest = paths[0], list(paths[1:])
    output = rest.pop() if rest and rest[-1].suffix.lower() in RESULT_SUFFIXES else None
    if bool(rest) == bool(queries_file):
        raise click.UsageError("give query images (files or folders) or --queries FILE.h5, one of the two")
    for written in (output, montage):  # refused before the queries are described
        if written:
            check_new_file(written, overwrite)
    db = VectorIndex.load(index_file, backend=backend)
    query_root = None  # query images given as files: their names are their paths
    if queries_file:
        X, names, query_root = read_queries(db, queries_file)
    else:
        queries = _query_files(rest)
        with options.progress_bar(quiet, total=len(queries), unit="images", desc="describing the queries") as bar:
            X, names, failures = describe_images(db, queries, weights=weights, device=device, batch_size=batch_size,
                                                 workers=workers, progress=bar.update)
        for name, reason in failures:
            click.secho(f"skipped query {name}: {reason}", err=True, fg="yellow")
    results = run_search(db, X, names, k=k, qe=qe)
    if output:
        write_results(results, output)
        click.echo(f"wrote {output}: {len(results):,} queries x top {min(k, db.rows)} ({db.backend}, {db.kind})")
    else:
        for result in results:
            click.echo(f"query {result.query}")
            for rank, (path, score) in enumerate(zip(result.paths, result.scores), start=1):
                click.echo(f"  {rank:>3}  {score:.4f}  {path}")
    if montage:
        # Database paths are relative to its image folder, a query file's to the folder it recorded.
        base = root or Path(db.root or ".")
        _write_montage(results[:montage_queries], montage, base, query_root, hits=montage_hits, tile=tile)


def _query_files(paths: list[Path]) -> list[Path]:
    """Query image files: each given file, and every image under each given folder."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += find_images(path).files()
        elif path.is_file():
            files.append(path)
        else:
            raise VggfeatError(f"query not found: {path}")
    return files


def _write_montage(results: list[Result], output: Path, base: Path, query_root: Path | None, hits: int, tile: int) -> None:
    from ..montage import draw_montage  # PIL drawing only when asked for

    queries = [query_root / r.query if query_root else Path(r.query) for r in results]
    shown = [[(base / p, float(s)) for p, s in zip(r.paths[:hits], r.scores[:hits])] for r in results]
    width, height = draw_montage(queries, shown, output, tile=tile)
    click.echo(f"wrote {output}: {len(results)} queries with up to {hits} hits ({width}x{height} px)")


@click.command("retrieval-eval")
@click.argument("features", type=click.Path(path_type=Path))
@click.option("--whiten", "whiten_file", type=click.Path(path_type=Path), help="Whitening from 'vggfeat whiten fit'.")
@click.option("--gt", "ground_truth", type=click.Path(path_type=Path),
              help="Oxford/Paris ground truth: a folder of *_query/_good/_ok/_junk.txt, or a JSON list of {query, ok, junk}.")
@click.option("--queries", "queries_file", type=click.Path(path_type=Path), help="With --gt: query descriptors [default: looked up in FEATURES].")
@options.json_output
@options.overwrite_json
def retrieval_eval(features, whiten_file, ground_truth, queries_file, json_out, overwrite) -> None:
    """mAP and recall@1/5/10 of FEATURES searched against itself.

    Without --gt: every labelled image queries all others; same class = relevant (leave one out).
    """
    options.check_json_output(json_out, overwrite)
    whitening = PCAWhitening.load(whiten_file) if whiten_file else None
    with FeatureFile(features) as f:
        if whitening is not None:
            whitening.check_config(f.config, str(features))
        X, labels, paths, config = retrieval.prepare(f.read(dtype="float32"), whitening), f.labels, f.paths, f.config
    if ground_truth is None:
        if queries_file:
            raise click.UsageError("--queries goes with --gt")
        result = retrieval.evaluate_labels(X, labels)
    else:
        Q, query_paths = X, paths
        if queries_file:
            with FeatureFile(queries_file) as q:
                differences = config_differences(config, q.config)
                if differences:
                    raise VggfeatError(f"{queries_file} was extracted differently from {features}: {'; '.join(differences)}")
                Q, query_paths = retrieval.prepare(q.read(dtype="float32"), whitening), q.paths
        result = retrieval.evaluate_ground_truth(X, paths, Q, query_paths, retrieval.read_ground_truth(ground_truth))
    skipped = f", {result['skipped_queries']} without another image of their class skipped" if result.get("skipped_queries") else ""
    click.echo(f"{result['protocol']}: {result['queries']:,} queries against {result['database']:,} images{skipped}")
    click.echo(f"  mAP        {result['map']:.4f}")
    for key in (f"recall@{k}" for k in retrieval.RECALL_AT):
        click.echo(f"  {key:<10} {result[key]:.4f}")
    options.write_json_output(json_out, result)


@click.command("export")
@click.argument("features", type=click.Path(path_type=Path))
@click.argument("output", required=False, type=click.Path(path_type=Path))
@click.option("--to", "to", required=True, type=click.Choice((*exporting.FORMATS, "csv")),
              help="npy: OUTPUT.npy + OUTPUT.paths.csv; parquet: OUTPUT.parquet; either with OUTPUT.failed.csv (the "
                   "images that could not be described); csv: the top classes of a posteriors "
                   "file (vggfeat classify OUT.h5, shards merged) as classify writes a CSV.")
@click.option("--topk", type=click.IntRange(min=1), help="With --to csv: classes written per image [default: 5].")
@click.option("--labels", type=click.Path(),
              help="With --to csv: an ImageNet-style list 'filename label', or 'folders' (the file's classes are ImageNet's "
                   "WordNet ids): report top-1/top-5 error.")
@click.option("--fuse", multiple=True, type=click.Path(path_type=Path),
              help="With --to csv: the posteriors of another network over the same images (classify --model vgg19, "
                   "say), averaged with FEATURES' (the paper's ConvNet fusion); repeat for more.")
@click.option("--overwrite", is_flag=True, help="Replace existing files.")
@options.quiet
def export(features, output, to, topk, labels, fuse, overwrite, quiet) -> None:
    """Write FEATURES as NumPy or Parquet files, or a posteriors file as CSV [default name: beside FEATURES]."""
    if to != "csv":
        if topk is not None or labels is not None or fuse:
            raise click.UsageError("--topk, --labels and --fuse go with --to csv")
        written = exporting.export(features, to, output, overwrite=overwrite)
        click.echo(f"wrote {', '.join(map(str, written))}")
        return
    export_csv(features, output or features.with_suffix(".csv"), topk or 5, labels, fuse, overwrite, quiet)


def _rows_of(features: Path) -> int:
    """The rows of a features file, for a progress bar over them (refusing what is not one): its
    shape only, where FeatureFile would read every path."""
    with open_features_file(features, required=("features",)) as f:
        return f["features"].shape[0]
