"""Two networks' descriptors side by side: one run that reads each image once
(``extract --model vgg16,vgg19``, :class:`vggfeat.fused.FusedExtractor`) against the baseline of
one run per network (``extract`` twice, then ``stack``), in one process, on JPEGs it makes.

Each way describes the same files through :meth:`Extractor.iter_chunks` (reading, decoding,
network), the fastest of ``--repeat``; the stacking of the baseline's two arrays is not counted
(``vggfeat stack`` copies rows, a small cost beside a network). Also: the seconds of reading
alone (decoding, no network), what the fused run saves once per network after the first.

    python benchmarks/bench_fused.py --count 64 --models vgg16,vgg19 --scales 224 --center-crop --device cpu
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench_extract import jpeg_kilobytes, make_jpegs
from bench_reader import read_all
from cuda_check import require_cuda
from vggfeat.errors import VggfeatError
from vggfeat.extractor import Extractor
from vggfeat.fused import FusedExtractor
from vggfeat.reading import ImageReader


def seconds(describe, repeat: int) -> tuple[float, np.ndarray]:
    """The fastest of ``repeat`` calls of ``describe()``, and its result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        began = time.perf_counter()
        result = describe()
        best = min(best, time.perf_counter() - began)
    return best, result


def described(extractor: Extractor, files: list[Path]) -> np.ndarray:
    return np.concatenate([chunk.features for chunk in extractor.iter_chunks(files)])


def read_alone(extractor: Extractor, files: list[Path]) -> int:
    """Read and decode every file as a run does (its reader, its threads), without the network."""
    plan = extractor.plan_run(len(files))
    reader = ImageReader(extractor.device, extractor.decoder, plan.workers, extractor.max_pixels, extractor.min_side,
                         processes=plan.processes)
    return read_all(reader, files, lookahead=64 + 2 * plan.workers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--models", default="vgg16,vgg19")
    parser.add_argument("--scales", default="224")
    parser.add_argument("--center-crop", action="store_true")
    parser.add_argument("--no-flip", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    require_cuda("bench_fused", args.device)
    models = args.models.split(",")
    options = {"weights": "random", "scales": [int(q) for q in args.scales.split(",")], "center_crop": args.center_crop,
               "flip": not args.no_flip, "device": args.device, "precision": args.precision}
    fused = FusedExtractor(models, **options)
    each = [Extractor(model, **options) for model in models]
    with tempfile.TemporaryDirectory() as folder:
        files = make_jpegs(Path(folder), args.count)
        for extractor in (fused, *each):  # warm-up of both ways: the networks' first batches, the decoding threads
            described(extractor, files[:8])
        fused_seconds, X = seconds(lambda: described(fused, files), args.repeat)
        apart_seconds, Y = seconds(lambda: np.hstack([described(extractor, files) for extractor in each]), args.repeat)
        reading_seconds, _ = seconds(lambda: read_alone(fused, files), args.repeat)
        kilobytes = jpeg_kilobytes(files)
    assert np.allclose(X, Y, rtol=1e-4, atol=1e-4 * np.abs(Y).max()), "the two ways disagree"
    device = torch.cuda.get_device_name(fused.device) if fused.device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"{args.count} photo-like JPEGs ({kilobytes:.0f} KB on average), {'+'.join(models)}, Q={args.scales}"
          f"{', centre crop' if args.center_crop else ''}{', no flip' if args.no_flip else ', flip'}, "
          f"{fused.precision}, on {fused.device} ({device})")
    print("| way | seconds | images/s | ratio |\n| --- | ---: | ---: | --- |")
    print(f"| one run per network (baseline) | {apart_seconds:.2f} | {args.count / apart_seconds:.1f} | |")
    print(f"| one run, each image read once (`--model {args.models}`) | {fused_seconds:.2f} | "
          f"{args.count / fused_seconds:.1f} | {apart_seconds / fused_seconds:.2f}x the baseline |")
    print(f"| reading alone (decoding, no network) | {reading_seconds:.2f} | {args.count / reading_seconds:.1f} | "
          f"{reading_seconds / apart_seconds:.0%} of the baseline's time |")


if __name__ == "__main__":
    try:
        main()
    except VggfeatError as error:
        sys.exit(f"error: {error}")
