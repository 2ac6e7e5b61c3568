"""Several devices on uneven work: one block per device against blocks taken in turn, in one run.

    python benchmarks/bench_blocks.py --count 64 --devices cpu,cpu

``extract --device A,B`` cuts the sorted images into blocks. Where the images' cost differs along
the sorted order (a folder of panoramas, one of thumbnails; or devices of different speeds), one
equal block per device leaves the others waiting for the slowest. This makes ``--count`` JPEGs
whose first half are 4:1 panoramas (about three times the network's work of the rest at a scale Q)
and second half 4:3 photos, then times :class:`MultiDeviceJob` over them twice: with one block per
device (the baseline: what every run did before the seventeenth session), and with
``--blocks-per-device`` blocks each, taken in turn. Random weights; each run's processes start,
load the network and merge the blocks within its time. ``--even``: all images 500x375, where
blocks can only cost (each pays its own start): what they cost.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cuda_check import require_cuda
import vggfeat.multidevice
from vggfeat import Extractor, MultiDeviceJob, VggfeatError, find_images


def make_jpegs(folder: Path, count: int, even: bool) -> None:
    rng = np.random.default_rng(0)
    for i in range(count):
        width, height = (1500, 375) if i < count // 2 and not even else (500, 375)
        low = rng.integers(0, 256, (height // 25, width // 25, 3), dtype=np.uint8)
        Image.fromarray(low).resize((width, height), Image.BILINEAR).save(folder / f"{i:05d}.jpg", quality=90)


def timed(extractor: Extractor, devices: list[str], folder: Path, blocks_per_device: int) -> tuple[float, int]:
    """Seconds of a run with ``blocks_per_device`` blocks each, and the blocks it had."""
    images = find_images(folder)
    vggfeat.multidevice.BLOCK_IMAGES = max(1, len(images) // (len(devices) * blocks_per_device))
    output = folder.parent / "out.h5"
    job = MultiDeviceJob(extractor, devices, images, output, overwrite=True)
    began = time.perf_counter()
    job.run()
    seconds = time.perf_counter() - began
    output.unlink()
    return seconds, job.blocks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--devices", default="cpu,cpu")
    parser.add_argument("--blocks-per-device", type=int, default=8)
    parser.add_argument("--scales", default="256")
    parser.add_argument("--workers", type=int, default=1, help="decoding threads of each device's process")
    parser.add_argument("--even", action="store_true", help="every image 500x375: the blocks' own cost")
    parser.add_argument("--center-crop", action="store_true", help="the single-scale setting's crop (with --scales 224)")
    parser.add_argument("--decode-in", default="threads", choices=["threads", "processes"])
    args = parser.parse_args()
    require_cuda("bench_blocks", args.devices, "--devices")
    devices = args.devices.split(",")
    scales = [int(q) for q in args.scales.split(",")]
    extractor = Extractor("vgg16", weights="random", scales=scales, flip=False, device=devices[0], workers=args.workers,
                          center_crop=args.center_crop, decode_in=args.decode_in)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        make_jpegs(folder, args.count, args.even)
        one, one_blocks = timed(extractor, devices, folder, 1)
        taken, blocks = timed(extractor, devices, folder, args.blocks_per_device)
    sizes = "all 500x375" if args.even else "first half 1500x375, second half 500x375"
    print(f"{args.count} JPEGs ({sizes}), vgg16 fc7, Q={args.scales}{', centre crop' if args.center_crop else ''}, no flip, "
          f"on {', '.join(devices)}")
    print(f"  {f'one block per device ({one_blocks} blocks)':36s} {one:7.1f} s  {args.count / one:6.2f} images/s")
    print(f"  {f'blocks taken in turn ({blocks} blocks)':36s} {taken:7.1f} s  {args.count / taken:6.2f} images/s  "
          f"{one / taken:.2f}x")


if __name__ == "__main__":
    try:
        main()
    except VggfeatError as error:
        sys.exit(f"error: {error}")
