"""Classify: the paper's ImageNet evaluation, on the extraction pipeline.

:class:`Classifier` is an :class:`Extractor` whose descriptor is a vector of class probabilities, so
decoding, resizing, batching and failures are those of ``vggfeat extract``. Underneath, the
Extractor is set up to score single views: fc8 applied densely, its class-score map averaged over
space, one score vector per scale and no flip. The classifier then does what the paper does:

- **Dense evaluation** (Sec. 3.2): per scale Q, the class-score map of the whole image is spatially
  averaged ("sum-pooled" in the paper) and put through a softmax; the posteriors of the image and
  its horizontal flip are averaged, then those of the scales (Sec. 4.2).
- **Multi-crop evaluation** (Sec. 4.3): per scale, a 5x5 grid of 224x224 crops of the rescaled
  image and their flips, each through the network and a softmax; the posteriors are averaged.
- **Both**: the average of the dense and the multi-crop posteriors ("multi-crop & dense", Table 5).

The map is averaged, not summed, before the softmax: softmax(sum) = softmax(positions x mean) would
make a larger image (more positions) more confident for the same evidence, and larger scales
would outweigh smaller ones when their posteriors are averaged. Ranks within one view agree.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
import torchvision

from .choices import ARCHITECTURES, PAPER_SCALES
from .decode import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE
from .errors import VggfeatError, check_flags
from .extractor import Extractor
from .network import MIN_INPUT_SIDE, DenseVGG
from .resize import resized_shape, to_input

CROP_SIZE = MIN_INPUT_SIDE  # the training crop, 224
CROP_GRID = 5  # 5x5 crops per scale (Sec. 4.3: 150 crops over 3 scales, with flips)


def crop_grid(shape: tuple[int, int], size: int = CROP_SIZE, grid: int = CROP_GRID) -> list[tuple[int, int]]:
    """(top, left) of ``grid`` x ``grid`` crops of ``size`` x ``size`` spanning an image of ``shape``.

    Row by row; the first and last crops of each row and column touch the image's edges, the others
    are evenly spaced between them, rounded as torchvision's ``CenterCrop`` rounds, so the middle
    crop of an odd grid is its centre crop.
    """
    height, width = shape
    if min(height, width) < size:
        raise ValueError(f"a {height}x{width} image is smaller than the {size}x{size} crops")

    def offsets(extent: int) -> list[int]:
        return [int(round(i * (extent - size) / (grid - 1))) if grid > 1 else int(round((extent - size) / 2))
                for i in range(grid)]

    return [(top, left) for top in offsets(height) for left in offsets(width)]


def imagenet_categories(model: str = "vgg16") -> list[str]:
    """The 1000 ImageNet class names in torchvision's order, from its weights metadata (offline)."""
    return list(torchvision.models.get_model_weights(model if model in ARCHITECTURES else "vgg16")
                .IMAGENET1K_V1.meta["categories"])


def category_names(model: str, classes: int) -> list[str]:
    """Class names of ``model``'s fc8 of ``classes`` outputs: ImageNet's for 1000, ``class_<i>``
    otherwise (a fine-tuned fc8)."""
    return imagenet_categories(model) if classes == 1000 else [f"class_{i}" for i in range(classes)]


class Classifier(Extractor):
    """Class probabilities [n, classes] per image, by the paper's dense and/or multi-crop evaluation.

    Args are those of :class:`Extractor` (no ``layer``, ``pooling`` or ``aggregate``: fc8, averaged,
    softmax), plus:
        flip: average the posteriors with those of the horizontally flipped image (or crops).
        dense: the paper's dense evaluation.
        multi_crop: the paper's multi-crop evaluation; with ``dense``, the two are averaged.
        keep_top: keep only each image's ``keep_top`` most probable classes (all of them where it
            is the number of classes or more): rows of ``2 * k`` values, the k probabilities, best
            first, then their class indices, ties to the lower index. A CSV of the top classes
            needs no more, and its posteriors then take 100 times less disk (``classify``).
    """

    def __init__(
        self,
        model: str | DenseVGG = "vgg16",
        *,
        weights: str | os.PathLike = "imagenet",
        seed: int = 0,
        scales: Sequence[int] = PAPER_SCALES,
        flip: bool = True,
        dense: bool = True,
        multi_crop: bool = False,
        device: str = "auto",
        precision: str = "auto",
        batch_size: int | str | None = "auto",
        workers: int | None = None,
        decoder: str = "auto",
        decode_in: str = "threads",
        jpeg_draft: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        min_side: int = DEFAULT_MIN_SIDE,
        autotune: str = "auto",
        compile: str = "auto",
        keep_top: int | None = None,
    ) -> None:
        # Everything but the device, as given: MultiDeviceJob builds this classifier again on each
        # of its devices (Extractor.arguments would be the extractor's underneath).
        arguments = {name: value for name, value in locals().items() if name not in ("self", "device", "__class__")}
        check_flags(flip=flip, dense=dense, multi_crop=multi_crop)
        if not (dense or multi_crop):
            raise VggfeatError("nothing to evaluate: choose dense, multi-crop or both")
        if keep_top is not None and (isinstance(keep_top, bool) or not isinstance(keep_top, int) or keep_top < 1):
            raise VggfeatError(f"keep_top must be a whole number of classes, 1 or more (or None for all), got {keep_top!r}")
        # Single views, one score vector per scale ("stack"), no flip: the softmax must come before
        # any averaging over flips and scales.
        super().__init__(
            model, weights=weights, seed=seed, layer="fc8", pooling="avg", scales=scales, aggregate="stack",
            flip=False, device=device, precision=precision, batch_size=batch_size, workers=workers,
            decoder=decoder, decode_in=decode_in, jpeg_draft=jpeg_draft, max_pixels=max_pixels, min_side=min_side, autotune=autotune,
            compile=compile,
        )
        self.average_flips, self.dense, self.multi_crop = bool(flip), bool(dense), bool(multi_crop)
        self.keep_top = None if keep_top is None else min(keep_top, self.classes)
        self.arguments = arguments

    @property
    def classes(self) -> int:
        """Number of classes."""
        return self.network.layer_dims["fc8"]

    @property
    def dim(self) -> int:
        """Values per image: a probability per class, or with ``keep_top`` k probabilities and k classes."""
        return self.classes if self.keep_top is None else 2 * self.keep_top

    def categories(self) -> list[str]:
        """Class names: ImageNet's for a 1000-class fc8, ``class_<i>`` otherwise (a fine-tuned fc8)."""
        return category_names(self.network.arch, self.classes)

    def config(self) -> dict:
        config = {k: v for k, v in super().config().items() if k not in ("layer", "pooling", "aggregate")}
        # No None values: a descriptor file keeps the configuration as HDF5 attributes too.
        crops = {"crops": f"{CROP_GRID}x{CROP_GRID} of {CROP_SIZE}x{CROP_SIZE}"} if self.multi_crop else {}
        kept = {"keep_top": self.keep_top} if self.keep_top is not None else {}
        return {**config, "flip": self.average_flips, "dense": self.dense, "multi_crop": self.multi_crop, **crops, **kept}

    def describe_async(self, images: Sequence[np.ndarray | torch.Tensor],
                       sizes: Sequence[tuple[int, int]] | None = None) -> torch.Tensor:
        """Class probabilities [len(images), classes] float32 of decoded RGB uint8 images (H, W, 3)
        (with ``keep_top``, [len(images), 2k]: see the class), on the device and perhaps still being
        computed: a run copies them to the host behind the chunk's work (``Extractor.iter_chunks``),
        without waiting for it. ``sizes`` as for :meth:`Extractor.describe_async`."""
        if not images:
            return torch.zeros((0, self.dim), device=self.device)
        posteriors = []
        if self.dense:
            posteriors.append(self.dense_posteriors(images, sizes))
        if self.multi_crop:
            posteriors.append(self.multi_crop_posteriors(images, sizes))
        posteriors = torch.stack(posteriors).mean(dim=0)
        if self.keep_top is None:
            return posteriors
        # A stable sort, not topk, whose order of ties is not defined: ties go to the lower class,
        # as predictions.top_classes ranks a whole row. Indices below 2**24 are exact in float32.
        probabilities, indices = posteriors.sort(dim=1, descending=True, stable=True)
        return torch.cat([probabilities[:, : self.keep_top], indices[:, : self.keep_top].float()], dim=1)

    def dense_posteriors(self, images: Sequence[np.ndarray | torch.Tensor],
                         sizes: Sequence[tuple[int, int]] | None = None) -> torch.Tensor:
        """[n, classes]: softmax of each spatially averaged class-score map, averaged over flips and scales."""
        views = list(images)
        if self.average_flips:
            views += [_mirrored(image) for image in images]
            sizes = list(sizes) * 2 if sizes else None
        # The Extractor's own pipeline: per view, the fc8 map averaged over its valid area, per scale.
        scores = super().describe_async(views, sizes).float().view(len(views), len(self.scales), self.classes)
        flips = 2 if self.average_flips else 1
        return scores.softmax(dim=-1).view(flips, len(images), len(self.scales), self.classes).mean(dim=(0, 2))

    def multi_crop_posteriors(self, images: Sequence[np.ndarray | torch.Tensor],
                              sizes: Sequence[tuple[int, int]] | None = None) -> torch.Tensor:
        """[n, classes]: softmax of each 224x224 crop (and flip), averaged over crops and scales."""
        pixels = self._on_device(images)
        sizes = sizes or [tuple(image.shape[1:]) for image in pixels]
        per_scale = []
        for scale in self.scales:
            # (crop, mirrored?) per view, image by image. Crops are views into the resized image and
            # mirrored copies are made batch by batch, so a chunk holds one resized copy per image.
            views = []
            for image, size in zip(pixels, sizes):
                x = to_input(image, resized_shape(*size, scale))
                crops = [x[:, top : top + CROP_SIZE, left : left + CROP_SIZE] for top, left in crop_grid(x.shape[1:])]
                views += [(crop, False) for crop in crops]
                if self.average_flips:
                    views += [(crop, True) for crop in crops]
            # Every crop is 224x224: plain batches, and a 1x1 fc8 map per crop.
            batches = [views[i : i + self.batch_size] for i in range(0, len(views), self.batch_size)]
            scores = torch.cat([self._run([crop.flip(-1) if mirrored else crop for crop, mirrored in batch])
                                for batch in batches])
            per_scale.append(scores.float().softmax(dim=-1).view(len(images), -1, self.classes).mean(dim=1))
        return torch.stack(per_scale).mean(dim=0)


def _mirrored(image: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """The horizontal flip of a decoded image: an (H, W, 3) array, or a [3, H, W] tensor on a GPU."""
    return image.flip(-1) if isinstance(image, torch.Tensor) else np.ascontiguousarray(image[:, ::-1])
