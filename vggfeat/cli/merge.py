"""``vggfeat merge``: the files of ``extract --shard K/N`` runs into one."""

from __future__ import annotations

from pathlib import Path

import click

from ..merge import merge_shards
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
    common.reporter(quiet)(f"wrote {result.output}: {common.counted(result.rows, 'descriptor')} from {result.shards} shards, {failed}")
