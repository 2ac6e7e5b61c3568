"""Read: image files become decoded pixels, in threads, ahead of the network and in order.

Each file becomes an RGB uint8 array (PIL), a [3, H, W] uint8 tensor (torchvision's decoders, or
any image on its way to a GPU), or the :class:`ImageError` saying why it cannot be used. Decoders:

- ``pil``: Pillow, for every file.
- ``torchvision``: JPEGs in batches by libjpeg-turbo on the CPU, through TorchCodec or
  torchvision (:mod:`vggfeat.jpeg`): PIL's pixels exactly, at about half PIL's cost per image;
  other files by PIL.
- ``nvjpeg``: JPEGs in batches on the GPU (nvJPEG), the same way; other files by PIL.

On a GPU the decoding threads also upload (or decode there) on streams of their own.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from .decode import decode_image
from .errors import ImageError
from .jpeg import EncodedJpeg, decode_jpegs, read_jpeg

DECODERS = ("pil", "torchvision", "nvjpeg")
# Files per decoding task with torchvision's decoders: one batched decode call.
JPEG_GROUP = 32

Decoded = np.ndarray | torch.Tensor | ImageError


class ImageReader:
    """Decodes files with ``workers`` threads for a network on ``device``; see :meth:`read`."""

    def __init__(self, device: torch.device, decoder: str, workers: int, max_pixels: int, min_side: int) -> None:
        self.device, self.decoder, self.workers = device, decoder, workers
        self.max_pixels, self.min_side = max_pixels, min_side
        self._thread = threading.local()  # per decoding thread: its stream

    @contextlib.contextmanager
    def read(self, paths: Sequence[str | os.PathLike], lookahead: int) -> Iterator[Iterator[Decoded]]:
        """The decoded ``paths``, in order, with up to ``lookahead`` files decoded ahead."""
        with ThreadPoolExecutor(self.workers, thread_name_prefix="vggfeat-decode") as pool:
            yield self._ahead(paths, pool, lookahead)

    def _ahead(self, paths: Sequence[str | os.PathLike], pool: ThreadPoolExecutor, lookahead: int) -> Iterator[Decoded]:
        # Files go to the threads in groups: torchvision decodes a group in one batch.
        group = 1 if self.decoder == "pil" else JPEG_GROUP
        pending: deque[Future] = deque()
        upcoming = iter(paths)

        def submit_next() -> None:
            files = [Path(path) for path in itertools.islice(upcoming, group)]
            if files:
                pending.append(pool.submit(self._decode_group, files))

        for _ in range(-(-lookahead // group)):
            submit_next()
        while pending:
            future = pending.popleft()
            submit_next()
            yield from future.result()

    def _decode_group(self, paths: list[Path]) -> list[Decoded]:
        if self.decoder == "pil":
            return [self._decode(path) for path in paths]
        results: list[Decoded | None] = [None] * len(paths)
        jpegs: list[tuple[int, EncodedJpeg]] = []
        for i, path in enumerate(paths):
            try:
                jpeg = read_jpeg(path, self.max_pixels, self.min_side)
            except ImageError as error:
                results[i] = error
                continue
            if jpeg is None:
                results[i] = self._decode(path)
            else:
                jpegs.append((i, jpeg))
        on = self.device if self.decoder == "nvjpeg" else torch.device("cpu")
        with self._own_stream():
            decoded = decode_jpegs([jpeg for _, jpeg in jpegs], on)
            if on != self.device:
                decoded = [None if pixels is None else pixels.to(self.device) for pixels in decoded]
        for (i, jpeg), pixels in zip(jpegs, decoded):
            results[i] = pixels if pixels is not None else self._decode(jpeg.path)  # PIL decides
        return results

    def _decode(self, path: Path) -> Decoded:
        try:
            rgb = decode_image(path, max_pixels=self.max_pixels, min_side=self.min_side)
        except ImageError as error:
            return error
        if self.device.type != "cuda":
            return rgb
        with self._own_stream():
            return torch.from_numpy(rgb).to(self.device).permute(2, 0, 1)

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
        with torch.cuda.stream(stream):
            yield
        stream.synchronize()
