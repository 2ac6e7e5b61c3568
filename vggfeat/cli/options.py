"""Options shared by the commands that run the network (``extract``, ``classify``): one definition,
so that the same option means the same thing, with the same default, everywhere."""

from __future__ import annotations

from pathlib import Path

import click

from ..decode import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE
from ..extractor import PAPER_SCALES, PRECISIONS
from ..weights import ARCHITECTURES


def parse_scales(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        return tuple(int(q) for q in value.split(",") if q.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers such as 256,384,512, got {value!r}") from None


file_list = click.option("--file-list", type=click.Path(path_type=Path), help="Text file of image paths, one per line, optionally 'path,label'.")
root = click.option("--root", type=click.Path(path_type=Path), help="Folder that --file-list paths are relative to [default: the list's folder].")
model = click.option("--model", default="vgg16", show_default=True, type=click.Choice(ARCHITECTURES), help="VGG configuration: vgg16 is the paper's D, vgg19 its E.")
weights = click.option("--weights", default="imagenet", show_default=True, help="'imagenet' (torchvision, downloaded once), a state-dict file (.pth or .safetensors), or 'random'.")
seed = click.option("--seed", default=0, show_default=True, help="Seed of --weights random.")
scales = click.option("--scales", default=",".join(map(str, PAPER_SCALES)), show_default=True, callback=parse_scales, help="Smallest-side sizes Q, each >= 224.")
device = click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
precision = click.option("--precision", default="fp32", show_default=True, type=click.Choice(PRECISIONS), help="Arithmetic in the network.")
batch_size = click.option("--batch-size", type=click.IntRange(min=1), help="Network inputs per batch [default: 32 on GPU, 4 on CPU].")
workers = click.option("--workers", type=click.IntRange(min=1), help="Image decoding threads [default: up to 8].")
max_pixels = click.option("--max-pixels", default=DEFAULT_MAX_PIXELS, show_default=True, type=click.IntRange(min=1), help="Refuse larger images unread (decompression bombs).")
min_side = click.option("--min-side", default=DEFAULT_MIN_SIDE, show_default=True, type=click.IntRange(min=1), help="Refuse images with a smaller side.")
quiet = click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
resize_side = click.option("--resize-side", default="short", show_default=True, type=click.Choice(["short", "long"]),
                           help="Q sets the short side (the paper's) or the long side (retrieval; conv/pool layers only).")

