"""Read: image files become decoded pixels, ahead of the network and in order.

Each file becomes an RGB uint8 array (PIL), a [3, H, W] uint8 tensor (torchvision's decoders, or
any image on its way to a GPU), or the :class:`ImageError` saying why it cannot be used. Decoders:

- ``pil``: Pillow, for every file.
- ``torchvision``: JPEGs in batches by libjpeg-turbo on the CPU, through TorchCodec or
  torchvision (:mod:`vggfeat.jpeg`): PIL's pixels exactly, at about half PIL's cost per image;
  other files by PIL.
- ``nvjpeg``: JPEGs in batches on the GPU (nvJPEG), the same way; other files by PIL.
- ``nvimgcodec``: JPEGs in batches on the GPU's hardware JPEG engines where it has them, else with
  CUDA (nvImageCodec, :mod:`vggfeat.gpujpeg`); other files by PIL.

With a ``reduction`` (``--jpeg-draft``), a JPEG large enough is decoded by PIL at a half, a quarter
or an eighth of its size (libjpeg's DCT scaling) and comes as :class:`Reduced`, which keeps its
full size.

Decoding runs in threads, or with ``processes`` in worker processes (:mod:`vggfeat.processes`),
which hold no lock that the network's thread needs. On a GPU, threads upload (or decode there) on
streams of their own. However large the images, the workers hold at most LOOKAHEAD_BYTES of
decoded pixels ahead of the reader (:class:`Budget`).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from .decode import Reduction, decode_image_reduced, open_image_file
from .errors import ImageError, VggfeatError
from .gpujpeg import BatchDecoder
from .jpeg import EncodedJpeg, decode_jpegs, read_jpeg

# The decoders whose pixels start on the GPU, decoded from this process.
GPU_DECODERS = ("nvjpeg", "nvimgcodec")
# Files per decoding task with torchvision's decoders (one batched decode call), and with processes
# (one block of shared memory back).
JPEG_GROUP = 32
# Most decoded bytes a decoding thread decodes at once; a group's files beyond go next.
BLOCK_BYTES = 64 * 2**20
# Decoded pixels that the workers may hold ahead of the group being read (on the GPU, if the
# network is there), besides that group: 1,900 images of 500x375, or 14 of 6000x4000.
LOOKAHEAD_BYTES = 2**30


class Reduced(NamedTuple):
    """An image that libjpeg decoded smaller than it is (``--jpeg-draft``)."""

    pixels: np.ndarray | torch.Tensor  # as any decoded image's, at the reduced size
    full_size: tuple[int, int]  # the image's upright (height, width)


Decoded = np.ndarray | torch.Tensor | Reduced | ImageError


class ImageReader:
    """Decodes files with ``workers`` threads (or processes) for a network on ``device``; see :meth:`read`.

    ``reduction(height, width)``: by how much (1, 2, 4 or 8) a JPEG of that size may be decoded
    smaller; None decodes every image whole.
    """

    def __init__(self, device: torch.device, decoder: str, workers: int, max_pixels: int, min_side: int,
                 processes: bool = False, reduction: Reduction | None = None) -> None:
        self.device, self.decoder, self.workers, self.processes = device, decoder, workers, processes
        self.max_pixels, self.min_side, self.reduction = max_pixels, min_side, reduction
        self._thread = threading.local()  # per thread of this process: its stream (and nvImageCodec decoder)

    @contextlib.contextmanager
    def read(self, paths: Sequence[str | os.PathLike], lookahead: int) -> Iterator[Iterator[Decoded]]:
        """The decoded ``paths``, in order, with up to ``lookahead`` files (and LOOKAHEAD_BYTES of
        pixels) decoded ahead."""
        budget = Budget(LOOKAHEAD_BYTES)
        with contextlib.ExitStack() as stack:
            if self.processes:
                from .processes import DecodingProcesses  # here: that module builds on this one's reader

                submit = stack.enter_context(DecodingProcesses(self, budget)).submit
            else:
                pool = ThreadPoolExecutor(self.workers, thread_name_prefix="vggfeat-decode",
                                          **device_threads(self.device))  # on this GPU, set in each thread
                stack.callback(pool.shutdown, cancel_futures=True)  # a reader that stops early waits for no more
                submit = functools.partial(pool.submit, self._decode_group, budget=budget)
            stack.callback(budget.close)  # first: no worker is left waiting for a reader gone
            yield self._ahead(paths, submit, lookahead, budget)

    def _ahead(self, paths: Sequence[str | os.PathLike], submit: Callable[[list[Path], int], Future],
               lookahead: int, budget: Budget) -> Iterator[Decoded]:
        # Files go in groups: torchvision decodes a group in one batch, a process returns it in one block.
        group = 1 if self.decoder == "pil" and not self.processes else JPEG_GROUP
        pending: deque[Future] = deque()
        upcoming, numbers = iter(paths), itertools.count()

        def submit_next() -> None:
            # Path objects as they come (an ImageSet's files are): making each anew would be work,
            # per file, for the thread that queues the GPU's work.
            files = [path if isinstance(path, Path) else Path(path) for path in itertools.islice(upcoming, group)]
            if files:
                pending.append(submit(files, next(numbers)))

        for _ in range(-(-lookahead // group)):
            submit_next()
        number = 0
        while pending:
            budget.reading(number)
            future = pending.popleft()
            submit_next()
            results, held = future.result()
            yield from results
            budget.give_back(held)  # the reader holds them now, within its own bounds
            number += 1

    def _decode_group(self, paths: list[Path], number: int, budget: Budget, limit: int | None = None
                      ) -> tuple[list[Decoded], int]:
        """The files' pixels, and how many bytes of the budget they took (group ``number``). With a
        ``limit``, only the first files whose pixels it holds (at least one), by their headers."""
        results: list[Decoded | None] = []
        jpegs: list[tuple[int, EncodedJpeg]] = []
        held = total = 0
        for path in paths:
            try:
                jpeg = None if self.decoder == "pil" else read_jpeg(path, self.max_pixels, self.min_side)
            except ImageError as error:
                results.append(error)
                continue
            factor = 1 if jpeg is None or self.reduction is None else self.reduction(jpeg.height, jpeg.width)
            if limit is not None:
                nbytes = _header_bytes(path, self.reduction) if jpeg is None else jpeg.decoded_bytes // factor**2
                if results and total + nbytes > limit:
                    break
                total += nbytes
            if factor > 1:
                jpeg = None  # the batched decoders decode whole images only: PIL decodes it smaller
            if jpeg is None:
                pixels, taken = self._decode(path, number, budget)
                results.append(pixels)
                held += taken
            else:
                jpegs.append((len(results), jpeg))
                results.append(None)
        on = self.device if self.decoder in GPU_DECODERS else torch.device("cpu")
        for batch in _blocks(jpegs, lambda item: item[1].decoded_bytes, BLOCK_BYTES):
            held += budget.take(number, sum(jpeg.decoded_bytes for _, jpeg in batch))  # before they exist
            with self._own_stream():
                decoded = self._decode_jpegs([jpeg for _, jpeg in batch], on)
                if len(decoded) != len(batch):
                    # A decoder that left a file out: paired by position, every later file would get
                    # its neighbour's pixels. PIL decodes them all instead (nvImageCodec's decoder
                    # checks its own count and retries file by file: gpujpeg._one_per_file).
                    decoded = [None] * len(batch)
                if on != self.device:
                    decoded = [None if pixels is None else self._upload(pixels) for pixels in decoded]
            for (i, jpeg), pixels in zip(batch, decoded):
                if pixels is None:  # PIL decides
                    pixels, taken = self._decode(jpeg.path, number, budget)
                    held += taken
                results[i] = pixels
        return results, held

    def _decode_jpegs(self, jpegs: list[EncodedJpeg], on: torch.device) -> list[torch.Tensor | None]:
        """The JPEGs' pixels on ``on``, decoded in one batch; None for those the decoder rejects."""
        if self.decoder != "nvimgcodec":
            return decode_jpegs(jpegs, on)
        decoder = getattr(self._thread, "decoder", None)
        if decoder is None:
            try:
                decoder = self._thread.decoder = BatchDecoder(on)
            except RuntimeError as error:  # a library that loads but cannot start on this GPU: stop, saying why
                raise VggfeatError(f"nvImageCodec cannot decode on {on}: {error}; use --decoder torchvision") from error
        return decode_jpegs(jpegs, on, decoder)

    def _decode(self, path: Path, number: int, budget: Budget) -> tuple[Decoded, int]:
        try:
            rgb, full_size = decode_image_reduced(path, self.reduction, max_pixels=self.max_pixels,
                                                  min_side=self.min_side)
        except ImageError as error:
            return error, 0
        held = budget.take(number, rgb.nbytes)
        pixels = rgb
        if self.device.type == "cuda":
            with self._own_stream():
                pixels = self._upload(torch.from_numpy(rgb)).permute(2, 0, 1)
        return (pixels if full_size == rgb.shape[:2] else Reduced(pixels, full_size)), held

    def _unpack(self, packed: torch.Tensor, outcomes: list[tuple[int, ...] | str]) -> list[Decoded]:
        """A worker process's block, images laid out (H, W, 3) one after another: [3, H, W] views
        of it, or the errors; an outcome (H, W, full height, full width) is a :class:`Reduced`. For
        a GPU the block is in pinned memory (DecodingProcesses._copied), and goes there in one upload."""
        if self.device.type == "cuda":
            with self._own_stream():
                packed = self._upload(packed, pinned=True)
        results: list[Decoded] = []
        start = 0
        for outcome in outcomes:
            if isinstance(outcome, str):
                results.append(ImageError(outcome))
                continue
            height, width = outcome[:2]
            pixels = packed[start : start + 3 * height * width].view(height, width, 3).permute(2, 0, 1)
            results.append(Reduced(pixels, outcome[2:]) if len(outcome) > 2 else pixels)
            start += 3 * height * width
        return results

    def _upload(self, pixels: torch.Tensor, pinned: bool = False) -> torch.Tensor:
        """``pixels`` on the network's GPU; or left on the host when the GPU has no room for them
        now, for the network's thread to upload with their batch (where a batch that does not fit
        is split, and an image that does not fit alone is recorded as failed): an upload ahead of
        the network must never fail the run. ``pinned``: they are in pinned memory, which the
        caller knows: ``is_pinned`` asks the driver (cudaPointerGetAttributes, 2.6 ms a call on
        average in a profile of a run on an H100 machine)."""
        try:
            return pixels.to(self.device, non_blocking=pinned)
        except torch.cuda.OutOfMemoryError:
            return pixels

    @contextlib.contextmanager
    def _own_stream(self) -> Iterator[None]:
        """On a GPU, run the block on this thread's own stream, and wait for it.

        Uploads from pageable memory then block only this thread, never the stream the network
        runs on. And decoders get memory that only this stream has used, after its earlier work
        is done: nvJPEG's hardware decoder is known to write its output before the work queued
        ahead of it on its stream has run (pytorch/vision#9606).
        """
        if self.device.type != "cuda":
            yield
            return
        stream = getattr(self._thread, "stream", None)
        if stream is None:
            stream = self._thread.stream = torch.cuda.Stream(self.device)
            # Waited on asleep: stream.synchronize() would spin (see chunks.copy_to_host).
            self._thread.done = torch.cuda.Event(blocking=True)
        with torch.cuda.stream(stream):
            yield
        self._thread.done.record(stream)
        self._thread.done.synchronize()


def device_threads(device: torch.device) -> dict:
    """ThreadPoolExecutor's keyword arguments for threads that use ``device``: on a GPU, each
    thread starts by making it its current CUDA device (:func:`use_cuda_device`). CUDA's current
    device is per thread and starts at GPU 0: a thread working for GPU 1 would otherwise open a
    context on GPU 0 too (hundreds of MiB of its memory, where another run may be working), as
    soon as it switches streams (``torch.cuda.stream`` sets the previous stream back on exit, and
    with it GPU 0), pins memory or waits on an event. A plain "cuda" is the calling thread's
    current device, resolved here, where it is meant: in a new thread it would be GPU 0. Nothing
    on the CPU, nor where CUDA is absent (no thread can use it there)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return {}
    index = torch.cuda.current_device() if device.index is None else device.index
    return {"initializer": use_cuda_device, "initargs": (index,)}


def use_cuda_device(index: int) -> None:
    """Make GPU ``index`` this thread's current CUDA device (see :func:`device_threads`)."""
    torch.cuda.set_device(index)


class Budget:
    """Bytes of decoded pixels that decoding workers may hold ahead of the reader.

    A worker takes what an image will need before it decodes it (or uploads it), waiting while
    the budget is spent; the reader gives a group's bytes back once it has read the group. The
    group the reader waits for (``reading``) never waits, so reading always goes on, whatever the
    image sizes: host and GPU memory stay bounded for photos of 24 megapixels as for thumbnails.
    """

    def __init__(self, limit: int | None) -> None:  # None: no limit
        self.limit, self.held, self.next_read, self.closed = limit, 0, 0, False
        self._changed = threading.Condition()

    def take(self, number: int, nbytes: int) -> int:
        """Wait until group ``number`` may hold ``nbytes`` more; returns ``nbytes``."""
        with self._changed:
            self._changed.wait_for(lambda: self.closed or self.limit is None or number <= self.next_read
                                   or self.held + nbytes <= self.limit)
            self.held += nbytes
        return nbytes

    def give_back(self, nbytes: int) -> None:
        with self._changed:
            self.held -= nbytes
            self._changed.notify_all()

    def reading(self, number: int) -> None:
        """The reader now waits for group ``number``."""
        with self._changed:
            self.next_read = number
            self._changed.notify_all()

    def close(self) -> None:
        """The reader is gone: nobody waits any more."""
        with self._changed:
            self.closed = True
            self._changed.notify_all()


def _header_bytes(path: Path, reduction: Reduction | None) -> int:
    """Decoded size by the header, a JPEG's as ``reduction`` has it decoded smaller; 0 when it
    cannot be read (the decoder will say why)."""
    try:
        with open_image_file(path) as file, Image.open(file) as image:
            width, height = image.size
            drafted = reduction is not None and image.format in ("JPEG", "MPO")  # what Pillow's draft mode scales
    except Exception:  # noqa: BLE001 - the decoder words the reason
        return 0
    factor = reduction(height, width) if drafted else 1
    return 3 * -(-width // factor) * -(-height // factor)


def _blocks(items: list, nbytes: Callable[[object], int], limit: int) -> Iterator[list]:
    """``items`` in consecutive runs of at most ``limit`` bytes decoded (at least one item each):
    large photos are decoded, and take their memory, a few at a time rather than a group at once."""
    block: list = []
    total = 0
    for item in items:
        size = nbytes(item)
        if block and total + size > limit:
            yield block
            block, total = [], 0
        block.append(item)
        total += size
    if block:
        yield block
