"""JPEG decoding cost per image: PIL against the batched decoders (the default where a library can decode), in one run.

    python benchmarks/bench_decode.py --count 64 --passes 3

Writes ``--count`` 500x375 JPEGs, then times, on one thread, each way vggfeat can turn such a file
into RGB pixels: PIL (``decode_image``: open, EXIF, convert, copy), and ``--decoder torchvision``
(header check in ``read_jpeg``, then ``decode_jpegs`` in groups of 32) through each library that can
decode here (TorchCodec, torchvision.io). Checks that every way gives PIL's pixels, and prints the
milliseconds per image and how many cores of this speed 5,000 images/s would need. Also times the
header check alone (Python that holds the GIL in every decoding thread): ``read_jpeg``'s marker
walk against Pillow's header parse, which it replaced; and the copy of the decoded pixels into a
reused block of memory, as a decoding process makes (``vggfeat.processes``): in the layout they
were decoded in, (H, W, 3), against transposed to [3, H, W], as processes did before 2026-11-23.

``--draft Q`` also times ``--jpeg-draft`` (``decode_image_reduced``): Pillow's draft mode,
libjpeg's decoding at 1/2, 1/4 or 1/8 size in the DCT domain, to no less than what Q needs; for
large photos (``--size 4000x3000``), whose full decoding may leave a GPU waiting. ``--grain`` adds
pixel noise, as a camera's photos have: smooth images cost little entropy decoding, which
drafting does not reduce. ``bench_draft.py`` measures how much drafted descriptors differ.

``--scaled SIDE`` also times libjpeg-turbo's scaled decoding by any factor M/8 (through simplejpeg,
which vggfeat does not use or install: ``pip install simplejpeg``), whole and to the smallest
scaled size whose sides are SIDE or more: could a factor between 1/2 and 1, which Pillow's draft
mode lacks, speed up the single-scale setting's 500x375 JPEGs (SIDE 224)?
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import io
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import vggfeat.jpeg
from bench_extract import jpeg_kilobytes
from bench_extract import make_jpegs as make_photos
from vggfeat.decode import decode_image, decode_image_reduced
from vggfeat.jpeg import decode_jpegs, read_jpeg
from vggfeat.reading import JPEG_GROUP
from vggfeat.resize import jpeg_reduction


def make_jpegs(folder: Path, count: int, size: tuple[int, int] = (500, 375), grain: float = 0.0) -> list[Path]:
    rng, paths = np.random.default_rng(0), []
    for i in range(count):
        low = rng.integers(0, 256, (15, 20, 3), dtype=np.uint8)
        pixels = np.asarray(Image.fromarray(low).resize(size, Image.BILINEAR), dtype=np.float32)
        if grain:
            pixels += rng.normal(0, grain, pixels.shape).astype(np.float32)
        path = folder / f"{i:04d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def by_pil(paths: list[Path]) -> list[np.ndarray]:
    return [decode_image(path) for path in paths]


def by_batches(paths: list[Path]) -> list[np.ndarray]:
    pixels = []
    for start in range(0, len(paths), JPEG_GROUP):
        jpegs = [read_jpeg(path, 10**9, 1) for path in paths[start : start + JPEG_GROUP]]
        pixels += [x.permute(1, 2, 0).numpy() for x in decode_jpegs(jpegs, torch.device("cpu"))]
    return pixels


def drafted(scale: int) -> Callable[[list[Path]], list[np.ndarray]]:
    """``--jpeg-draft`` for Q = ``scale``: the largest DCT scaling that keeps the resized shape."""
    reduction = functools.partial(jpeg_reduction, scales=(scale,), side="short")
    return lambda paths: [decode_image_reduced(path, reduction)[0] for path in paths]


def pillow_header(data: bytes) -> tuple:
    """What read_jpeg asked of Pillow before its own marker walk: format, mode, orientation, size."""
    with Image.open(io.BytesIO(data)) as image:
        return image.format, image.mode, image.getexif().get(0x0112, 1), image.size


def microseconds_per_header(check: Callable[[bytes], object], datas: list[bytes], passes: int) -> float:
    best = float("inf")
    for _ in range(passes):
        began = time.perf_counter()
        for data in datas:
            check(data)
        best = min(best, (time.perf_counter() - began) / len(datas))
    return 1e6 * best


def microseconds_per_copy(images: list[torch.Tensor], transposed: bool, passes: int) -> float:
    """The copy of decoded [3, H, W] images (laid out (H, W, 3), as decoders make them) into one
    reused block, one after another: as they lie, or transposed to [3, H, W] (best of the passes)."""
    block = torch.empty(max(x.numel() for x in images), dtype=torch.uint8)
    best = float("inf")
    for _ in range(passes):
        began = time.perf_counter()
        for x in images:
            source = x if transposed else x.permute(1, 2, 0)
            block[: x.numel()].view(source.shape).copy_(source)
        best = min(best, (time.perf_counter() - began) / len(images))
    return 1e6 * best


def milliseconds_per_image(decode: Callable[[list[Path]], list[np.ndarray]], paths: list[Path], passes: int) -> float:
    decode(paths)  # warm-up: file cache, imports
    began = time.perf_counter()
    for _ in range(passes):
        decode(paths)
    return 1000 * (time.perf_counter() - began) / (passes * len(paths))


def turbo_scaled(side: int) -> Callable[[list[Path]], list[np.ndarray]]:
    """simplejpeg's decoding to the smallest M/8 scaling whose sides are ``side`` or more (0: whole)."""
    import simplejpeg

    return lambda paths: [simplejpeg.decode_jpeg(path.read_bytes(), min_height=side, min_width=side) for path in paths]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--size", default="500x375", help="width x height of the JPEGs")
    parser.add_argument("--grain", type=float, default=0.0, help="pixel noise (std) [default: none]")
    parser.add_argument("--draft", type=int, metavar="Q", help="also time --jpeg-draft for this scale")
    parser.add_argument("--scaled", type=int, metavar="SIDE",
                        help="also time simplejpeg (libjpeg-turbo, M/8 scaling) whole and scaled to sides >= SIDE")
    parser.add_argument("--photo", action="store_true",
                        help="bench_extract.py's photo-like JPEGs instead (500x375 and 375x500; --size and --grain unused)")
    args = parser.parse_args()
    if args.photo and (args.size != "500x375" or args.grain):
        parser.error("--photo makes 500x375 and 375x500 JPEGs of their own texture: no --size or --grain")
    if args.scaled and importlib.util.find_spec("simplejpeg") is None:  # before the JPEGs are made and timed
        sys.exit("bench_decode: --scaled needs simplejpeg, which vggfeat does not install: pip install simplejpeg")
    size = tuple(int(side) for side in args.size.split("x"))
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_photos(Path(tmp), args.count) if args.photo else make_jpegs(Path(tmp), args.count, size, args.grain)
        kilobytes = jpeg_kilobytes(paths)
        reference = by_pil(paths)
        results = {"PIL": milliseconds_per_image(by_pil, paths, args.passes)}
        if args.draft:
            shape = drafted(args.draft)(paths[:1])[0].shape
            results[f"PIL drafted to {shape[1]}x{shape[0]}"] = milliseconds_per_image(drafted(args.draft), paths, args.passes)
        if args.scaled:
            results["simplejpeg whole"] = milliseconds_per_image(turbo_scaled(0), paths, args.passes)
            shape = turbo_scaled(args.scaled)(paths[:1])[0].shape
            results[f"simplejpeg scaled to {shape[1]}x{shape[0]}"] = milliseconds_per_image(turbo_scaled(args.scaled), paths,
                                                                                             args.passes)
        for library, module in dict(vggfeat.jpeg.LIBRARIES).items():
            vggfeat.jpeg.LIBRARIES = {library: module}
            vggfeat.jpeg.decoder_library.cache_clear()
            vggfeat.jpeg.batch_decoder.cache_clear()
            name = vggfeat.jpeg.decoder_library()
            if name == "none":
                print(f"{library}: cannot decode here, skipped")
                continue
            assert all(np.array_equal(a, b) for a, b in zip(by_batches(paths), reference)), f"{name} differs from PIL"
            results[name] = milliseconds_per_image(by_batches, paths, args.passes)
        datas = [path.read_bytes() for path in paths]
        headers = {"Pillow's header parse": microseconds_per_header(pillow_header, datas, args.passes),
                   "read_jpeg's marker walk": microseconds_per_header(vggfeat.jpeg._plain_jpeg_size, datas, args.passes)}
        decoded = [torch.from_numpy(rgb).permute(2, 0, 1) for rgb in reference]
        copies = {"as decoded, (H, W, 3)": microseconds_per_copy(decoded, False, args.passes),
                  "transposed to [3, H, W]": microseconds_per_copy(decoded, True, args.passes)}
    grain = f", grain {args.grain:g}" if args.grain else ""
    drafts = " (drafted and scaled ones: fewer of them)" if args.draft or args.scaled else ""
    kind = "photo-like JPEGs of 500x375 and 375x500" if args.photo else f"JPEGs of {args.size}{grain}"
    print(f"{args.count} {kind} ({kilobytes:.0f} KB on average), one thread, mean of {args.passes} passes; "
          f"all give PIL's pixels{drafts}")
    for name, ms in results.items():
        print(f"  {name:32s} {ms:6.2f} ms per image  {results['PIL'] / ms:4.2f}x PIL  "
              f"{5000 * ms / 1000:4.1f} cores for 5,000 images/s")
    print("header check alone (best of the passes):")
    for name, us in headers.items():
        print(f"  {name:32s} {us:6.1f} us per file")
    print("decoded pixels copied into a reused block, as a decoding process does (best of the passes):")
    for name, us in copies.items():
        print(f"  {name:32s} {us:6.1f} us per image")


if __name__ == "__main__":
    main()
