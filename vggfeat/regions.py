"""Regions: a box of an image described alone, as a row of its own (a person, an object).

A file list names a region by its image's path followed by a spatial media fragment (W3C Media
Fragments URI 1.0), ``images/a.jpg#xywh=160,120,320,240``: the box whose top-left pixel is (160,
120), 320 pixels wide and 240 high, in the upright image (after its EXIF rotation). That text is the
row's path in every file vggfeat writes, so a region is found, resumed, updated, labelled and
merged by it as an image is by its path, and several regions of one image are rows side by side.
A box that reaches past the image is clipped to it, as the standard says; one that lies outside
it, or whose clipped part is smaller than ``min_side``, is recorded as failed.

This module imports no torch: the file list is read before the network loads.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from .errors import ImageError

if TYPE_CHECKING:  # (not imported: see above)
    import torch

FRAGMENT = "#xywh="
# A region at the end of a list line, then perhaps the line's label; "pixel:" is the standard's
# default unit, written or not ("percent:" is not taken).
_REGION = re.compile(r"(?P<path>.+?#xywh=(?:pixel:)?\d+,\d+,\d+,\d+)(?:,(?P<label>.*))?")
_BOX = re.compile(r"(?:pixel:)?(\d+),(\d+),(\d+),(\d+)")
JPEG_DRAFT_REGIONS = ("jpeg_draft (--jpeg-draft) decodes a JPEG as small as its whole image allows, too small for a "
                      "region of it: describe regions without it")


class Region(NamedTuple):
    """A box in an image's pixels: its top-left corner, its width and its height."""

    x: int
    y: int
    width: int
    height: int


def split_region(path: str) -> tuple[str, Region | None]:
    """The image's path and the region that ``path`` names (None: the whole image).

    Raises ValueError for a fragment that is not ``#xywh=X,Y,W,H`` with W and H above 0.
    """
    file, fragment, box = path.rpartition(FRAGMENT)
    if not fragment:
        return path, None
    matched = _BOX.fullmatch(box)
    if not matched:
        raise ValueError(f"{path}: a region is {FRAGMENT}X,Y,W,H in whole pixels (X, Y: its top-left corner)")
    region = Region(*map(int, matched.groups()))
    if region.width < 1 or region.height < 1:
        raise ValueError(f"{path}: the region is empty (its width and height must be at least 1)")
    return file, region


def split_list_entry(line: str) -> tuple[str, str | None] | None:
    """A file list's line that names a region: (path with its fragment, label or None); None for a
    line that names no region."""
    if FRAGMENT not in line:
        return None
    matched = _REGION.fullmatch(line)
    if matched is None:
        return line, None  # split_region says what is wrong with it
    label = (matched["label"] or "").strip()
    return matched["path"], label or None


def region_of(path: str) -> Region | None:
    """The region that ``path`` names; None for a whole image: a path without a region's fragment,
    or a file whose own name holds ``#xywh=`` without a box after it (``a#xywh=b.jpg``)."""
    if FRAGMENT not in path:
        return None
    try:
        return split_region(path)[1]
    except ValueError:
        return None


def file_and_region(path: str | os.PathLike) -> tuple[str, Region | None]:
    """The file that ``path`` names and the region of it: a file's own name (one there) is the whole
    image, whatever it holds; else ``#xywh=X,Y,W,H`` names a region (ValueError if malformed)."""
    text = os.fspath(path)
    return (text, None) if os.path.isfile(text) else split_region(text)


class Regions(Sequence):
    """The region that each of ``paths`` names (None: the whole image), worked out when indexed."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Regions(self.paths[index])
        return region_of(self.paths[index])


def image_of(path: str) -> str:
    """The path of the image that ``path`` names or names a region of."""
    return path.rpartition(FRAGMENT)[0] if region_of(path) is not None else path


class RegionCount(NamedTuple):
    """Of some rows' paths: how many name regions, and of how many images."""

    regions: int
    images: int


def count_regions(paths: Iterable[str]) -> RegionCount:
    """How many of ``paths``, in sorted order, name regions (:func:`region_of`), and of how many
    images. Sorted, an image's regions are side by side: each run of them is one image."""
    regions = images = 0
    previous = None
    for path in paths:
        if FRAGMENT in path and region_of(path) is not None:
            image = path.rpartition(FRAGMENT)[0]
            regions += 1
            images += image != previous
            previous = image
    return RegionCount(regions, images)


def region_path(path: str, region: Region) -> str:
    """The path that names ``region`` of the image ``path``."""
    return f"{path}{FRAGMENT}{region.x},{region.y},{region.width},{region.height}"


def from_corners(box: Sequence[float]) -> Region:
    """The region of a box [x1, y1, x2, y2] (x2, y2 past its last pixel), rounded to whole pixels as
    PIL's ``crop`` rounds it."""
    x1, y1, x2, y2 = (round(value) for value in box)
    return Region(x1, y1, x2 - x1, y2 - y1)


def crop(image: np.ndarray | torch.Tensor, region: Region, min_side: int) -> np.ndarray | torch.Tensor:
    """The part of ``image`` (an array [H, W, C] or a tensor [C, H, W]) that ``region`` covers,
    clipped to the image; ImageError where nothing of it, or too little, is in the image."""
    height, width = image.shape[:2] if isinstance(image, np.ndarray) else image.shape[1:]
    if not all(isinstance(value, (int, np.integer)) for value in region) or region.width <= 0 or region.height <= 0:
        raise ImageError(f"a region is whole pixels, its width and height above 0: got {tuple(region)}")
    x1, y1 = max(0, region.x), max(0, region.y)
    x2, y2 = min(width, region.x + region.width), min(height, region.y + region.height)
    if x2 <= x1 or y2 <= y1:
        raise ImageError(f"the region lies outside the image ({width}x{height})")
    if min(x2 - x1, y2 - y1) < min_side:
        raise ImageError(f"the region is {x2 - x1}x{y2 - y1} within the image; the smallest side must be at least "
                         f"{min_side} px")
    if isinstance(image, np.ndarray):
        return np.ascontiguousarray(image[y1:y2, x1:x2])
    return image[:, y1:y2, x1:x2].contiguous()
