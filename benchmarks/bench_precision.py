"""Reduced precision against fp32: descriptor cosine per image, and SVM accuracy on a labelled set.

    python benchmarks/bench_precision.py --device cuda --precisions bf16,fp16 --per-class 40
    python benchmarks/bench_precision.py --images ./voc_subset --weights imagenet --device cuda

Describes one labelled image set (class subfolders; by default a generated one, three drawn
classes with strong noise) once in fp32 and once in each reduced precision, with the paper's
descriptor (VGG16 fc7, Q = 256,384,512, flip, mean). Prints, for each precision, the lowest and
mean cosine similarity to the fp32 descriptor of the same image, and the accuracy of a linear SVM
(C = 1) trained on half of each class and tested on the other half, next to fp32's, with how many
test predictions differ from fp32's.
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
from vggfeat import Extractor, VggfeatError, find_images
from vggfeat.svm import LinearSVM

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from make_demo_images import checkers, circles, stripes  # noqa: E402


def make_labelled_set(folder: Path, per_class: int, noise: float) -> None:
    """Drawn classes (the demo's), 375x500 / 500x375 JPEGs, with noise that makes them confusable."""
    rng = np.random.default_rng(1409)
    for name, draw in (("stripes", stripes), ("circles", circles), ("checkers", checkers)):
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            width, height = (500, 375) if i % 2 == 0 else (375, 500)
            pixels = np.asarray(draw(rng, width, height), dtype=np.float64)
            noisy = np.clip(pixels + rng.normal(0, noise, pixels.shape), 0, 255).astype(np.uint8)
            Image.fromarray(noisy).save(folder / name / f"{i:04d}.jpg", quality=90)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, help="labelled set (class subfolders) [default: a generated one]")
    parser.add_argument("--per-class", type=int, default=20, help="images per class of the generated set")
    parser.add_argument("--noise", type=float, default=90.0, help="pixel noise (std) of the generated set")
    parser.add_argument("--weights", default="random")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precisions", default="bf16", help="compared with fp32, e.g. bf16,fp16,tf32")
    parser.add_argument("--scales", default="256,384,512")
    args = parser.parse_args()
    require_cuda("bench_precision", args.device)
    scales = [int(q) for q in args.scales.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.images
        if folder is None:
            folder = Path(tmp) / "images"
            make_labelled_set(folder, args.per_class, args.noise)
        images = find_images(folder)
        paths, labels = images.files(), images.labels
        described = {}
        for precision in ["fp32", *args.precisions.split(",")]:
            # No speed is measured here, and fp32 autotuning of large batches takes minutes.
            extractor = Extractor("vgg16", weights=args.weights, device=args.device, precision=precision, scales=scales,
                                  autotune="off")
            began = time.perf_counter()
            described[precision] = extractor.extract(paths)
            print(f"{precision}: {len(paths)} images in {time.perf_counter() - began:.1f} s on {extractor.device}")
    test = np.zeros(len(paths), dtype=bool)
    for k in np.unique(labels):
        test[np.flatnonzero(labels == k)[1::2]] = True  # every other image of each class
    print(f"\nvgg16 fc7, Q={args.scales}, flip, mean; weights {args.weights}; {len(paths)} images, "
          f"{len(images.classes)} classes; SVM C=1 trained on {(~test).sum()}, tested on {test.sum()}")
    print(f"{'precision':9}  {'min cosine':>10}  {'mean cosine':>11}  {'SVM accuracy':>12}  differing predictions")
    reference = None
    for precision, X in described.items():
        similarity = cosine(X, described["fp32"])
        svm = LinearSVM(C=1.0).fit(X[~test], labels[~test])
        predicted = svm.predict(X[test])
        reference = predicted if reference is None else reference
        accuracy = np.mean(predicted == labels[test])
        print(f"{precision:9}  {similarity.min():10.6f}  {similarity.mean():11.6f}  {accuracy:12.1%}  "
              f"{int((predicted != reference).sum())} of {test.sum()}")


if __name__ == "__main__":
    try:
        main()
    except VggfeatError as error:
        sys.exit(f"error: {error}")
