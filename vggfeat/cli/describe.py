"""``vggfeat describe``: the paper's configurations layer by layer, from the built models."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from ..choices import ALL_ARCHITECTURES
from ..errors import VggfeatError
from . import common

if TYPE_CHECKING:
    from ..summary import NetworkSummary, StackComparison


def _size(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, int]:
    try:
        parts = [int(side) for side in value.lower().replace("×", "x").split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2):
        raise click.BadParameter(f"expected a side such as 224 or HEIGHTxWIDTH such as 384x512, got {value!r}")
    return (parts[0], parts[-1])


def _kernels(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        kernels = tuple(int(k) for k in value.split(",") if k.strip())
    except ValueError:
        kernels = ()
    if not kernels:
        raise click.BadParameter(f"expected comma-separated odd integers such as 5,7, got {value!r}")
    return kernels


@click.command()
@click.argument("models", nargs=-1, type=click.Choice(ALL_ARCHITECTURES))
@click.option("--size", default="224", show_default=True, callback=_size, help="Input side, or HEIGHTxWIDTH (e.g. 384x512: dense fc6-fc8 maps).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (exact integers).")
@click.option("--markdown", is_flag=True, help="Print Markdown tables.")
@click.option("--compare", is_flag=True, help="Weights of one kxk conv against the stack of 3x3 convs with its receptive field.")
@click.option("--kernels", default="5,7,11", show_default=True, callback=_kernels, help="Kernel sizes for --compare.")
@click.option("--channels", default=512, show_default=True, type=click.IntRange(min=1), help="Input and output channels C for --compare.")
def describe(models, size, as_json, markdown, compare, kernels, channels) -> None:
    """Per layer of each of MODELS: output shape, activations, weights, multiply-adds, receptive field.

    Without MODELS, one line per configuration of the paper (A, A-LRN, B, C, D, E) and the BN
    variants: the totals of its Table 2. Everything is computed from the models as built (on the
    meta device, no weights allocated), not typed in.
    """
    from ..summary import compare_stacks, summarize  # torch (the models are built), which --help needs not

    if as_json and markdown:
        raise VggfeatError("choose one of --json and --markdown")
    common.refuse_without("--compare", compare, "kernels", "channels")
    if compare and common.given("size"):
        raise click.UsageError("--size: for the models' layers; --compare counts weights, whatever the input's size")
    if compare:
        if models:
            raise VggfeatError("--compare takes no MODELS")
        rows = compare_stacks(kernels, channels)
        if as_json:
            click.echo(json.dumps([{**vars(row), "extra": row.extra} for row in rows], indent=2))
        else:
            click.echo(_compare_table(rows, channels, markdown))
        return
    summaries = [summarize(model, size) for model in (models or ALL_ARCHITECTURES)]
    if as_json:
        click.echo(json.dumps([s.to_dict() for s in summaries] if not models or len(models) > 1
                              else summaries[0].to_dict(), indent=2))
    elif not models:
        click.echo(_overview_table(summaries, markdown))
    else:
        click.echo("\n\n".join(_layer_table(s, markdown) for s in summaries))


def _layer_table(summary: NetworkSummary, markdown: bool) -> str:
    from ..summary import BYTES_PER_ELEMENT

    height, width = summary.input_size
    title = (f"{summary.model} (configuration {summary.configuration}, {summary.weight_layers} weight layers), "
             f"input 3x{height}x{width}; activations float32 ({BYTES_PER_ELEMENT} bytes); MACs = multiply-adds")
    headers = ["layer", "type", "output CxHxW", "activations", "memory", "weights", "MACs", "RF", "stride"]
    rows = [[layer.name, layer.kind, "x".join(map(str, layer.shape)), f"{layer.activations:,}", common.size_text(layer.bytes),
             f"{layer.weights:,}", f"{layer.macs:,}", f"{layer.receptive_field}", f"{layer.stride}"]
            for layer in summary.layers]
    rows.append(["total", "", "", f"{summary.activations:,}", common.size_text(summary.bytes), f"{summary.weights:,}",
                 f"{summary.macs:,}", "", ""])
    totals = (f"{summary.weights:,} weights ({summary.weights / 1e6:.0f} M); {summary.macs:,} multiply-adds "
              f"({summary.macs / 1e9:.2f} G MACs); {summary.activations:,} activations ({common.size_text(summary.bytes)})")
    return "\n".join([_heading(title, markdown), _table(headers, rows, markdown, left=2), totals])


def _overview_table(summaries: list[NetworkSummary], markdown: bool) -> str:
    height, width = summaries[0].input_size
    title = f"VGG configurations, input 3x{height}x{width} (weights in millions: the paper's Table 2)"
    headers = ["model", "config", "weight layers", "weights", "weights (M)", "MACs", "activations", "pool5 RF"]
    rows = [[s.model, s.configuration, str(s.weight_layers), f"{s.weights:,}", f"{s.weights / 1e6:.0f}",
             f"{s.macs:,}", f"{s.activations:,}", str(s.layer("pool5").receptive_field)] for s in summaries]
    return "\n".join([_heading(title, markdown), _table(headers, rows, markdown, left=2)])


def _compare_table(rows: list[StackComparison], channels: int, markdown: bool) -> str:
    title = (f"One kxk convolution against a stack of 3x3 convolutions with the same receptive field "
             f"(C = {channels} channels in and out, weights without biases)")
    headers = ["kernel", "3x3 layers", "receptive field", "kxk weights", "3x3 stack weights", "kxk needs", "ReLUs"]
    table = [[f"{r.kernel}x{r.kernel}", str(r.stack_layers), f"{r.receptive_field}x{r.receptive_field}",
              f"{r.kernel ** 2}C² = {r.single_weights:,}", f"{9 * r.stack_layers}C² = {r.stack_weights:,}",
              f"{r.extra:+.0%}", f"1 vs {r.stack_layers}"] for r in rows]
    return "\n".join([_heading(title, markdown), _table(headers, table, markdown, left=1)])


def _heading(title: str, markdown: bool) -> str:
    return f"### {title}\n" if markdown else title


def _table(headers: list[str], rows: list[list[str]], markdown: bool, left: int) -> str:
    """Columns aligned; the first ``left`` columns are text (left-aligned), the others numbers."""
    if markdown:
        rule = ["---" if i < left else "---:" for i in range(len(headers))]
        return "\n".join("| " + " | ".join(row) + " |" for row in [headers, rule, *rows])
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(cell.ljust(w) if i < left else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))).rstrip()

    return "\n".join([line(headers), *map(line, rows)])

