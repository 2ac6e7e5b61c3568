"""Extraction throughput: vggfeat end to end against model-only and a naive loop, in one run.

    python benchmarks/bench_extract.py --count 256 --device cuda --precision fp32

Makes its own JPEG set (500x375 and 375x500, like PASCAL VOC and Caltech photos), then measures
in this one process, with random weights (speed does not depend on their values):
  (a) model only: the network on inputs already resized and on the device, full batches of one
      shape, timed after a first pass that warms up cuDNN's autotuning;
  (b) vggfeat end to end: files on disk to a complete HDF5 (ExtractionJob, as the CLI runs it);
  (c) naive baseline: per image, per scale, per flip, PIL decoding and torchvision transforms,
      fp32, batch of one, as a user would write it from torchvision.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from vggfeat import ExtractionJob, Extractor, find_images, load_network
from vggfeat.pooling import global_pool
from vggfeat.resize import IMAGENET_MEAN, IMAGENET_STD, as_tensor, to_inputs


def make_jpegs(folder: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(count):
        height, width = (375, 500) if i % 2 == 0 else (500, 375)
        low = rng.integers(0, 256, (height // 25, width // 25, 3), dtype=np.uint8)
        picture = Image.fromarray(low).resize((width, height), Image.BILINEAR)
        picture.save(folder / f"{i:06d}.jpg", quality=90)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def model_only(extractor: Extractor, files: list[Path]) -> float:
    """Images/s of the network alone on the very inputs vggfeat builds, already on the device."""
    from vggfeat.decode import decode_image

    pixels = [as_tensor(decode_image(f), extractor.device) for f in files]
    inputs = {q: to_inputs(pixels, q, extractor.resize_side, extractor.crop) for q in extractor.scales}
    batches = {}
    for q, xs in inputs.items():
        xs = xs + [x.flip(-1) for x in xs] if extractor.flip else xs
        by_shape: dict[tuple, list] = {}
        for x in xs:
            by_shape.setdefault(tuple(x.shape), []).append(x)
        batches[q] = [torch.stack(group[i : i + extractor.batch_size])
                      for group in by_shape.values() for i in range(0, len(group), extractor.batch_size)]
    for timed in (False, True):  # the first pass warms up cuDNN's autotuning for every shape
        synchronize(extractor.device)
        began = time.perf_counter()
        for q in extractor.scales:
            for batch in batches[q]:
                extractor._forward(list(batch))
        synchronize(extractor.device)
    return len(files) / (time.perf_counter() - began)


def end_to_end(extractor: Extractor, folder: Path) -> tuple[float, float | None]:
    """Images/s from files to a complete HDF5, and the mean GPU utilisation meanwhile."""
    images = find_images(folder)
    output = folder.parent / "bench.h5"
    job = ExtractionJob(extractor, images, output, overwrite=True)
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            samples.append(torch.cuda.utilization(extractor.device))

    sampler = threading.Thread(target=sample, daemon=True)
    if extractor.device.type == "cuda":
        sampler.start()
    began = time.perf_counter()
    job.run()
    rate = len(images) / (time.perf_counter() - began)
    done.set()
    output.unlink()
    return rate, (sum(samples) / len(samples) if samples else None)


def naive(extractor: Extractor, files: list[Path]) -> float:
    network, device = extractor.network, extractor.device
    normalize = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    synchronize(device)
    began = time.perf_counter()
    with torch.inference_mode():
        for f in files:
            image = Image.open(f).convert("RGB")
            per_scale = []
            for q in extractor.scales:
                resized = v2.functional.resize(image, q)
                if extractor.crop:
                    resized = v2.functional.center_crop(resized, extractor.crop)
                x = normalize(resized).unsqueeze(0).to(device)
                views = [x, x.flip(-1)] if extractor.flip else [x]
                per_scale.append(torch.stack([global_pool(network(v, extractor.layer)[0], None) for v in views]).mean(0))
            torch.stack(per_scale).mean(0).cpu()
    synchronize(device)
    return len(files) / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--naive-count", type=int, default=None, help="images for the slow naive loop [default: count]")
    parser.add_argument("--model-only-count", type=int, default=512,
                        help="images for model only, whose inputs are all held on the device at once")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--scales", default="256,384,512")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--center-crop", action="store_true", help="the fast single-view setting (all three measures crop)")
    args = parser.parse_args()
    scales = [int(q) for q in args.scales.split(",")]
    network = load_network("vgg16", "random", 0)
    extractor = Extractor(network, scales=scales, device=args.device, precision=args.precision,
                          batch_size=args.batch_size, center_crop=args.center_crop)
    name = torch.cuda.get_device_name() if extractor.device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device {name}; vgg16 fc7, Q={args.scales}, flip, mean; precision {args.precision}; "
          f"batch {extractor.batch_size}; {args.count} JPEGs 500x375/375x500 "
          f"(model only on {min(args.count, args.model_only_count)}, naive on {args.naive_count or args.count})")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        make_jpegs(folder, args.count)
        files = sorted(folder.iterdir())
        a = model_only(extractor, files[: args.model_only_count])
        b, utilisation = end_to_end(extractor, folder)
        c = naive(extractor, files[: args.naive_count or args.count])
    print(f"(a) model only       {a:9.2f} images/s")
    busy = f"; GPU busy {utilisation:.0f}% of the time" if utilisation is not None else ""
    print(f"(b) vggfeat e2e      {b:9.2f} images/s   {b / a:6.1%} of model only{busy}")
    print(f"(c) naive loop       {c:9.2f} images/s   vggfeat is {b / c:5.1f}x faster")


if __name__ == "__main__":
    main()
