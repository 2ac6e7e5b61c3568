"""Several networks' descriptors of the same images side by side, in one run: the paper's Net-D &
Net-E descriptor (VGG16's and VGG19's stacked) as ``vggfeat extract IMAGES de.h5 --model vgg16,vgg19``.

A :class:`FusedExtractor` reads each image once (one decode, one upload to the GPU) and gives the
pixels to each network in turn, where extracting with each network and stacking the files
(:mod:`vggfeat.stack`) reads it once per network. Its rows and its configuration are those of
``vggfeat stack`` over the networks' own files, so a model or an index made of either takes the
other; and being one extraction, its file resumes, takes ``--update``, ``--retry-failed`` and
shards like any other. (Posteriors of several networks averaged, the paper's ConvNet fusion, are
:mod:`vggfeat.fusion`'s.)
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from .extractor import Extractor, RunPlan
from .stack import stacked_config


class FusedExtractor(Extractor):
    """The descriptors of ``model``'s networks side by side (in their order), each image read once.

    Args:
        model: two or more architecture names (``["vgg16", "vgg19"]``).
        weights: ``"imagenet"`` or ``"random"`` for all, or one for each network (a name or a file).
        options: :class:`Extractor`'s keywords, the same for every network.
    """

    def __init__(self, model: Sequence[str], *, weights: str | os.PathLike | Sequence[str | os.PathLike] = "imagenet",
                 **options) -> None:
        models = [model] if isinstance(model, str) else list(model)
        if len(models) < 2:
            raise ValueError(f"a fused extraction takes two or more networks, got {models}")
        weights_each = [weights] * len(models) if isinstance(weights, (str, os.PathLike)) else list(weights)
        if len(weights_each) != len(models):
            raise ValueError(f"one weights for each of the {len(models)} networks, got {len(weights_each)}")
        # This extractor reads the images and runs the first network; the others only run theirs,
        # where it runs (its constructor plans a run of no images, and so theirs: see _start_run).
        self.others: list[Extractor] = []
        super().__init__(models[0], weights=weights_each[0], **options)
        shared = {key: value for key, value in options.items() if key != "device"}
        self.arguments = {"model": models, "weights": weights_each, **shared}  # MultiDeviceJob builds it again from them
        self.others = [Extractor(name, weights=each, device=str(self.device), **shared)
                       for name, each in zip(models[1:], weights_each[1:])]

    @property
    def dim(self) -> int:
        return super().dim + sum(other.dim for other in self.others)

    @property
    def random_weights(self) -> bool:
        return super().random_weights or any(other.random_weights for other in self.others)

    def config(self) -> dict:
        """As ``vggfeat stack`` records it of the networks' own files (the first's own dimension:
        ``Extractor.config`` records ``self.dim``, the whole's)."""
        first = {**super().config(), "dim": super().dim}
        return stacked_config([first, *(other.config() for other in self.others)], [False] * (1 + len(self.others)))

    def describe_async(self, images: Sequence[np.ndarray | torch.Tensor],
                       sizes: Sequence[tuple[int, int]] | None = None) -> torch.Tensor:
        """Each network's descriptors of ``images``, side by side; the pixels go to the device once.
        (Each network resizes them itself, as it batches them by its own limits.)"""
        if not images:
            return torch.zeros((0, self.dim), device=self.device)
        pixels = self._on_device(images)
        return torch.cat([super().describe_async(pixels, sizes), *(other.describe_async(pixels, sizes) for other in self.others)],
                         dim=1)

    def _start_run(self, images: int) -> RunPlan:
        plan = super()._start_run(images)
        for other in self.others:  # tuned (or not) as the first
            other._autotuning, other._compiling = plan.autotune, plan.compile
        return plan
