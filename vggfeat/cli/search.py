"""``vggfeat search``: an index searched with query images, described as its database was, or
with a file of query descriptors."""

from __future__ import annotations

from pathlib import Path

import click

from ..archives import file_exists
from ..discover import IMAGE_EXTENSIONS, find_images
from ..errors import VggfeatError
from ..index import BACKENDS, VectorIndex
from ..regions import image_of, split_region
from ..rerun import check_output, file_record, recorder
from ..retrieval import check_box
from ..textfiles import as_utf8
from ..search import (Result, describe_crops, describe_images, extractor_for, read_queries, search as run_search,
                      write_results)
from ..store import check_new_file
from . import common, options

RESULT_SUFFIXES = (".csv", ".json")


@click.command()
@click.argument("paths", nargs=-1, metavar="INDEX [QUERY_IMAGES_OR_FOLDERS...] [OUTPUT.csv|.json]", type=click.Path(path_type=Path))
@click.option("--queries", "queries_file", type=click.Path(path_type=Path), help="Query descriptors: a features file extracted as the database.")
@click.option("--box", callback=lambda ctx, param, value: _box(value), metavar="X1,Y1,X2,Y2",
              help="Search for what this box of the one query image holds (pixels of the upright image), not the whole image.")
@click.option("--k", "-k", "k", default=10, show_default=True, type=click.IntRange(min=1), help="Hits per query.")
@click.option("--qe", default=0, show_default=True, type=click.IntRange(min=0), help="Average query expansion with the top N hits (0: off).")
@click.option("--montage", type=click.Path(path_type=Path), help="Draw the queries and their top hits into this PNG.")
@click.option("--montage-hits", default=8, show_default=True, type=click.IntRange(min=1), help="Hits per query in the montage.")
@click.option("--montage-queries", default=10, show_default=True, type=click.IntRange(min=1), help="Most queries (rows) in the montage.")
@click.option("--tile", default=160, show_default=True, type=click.IntRange(min=32), help="Montage cell size in pixels.")
@click.option("--root", type=click.Path(path_type=Path), help="Folder of the database images [default: the one recorded at extraction].")
@click.option("--backend", default="auto", show_default=True, type=click.Choice(BACKENDS), help="For a flat index: FAISS or NumPy.")
@click.option("--weights", help="Weights file, when the database was described with one; of a stacked database, one for "
                                "each of its files made with one, comma-separated [default: as recorded].")
@options.device
@options.batch_size
@click.option("--workers", type=click.IntRange(min=1), help="Threads decoding the query images [default: up to 8].")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUTPUT or --montage file.")
@common.quiet
def search(paths, queries_file, box, k, qe, montage, montage_hits, montage_queries, tile, root, backend, weights, device,
           batch_size, workers, overwrite, quiet) -> None:
    """Search INDEX with query images (files or folders) or --queries; print or write ranked paths and scores.

    Query images are described exactly as the database was (the index records how); a query file
    made differently is refused. A query 'a.jpg#xywh=X,Y,W,H' is that box of a.jpg (its top-left
    pixel, width and height), as --box is of one query. OUTPUT (.csv or .json) receives query, rank,
    path, score.
    """
    if not paths:
        raise click.UsageError("expected INDEX [QUERY_IMAGES...] [OUTPUT]")
    common.refuse_without("--montage", montage, "montage_hits", "montage_queries", "tile", "root")
    index_file, rest = paths[0], list(paths[1:])
    output = rest.pop() if rest and rest[-1].suffix.lower() in RESULT_SUFFIXES else None
    if bool(rest) == bool(queries_file):
        raise click.UsageError("give query images (files or folders) or --queries FILE.h5, one of the two")
    described_here = common.given("weights", "device", "batch_size", "workers")  # the query images, by the network
    if queries_file and described_here:
        raise click.UsageError(f"{', '.join(described_here)}: for query images, described here; --queries holds "
                               "descriptors already")
    common.refuse_without("OUTPUT or --montage", output or montage, "overwrite")
    if box and (len(rest) != 1 or not file_exists(rest[0])):
        raise click.UsageError("--box crops one query image: give one image file")
    inputs = [index_file, queries_file, *rest]
    # The same command again on these files (a folder of queries: its files), unchanged since, has
    # nothing to do (vggfeat.rerun); a montage is drawn from the database's images too, which are not compared.
    made = None if montage or not output else common.made_by_this_command(
        [*inputs, *(Path(each) for each in (weights or "").split(",") if Path(each).is_file())], leave_out=["queries_file"],
        outputs=[output])
    if output and check_output(output, overwrite, made, None, inputs=inputs):  # refused before the queries are described
        held = "".join(f": {line}" for line in file_record(output)["said"])
        click.echo(f"{output} already holds the results of this command on these files, unchanged since{held}; nothing to do")
        return
    if montage:
        check_new_file(montage, overwrite, inputs=inputs)
        # Written as PNG: a hits.jpg of PNG bytes misleads, and a montage named as OUTPUT (r.csv) replaced it.
        if montage.suffix.lower() != ".png":
            raise click.UsageError(f"--montage {montage.name}: a montage is a PNG; name it {montage.with_suffix('.png').name}")
    if root is not None and not root.is_dir():
        raise click.UsageError(f"--root {root}: not a folder (the one the database's images are in)")
    if montage:  # its size, before any work (query files alone: as many rows as they are)
        from ..montage import check_montage_size

        rows = min(montage_queries, len(rest)) if rest and not any(path.is_dir() for path in rest) else montage_queries
        check_montage_size(rows, 1 + min(montage_hits, k), tile)
    db = VectorIndex.load(index_file, backend=backend)
    query_root = None  # query images given as files: their names are their paths
    if queries_file:
        X, names, query_root = read_queries(db, queries_file)
    elif box:
        extractor = extractor_for(db.config, weights=weights, device=device, batch_size=batch_size, workers=workers)
        X, names = describe_crops(extractor, rest, [box]), [as_utf8(str(rest[0]))]  # as describe_images names them
    else:
        queries = _query_files(rest)
        with common.progress_bar(quiet, total=len(queries), unit="images", desc="describing the queries") as bar:
            X, names, failures = describe_images(db, queries, weights=weights, device=device, batch_size=batch_size,
                                                 workers=workers, progress=bar.update)
        for name, reason in failures:
            click.secho(f"skipped query {common.printable(str(name))}: {common.printable(reason)}", err=True, fg="yellow")
        if not names:  # nothing to search with: an empty result would pass for "no hits"
            raise VggfeatError("no query image could be described (each is named above, with the reason)")
    results = run_search(db, X, names, k=k, qe=qe)
    if output:
        held = f"{common.counted(len(results), 'query', 'queries')} x top {min(k, db.rows)} ({db.backend}, {db.kind})"
        write_results(results, output, record=recorder(made, common.command_line(), [held]))
        click.echo(f"wrote {output}: {held}")
    else:
        for result in results:
            click.echo(f"query {common.printable(str(result.query))}")
            for rank, (path, score) in enumerate(zip(result.paths, result.scores), start=1):
                click.echo(f"  {rank:>3}  {score:.4f}  {common.printable(path)}")
    if montage:
        # Database paths are relative to its image folder, a query file's to the folder it recorded.
        base = root or Path(db.root or ".")
        _write_montage(results[:montage_queries], montage, base, query_root, hits=montage_hits, tile=tile, box=box)


def _box(value: str | None) -> list[float] | None:
    if value is None:
        return None
    try:
        return check_box(value.split(","), given=value)  # click names the option
    except VggfeatError as error:
        raise click.BadParameter(str(error)) from None


def _query_files(paths: list[Path]) -> list[Path]:
    """Query image files: each given file (or region of one: ``a.jpg#xywh=X,Y,W,H``), and every
    image under each given folder."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += find_images(path).files()
        elif file_exists(path) or file_exists(image_of(str(path))):
            files.append(path)
        else:
            try:
                split_region(str(path))
            except ValueError as error:  # a region written wrong: say how
                raise VggfeatError(f"query {error}") from None
            output = "" if path.suffix.lower() in IMAGE_EXTENSIONS else " (an OUTPUT of results is named .csv or .json)"
            raise VggfeatError(f"query not found: {path}{output}")
    return files


def _write_montage(results: list[Result], output: Path, base: Path, query_root: Path | None, hits: int, tile: int,
                   box: list[float] | None) -> None:
    from ..montage import draw_montage  # PIL drawing only when asked for

    queries = [query_root / r.query if query_root else Path(r.query) for r in results]
    shown = [[(base / p, float(s)) for p, s in zip(r.paths[:hits], r.scores[:hits])] for r in results]
    unreadable: list[str] = []
    width, height = draw_montage(queries, shown, output, tile=tile, query_boxes=[box] * len(queries), unreadable=unreadable)
    most = max(map(len, shown), default=0)  # fewer than asked for where --k or the index holds fewer
    up_to = "" if all(len(row) == most for row in shown) else "up to "
    click.echo(f"wrote {output}: {common.counted(len(results), 'query', 'queries')}, {up_to}{common.counted(most, 'hit')} "
               f"each ({width}x{height} px)")
    if unreadable:  # the images moved since they were described, or --root is not their folder
        click.secho(f"warning: {common.counted(len(unreadable), 'image')} of the montage could not be read, drawn grey "
                    f"(e.g. {unreadable[0]}): is {base} their folder? (--root names it)", err=True, fg="yellow")
