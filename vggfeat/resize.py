"""Resize and batch: decoded images become normalised network inputs at each scale Q.

The resize runs in torch on whatever device the network is on, so the CPU and GPU paths share
one implementation: bilinear with antialiasing (torchvision's default for ``Resize``), smallest
side set to Q, the other side truncated as ``torchvision.transforms.Resize(Q)`` does.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

# torchvision's ImageNet statistics, which its VGG weights were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

RESIZE_RECIPE = {
    "resize": "smallest side = Q, other side int(Q * long / short) as torchvision Resize(Q)",
    "interpolation": "bilinear, antialias=True, on float32 pixel values in [0, 255]",
    "normalisation": "(x / 255 - mean) / std",
    "mean": list(IMAGENET_MEAN),
    "std": list(IMAGENET_STD),
}


RESIZE_SIDES = ("short", "long")
# With side="long" the short side may come out tiny (panoramas); it is kept at least this large,
# the network's total stride, so that every layer up to pool5 still has a map to pool.
MIN_RESIZED_SIDE = 32


def resized_shape(height: int, width: int, scale: int, side: str = "short") -> tuple[int, int]:
    """(height, width) after rescaling so that the smallest side (or with ``side="long"`` the
    longest, as retrieval setups do) equals ``scale``; the other side is truncated."""
    if side == "long":
        if height >= width:
            return scale, max(MIN_RESIZED_SIDE, int(scale * width / height))
        return max(MIN_RESIZED_SIDE, int(scale * height / width)), scale
    if side != "short":
        raise ValueError(f"unknown resize side {side!r}; choose one of {', '.join(RESIZE_SIDES)}")
    if height <= width:
        return scale, int(scale * width / height)
    return int(scale * height / width), scale


# The fractions of its size that libjpeg can decode a JPEG at (Pillow's draft mode), largest first.
JPEG_REDUCTIONS = (8, 4, 2)


def jpeg_reduction(height: int, width: int, scales: Sequence[int], side: str = "short") -> int:
    """The largest of 8, 4 or 2 by which an image of (``height``, ``width``) may be decoded smaller
    (each side rounded up, as libjpeg does) and still hold its resized shape at every scale, so that
    the resize only ever shrinks it; 1 when none may."""
    needed = resized_shape(height, width, max(scales), side)
    for factor in JPEG_REDUCTIONS:
        if -(-height // factor) >= needed[0] and -(-width // factor) >= needed[1]:
            return factor
    return 1


def to_input(image: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A uint8 image [3, H, W] as a normalised float32 network input [3, *shape]."""
    return _resize_normalize(image.unsqueeze(0), shape)[0]


def to_inputs(
    images: Sequence[torch.Tensor], scale: int, side: str = "short", crop: int | None = None, flip: bool = False,
    sizes: Sequence[tuple[int, int]] | None = None,
) -> list[torch.Tensor]:
    """uint8 images [3, H, W] as network inputs with smallest (or ``side="long"``: longest) side ``scale``, in order.

    With ``crop``, each input is then its central ``crop`` x ``crop`` square, placed as
    torchvision's ``CenterCrop`` places it. With ``flip``, the horizontally flipped inputs follow,
    in the same order (2 x len(images) inputs). Images of the same size are resized and flipped
    together: the same arithmetic, fewer operations per image for the host to queue. ``sizes``
    are the images' (height, width) before a decoder made them smaller (``jpeg_draft``): each is
    resized to the shape that its whole size gives, as if it had been decoded whole.
    """
    count = len(images)
    inputs: list[torch.Tensor | None] = [None] * (2 * count if flip else count)
    by_size: dict[tuple[tuple[int, int], tuple[int, int]], list[int]] = {}
    for i, image in enumerate(images):
        shape = tuple(image.shape[1:])
        by_size.setdefault((shape, tuple(sizes[i]) if sizes else shape), []).append(i)
    for (_, (height, width)), members in by_size.items():
        batch = torch.stack([images[i] for i in members])
        resized = _resize_normalize(batch, resized_shape(height, width, scale, side))
        if crop is not None:
            resized = center_crop(resized, crop)
        for i, x in zip(members, resized.unbind()):
            inputs[i] = x
        if flip:
            for i, x in zip(members, resized.flip(-1).unbind()):
                inputs[count + i] = x
    return inputs


def center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size`` x ``size`` window of [..., H, W], rounded as torchvision's ``CenterCrop``."""
    height, width = images.shape[-2:]
    if min(height, width) < size:
        raise ValueError(f"a {height}x{width} input is smaller than the {size}x{size} crop")
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return images[..., top : top + size, left : left + size]


def _resize_normalize(pixels: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    pixels = pixels.float()
    if tuple(pixels.shape[-2:]) != tuple(shape):
        pixels = F.interpolate(pixels, size=shape, mode="bilinear", antialias=True, align_corners=False)
    mean, std = _statistics(pixels.device)
    return (pixels - mean) / std


@functools.lru_cache(maxsize=None)
def _statistics(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # Made once per device: building them from Python lists each time would copy from pageable
    # memory, which makes the host wait for the GPU.
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    return mean.to(device), std.to(device)


def as_tensor(rgb: np.ndarray, device: torch.device) -> torch.Tensor:
    """An (H, W, 3) uint8 array as a [3, H, W] uint8 tensor on ``device``."""
    return as_tensors([rgb], device)[0]


def as_tensors(images: Sequence[np.ndarray], device: torch.device) -> list[torch.Tensor]:
    """(H, W, 3) uint8 arrays as [3, H, W] uint8 tensors on ``device``.

    For a GPU the images travel together: packed into one pinned buffer and copied without
    blocking, so the host goes on queueing work while earlier batches still run.
    """
    if device.type != "cuda":
        return [torch.from_numpy(image).permute(2, 0, 1) for image in images]
    host = torch.empty(sum(image.nbytes for image in images), dtype=torch.uint8, pin_memory=True)
    offsets = np.cumsum([0] + [image.nbytes for image in images])
    for image, start in zip(images, offsets):
        host[start : start + image.nbytes].copy_(torch.from_numpy(image).view(-1))
    packed = host.to(device, non_blocking=True)
    return [
        packed[start : start + image.nbytes].view(image.shape).permute(2, 0, 1)
        for image, start in zip(images, offsets)
    ]


def to_device(values: np.ndarray, device: torch.device) -> torch.Tensor:
    """A small host array on ``device`` without making the host wait for the GPU (pinned copy)."""
    tensor = torch.from_numpy(np.ascontiguousarray(values))
    return tensor.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else tensor


def pad_batch(inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Stack [3, h, w] inputs, zero-padded at the bottom and right to a common shape.

    Returns the batch and the valid (height, width) of each input, or None when no input needed
    padding (the network then skips masking).
    """
    heights = [x.shape[1] for x in inputs]
    widths = [x.shape[2] for x in inputs]
    if len(set(heights)) == 1 and len(set(widths)) == 1:
        return torch.stack(list(inputs)), None
    # Padded shapes are rounded up to 32 px (the network's stride), so that mixed batches repeat a
    # few shapes and cuDNN's per-shape autotuning is paid a few times, not once per batch.
    batch = inputs[0].new_zeros(len(inputs), 3, _round_up(max(heights), 32), _round_up(max(widths), 32))
    for slot, x in zip(batch, inputs):
        slot[:, : x.shape[1], : x.shape[2]] = x
    return batch, to_device(np.array(list(zip(heights, widths))), batch.device)


def plan_batches(
    shapes: Sequence[tuple[int, int]], max_items: int, max_pixels: int, max_padding: float = 0.25
) -> list[list[int]]:
    """Group inputs of the given shapes into batches, most similar shapes together.

    A batch holds at most ``max_items`` inputs and ``max_pixels`` padded pixels (an input larger
    than that goes alone), and its padding is at most ``max_padding`` of its real pixels, so mixed
    sizes cost little extra work. Returns lists of indices into ``shapes``.
    """
    order = sorted(range(len(shapes)), key=lambda i: shapes[i])
    batches: list[list[int]] = []
    current: list[int] = []
    height = width = real = 0
    for i in order:
        h, w = shapes[i]
        new_h, new_w, new_real = max(height, h), max(width, w), real + h * w
        padded = new_h * new_w * (len(current) + 1)
        fits = len(current) < max_items and padded <= max_pixels and padded <= (1 + max_padding) * new_real
        if current and not fits:
            batches.append(current)
            current, new_h, new_w, new_real = [], h, w, h * w
        current.append(i)
        height, width, real = new_h, new_w, new_real
    if current:
        batches.append(current)
    return batches


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple
