"""``vggfeat merge``: the files of ``extract --shard K/N`` runs into one; ``vggfeat stack``: the
descriptors of several files of the same images side by side in one."""

from __future__ import annotations

from pathlib import Path

import click

from ..merge import merge_shards
from ..stack import stack_files
from . import common


@click.command()
@click.argument("paths", nargs=-1, required=True, metavar="SHARDS... OUTPUT", type=click.Path(path_type=Path))
@common.overwrite
@common.quiet
def merge(paths: tuple[Path, ...], overwrite: bool, quiet: bool) -> None:
    """Join the files of all N shards of one extraction (any order) into OUTPUT.

    OUTPUT holds the rows one run over the whole collection would write, in the same order. All
    shards 1..N must be there, complete, of the same images and options; nothing is written otherwise.
    """
    if len(paths) < 2:
        raise click.UsageError("expected the shard files and then OUTPUT")
    *shards, output = paths
    with common.progress_bar(quiet, unit="rows", desc=f"merging into {output.name}") as bar:

        def progress(rows: int, total: int) -> None:
            bar.total = total
            bar.update(rows)

        result = merge_shards(shards, output, overwrite=overwrite, progress=progress,
                              provenance={"merge_command": common.command_line()})
    failed = click.style(f"{result.failed:,} failed", fg="red" if result.failed else None)
    held = f"{common.counted(result.rows, 'descriptor')} from {result.shards} shards, {failed}"
    if result.already_done:  # the same command again
        common.say_result(f"{result.output} already holds the merge of these shards: {held}; nothing to do")
    else:
        common.say_result(f"wrote {result.output}: {held}")


@click.command()
@click.argument("paths", nargs=-1, required=True, metavar="FILES... OUTPUT", type=click.Path(path_type=Path))
@common.overwrite
@common.quiet
def stack(paths: tuple[Path, ...], overwrite: bool, quiet: bool) -> None:
    """Stack the descriptors of the same images from two or more FILES side by side into OUTPUT.

    The paper's fused descriptor of networks D and E (vggfeat stack d.h5 e.h5 de.h5), or of each
    region with its image (boxes.h5 images.h5): rows matched by path as train-svm --features
    matches them; an image that one file could not describe is a failure of OUTPUT, with the reason.
    OUTPUT is a descriptor file like any other, for index, retrieval-eval, export and the SVMs.
    """
    if len(paths) < 3:
        raise click.UsageError("expected two or more FILES and then OUTPUT")
    *files, output = paths
    with common.progress_bar(quiet, total=common.feature_rows(files[0]), unit="rows", desc=f"stacking into {output.name}") as bar:
        result = stack_files(files, output, overwrite=overwrite, progress=bar.update,
                             provenance={"command": common.command_line()})
    failed = click.style(f"{result.failed:,} failed", fg="red" if result.failed else None)
    held = f"{common.counted(result.rows, 'descriptor')} ({result.dim}-d) from {len(files)} files, {failed}"
    if result.already_done:  # the same command again
        click.echo(f"{result.output} already holds the stack of these files, unchanged since: {held}; nothing to do")
    else:
        click.echo(f"wrote {result.output}: {held}")
