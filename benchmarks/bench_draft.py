"""Large photos with and without ``--jpeg-draft``, in one run: how fast they are read, and how much
the drafted images and descriptors differ from whole decoding (the baseline: vggfeat's default).

    python benchmarks/bench_draft.py --count 16 --size 4000x3000 --workers 2 --describe 4

Makes ``--count`` photo-like JPEGs of ``--size`` and its transpose in turn (a camera's 12 Mpx by
default: bench_extract.py's 1/f texture, in varied contrast and colour), then:

1. reads them with :class:`ImageReader` as a run with ``--scales`` would, the decoder it picks by
   default, in ``--workers`` threads and in as many processes, whole and drafted; prints images/s
   and the drafted/whole ratio. Camera photos leave a GPU machine decode-bound (RESULTS.md, sixth
   session), so this rate is what a GPU run over them gets at most.
2. for every image, the network's input at each Q from the drafted pixels against the whole ones:
   the mean and largest difference, in levels of 0..255.
3. with ``--describe K``, the descriptors of the first K images (VGG16 fc7, ``--scales``, flip,
   mean; ``--weights``, random unless given, on ``--device``): the lowest and mean cosine
   similarity of drafted to whole.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench_extract import jpeg_kilobytes, photo_texture
from cuda_check import require_cuda
from vggfeat import Extractor, VggfeatError
from vggfeat.decode import decode_image, decode_image_reduced
from vggfeat.jpeg import decoder_library
from vggfeat.reading import ImageReader, Reduced
from vggfeat.resize import IMAGENET_STD, jpeg_reduction, to_inputs
from vggfeat.settings import resolve_decoder


def make_photos(folder: Path, count: int, height: int, width: int) -> list[Path]:
    rng = np.random.default_rng(0)
    texture = photo_texture(rng, height, width)
    paths = []
    for i in range(count):
        window = texture if i % 2 == 0 else texture.transpose(1, 0, 2)
        window = np.roll(window, (int(rng.integers(0, height)), int(rng.integers(0, width))), axis=(0, 1))
        pixels = np.clip(rng.uniform(90, 160, 3) + rng.uniform(30, 60) * window, 0, 255).astype(np.uint8)
        paths.append(folder / f"{i:04d}.jpg")
        Image.fromarray(pixels).save(paths[-1], quality=90)
    return paths


def images_per_second(paths: list[Path], decoder: str, workers: int, processes: bool, reduction) -> tuple[float, int]:
    """(images/s, images decoded smaller) reading ``paths`` once; with processes, their start counted (each
    read starts its own: about 0.15-0.3 s here, which weighs most at a small --count)."""
    reader = ImageReader(torch.device("cpu"), decoder, workers, 10**9, 32, processes=processes, reduction=reduction)
    with reader.read(paths[:1], lookahead=1) as decoded:  # imports; its processes end with it
        list(decoded)
    began = time.perf_counter()
    with reader.read(paths, lookahead=2 * workers + 2) as decoded:
        reduced = sum(isinstance(result, Reduced) for result in decoded)
    return len(paths) / (time.perf_counter() - began), reduced


def input_differences(path: Path, scales: tuple[int, ...], reduction) -> list[tuple[float, float]]:
    """(mean, largest) difference in 0..255 levels of the network input at each scale."""
    whole = torch.from_numpy(decode_image(path)).permute(2, 0, 1)
    pixels, full_size = decode_image_reduced(path, reduction)
    drafted = torch.from_numpy(pixels).permute(2, 0, 1)
    levels = torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255
    out = []
    for scale in scales:
        difference = ((to_inputs([whole], scale)[0] - to_inputs([drafted], scale, sizes=[full_size])[0]) * levels).abs()
        out.append((float(difference.mean()), float(difference.max())))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--size", default="4000x3000", help="width x height of the JPEGs")
    parser.add_argument("--scales", default="256,384,512")
    parser.add_argument("--workers", type=int, default=2, help="decoding threads, then as many processes")
    parser.add_argument("--describe", type=int, default=0, metavar="K", help="compare the descriptors of K images")
    parser.add_argument("--weights", default="random")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    require_cuda("bench_draft", args.device)
    width, height = (int(side) for side in args.size.split("x"))
    scales = tuple(int(q) for q in args.scales.split(","))
    reduction = functools.partial(jpeg_reduction, scales=scales, side="short")
    decoder = resolve_decoder("auto")
    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        paths = make_photos(Path(tmp), args.count, height, width)
        factor = reduction(height, width)
        print(f"{args.count} photo-like JPEGs of {args.size} and {height}x{width} ({jpeg_kilobytes(paths):.0f} KB on "
              f"average, made in {time.perf_counter() - began:.0f} s); Q = {args.scales}: drafted to 1/{factor}")
        print(f"1. reading, decoder {decoder} ({decoder_library()}) for whole JPEGs, PIL's draft mode for drafted ones:")
        for processes in (False, True):
            kind = f"{args.workers} {'processes' if processes else 'threads'}"
            whole, _ = images_per_second(paths, decoder, args.workers, processes, None)
            drafted, reduced = images_per_second(paths, decoder, args.workers, processes, reduction)
            print(f"   {kind:12s} whole {whole:7.1f} images/s   drafted {drafted:7.1f} images/s   "
                  f"{drafted / whole:4.2f}x   ({reduced} of {len(paths)} drafted)")
        print("2. network input, drafted against whole, levels of 0..255 (mean of the images' means; largest):")
        differences = np.array([input_differences(path, scales, reduction) for path in paths])  # [image, scale, 2]
        for scale, per_image in zip(scales, differences.transpose(1, 0, 2)):
            print(f"   Q={scale:<4d} mean {per_image[:, 0].mean():5.2f}   largest {per_image[:, 1].max():5.1f}")
        if args.describe:
            chosen = paths[: args.describe]
            described = {}
            for draft in (False, True):
                extractor = Extractor("vgg16", weights=args.weights, scales=scales, device=args.device,
                                      precision="fp32", jpeg_draft=draft)
                described[draft] = extractor.extract(chosen)
            a, b = described[False], described[True]
            cosine = (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
            print(f"3. descriptors of {len(chosen)} images (VGG16 fc7, {args.weights} weights, fp32): cosine drafted "
                  f"to whole: lowest {cosine.min():.6f}, mean {cosine.mean():.6f}")


if __name__ == "__main__":
    try:
        main()
    except VggfeatError as error:
        sys.exit(f"error: {error}")
