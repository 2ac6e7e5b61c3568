"""The Python API: ``Extractor(model="vgg16").extract(paths)`` gives one descriptor per image.

An :class:`Extractor` runs the stages in order: decode (threads, ahead of the network) → resize to
each scale and flip → batch by shape → dense network → pool → combine flips and scales. The CLI and
the HDF5 job use exactly this object, so the API returns the numbers the CLI writes.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import functools
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .aggregate import combine_flips, combine_scales
from .choices import PAPER_SCALES
from .chunks import Chunk, collected, copy_to_host, each_of_runs, first_of_runs, gather_chunks
from .decode import DECODE_RECIPE, DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE
from .errors import ImageError, InvalidInput, VggfeatError, check_flags, check_sequence
from .network import MIN_INPUT_SIDE, DenseVGG, load_network
from .pooling import ALIASES, GEM_P, RETRIEVAL_POOLINGS, pool_map
from .processes import shared_memory_holds
from .reading import GPU_DECODERS, ImageReader
from .regions import JPEG_DRAFT_REGIONS, Region, Regions
from .resize import RESIZE_RECIPE, as_tensors, jpeg_reduction, pad_batch, plan_batches, to_device, to_inputs
from .settings import (check_choice, check_options, check_scales, default_layer, cpu_bf16, resolve_decoder, resolve_device,
                       resolve_precision)

# --batch-size auto: on a GPU, batches take at most this share of its free memory (an estimate:
# a batch that still does not fit is split), and hold at most GPU_AUTO_BATCH inputs.
GPU_MEMORY_SHARE = 0.4
GPU_AUTO_BATCH = 256
CPU_AUTO_BATCH = 16
# Decoding workers by default: threads beyond 8 slow reading down (16 cores of an H100 machine:
# 4,088 images/s with 8, 3,366 with 16), processes do not (3,224 with 8, 4,220 with 16).
THREAD_WORKERS = 8
PROCESS_WORKERS = 16
# Tuning for a batch shape, on a GPU, measured on an H100 (RESULTS.md):
# - cuDNN autotuning times cuDNN's algorithms: the network 1.33x faster in the paper setting
#   (211 -> 280 images/s), but the six shapes of images of two sizes took over a minute to time,
#   and images of varied sizes (~90 shapes per 4096 images) many minutes;
# - torch.compile: the network 1.66x faster again (280 -> 465 images/s; 1.63x at 224x224), for
#   about 7 s of compiling per shape.
# So only full batches are tuned, whose shapes recur, at most TUNED_SHAPES of them
# (Extractor._recurring), and with "auto" only in runs of LONG_RUN_IMAGES or more, about where
# the time saved per image (1.2 ms, then 1.6 ms) repays the tuning. Other batches run uncompiled,
# with cuDNN's heuristic choice.
TUNED_SHAPES = 8
LONG_RUN_IMAGES = 50_000
# On a CPU, torch.compile pays in bf16 with AMX (measured there only): the network 1.24-1.37x
# faster and one crop 1.41x end to end, for about 15 s of compiling per shape, repaid within a
# thousand images or so a shape; in fp32 the network is 1.03x faster (RESULTS.md). With "auto",
# runs of this many images.
CPU_COMPILE_IMAGES = 5_000
# Chunks whose work is queued before the oldest is collected: with 2, the GPU works on one chunk
# while the host gathers the next, and idles whenever gathering takes longer than that chunk's
# work. More absorb the host's uneven pace (decoding stalls, the writing thread) for the GPU
# memory of their inputs; benchmarks/bench_extract.py --chunks-in-flight measures it.
CHUNKS_IN_FLIGHT = 2


@dataclass(frozen=True)
class RunPlan:
    """How a run over a number of images goes, where the options leave it to the run (``auto``)."""

    processes: bool  # decoding in worker processes (else threads)
    workers: int
    autotune: bool  # cuDNN autotuning of full batches (GPU)
    compile: bool  # torch.compile of full batches


def _rgb_pixels(image: np.ndarray | torch.Tensor, index: int) -> np.ndarray | torch.Tensor:
    """``image`` (the ``index``-th given) as the network takes it: an (H, W, 3) uint8 array in C
    order and writable (torch warns of one that is not), or a [3, H, W] uint8 tensor, as
    torchvision's decoders give; refused, saying what it is, where it is neither: float pixels in
    0..1, say, would give other descriptors, silently."""
    if isinstance(image, torch.Tensor) and image.dtype == torch.uint8 and image.ndim == 3 and image.shape[0] == 3:
        return image
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        return np.require(image, requirements=("C", "W"))
    held = isinstance(image, (np.ndarray, torch.Tensor))
    what = f"{image.dtype} {type(image).__name__} of shape {tuple(image.shape)}" if held else type(image).__name__
    raise InvalidInput(f"image {index}: expected decoded RGB pixels, a uint8 array (H, W, 3) or tensor [3, H, W], got a "
                       f"{what} (a PIL image: np.asarray(image.convert('RGB')); a file: vggfeat.decode.decode_image(path))")


# A region as extract takes it: a Region, or the same four numbers (x, y, width, height) as a
# plain tuple, a list or a row of an array (see _as_regions).
RegionLike = Region | tuple[int, int, int, int] | Sequence[int] | np.ndarray


def _as_regions(regions: Sequence[RegionLike | None] | None) -> Sequence[Region | None] | None:
    """``regions`` as Regions (or None, the whole image), refused with what is expected where an
    entry is no region. A Region is a named tuple of (x, y, width, height): the same four numbers
    as a plain tuple, a list or an array's row are taken as such, as a user who wrote
    ``(x, y, w, h)`` means them. vggfeat's own :class:`~vggfeat.regions.Regions` (a list's millions
    of paths, worked out when indexed) give Regions already: passed as they are."""
    if regions is None or isinstance(regions, Regions):
        return regions
    if isinstance(regions, Region):  # one region where a region per path belongs: its four numbers were taken for four
        raise InvalidInput(f"regions: expected a region (or None) per path, got one region: give [{regions!r}]")
    checked: list[Region | None] = []
    for index, region in enumerate(regions):
        if region is None or isinstance(region, Region):
            checked.append(region)
        elif isinstance(region, np.ndarray) and region.shape == (4,):
            checked.append(Region(*region.tolist()))  # plain ints: NumPy's own, np.int64(10), would clutter messages
        elif isinstance(region, (tuple, list)) and len(region) == 4:
            # Whole numbers or not: crop refuses a region of fractions as it refuses a Region of them (a failed row).
            checked.append(Region(*region))
        else:
            raise InvalidInput(f"region {index}: expected a vggfeat.regions.Region(x, y, width, height), a tuple of "
                               f"those four whole numbers, or None (the whole image), got {region!r}; a box of corners "
                               "[x1, y1, x2, y2] is vggfeat.regions.from_corners(box)")
    return checked


class Extractor:
    """Dense multi-scale VGG descriptors, as in Simonyan & Zisserman (2014), appendix.

    Defaults give the paper's descriptor: VGG16 fc7, densely applied at Q = 256, 384, 512 and
    averaged over scales and horizontal flips (4096-d).

    Args:
        model: an architecture name (``vgg11`` ... ``vgg19_bn``) or a loaded :class:`DenseVGG`.
        weights: ``"imagenet"``, ``"random"`` or a state-dict file (ignored for a loaded network).
        seed: seed of ``"random"`` weights.
        layer: ``fc7``, ``fc6``, ``pool5``, a conv layer such as ``conv5_3``, or ``fc8`` (class scores);
            None: ``fc7``, or ``conv5_3`` for the retrieval poolings ``gem`` and ``rmac``.
        pooling: ``avg`` (the paper's; SPoC), ``max`` (MAC), ``gem`` (power mean, ``gem_p``) or
            ``rmac`` (Tolias et al.'s regional MAC, without their per-region whitening) over the dense map; ``mac``/``spoc`` are aliases.
        scales: smallest-side sizes Q (whole numbers), each >= 224 for the fc layers and
            ``center_crop``, >= 32 for conv and pool layers.
        aggregate: ``mean`` over scales, ``stack`` (concatenate, dim x number of scales) or
            ``gem`` (power mean over scales with ``gem_p``).
        resize_side: ``short`` (the paper's: smallest side = Q) or ``long`` (largest side = Q, as
            retrieval setups do; conv and pool layers only).
        center_crop: describe only the central 224x224 of the image resized to each Q (with
            ``scales=[256]`` the common Resize(256) + CenterCrop(224) recipe); the fast setting.
        gem_p: the power of ``gem`` pooling and ``gem`` aggregation.
        normalize: ``l2`` normalises each view's (scale's, flip's) descriptor before they are
            combined, and the combined one; ``none`` keeps them as pooled (the paper's, for SVMs);
            ``auto`` is ``l2`` for ``gem`` and ``rmac``, ``none`` otherwise.
        flip: average with the horizontally flipped image.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1`` ...
        precision: ``fp32``, ``tf32``, ``bf16`` or ``fp16`` arithmetic in the network; ``auto``:
            bf16 on GPUs with native bf16 (compute capability 8.0 and later), fp32 otherwise.
        batch_size: most network inputs (an image at one scale, or its flip) per batch; ``auto``:
            as many as fit a share of the GPU's free memory (at most 256); on the CPU up to 16,
            as many as 16 inputs of 224x224 hold in pixels.
        workers: threads (or processes) decoding images ahead of the network; None: up to 8
            threads, or 16 processes, no more than the CPU's cores.
        decode_in: ``threads`` or ``processes``: worker processes hold no lock that the thread
            queueing the network's work needs (Python's GIL), at the cost of starting them
            (seconds, once per Python process) and of returning pixels through shared memory;
            ``auto``: processes in long runs on a GPU, as ``autotune``, where shared memory has
            room (the CLI's default: a script that starts processes must guard its code with
            ``if __name__ == "__main__"``).
        decoder: ``auto``: ``torchvision`` where TorchCodec or torchvision can decode JPEGs, else
            ``pil``; ``pil``; ``torchvision``: JPEGs decoded in batches by libjpeg-turbo on the CPU
            (PIL's pixels, faster); ``nvjpeg``: the same on the GPU (CUDA only);
            ``nvimgcodec``: on the GPU's hardware JPEG engines where it has them, else with CUDA
            (NVIDIA's nvImageCodec, installed apart). Other files, and any that the decoder
            rejects, go to PIL.
        jpeg_draft: decode a JPEG at a half, a quarter or an eighth of its size (libjpeg's DCT
            scaling, Pillow's draft mode) where it still holds its resized shape at the largest
            scale: a camera's 12-megapixel photos decode several times faster, and the GPU gets
            a sixteenth of the pixels; the descriptors differ slightly from a whole image's
            (README, "JPEG draft"), so it is recorded in :meth:`config`.
        max_pixels: larger images are refused unread (decompression-bomb guard).
        min_side: images with a smaller side are refused.
        autotune: cuDNN's autotuning of full batches on a GPU (faster batches after seconds of
            tuning per batch shape, up to 8 shapes): ``on``, ``off``, or ``auto``: on in calls of
            :meth:`iter_chunks` (and the CLI's runs) over at least 50,000 images.
        compile: run full batches through ``torch.compile`` (each convolution's bias and ReLU
            become one pass over its output): faster batches on a GPU after seconds of compiling
            per batch shape, up to 8 shapes; ``on``, ``off``, or ``auto``: on a GPU, as ``autotune``;
            on a CPU with AMX, in bf16 only (in fp32 it gains nothing there), in runs of 5,000 images or more.
            Where compiling fails (no C compiler for Triton, say), ``auto`` warns and runs uncompiled.
    """

    def __init__(
        self,
        model: str | DenseVGG = "vgg16",
        *,
        weights: str | os.PathLike = "imagenet",
        seed: int = 0,
        layer: str | None = None,
        pooling: str = "avg",
        scales: Sequence[int] = PAPER_SCALES,
        aggregate: str = "mean",
        flip: bool = True,
        device: str = "auto",
        precision: str = "auto",
        batch_size: int | str | None = "auto",
        workers: int | None = None,
        decoder: str = "auto",
        decode_in: str = "threads",
        jpeg_draft: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        min_side: int = DEFAULT_MIN_SIDE,
        resize_side: str = "short",
        center_crop: bool = False,
        gem_p: float = GEM_P,
        normalize: str = "auto",
        autotune: str = "auto",
        compile: str = "auto",
    ) -> None:
        # Everything but the device, as given: MultiDeviceJob builds this extractor again on each
        # of its devices, in a process of its own.
        self.arguments = {name: value for name, value in locals().items() if name not in ("self", "device")}
        check_flags(flip=flip, center_crop=center_crop, jpeg_draft=jpeg_draft)
        self.device = resolve_device(device)
        pooling = ALIASES.get(pooling, pooling)
        layer = default_layer(layer, pooling)
        self.scales = check_scales(scales, layer, center_crop)
        check_options(self.device, model, layer, pooling, aggregate, precision, resize_side, center_crop,
                      normalize, gem_p, batch_size, decoder, decode_in, autotune, compile, workers)
        self.network = model if isinstance(model, DenseVGG) else load_network(model, str(weights), seed)
        self.network.to(self.device)
        self.precision = precision = resolve_precision(precision, self.device)
        self._runner = _runner(self.network, precision)
        self.layer, self.pooling, self.aggregate, self.flip = layer, pooling, aggregate, bool(flip)
        self.resize_side, self.gem_p = resize_side, float(gem_p)
        # The common fast setting: one 224x224 view per scale instead of the whole image.
        self.crop = MIN_INPUT_SIDE if center_crop else None
        self.normalize = ("l2" if pooling in RETRIEVAL_POOLINGS else "none") if normalize == "auto" else normalize
        # Inputs and padded pixels per batch: both shrink if a batch ever runs out of GPU memory.
        self.batch_size, self.batch_pixels = self._batch_limits(batch_size)
        self.workers = workers
        self.decoder = resolve_decoder(decoder)
        self.decode_in, self.jpeg_draft = decode_in, bool(jpeg_draft)
        self.max_pixels, self.min_side = max_pixels, min_side
        self.autotune, self.compile = autotune, compile
        self._tuned: set[tuple[int, int, int]] = set()  # full batch shapes tuned so far
        self._compiled: torch.nn.Module | None = None
        self._start_run(0)  # describe() outside a run: "auto" tunes nothing

    def _batch_limits(self, batch_size: int | str | None) -> tuple[int, int]:
        """(most inputs, most padded pixels) per batch."""
        largest_input = max(self.scales) ** 2 * 4 // 3  # a 4:3 image at the largest scale
        if isinstance(batch_size, (int, np.integer)):
            return int(batch_size), int(batch_size) * largest_input
        if self.device.type != "cuda":
            # Measured on 2 cores: 16 crops of 224 a batch run 1.4x faster than 4; the pixel
            # budget keeps a batch near 1 GB of activations whatever the scale.
            return CPU_AUTO_BATCH, CPU_AUTO_BATCH * MIN_INPUT_SIDE**2
        free, _ = torch.cuda.mem_get_info(self.device)
        itemsize = self._runner.fc6.weight.element_size()
        # At the peak a layer's input and output are alive, held about twice over (the masked copy
        # of a padded batch, cuDNN's workspace); the float32 resized input adds 12 bytes a pixel.
        per_pixel = 2 * self.network.peak_values_per_pixel(self.layer) * itemsize + 12
        pixels = int(GPU_MEMORY_SHARE * free / per_pixel)
        smallest_input = self.crop**2 if self.crop else min(self.scales) ** 2
        return max(1, min(GPU_AUTO_BATCH, pixels // smallest_input)), max(pixels, smallest_input)

    @property
    def dim(self) -> int:
        """Length of one descriptor."""
        per_scale = self.network.layer_dims[self.layer]
        return per_scale * len(self.scales) if self.aggregate == "stack" else per_scale

    def __repr__(self) -> str:  # (Python's default says nothing of the network or where it runs)
        # A FusedExtractor's other networks too (its first is this one's): model= as it was given, a list.
        others = [other.network.arch for other in getattr(self, "others", [])]
        model = [self.network.arch, *others] if others else self.network.arch
        weights = ", weights='random'" if self.random_weights else ""  # (the numbers mean nothing: said, as files record it)
        return (f"{type(self).__name__}(model={model!r}{weights}, layer={self.layer!r}, scales={self.scales}, "
                f"device={str(self.device)!r}, precision={self.precision!r}, dim={self.dim})")

    @property
    def random_weights(self) -> bool:
        """Whether the network has random weights (smoke tests only): said, and recorded in files."""
        return self.network.weights.is_random

    def config(self) -> dict:
        """Everything that determines the numbers: written to files, compared on resume."""
        weights = self.network.weights
        return {
            "model": self.network.arch,
            "weights": weights.name,
            "weights_sha256": weights.sha256,
            "weights_seed": -1 if weights.seed is None else weights.seed,
            "layer": self.layer,
            "pooling": self.pooling,
            "scales": list(self.scales),
            "aggregate": self.aggregate,
            "flip": self.flip,
            "resize_side": self.resize_side,
            "center_crop": self.crop is not None,
            "normalize": self.normalize,
            # Only when a GeM is used: files without the key then compare equal whatever p was.
            **({"gem_p": self.gem_p} if "gem" in (self.pooling, self.aggregate) else {}),
            "precision": self.precision,
            "dim": self.dim,
            "max_pixels": self.max_pixels,
            "min_side": self.min_side,
            # Only the GPU's decoders' pixels may differ from PIL's (by a level or two); torchvision's are PIL's.
            **({"decoder": self.decoder} if self.decoder in GPU_DECODERS else {}),
            # Only when drafting: files made before the option compare equal to whole decoding.
            **({"jpeg_draft": True} if self.jpeg_draft else {}),
            "preprocessing": {**DECODE_RECIPE, **RESIZE_RECIPE},
        }

    def extract(self, paths: Sequence[str | os.PathLike], errors: str = "raise",
                regions: Sequence[RegionLike | None] | None = None) -> np.ndarray:
        """Descriptors [len(paths), dim] float32, in the order of ``paths``; of the region of each
        image that ``regions`` gives, where it gives one (see :mod:`vggfeat.regions`): a
        :class:`~vggfeat.regions.Region`, or a tuple (or list, or array row) of its four whole
        numbers, ``(x, y, width, height)``; None for the whole image. A box given by its corners
        [x1, y1, x2, y2] is :func:`~vggfeat.regions.from_corners`'s to convert.

        ``errors="raise"`` raises :class:`ImageError` naming the first unusable file;
        ``errors="nan"`` fills its row with NaN instead.
        """
        check_choice("errors", errors, ("raise", "nan"))
        check_sequence(paths, "image paths")
        result = np.full((len(paths), self.dim), np.nan, dtype=np.float32)
        for chunk in self.iter_chunks(paths, regions=regions):
            if chunk.failures and errors == "raise":
                index, reason = chunk.failures[0]
                raise ImageError(f"{paths[index]}: {reason}")
            result[chunk.indices] = chunk.features
        return result

    def iter_chunks(self, paths: Sequence[str | os.PathLike], chunk_images: int | None = None,
                    regions: Sequence[RegionLike | None] | None = None) -> Iterator[Chunk]:
        """Describe ``paths`` (or the region of each that ``regions`` gives) in consecutive chunks, in order.

        Threads decode ahead of the network. A chunk's results are collected only after the next
        chunk's work (CHUNKS_IN_FLIGHT - 1 chunks) has been queued, so a GPU never waits for the
        host between chunks.
        """
        check_sequence(paths, "image paths")
        regions = _as_regions(regions)
        if regions is not None and len(regions) != len(paths):
            raise ValueError(f"{len(paths)} paths but {len(regions)} regions")
        if regions is not None and self.jpeg_draft:
            raise VggfeatError(JPEG_DRAFT_REGIONS)
        chunk_images = chunk_images or max(16, 2 * self.batch_size)
        plan = self._start_run(len(paths))
        reduction = functools.partial(jpeg_reduction, scales=self.scales, side=self.resize_side) if self.jpeg_draft else None
        reader = ImageReader(self.device, self.decoder, plan.workers, self.max_pixels, self.min_side,
                             processes=plan.processes, reduction=reduction)
        # Regions of one image are rows side by side: the image is decoded once for them all.
        files = paths if regions is None else first_of_runs(paths)
        with (
            reader.read(files, lookahead=2 * chunk_images + 2 * plan.workers) as decoded,
            _precision(self.precision, self.device),
        ):
            if regions is not None:
                decoded = each_of_runs(decoded, paths)
            queued: collections.deque[Chunk] = collections.deque()
            for chunk, images in gather_chunks(len(paths), decoded, chunk_images, regions, self.min_side):
                chunk.features, chunk.ready = copy_to_host(self._describe_chunk(chunk, images))
                queued.append(chunk)
                if len(queued) >= CHUNKS_IN_FLIGHT:
                    yield collected(queued.popleft())
            while queued:
                yield collected(queued.popleft())

    def plan_run(self, images: int) -> RunPlan:
        """How a run over ``images`` images goes: where the options say ``auto``, long runs (50,000
        images or more) autotune, and on a GPU compile and decode in processes, whose fixed costs
        (minutes of tuning, seconds of starting) they repay; on a CPU, runs in bf16 of 5,000 images
        or more compile."""
        long_run = images >= LONG_RUN_IMAGES
        cuda = self.device.type == "cuda"
        long_gpu_run = long_run and cuda
        processes = self.decode_in == "processes" or (
            self.decode_in == "auto" and long_gpu_run and self.decoder not in GPU_DECODERS
            and shared_memory_holds(self.workers or PROCESS_WORKERS))
        workers = self.workers or min(PROCESS_WORKERS if processes else THREAD_WORKERS, os.cpu_count() or 1)
        return RunPlan(
            processes=processes, workers=workers,
            # Never with nvJPEG decoding, which hung on an H100 while cuDNN autotuned (torchvision 0.26).
            autotune=cuda and self.decoder != "nvjpeg" and (self.autotune == "on" or (self.autotune == "auto" and long_run)),
            compile=self.compile == "on" or (self.compile == "auto" and (long_gpu_run or (
                not cuda and self.precision == "bf16" and images >= CPU_COMPILE_IMAGES and cpu_bf16() == "amx"))),
        )

    def _start_run(self, images: int) -> RunPlan:
        """The plan of a run over ``images``, whose tuning the batches then follow."""
        plan = self.plan_run(images)
        self._autotuning, self._compiling = plan.autotune, plan.compile
        return plan

    def _describe_chunk(self, chunk: Chunk, images: list[np.ndarray | torch.Tensor]) -> torch.Tensor:
        try:
            return self.describe_async(images, chunk.sizes)
        except RuntimeError as error:  # torch.cuda.OutOfMemoryError is one
            if not out_of_memory(error):
                raise
        # Some image does not fit in memory even alone: describe the chunk image by image and
        # record those that do not fit as failed, rather than failing the run.
        torch.cuda.empty_cache()
        rows, kept = [], []
        for index, size, image in zip(chunk.indices, chunk.sizes, images):
            try:
                rows.append(self.describe_async([image], [size]))
                kept.append((index, size))
            except RuntimeError as error:
                if not out_of_memory(error):
                    raise
                chunk.failures.append((index, too_large_for_memory(size, max(self.scales), self.device.type == "cuda")))
                torch.cuda.empty_cache()
        chunk.failures.sort()
        chunk.indices, chunk.sizes = [index for index, _ in kept], [size for _, size in kept]
        return torch.cat(rows) if rows else torch.zeros((0, self.dim), device=self.device)

    def describe(self, images: Sequence[np.ndarray | torch.Tensor]) -> np.ndarray:
        """Descriptors [len(images), dim] float32 of decoded RGB uint8 images: arrays (H, W, 3) or
        tensors [3, H, W]."""
        return self.describe_async([_rgb_pixels(image, i) for i, image in enumerate(images)]).cpu().numpy()

    def describe_async(self, images: Sequence[np.ndarray | torch.Tensor],
                       sizes: Sequence[tuple[int, int]] | None = None) -> torch.Tensor:
        """As :meth:`describe`, but a tensor on the device that may still be being computed.
        ``sizes``: each image's (height, width) before ``jpeg_draft`` decoded it smaller, which
        sets its resized shapes (see :func:`~vggfeat.resize.to_inputs`).

        Subclasses change what an image's descriptor is by overriding this method.
        """
        if not images:
            return torch.zeros((0, self.dim), device=self.device)
        pixels = self._on_device(images)
        per_scale = [self._describe_at(pixels, scale, sizes) for scale in self.scales]
        combined = combine_scales(per_scale, self.aggregate, self.gem_p)
        # With normalize="l2" every view was L2-normalised before combining (so that no scale
        # dominates by sheer magnitude), and the combination is too: R-MAC's and GeM's last step.
        return F.normalize(combined, dim=1) if self.normalize == "l2" else combined

    def _on_device(self, images: Sequence[np.ndarray | torch.Tensor]) -> list[torch.Tensor]:
        """[3, H, W] uint8 tensors on the device, from arrays, from tensors a decoder made there, or
        from tensors that a decoder left on the host (the GPU had no room for them then)."""
        tensors = list(images)
        if self.device.type == "cuda":
            stream = torch.cuda.current_stream(self.device)
            for i, pixels in enumerate(tensors):
                if not isinstance(pixels, torch.Tensor):
                    continue  # an array: uploaded below, with the others
                if pixels.is_cuda:
                    pixels.record_stream(stream)  # made on a decoding thread's stream, used on this one
                else:
                    tensors[i] = pixels.to(self.device, non_blocking=pixels.is_pinned())
        arrays = [i for i, image in enumerate(images) if isinstance(image, np.ndarray)]
        if arrays:
            for i, pixels in zip(arrays, as_tensors([images[i] for i in arrays], self.device)):
                tensors[i] = pixels
        return tensors

    def _describe_at(self, pixels: list[torch.Tensor], scale: int, sizes: Sequence[tuple[int, int]] | None) -> torch.Tensor:
        inputs = to_inputs(pixels, scale, self.resize_side, self.crop, self.flip, sizes)  # flipped ones after
        shapes = [tuple(x.shape[1:]) for x in inputs]
        batches = plan_batches(shapes, self.batch_size, self.batch_pixels)  # larger inputs go alone
        pooled = torch.cat([self._run([inputs[i] for i in batch]) for batch in batches])
        # Back from batch order to input order. Indexing with a Python list would copy the index
        # from pageable memory, which makes the host wait for the GPU; to_device does not.
        order = [i for batch in batches for i in batch]
        pooled = pooled[to_device(np.argsort(order), self.device)]
        if self.flip:
            return combine_flips(pooled[: len(pixels)], pooled[len(pixels) :])
        return pooled

    def _run(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        try:
            return self._forward(inputs)
        except RuntimeError as error:
            if len(inputs) == 1 or not out_of_memory(error):
                raise
        # A batch that does not fit is split and retried rather than failing the run (outside the
        # except block, so that the failed attempt's tensors are freed first), and later batches
        # are planned no larger than the halves.
        torch.cuda.empty_cache()
        half = len(inputs) // 2
        padded = len(inputs) * max(x.shape[1] for x in inputs) * max(x.shape[2] for x in inputs)
        self.batch_size = min(self.batch_size, max(1, half))
        self.batch_pixels = min(self.batch_pixels, padded // 2)
        return torch.cat([self._run(inputs[:half]), self._run(inputs[half:])])

    def _recurring(self, inputs: list[torch.Tensor]) -> bool:
        """Whether a batch is worth tuning for: a full one, with as many inputs of its size as the
        batch limits allow, and only the first TUNED_SHAPES such shapes. A full batch's shape
        recurs whenever images of that size do, so the tuning pays; a batch of left-over inputs
        has a count, hence a shape, that may never come again."""
        height, width = max(x.shape[1] for x in inputs), max(x.shape[2] for x in inputs)
        if len(inputs) != min(self.batch_size, self.batch_pixels // (height * width)):
            return False
        shape = (len(inputs), height, width)
        if shape not in self._tuned and len(self._tuned) < TUNED_SHAPES:
            self._tuned.add(shape)
        return shape in self._tuned

    def _tuning(self, inputs: list[torch.Tensor]) -> tuple[bool, bool]:
        """Whether cuDNN autotunes this batch, and whether it runs compiled: only a recurring one."""
        recurring = self._recurring(inputs)
        return self._autotuning and recurring, self._compiling and recurring

    def _forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        batch, sizes = pad_batch(inputs)
        batch = batch.to(dtype=self._runner.fc6.weight.dtype, memory_format=torch.channels_last)
        autotune, compiled = self._tuning(inputs)
        with torch.inference_mode(), _precision(self.precision, self.device, autotune):
            feature_map = self._network(batch, sizes, compiled)
            # Each image's valid map size, worked out on the host: R-MAC plans its regions with it.
            map_sizes = None if sizes is None else [self.network.map_size(self.layer, *x.shape[1:]) for x in inputs]
            pooled = pool_map(feature_map.float(), map_sizes, self.pooling, self.gem_p)
            return F.normalize(pooled, dim=1) if self.normalize == "l2" else pooled

    def _network(self, batch: torch.Tensor, sizes: torch.Tensor | None, compiled: bool) -> torch.Tensor:
        """The layer's map of a batch, by the compiled network or the plain one."""
        if compiled:
            if self._compiled is None:
                # One graph per shape (no dynamic shapes): only full batches come here, few shapes.
                allow_recompiles()
                self._compiled = torch.compile(self._runner, dynamic=False)
                # Inductor's C++ compiler logs, on a machine without CUDA, "No CUDA runtime is found,
                # using CUDA_HOME=..." to the terminal: nothing a run on the CPU needs to hear.
                logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
            try:
                return self._compiled(batch, self.layer, sizes)[0]
            except Exception as error:  # noqa: BLE001 - compiling can fail in many ways; the network cannot
                if out_of_memory(error):
                    raise
                reason = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"
                if self.compile == "on":
                    raise VggfeatError(f"torch.compile failed ({reason}); run without it: compile='off' "
                                       "(--compile off)") from error
                warnings.warn(f"torch.compile failed ({reason}); the network runs uncompiled", stacklevel=2)
                self._compiling, self.compile = False, "off"  # nor in later runs
        return self._runner(batch, self.layer, sizes)[0]


_HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}

# Graphs that one compiled network may need: each of its TUNED_SHAPES batch shapes compiles one
# graph for a batch of one image size (unpadded) and one for a batch padded to a multiple of 32.
GRAPHS_PER_NETWORK = 2 * TUNED_SHAPES
_networks_compiled = 0  # in this process


def allow_recompiles() -> None:
    """Let Dynamo compile the graphs of one more network: beyond its recompile limit (8 graphs
    per code object in torch 2.14) it runs a function uncompiled from then on, silently, and every
    network's graphs are of one code object, DenseVGG.forward's (a FusedExtractor compiles several
    networks; so may a process that makes several extractors). The limit is raised to
    GRAPHS_PER_NETWORK per network compiled in this process, never lowered (a user's own higher
    limit stays), and not restored: the compiled networks go on using it in later runs, and Dynamo
    checks it whenever a new shape comes."""
    global _networks_compiled
    _networks_compiled += 1
    needed = GRAPHS_PER_NETWORK * _networks_compiled
    from torch._dynamo import config  # (imported by torch.compile anyway)

    # (torch 2.2-2.5 name them cache_size_limit and accumulated_cache_size_limit)
    for names in (("recompile_limit", "cache_size_limit"), ("accumulated_recompile_limit", "accumulated_cache_size_limit")):
        name = next((name for name in names if hasattr(config, name)), None)
        if name is not None and getattr(config, name) < needed:
            setattr(config, name, needed)


def too_large_for_memory(size: tuple[int, int], scale: int, on_gpu: bool) -> str:
    """The reason an image of ``size`` (height, width) failed: it does not fit in memory alone."""
    height, width = size
    on_cpu = "device='cpu' (--device cpu) or " if on_gpu else ""
    return (f"a {width}x{height} image does not fit in {'GPU ' * on_gpu}memory at Q={scale}; describe it with "
            f"{on_cpu}smaller scales (--scales)")


# What torch's RuntimeErrors say where the device ran out of memory but raised no OutOfMemoryError:
# the CPU's allocator; cuDNN, whose workspace for a convolution could not be allocated (it then
# finds no engine, or no algorithm, that runs in the memory left); cuDNN's and cuBLAS's own
# allocations; and a CUDA call's own "out of memory" (a library's handle, say).
OUT_OF_MEMORY_MESSAGES = (
    "DefaultCPUAllocator",
    "was unable to find an engine to execute this computation",  # cuDNN's GET (heuristics) and FIND (autotuning)
    "Unable to find a valid cuDNN algorithm to run convolution",
    "CUDNN_STATUS_ALLOC_FAILED",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUDA error: out of memory",
)


def out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is the device running out of memory: CUDA's OutOfMemoryError, or a
    RuntimeError that torch raises with no error class of its own (OUT_OF_MEMORY_MESSAGES): the
    CPU's allocator (an image resized to a huge --scales, say), or cuDNN finding no way to run a
    convolution in the GPU memory left. A batch that fails so is split and tried again."""
    return isinstance(error, torch.cuda.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and any(message in str(error) for message in OUT_OF_MEMORY_MESSAGES))


def _runner(network: DenseVGG, precision: str) -> DenseVGG:
    """The network as it runs: in channels_last, and in half precision a cast copy of it.

    channels_last suits cuDNN's and oneDNN's convolutions (VGG16 on 2 CPU cores: 1.56x faster).
    Casting the weights once beats autocast, which re-casts all 138M of them on every batch (the
    paper's setting on a CPU with AMX, bf16: 1.23x faster end to end, RESULTS.md).
    """
    dtype = _HALF.get(precision)
    runner = copy.deepcopy(network).to(dtype=dtype) if dtype else network
    return runner.to(memory_format=torch.channels_last)


@contextlib.contextmanager
def _precision(precision: str, device: torch.device, autotune: bool = False) -> Iterator[None]:
    if device.type != "cuda":
        yield
        return
    # PyTorch lets cuDNN use TF32 by default; "fp32" means full fp32 here.
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    torch.backends.cudnn.benchmark = autotune
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = flags
