"""Chunks: a run's images in consecutive pieces of work, from the reader to the host.

:meth:`vggfeat.extractor.Extractor.iter_chunks` gathers the decoded images of each chunk from
the reader (:func:`gather_chunks`), queues the chunk's work on the device, queues a copy of its
descriptors to the host right behind that work (:func:`copy_to_host`), and hands chunks on in
order once their copy is done (:func:`collected`), while later chunks' work is under way.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import ImageError
from .reading import Reduced
from .regions import Region, crop

# Decoded images held at once per chunk; bounds host memory whatever the image sizes.
CHUNK_BYTES = 512 * 2**20
# Why an image whose descriptor came out NaN or infinite is recorded as failed.
NOT_FINITE = ("its descriptor holds NaN or infinite values (an overflow of fp16 arithmetic? describe it with "
              "--precision bf16 or fp32)")
# Why an image whose descriptor float16 cannot hold is recorded as failed (stored, it would be inf).
BEYOND_FLOAT16 = (f"its descriptor holds values beyond float16's range (±{np.finfo(np.float16).max:,.0f}): store "
                  "float32 descriptors (--dtype float32)")


@dataclass
class Chunk:
    """Descriptors of consecutive images ``[start, end)`` of an :meth:`Extractor.iter_chunks` call."""

    start: int
    end: int
    indices: list[int] = field(default_factory=list)  # images that succeeded, ascending
    # [len(indices), dim] float32; until the chunk is yielded, a tensor that may still be being
    # computed (or copied to the host), ready once ``ready`` has happened
    features: np.ndarray | torch.Tensor | None = None
    ready: torch.cuda.Event | None = field(default=None, repr=False)
    sizes: list[tuple[int, int]] = field(default_factory=list)  # their decoded (height, width)
    failures: list[tuple[int, str]] = field(default_factory=list)  # (image, reason)


def gather_chunks(count: int, decoded: Iterator[np.ndarray | torch.Tensor | Reduced | ImageError], chunk_images: int,
                  regions: Sequence[Region | None] | None = None, min_side: int = 1
                  ) -> Iterator[tuple[Chunk, list[np.ndarray | torch.Tensor]]]:
    """The ``count`` images that ``decoded`` gives, in chunks of ``chunk_images`` at most (fewer
    where their pixels reach CHUNK_BYTES): each chunk, its failures recorded, with its images, each
    cropped to its region where ``regions`` gives one (a region too small for ``min_side`` fails)."""
    position = 0
    while position < count:
        chunk, images, held = Chunk(start=position, end=position), [], 0
        while chunk.end < count and chunk.end - chunk.start < chunk_images and held < CHUNK_BYTES:
            result = next(decoded)
            region = regions[chunk.end] if regions is not None and not isinstance(result, ImageError) else None
            if region is not None:  # (never of an image decoded smaller: --jpeg-draft takes no region)
                try:
                    cropped = crop(result, region, min_side)
                except ImageError as error:
                    cropped = error
                if isinstance(result, torch.Tensor) and result.is_cuda:
                    # Copied on this thread's stream from memory that a decoding thread's stream
                    # allocated: not to be reused there before the copy is done.
                    result.record_stream(torch.cuda.current_stream(result.device))
                result = cropped
            if isinstance(result, ImageError):
                chunk.failures.append((chunk.end, str(result)))
            else:
                chunk.indices.append(chunk.end)
                if isinstance(result, Reduced):  # decoded smaller: its size is the whole image's
                    chunk.sizes.append(result.full_size)
                    result = result.pixels
                else:
                    chunk.sizes.append(_height_width(result))
                images.append(result)
                held += result.nbytes if isinstance(result, np.ndarray) else result.numel()
            chunk.end += 1
        position = chunk.end
        yield chunk, images


def first_of_runs(paths: Iterable[Path]) -> Iterator[Path]:
    """``paths`` without the repeats of a path right after it: an image's regions, side by side in
    a run's sorted paths, need it decoded once (see :func:`each_of_runs`)."""
    previous = None
    for path in paths:
        if path != previous:
            yield path
        previous = path


def each_of_runs(decoded: Iterator, paths: Iterable[Path]) -> Iterator:
    """For each of ``paths``, the image that ``decoded`` gives for :func:`first_of_runs` of them."""
    previous, image = None, None
    for path in paths:
        if path != previous:
            image = next(decoded)
        previous = path
        yield image


def _height_width(image: np.ndarray | torch.Tensor) -> tuple[int, int]:
    return tuple(image.shape[:2]) if isinstance(image, np.ndarray) else tuple(image.shape[1:])


def copy_to_host(features: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """A host copy of a device tensor, queued right behind the work that computes it, and the
    event that says it is done. A copy queued when the results are wanted, after the next chunk's
    work, would make the host wait for that work too, and the GPU then idle while the host
    gathers the chunk after it (measured: GPU busy 53% of a run limited by neither)."""
    if features.device.type != "cuda":
        return features, None
    host = torch.empty(features.shape, dtype=features.dtype, pin_memory=True)
    host.copy_(features, non_blocking=True)
    # Waited for asleep (a blocking event): otherwise CUDA spins while it waits, with one process
    # on a machine of many cores, and the main thread waits for results a quarter of a run or
    # more (RESULTS.md): a core that decoding needs.
    ready = torch.cuda.Event(blocking=True)
    ready.record(torch.cuda.current_stream(features.device))
    return host, ready


def collected(chunk: Chunk) -> Chunk:
    """The chunk with its descriptors on the host; an image whose descriptor is not finite (fp16
    arithmetic can overflow) becomes a failure, not a row that every later stage would refuse."""
    if chunk.ready is not None:
        chunk.ready.synchronize()  # this chunk's work and copy alone
        chunk.ready = None
    chunk.features = chunk.features.numpy()
    keep_rows(chunk, np.isfinite(chunk.features).all(axis=1), NOT_FINITE)
    return chunk


def keep_rows(chunk: Chunk, keep: np.ndarray, reason: str) -> None:
    """Of the collected ``chunk``, the images where ``keep`` is False recorded as failed for
    ``reason``, their rows dropped."""
    if keep.all():
        return
    chunk.failures += [(index, reason) for index, ok in zip(chunk.indices, keep) if not ok]
    chunk.failures.sort()
    chunk.indices = [index for index, ok in zip(chunk.indices, keep) if ok]
    chunk.sizes = [size for size, ok in zip(chunk.sizes, keep) if ok]
    chunk.features = chunk.features[keep]
