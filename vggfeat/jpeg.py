"""Decode JPEG files in batches: libjpeg-turbo on the CPU, or nvJPEG on a GPU.

The library is TorchCodec when it is installed (``pip install torchcodec``), else torchvision.io,
which torchvision 0.29 deprecated in TorchCodec's favour. Both give PIL's pixels on the CPU.

On the CPU it is PIL's own libjpeg-turbo without PIL's per-image overhead; on a GPU the pixels
start on the device and the host only reads bytes. Only files that torchvision decodes to what
:func:`vggfeat.decode.decode_image` gives are sent to it: baseline or progressive JPEGs in YCbCr
or grayscale, without an EXIF rotation. CMYK JPEGs, rotated photos, other formats, and any file
torchvision rejects are decoded by PIL instead, which also words the error of a file that nobody
can read: one bad file never fails its batch.
"""

from __future__ import annotations

import functools
import importlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from .decode import check_min_side, check_pixels

# PIL's modes of JPEGs that torchvision converts to RGB as PIL does (CMYK and YCCK it does not).
_MODES = ("RGB", "L")
_ORIENTATION = 0x0112  # EXIF tag; 1 means upright as stored
_SOI = b"\xff\xd8\xff"  # how every JPEG file starts
_EOI = b"\xff\xd9"  # and how a whole one ends


@dataclass
class EncodedJpeg:
    """A JPEG file's bytes, checked to be torchvision's to decode."""

    path: Path
    data: torch.Tensor  # uint8 [n], the whole file


def read_jpeg(path: str | Path, max_pixels: int, min_side: int) -> EncodedJpeg | None:
    """The bytes of ``path`` if it is a JPEG for torchvision, or None: a file for PIL to decode.

    Raises :class:`~vggfeat.errors.ImageError` when the header's size is refused, as
    :func:`~vggfeat.decode.decode_image` would.
    """
    try:
        with open(path, "rb") as file:
            start = file.read(len(_SOI))
            if start != _SOI:  # not a JPEG: read no further
                return None
            data = start + file.read()
        # nvJPEG decodes a truncated file without an error (the missing rows come out grey): one
        # that does not end as a JPEG ends goes to PIL, which refuses it or reads it as it is.
        if not data.rstrip(b"\x00\r\n ").endswith(_EOI):
            return None
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            if image.format != "JPEG" or image.mode not in _MODES or image.getexif().get(_ORIENTATION, 1) != 1:
                return None
            width, height = image.size
    except Exception:  # noqa: BLE001 - unreadable or odd: PIL's decoder gives the reason
        return None
    check_pixels(width, height, max_pixels)
    check_min_side(width, height, min_side)
    return EncodedJpeg(Path(path), torch.frombuffer(bytearray(data), dtype=torch.uint8))


def decode_jpegs(files: list[EncodedJpeg], device: torch.device) -> list[torch.Tensor | None]:
    """RGB uint8 [3, H, W] of each file on ``device``, decoded in one batch; None for a file that
    the decoder rejects (and for every file where neither TorchCodec nor torchvision has one)."""
    decode = batch_decoder()
    if not files or decode is None:
        return [None] * len(files)
    try:
        return list(decode([f.data for f in files], device))
    except RuntimeError:
        pass
    # One bad file fails the batched call: decode them one by one to tell which.
    decoded: list[torch.Tensor | None] = []
    for f in files:
        try:
            decoded.append(decode([f.data], device)[0])
        except RuntimeError:
            decoded.append(None)
    return decoded


# The libraries that can decode JPEG batches, and their module with decode_jpeg, in order of
# preference: TorchCodec (0.16 and later), then torchvision, which deprecated its own in 0.29.
LIBRARIES = {"torchcodec": "torchcodec.decoders", "torchvision": "torchvision.io"}


@functools.cache
def batch_decoder() -> Callable[[list[torch.Tensor], torch.device], list[torch.Tensor]] | None:
    """``decode(datas, device)``: the batched JPEG decoder of :func:`decoder_library`, or None."""
    name = decoder_library().split()[0]
    if name == "torchcodec":
        from torchcodec.decoders import decode_jpeg

        return lambda datas, device: decode_jpeg(datas, mode="RGB", device=device)
    if name == "torchvision":
        from torchvision.io import ImageReadMode, decode_jpeg

        return lambda datas, device: decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)
    return None


@functools.cache
def decoder_library() -> str:
    """The first of :data:`LIBRARIES` that can decode here, with its version; "none" if neither."""
    for name, decoders in LIBRARIES.items():
        try:
            module = importlib.import_module(name)
            importlib.import_module(decoders).decode_jpeg  # noqa: B018
        except (ImportError, OSError, RuntimeError, AttributeError):  # absent, too old, or built for another torch
            continue
        return f"{name} {module.__version__}"
    return "none"
