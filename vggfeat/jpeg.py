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
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .decode import MOST_JPEG_BYTES, check_min_side, check_pixels, open_image_file

_ORIENTATION = 0x0112  # EXIF tag; 1 means upright as stored
_SOI = b"\xff\xd8\xff"  # how every JPEG file starts
_EOI = b"\xff\xd9"  # and how a whole one ends


@dataclass
class EncodedJpeg:
    """A JPEG file's bytes, checked to be torchvision's to decode."""

    path: Path
    data: torch.Tensor  # uint8 [n], the whole file
    height: int = 0  # from its header
    width: int = 0

    @property
    def decoded_bytes(self) -> int:
        return 3 * self.height * self.width


def read_jpeg(path: str | Path, max_pixels: int, min_side: int) -> EncodedJpeg | None:
    """The bytes of ``path`` if it is a JPEG for torchvision, or None: a file for PIL to decode.

    Raises :class:`~vggfeat.errors.ImageError` when it is not a regular file or its header's size is
    refused, as :func:`~vggfeat.decode.decode_image` would.
    """
    try:
        with open_image_file(path) as file:
            start = file.read(len(_SOI))
            if start != _SOI or file.seek(0, os.SEEK_END) > MOST_JPEG_BYTES:  # not a JPEG for a batch: read no further
                return None
            file.seek(len(_SOI))  # (a file, or an archive's member read into memory)
            data = start + file.read()
    except OSError:  # PIL's decoder gives the reason
        return None
    # nvJPEG decodes a truncated file without an error (the missing rows come out grey): one
    # that does not end as a JPEG ends goes to PIL, which refuses it or reads it as it is.
    if not data.rstrip(b"\x00\r\n ").endswith(_EOI):
        return None
    size = _plain_jpeg_size(data)
    if size is None:
        return None
    width, height = size
    check_pixels(width, height, max_pixels)
    check_min_side(width, height, min_side)
    return EncodedJpeg(Path(path), torch.frombuffer(bytearray(data), dtype=torch.uint8), height, width)


# Frame types libjpeg-turbo decodes as PIL does: baseline, extended and progressive Huffman.
_PLAIN_FRAMES = {0xC0, 0xC1, 0xC2}
_OTHER_FRAMES = {0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_STANDALONE = {0x01, *range(0xD0, 0xD8)}
_XMP = b"http://ns.adobe.com/xap/1.0/\0"  # an APP1 segment of XMP
_XMP_TURNED = re.compile(rb'tiff:Orientation(?:="|>)[02-9]')  # as Pillow finds it (getexif), but upright (1)


def _plain_jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a JPEG that torchvision decodes to PIL's pixels: an 8-bit baseline or
    progressive frame of 1 (gray) or 3 (YCbCr) components, with no EXIF rotation and not a
    multi-picture file. None for anything else, and for whatever cannot be parsed.

    A walk over the markers up to the scan, instead of Pillow's header parsing: this runs in every
    decoding thread for every file, holding the GIL, and the network's host work needs it too.
    """
    size, position = None, 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in _STANDALONE:
            position += 2
            continue
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        segment = data[position + 4 : position + 2 + length]
        if length < 2 or len(segment) != length - 2:
            return None
        if marker == 0xDA:  # start of scan: the header is over
            return size
        if marker in _PLAIN_FRAMES:
            if len(segment) < 6 or segment[0] != 8 or segment[5] not in (1, 3) or size is not None:
                return None
            size = int.from_bytes(segment[3:5], "big"), int.from_bytes(segment[1:3], "big")
            if 0 in size:  # a height given later (DNL marker), which neither library reads
                return None
        elif marker in _OTHER_FRAMES:
            return None
        elif marker == 0xE1 and (segment.startswith(b"Exif\0\0") or segment[6:8] in (b"II", b"MM")):
            # Pillow reads an EXIF block only under its "Exif\0\0" signature; TorchCodec reads
            # one past the first 6 bytes of any APP1 (a damaged signature too), and turns the image.
            if not segment.startswith(b"Exif\0\0") or _exif_orientation(segment[6:]) != 1:
                return None
        elif marker == 0xE1 and segment.startswith(_XMP) and _XMP_TURNED.search(segment) and _pillow_turns_by_xmp():
            # Pillow (11.2 on) takes the orientation from XMP where EXIF gives none (an editor's
            # export, say), the other decoders never: one image turned by one route, not another.
            return None
        elif marker == 0xE2 and segment.startswith(b"MPF\0"):  # Pillow opens these as MPO
            return None
        position += 2 + length
    return None


@functools.cache
def _pillow_turns_by_xmp() -> bool:
    """Whether this Pillow takes a JPEG's orientation from its XMP (11.2 and later; earlier ones
    read it from a PNG's XMP alone): asked of Pillow, as its version would only be a guess."""
    from PIL import Image

    image = Image.new("L", (1, 1))
    image.info["xmp"] = b'<x:xmpmeta tiff:Orientation="6"/>'  # where Pillow's JPEG plugin puts it
    return image.getexif().get(_ORIENTATION) == 6


def _exif_orientation(tiff: bytes) -> int | None:
    """The orientation tag of an EXIF block's first directory: 1 (upright) when absent, None
    when the block cannot be read."""
    order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return None
    directory = int.from_bytes(tiff[4:8], order)
    if directory + 2 > len(tiff):
        return None
    count = int.from_bytes(tiff[directory : directory + 2], order)
    for entry in range(directory + 2, directory + 2 + 12 * count, 12):
        if entry + 12 > len(tiff):
            return None
        if int.from_bytes(tiff[entry : entry + 2], order) == _ORIENTATION:
            return int.from_bytes(tiff[entry + 8 : entry + 10], order)
    return 1


def decode_jpegs(files: list[EncodedJpeg], device: torch.device,
                 decode: Callable[[list[torch.Tensor]], list[torch.Tensor | None]] | None = None
                 ) -> list[torch.Tensor | None]:
    """RGB uint8 [3, H, W] of each file on ``device``, decoded in one batch; None for a file that
    the decoder rejects (and for every file where neither TorchCodec nor torchvision has one).
    ``decode``: another batched decoder of the files' bytes, onto ``device`` (a
    :class:`vggfeat.gpujpeg.BatchDecoder`); else that of :func:`decoder_library`."""
    if decode is None:
        library = batch_decoder()
        if library is None:
            return [None] * len(files)
        decode = functools.partial(library, device=device)
    if not files:
        return []
    try:
        return list(decode([f.data for f in files]))
    except RuntimeError:
        pass
    # One bad file fails the batched call: decode them one by one to tell which.
    decoded: list[torch.Tensor | None] = []
    for f in files:
        try:
            decoded.append(decode([f.data])[0])
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


# torchvision decodes a list of JPEGs in one call from 0.19 on; before, each call is one image.
TORCHVISION_BATCHES = (0, 19)


@functools.cache
def decoder_library() -> str:
    """The first of :data:`LIBRARIES` that can decode batches here, with its version; "none" if neither."""
    for name, decoders in LIBRARIES.items():
        try:
            module = importlib.import_module(name)
            importlib.import_module(decoders).decode_jpeg  # noqa: B018
        except (ImportError, OSError, RuntimeError, AttributeError):  # absent, too old, or built for another torch
            continue
        if name == "torchvision" and _release(module.__version__) < TORCHVISION_BATCHES:
            continue
        return f"{name} {module.__version__}"
    return "none"


def _release(version: str) -> tuple[int, ...]:
    """(0, 17) of "0.17.2+cu121"."""
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0])[:2])
