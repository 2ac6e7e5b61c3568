"""Options shared by the commands that run the network (``extract``, ``classify``, ``search``'s
query images): one definition, so that the same option means the same thing, with the same
default, everywhere; and the few steps those commands share (finding the images, saying what the
automatic settings chose, warning about random weights). What every command shares at the
terminal is in :mod:`.common`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..archives import ARCHIVE_EXTENSION
from ..choices import ARCHITECTURES, AUTOTUNES, DECODE_IN, DECODERS, PAPER_SCALES, PRECISIONS
from ..decode import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, formats_not_decoded
from ..discover import (ImageSet, check_file_list, check_folder, check_listed_files, find_images, list_folder,
                        read_file_list)
from ..errors import VggfeatError, not_a_file
from . import common
from .common import progress_bar

if TYPE_CHECKING:
    from ..extractor import Extractor

# Nothing here imports torch at the top (vggfeat.choices): a command's --help starts at once. The
# functions that need vggfeat.settings, and torch with it, import it when they run.


# The scales and the device are checked as the command line is read, before the images are found
# (minutes for millions of files on a network file system): a typo there should cost nothing.
def parse_scales(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    from ..settings import check_scales

    try:
        return check_scales([int(q) for q in value.split(",")])  # '224,' refused, as '--model vgg16,' is
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers such as 256,384,512, got {value!r}") from None
    except VggfeatError as error:
        raise click.BadParameter(str(error)) from None


def check_device(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if value == "auto":  # always there: no torch to import for it ('search --queries' describes nothing)
        return value
    from ..settings import resolve_device

    try:
        resolve_device(value)
    except VggfeatError as error:
        raise click.BadParameter(str(error)) from None
    return value


def check_devices(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    devices = tuple(name.strip() for name in value.split(","))
    for name in devices:
        check_device(ctx, param, name)
    return devices


def parse_models(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    models = tuple(name.strip() for name in value.split(","))
    unknown = [name for name in models if name not in ARCHITECTURES]
    if unknown:
        raise click.BadParameter(f"{', '.join(map(repr, unknown))}: choose from {', '.join(ARCHITECTURES)}")
    if len(set(models)) < len(models):
        raise click.BadParameter(f"each model once, got {value!r}")
    return models


NAMED_WEIGHTS = ("imagenet", "random")  # --weights that name no file


def weights_of(models: tuple[str, ...], weights: str) -> tuple[str, ...]:
    """The ``--weights`` of each of ``models``: 'imagenet' or 'random' for all, or one each
    (comma-separated): 'imagenet', 'random' or a file."""
    if len(models) == 1:
        if "," in weights and not Path(weights).is_file():  # a file's name may hold commas
            raise click.BadParameter(f"{weights.count(',') + 1} weights for one model ({models[0]}): give one, or "
                                     "as many models, comma-separated (--model vgg16,vgg19)", param_hint="'--weights'")
        return (weights,)
    if weights in NAMED_WEIGHTS:
        return (weights,) * len(models)
    each = tuple(name.strip() for name in weights.split(","))
    if len(each) != len(models):
        raise click.BadParameter(f"one weights per model ({len(models)}, comma-separated in the order of --model: "
                                 f"imagenet, random or a file), or imagenet or random for all; got {weights!r}",
                                 param_hint="'--weights'")
    missing = [name for name in each if name not in NAMED_WEIGHTS and not Path(name).is_file()]
    if missing:  # before any network loads (and downloads its weights)
        raise click.BadParameter("; ".join(not_a_file(name or "''", "weights file") for name in missing), param_hint="'--weights'")
    return each


images_and_output = click.argument("paths", nargs=-1, metavar="[IMAGES] OUTPUT", type=click.Path(path_type=Path))
file_list = click.option("--file-list", type=click.Path(path_type=Path), help="Text file of image paths, one per line, optionally 'path,label' (a line ending in an image extension is a path, commas and all; a line beginning with a quote is CSV); 'path#xywh=X,Y,W,H' names a region of the image (a box: top-left pixel, width, height); lines beginning with '#' are comments (list #1.jpg as ./#1.jpg). '-': standard input.")
root = click.option("--root", type=click.Path(path_type=Path), help="Folder that --file-list paths are relative to [default: the list's folder; for '-', the working folder].")
archive_classes = click.option("--archive-classes", is_flag=True,
                               help="The tar archives directly in IMAGES (or in the archive IMAGES) are classes, named "
                                    "after them (n01440764.tar: n01440764), as ImageNet's training set comes; else "
                                    "their images have none (but a WebDataset sample's .cls).")
model = click.option("--model", "models", default="vgg16", show_default=True, callback=parse_models,
                     help=f"VGG configuration ({', '.join(ARCHITECTURES)}): vgg16 is the paper's D, vgg19 its E; several, "
                          "comma-separated (vgg16,vgg19), give each image's descriptors side by side in one run, each "
                          "image read once: the paper's D & E descriptor, as 'vggfeat stack' makes it of one file each "
                          "(--weights: imagenet, random, or a file each, comma-separated).")
weights = click.option("--weights", default="imagenet", show_default=True, help="'imagenet' (torchvision, downloaded once), a state-dict file (.pth or .safetensors), or 'random'.")
seed = click.option("--seed", default=0, show_default=True, type=common.SEEDS, help="Seed of --weights random.")


def _scales(help: str) -> Callable:
    return click.option("--scales", default=",".join(map(str, PAPER_SCALES)), show_default=True, callback=parse_scales,
                        help=help)


scales = _scales("Sizes Q of the smallest side (of the longest with --resize-side long), each >= 224 (>= 32 for conv "
                 "and pool layers).")
class_scales = _scales("Smallest-side sizes Q, each >= 224.")  # classify's: fc8 only
device = click.option("--device", default="auto", show_default=True, callback=check_device, help="auto, cpu, cuda or cuda:N.")
devices = click.option("--device", "devices", default="auto", show_default=True, callback=check_devices,
                       help="auto, cpu, cuda or cuda:N; several, such as cuda:0,cuda:1, describe a shard of the images "
                            "each, in a process of their own, and are merged into OUTPUT.")
precision = click.option("--precision", default="auto", show_default=True, type=click.Choice(PRECISIONS),
                         help="Arithmetic in the network; auto: bf16 on GPUs that compute it natively (Ampere and later), else fp32.")


def parse_batch_size(ctx: click.Context, param: click.Parameter, value: str) -> int | str:
    if value == "auto":
        return value
    try:
        size = int(value)
    except ValueError:
        size = 0
    if size < 1:
        raise click.BadParameter(f"expected 'auto' or a positive integer, got {value!r}")
    return size


batch_size = click.option("--batch-size", default="auto", show_default=True, metavar="auto|N", callback=parse_batch_size,
                          help="Network inputs per batch; auto: as many as fit a share of the GPU's free memory; on the CPU, up to 16 of 224x224.")
workers = click.option("--workers", type=click.IntRange(min=1),
                       help="Image decoding threads or processes [default: up to 8 threads, or 16 processes].")
decode_in = click.option("--decode-in", default="auto", show_default=True, type=click.Choice(DECODE_IN),
                         help="processes: decoding shares no lock (Python's GIL) with the thread that drives the "
                              "network; they take seconds to start, and pass pixels through /dev/shm. auto: "
                              "processes on a GPU in runs of 50,000 images or more.")
decoder = click.option("--decoder", default="auto", show_default=True, type=click.Choice(("auto", *DECODERS)),
                       help="torchvision: JPEGs decoded in batches by libjpeg-turbo on the CPU (PIL's pixels, faster); "
                            "nvjpeg: the same on the GPU; nvimgcodec: on the GPU's JPEG engines (nvImageCodec, installed "
                            "apart); other files by PIL. auto: torchvision where TorchCodec or torchvision can decode, else pil.")
jpeg_draft = click.option("--jpeg-draft", is_flag=True,
                          help="Decode large JPEGs at 1/2, 1/4 or 1/8 size (libjpeg's DCT scaling), never below the "
                               "largest Q: camera photos decode several times faster; descriptors differ slightly.")
max_pixels = click.option("--max-pixels", default=DEFAULT_MAX_PIXELS, show_default=True, type=click.IntRange(min=1), help="Refuse larger images unread (decompression bombs).")
min_side = click.option("--min-side", default=DEFAULT_MIN_SIDE, show_default=True, type=click.IntRange(min=1), help="Refuse images with a smaller side.")
part_size = click.option("--part-size", default=4096, show_default=True, type=click.IntRange(min=1),
                         help="Images per committed part (of an HDF5 OUTPUT): the most a kill can cost.")


def parse_shard(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    index, _, count = value.partition("/")
    try:
        shard = int(index), int(count)
    except ValueError:
        raise click.BadParameter(f"expected K/N such as 1/4, got {value!r}") from None
    if not 1 <= shard[0] <= shard[1]:
        raise click.BadParameter(f"expected K/N with 1 <= K <= N (shards are numbered from 1), got {value!r}")
    return shard


# Running an HDF5 OUTPUT's job in blocks (--shard), or rewriting a finished one (rewrite_of).
shard = click.option("--shard", metavar="K/N", callback=parse_shard,
                     help="Only the K-th of N equal blocks of the images (one per GPU or machine); 'vggfeat merge' joins the N files.")
retry_failed = click.option("--retry-failed", is_flag=True,
                            help="Run again on the images that OUTPUT, made by the same command, lists as failed, and rewrite it.")
update = click.option("--update", is_flag=True,
                      help="Bring OUTPUT, made by the same command, up to date with IMAGES: run only on the images it does not "
                           "hold (added since), leave out those no longer found, and rewrite it.")


def rewrite_of(overwrite: bool, retry_failed: bool, update: bool, shard: tuple[int, int] | None) -> str | None:
    """What a rewrite of OUTPUT runs on (:class:`~vggfeat.update.OutputUpdate`'s ``describe``):
    "failed" for --retry-failed, "new" for --update, None for neither; their conflicts refused."""
    if retry_failed and overwrite:
        raise click.UsageError("--retry-failed rewrites OUTPUT with its failed images done again; --overwrite "
                               "does every image anew: choose one")
    for given, name in ((overwrite, "--overwrite"), (retry_failed, "--retry-failed"), (shard, "--shard")):
        if update and given:
            raise click.UsageError(f"--update brings OUTPUT up to date with all of IMAGES; it takes no {name}")
    return "failed" if retry_failed else "new" if update else None


resize_side = click.option("--resize-side", default="short", show_default=True, type=click.Choice(["short", "long"]),
                           help="Q sets the short side (the paper's) or the long side (retrieval; conv/pool layers only).")


def _together(*decorators: Callable) -> Callable:
    """One decorator applying ``decorators`` as if stacked in this order (options keep their order)."""
    def apply(command: Callable) -> Callable:
        for decorator in reversed(decorators):
            command = decorator(command)
        return command
    return apply


# The groups every image-describing command takes, in --help order.
image_source = _together(images_and_output, file_list, root, archive_classes)
network = _together(model, weights, seed)
# classify's: several models are fused.
models = click.option("--model", "models", default="vgg16", show_default=True, callback=parse_models,
                      help=f"VGG configuration ({', '.join(ARCHITECTURES)}); several, comma-separated (vgg16,vgg19), "
                           "have their posteriors averaged, the paper's ConvNet fusion (a CSV OUTPUT only; "
                           "--weights: imagenet, random, or a file each, comma-separated).")
networks = _together(models, weights, seed)
autotune = click.option("--cudnn-autotune", "autotune", default="auto", show_default=True, type=click.Choice(AUTOTUNES),
                        help="Time cuDNN's algorithms for full batches (GPU; seconds per batch shape, then faster). "
                             "auto: in runs of 50,000 images or more.")
compile_network = click.option("--compile", "compile", default="auto", show_default=True, type=click.Choice(AUTOTUNES),
                                help="Run full batches through torch.compile (GPU: 1.6x faster batches after seconds of "
                                     "compiling per batch shape; CPU with AMX in bf16: 1.24-1.37x). auto: on a GPU, in runs "
                                     "of 50,000 images or more; on a CPU with AMX in bf16, of 5,000 or more.")
image_pipeline = _together(batch_size, workers, decoder, decode_in, jpeg_draft, max_pixels, min_side, autotune,
                           compile_network)


def output_of(paths: tuple[Path, ...], file_list: Path | None) -> Path:
    """OUTPUT of the ``[IMAGES] OUTPUT`` arguments (IMAGES only without ``--file-list``), checked."""
    if len(paths) != (1 if file_list else 2):
        want = "OUTPUT (images come from --file-list)" if file_list else "IMAGES and OUTPUT"
        raise click.UsageError(f"expected {want}, got {len(paths)} path(s)")
    return paths[-1]


def images_root(paths: tuple[Path, ...], file_list: Path | None, root: Path | None) -> Path:
    """The folder that the images' paths are relative to, and that a file of them records: IMAGES,
    or a list's ``--root`` (by default, the list's own folder)."""
    if not file_list:
        return paths[0]
    return root if root is not None else list_folder(file_list)


def check_source(paths: tuple[Path, ...], file_list: Path | None, archive_classes: bool = False) -> None:
    """The folder of IMAGES, or the --file-list, exists: said at once, before the network loads."""
    common.refuse_without("--file-list", file_list, "root")  # IMAGES is the root of its images
    if file_list:
        if archive_classes:
            raise click.UsageError("--archive-classes: for IMAGES (a list gives its images' classes)")
        check_file_list(file_list)
    else:
        check_folder(paths[0])


def read_images(paths: tuple[Path, ...], file_list: Path | None, root: Path | None, archive_classes: bool = False,
                quiet: bool = False) -> ImageSet:
    """The images of ``--file-list`` (refused where none of them is there), or under IMAGES
    (arguments checked by :func:`output_of`); a warning for those of a format that this
    installation does not decode (HEIC without pillow-heif).

    Walking a large tree takes a while (a minute for ten million files on a local disk, more on a
    network file system): after two seconds, a counter shows that it goes on.
    """
    if file_list:
        images = read_file_list(file_list, root)
        check_listed_files(images, file_list)
    else:
        with progress_bar(quiet, unit="images", desc=f"finding images in {paths[0]}", delay=2) as bar:
            images = find_images(paths[0], progress=bar.update, archive_classes=archive_classes)
    for line in formats_not_decoded(images.paths):  # said even with --quiet: the run would fail them all
        click.secho(f"WARNING: {line}", err=True, fg="yellow")
    return images


def describe_settings(extractor: Extractor, images: int, devices: tuple[str, ...] = ()) -> str:
    """What the auto settings chose for a run over ``images``, for the line before the progress bar;
    with several ``devices``, for each one's process, over its share of the images."""
    from ..settings import decoder_library_of

    plan = extractor.plan_run(images // max(1, len(devices)))
    tuning = [name for name, on in (("cuDNN autotuning", plan.autotune), ("torch.compile", plan.compile)) if on]
    where = f"{', '.join(devices)} (a process each)" if len(devices) > 1 else extractor.device
    return (f"on {where}: precision {extractor.precision}, batches of up to {extractor.batch_size} inputs "
            f"({extractor.batch_pixels / 1e6:.1f} Mpx), "
            + common.counted(plan.workers, f"{extractor.decoder} decoding {'process' if plan.processes else 'thread'}",
                             f"{extractor.decoder} decoding processes" if plan.processes else "")
            + (f" ({decoder_library_of(extractor.decoder)})" if extractor.decoder != "pil" else "")
            + (", JPEG draft" if extractor.jpeg_draft else "") + "".join(f", {name}" for name in tuning))


def advise_precision(extractor: Extractor, precision: str, say: Callable[..., None]) -> None:
    """On a CPU, which way bf16 goes: where fp32 was the default and bf16 is faster, say so; where
    bf16 was asked for and is slower, warn."""
    from ..settings import cpu_bf16

    if extractor.device.type != "cpu":
        return
    bf16 = cpu_bf16()
    faster = {"amx": "AMX): --precision bf16 runs the network 3-4x faster",
              "avx512_bf16": "AVX512-BF16): --precision bf16 runs the network about 2x faster"}
    if precision == "auto" and bf16 in faster:
        say(f"note: this CPU computes bf16 in hardware ({faster[bf16]}, its descriptors within a cosine of 0.99999 of "
            "fp32's (README, Speed)")
    elif extractor.precision == "bf16" and bf16 == "converted":
        say("WARNING: this CPU has neither AMX nor AVX512-BF16, so bf16 is converted from and to fp32: the network runs "
            "several times slower than in fp32 (README, Speed); --precision fp32 is faster here", fg="yellow")


def check_archive_classes(images: ImageSet, archive_classes: bool) -> None:
    """Refuse --archive-classes for a new file of IMAGES that hold no tar archive: it would do
    nothing, but the file would record it, and refuse an --update without it. (An update or a
    retry of a file that records it takes it as it is.)"""
    if not archive_classes:
        return
    root = Path(images.root)
    firsts = {path.split("/", 1)[0] for path in images.paths if "/" in path}
    # An archive directly in IMAGES, or in the archive IMAGES (a folder may be named x.tar too).
    if not any(first.lower().endswith(ARCHIVE_EXTENSION) and (root.is_file() or (root / first).is_file())
               for first in firsts):
        raise click.UsageError(f"--archive-classes: {images.root} holds no tar archive directly, whose name would be "
                               "its images' class")


def refuse_unused(weights_each: tuple[str, ...], devices: tuple[str, ...], decoder: str, autotune: str) -> None:
    """Refuse options given that the run would not use: ``--seed`` without random weights, and
    ``--cudnn-autotune on`` where no cuDNN runs, or where it is never tuned (nvJPEG decoding)."""
    from ..settings import resolve_device

    common.refuse_without("--weights random", "random" in weights_each, "seed")
    if autotune == "on" and any(resolve_device(name).type != "cuda" for name in devices):
        raise click.UsageError("--cudnn-autotune on tunes cuDNN's convolutions, on a CUDA device: leave it out on the CPU")
    if autotune == "on" and decoder == "nvjpeg":
        raise click.UsageError("--cudnn-autotune on: not with --decoder nvjpeg, whose decoding hung on an H100 while "
                               "cuDNN autotuned; use --decoder nvimgcodec or torchvision")


def warn_random_weights(seed: int, consequence: str) -> None:
    """Said even with ``--quiet``: results of random weights must not pass for ImageNet ones."""
    click.secho(f"WARNING: random weights (seed {seed}): {consequence}; use them for smoke tests only.",
                err=True, fg="yellow", bold=True)
