"""Decode: an image file becomes an RGB uint8 array, or an :class:`ImageError` saying why not.

Everything a camera or an editor can put in a file is brought to the one form the network was
trained on: 8-bit RGB, upright as displayed. Grayscale, palette, CMYK, 16-bit and alpha images are
converted, not rejected; only files that cannot be decoded, or whose size is unusable, fail.
"""

from __future__ import annotations

import errno
import functools
import io
import os
import re
import stat
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError, features

from .archives import open_member, split_member
from .errors import ImageError

# PIL's own decompression-bomb threshold (2 x Image.MAX_IMAGE_PIXELS): a 13,000 x 13,000 image.
DEFAULT_MAX_PIXELS = 178_956_970
# torchvision's VGG weights declare min_size (32, 32); smaller images carry too little to upscale.
DEFAULT_MIN_SIDE = 32

# How the conversion is done, recorded in every output file.
DECODE_RECIPE = {
    "color": "RGB, 8 bits per channel",
    "orientation": "EXIF orientation applied",
    "alpha": "composited over white",
    # 16-bit colour (PNG, TIFF) comes from Pillow 8 bits deep: its high byte, value // 256, at most
    # one level from this. The text stays as files hold it: it is compared as they are matched.
    "high_bit_depth": "16-bit scaled to 8-bit (value / 257)",
    "frames": "first frame of animated or multi-page files",
}

_WHITE = (255, 255, 255, 255)
_ORIENTATION = 0x0112  # EXIF tag

# (height, width) of an image -> by how much (1, 2, 4 or 8) its JPEG may be decoded smaller.
Reduction = Callable[[int, int], int]

# Errors of the storage, not of the file (a network file system's or a FUSE mount's timeout, a
# stale handle, a dropped connection): such a read is tried again after each delay (seconds).
TRANSIENT_ERRNOS = frozenset({errno.EIO, errno.ESTALE, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNABORTED,
                              errno.ENOTCONN, errno.EHOSTDOWN, errno.EHOSTUNREACH, errno.ENETDOWN, errno.ENETUNREACH,
                              errno.EAGAIN})
READ_RETRY_DELAYS = (0.5, 2.0)
# How the reason of an image that the storage failed to give starts (ExtractionJob stops on a run of them).
STORAGE_ERROR = "storage error"
# Phones' photos: Pillow opens them through the pillow-heif plugin, where it is installed.
HEIF_EXTENSIONS = (".heic", ".heif")
# The largest JPEG file read whole (for a batched decoder, vggfeat.jpeg, or to put back its missing
# end marker); a larger one is decoded by PIL, which reads what it decodes: a 40 GB (sparse) file
# that began as a JPEG was read whole, a MemoryError that stopped the run and each resume. A photo
# of 100 Mpx at JPEG's best quality is about 60 MB.
MOST_JPEG_BYTES = 512 * 2**20


def decode_image(
    path: str | Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
) -> np.ndarray:
    """Read ``path`` as an upright RGB image: a ``uint8`` array of shape ``(height, width, 3)``.

    Raises :class:`ImageError` with a one-line reason when the file cannot be used.
    """
    return decode_image_reduced(path, None, max_pixels=max_pixels, min_side=min_side)[0]


def decode_image_reduced(
    path: str | Path,
    reduction: Reduction | None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
) -> tuple[np.ndarray, tuple[int, int]]:
    """As :func:`decode_image`, but a JPEG is decoded at 1/``reduction(height, width)`` of its size
    (1, 2, 4 or 8) where libjpeg can, by its DCT scaling (Pillow's draft mode): several times faster
    for a camera's photos, whose pixels are averaged down by the resize anyway. Returns the pixels
    and the image's full upright (height, width), as :func:`decode_image`'s pixels would have it.
    The limits apply to the full size.
    """
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        # Inside Image.open, before our own check, Pillow warns of a "decompression bomb DOS
        # attack" over its MAX_IMAGE_PIXELS and refuses over twice that: lift its guard to what
        # the caller explicitly allowed (it only ever goes up).
        Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        rgb, full_size = _read_rgb(path, max_pixels, reduction)
    except ImageError:
        raise
    except Image.DecompressionBombError as error:  # Pillow's guard, in Image.open, came first: over twice its limit
        counted = re.search(r"\((\d+) pixels\)", str(error))
        size = f"has {int(counted[1]):,} pixels, " if counted else "is "
        raise ImageError(
            f"image {size}over the limit of {max_pixels:,} (decompression-bomb guard; raise --max-pixels to allow it)"
        ) from None
    except FileNotFoundError:
        raise ImageError("file not found") from None
    except Exception as error:  # noqa: BLE001 - the image's failure, not the run's
        # Pillow and its plugins refuse a damaged file with errors of many kinds: OSError,
        # SyntaxError, EOFError, ValueError, MemoryError; RuntimeError from the AVIF and HEIF
        # decoders ("Missing or empty image item", a size over libheif's own limit).
        if isinstance(error, OSError) and error.errno in TRANSIENT_ERRNOS:
            raise ImageError(f"{STORAGE_ERROR} ({error.strerror}), {1 + len(READ_RETRY_DELAYS)} tries") from None
        if isinstance(error, UnidentifiedImageError):
            raise ImageError(_format_not_decoded(path) or _reason(error)) from None
        raise ImageError(_reason(error)) from None

    height, width = full_size
    check_min_side(width, height, min_side)
    return rgb, full_size


def _read_rgb(path: str | Path, max_pixels: int, reduction: Reduction | None) -> tuple[np.ndarray, tuple[int, int]]:
    """The pixels, or the error of the last try: a read that the storage failed for a moment is
    tried again (READ_RETRY_DELAYS), so that one timeout of a network file system or of an object
    store's mount costs no image."""
    for delay in READ_RETRY_DELAYS:
        try:
            return _read_rgb_once(path, max_pixels, reduction)
        except OSError as error:
            if error.errno not in TRANSIENT_ERRNOS:
                raise
        time.sleep(delay)
    return _read_rgb_once(path, max_pixels, reduction)


def _read_rgb_once(path: str | Path, max_pixels: int, reduction: Reduction | None) -> tuple[np.ndarray, tuple[int, int]]:
    with open_image_file(path) as file:
        try:
            return _decode_rgb(file, max_pixels, reduction)
        except OSError as error:
            restored = _end_restored(file, reduction) if str(error).startswith("image file is truncated") else None
            if restored is None:
                raise
        return _decode_rgb(restored, max_pixels, reduction)


def _decode_rgb(file: BinaryIO, max_pixels: int, reduction: Reduction | None) -> tuple[np.ndarray, tuple[int, int]]:
    with Image.open(file) as image:
        # The header gives the size before any pixel is decoded: refuse bombs here.
        width, height = image.size
        check_pixels(width, height, max_pixels)
        _draft(image, reduction)
        transparent = _transparent_where_pillow_is_not(file, image)  # before loading: the tile says how it is stored
        image.load()
        if transparent is not None:
            image = image.convert("RGBA")  # its info (EXIF, XMP) with it, for _upright
            image.paste(_WHITE, mask=Image.fromarray(transparent))
        reduced = image.size != (width, height)
        # EXIF orientations 5 to 8 turn the image a quarter: upright, its sides are swapped.
        turned = reduced and _orientation(image) in (5, 6, 7, 8)
        rgb = _to_rgb(_upright(image))
        if not reduced:
            return rgb, tuple(rgb.shape[:2])
        return rgb, (width, height) if turned else (height, width)


def _draft(image: Image.Image, reduction: Reduction | None) -> None:
    """Have ``image`` (opened, not loaded) decoded smaller by the factor ``reduction`` gives for its size."""
    width, height = image.size
    factor = reduction(height, width) if reduction is not None else 1
    if factor > 1:  # a no-op but for JPEGs (and MPOs, their multi-picture kin)
        image.draft(None, (width // factor, height // factor))


def _transparent_where_pillow_is_not(file: BinaryIO, image: Image.Image) -> np.ndarray | None:
    """Where ``image`` is transparent though Pillow decodes it opaque: a boolean (height, width)
    mask, or None. Asked before its pixels are loaded, while its tile says how they are stored.
    (A 2- or 4-bit gray PNG's transparent value is set right in its info instead.)"""
    if len(image.tile) != 1:
        return None
    _, box, _, rawmode = image.tile[0]  # a _Tile (Pillow 11 on), or a tuple of the same four
    transparent = image.info.get("transparency")
    if image.format == "GIF" and tuple(box) != (0, 0, *image.size):
        # A GIF's first frame may cover part of its canvas only. Pillow fills the rest with
        # palette index 0 (black, often) where the frame has no transparent index; browsers show
        # that canvas transparent: white, here.
        outside = np.ones((image.height, image.width), dtype=bool)
        outside[box[1] : box[3], box[0] : box[2]] = False
        return outside
    if image.format != "PNG":
        return None
    if rawmode in ("L;2", "L;4") and isinstance(transparent, int):
        # Pillow scales 2- and 4-bit gray to 8 bits (level x 85, x 17) but not the tRNS gray
        # level, which then matched no pixel, or another.
        image.info["transparency"] = transparent * 255 // ((1 << int(rawmode[2])) - 1)
    elif rawmode == "RGB;16B" and isinstance(transparent, tuple):
        # Pillow reads a 16-bit RGB PNG 8 bits deep (each sample's high byte) but compares its
        # 16-bit tRNS colour with those: no pixel matched, or wrong ones.
        del image.info["transparency"]  # for no conversion to apply it
        return (_png_rgb16(file) == transparent).all(axis=2)
    return None


def _png_rgb16(file: BinaryIO) -> np.ndarray:
    """A 16-bit RGB PNG's samples, uint16 (height, width, 3). Pillow has no mode for them: each
    byte is decoded apart, the low one by unpacking the samples as little-endian ones ("RGB;16L"
    takes each one's second byte)."""
    planes = []
    for rawmode in ("RGB;16B", "RGB;16L"):
        file.seek(0)
        with Image.open(file) as image:
            codec, box, offset, _ = image.tile[0]
            image.tile = [(codec, box, offset, rawmode)]
            image.load()
            planes.append(np.asarray(image, dtype=np.uint16))
    return planes[0] << 8 | planes[1]


_SOI, _EOI = b"\xff\xd8", b"\xff\xd9"  # how a JPEG file starts, and how a whole one ends


def _junk(pattern: bytes, first_restart: int) -> bytes:
    return b"".join(pattern + bytes((0xFF, 0xD0 + (first_restart + k) % 8)) for k in range(8))


# Bytes put before a restored EOI marker, to tell whether the scan's data is all there. After the
# last of it, libjpeg skips them (junk, as a camera's before its EOI; restart markers, RSTn, out
# of a scan): the pixels are those of the EOI alone. Where data is missing, it decodes them as
# that data, where the EOI alone leaves gray: other pixels. Two patterns, each byte the other's
# complement, so that every missing bit differs in one of them. Their restart markers resume a
# scan cut at the end of a restart interval (which an EOI alone ends): libjpeg's resync takes a
# run from RST0 on for any of RST0 to RST5 expected, a run from RST4 on for RST4 to RST1.
_PATTERN = bytes.fromhex("5ac33c9669a50ff01e2d4b87b4d2e178")  # neither 0x00 nor 0xFF
_JUNKS = (_junk(_PATTERN, 0), _junk(bytes(255 - byte for byte in _PATTERN), 4))


def _end_restored(file: BinaryIO, reduction: Reduction | None) -> BinaryIO | None:
    """A sequential JPEG that lacks only its end marker (EOI), its scan's data all there: its
    bytes with the marker put back, which Pillow decodes to the pixels of the whole file (as its
    ImageFile.LOAD_TRUNCATED_IMAGES does, for any file cut short). None for any other file: one
    cut short stays refused as truncated.

    The tries decode it as it is then read, smaller by ``reduction`` (draft): a file cut short (an
    interrupted download, most often) costs two decodes at that size, not full-sized ones. Data
    missing that only a larger size would show (the last block's high frequencies) is not seen,
    nor does it change the pixels at this size."""
    file.seek(0)
    if file.read(len(_SOI)) != _SOI or file.seek(0, os.SEEK_END) > MOST_JPEG_BYTES:
        return None
    file.seek(0)
    data = file.read()
    if data.endswith(_EOI[:1]):  # the EOI's first byte alone: after it, the tails made a marker (FF 5A) Pillow refused
        data = data[:-1]  # one only: a scan's data holds no lone 0xFF (it stuffs one as FF 00)
    if data.endswith(_EOI):  # whole, failed for another reason
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            # A progressive JPEG cut between two of its scans decodes, with fewer scans, as if
            # whole: no decoding tells it from one that lacks its EOI alone.
            if image.format != "JPEG" or "progressive" in image.info:
                return None
        whole = _pixels(data + _EOI, reduction)
        for junk in _JUNKS:  # one at a time: a file cut short differs at the first, mostly
            if not np.array_equal(whole, _pixels(data + junk + _EOI, reduction)):
                return None
    except Exception:  # noqa: BLE001 - a file that fails so is not one to accept
        return None
    return io.BytesIO(data + _EOI)


def _pixels(data: bytes, reduction: Reduction | None) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        _draft(image, reduction)
        image.load()
        return np.asarray(image)


# Formats that some installations do not decode: (name, extensions, what to install, whether this one decodes them).
_OPTIONAL_FORMATS = (
    ("HEIC/HEIF", HEIF_EXTENSIONS, "pillow-heif (pip install pillow-heif)", lambda: heif_plugin()),
    ("AVIF", (".avif",), "a Pillow that decodes AVIF (pip install -U pillow)", lambda: _pillow_decodes_avif()),
)


def _pillow_decodes_avif() -> bool:
    with warnings.catch_warnings():  # a Pillow before 11.2 warns "Unknown feature 'avif'" at each run
        warnings.simplefilter("ignore")
        return bool(features.check("avif"))


def _format_not_decoded(path: str | Path) -> str | None:
    """Why a file that Pillow did not recognise is, by its extension, of a format that this
    installation does not decode, and what to do; None if it is not."""
    name = os.fspath(path).lower()
    for format_name, extensions, needed, decoded in _OPTIONAL_FORMATS:
        if name.endswith(extensions) and not decoded():
            return f"{format_name} image: decoding it needs {needed}; then --retry-failed"
    return None


def formats_not_decoded(paths: Iterable[str]) -> list[str]:
    """For each format of ``paths`` (by extension) that this installation does not decode, how many
    images it has and what to install: said before a run, which would otherwise record each one
    as failed. One pass over the names (0.3 s a million on a 2-core VM), only where a format is
    missing."""
    missing = [(name, extensions, needed) for name, extensions, needed, decoded in _OPTIONAL_FORMATS if not decoded()]
    if not missing:
        return []
    counts = [0] * len(missing)
    for path in paths:
        tail = path[-5:].lower()  # the longest extension: ".heic"
        for k, (_, extensions, _) in enumerate(missing):
            if tail.endswith(extensions):
                counts[k] += 1
    return [f"{count:,} {name} image(s): decoding them needs {needed}; without it each is recorded as failed"
            for (name, _, needed), count in zip(missing, counts) if count]


def _is_heif(path: str | Path) -> bool:
    return os.fspath(path).lower().endswith(HEIF_EXTENSIONS)


@functools.cache
def heif_plugin() -> bool:
    """Whether Pillow opens HEIC/HEIF files: pillow-heif, where installed, registered with Pillow
    once per process, at its first such file (its import is not paid by collections without)."""
    try:
        import pillow_heif
    except ImportError:
        return False
    # Its images come upright: libheif applies the file's rotation, and the plugin resets the
    # EXIF orientation to 1, so that _upright does not turn them again.
    pillow_heif.register_heif_opener()
    return True


def open_image_file(path: str | Path) -> BinaryIO:
    """``path`` opened for reading, or :class:`ImageError` if it is not a regular file (a FIFO or a
    device named like an image would make a read wait, or go on, for ever) or is empty. A HEIC/HEIF
    file's plugin is registered first (:func:`heif_plugin`), as Pillow opens what this returns.
    A member of a tar archive (``shard.tar/a.jpg``) is read from it (:mod:`vggfeat.archives`)."""
    if _is_heif(path):
        heif_plugin()
    inside = split_member(path)
    if inside is not None:
        return open_member(*inside)
    # Opening a FIFO otherwise waits for a writer. Windows has neither FIFOs nor O_NONBLOCK, and
    # needs O_BINARY (untested there).
    nonblocking = getattr(os, "O_NONBLOCK", 0)
    descriptor = os.open(path, os.O_RDONLY | nonblocking | getattr(os, "O_BINARY", 0))
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise ImageError("not a regular file (a folder, FIFO or device)")
        if status.st_size == 0:  # a download or copy that wrote nothing: say so, not "not an image"
            raise ImageError("empty file (0 bytes)")
        if nonblocking:
            os.set_blocking(descriptor, True)
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    """Refuse an image larger than ``max_pixels`` (known from its header, before decoding)."""
    if width * height > max_pixels:
        raise ImageError(
            f"image is {width}x{height} ({width * height:,} pixels), over the limit of "
            f"{max_pixels:,} (decompression-bomb guard; raise --max-pixels to allow it)"
        )


def check_min_side(width: int, height: int, min_side: int) -> None:
    """Refuse an image whose smallest side is below ``min_side``."""
    if min(height, width) < min_side:
        raise ImageError(f"image is {width}x{height}; the smallest side must be at least {min_side} px")


def _reason(error: BaseException) -> str:
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if len(message) > REASON_CHARACTERS:  # "File name too long: '<the 10 MB name>'": the name is in /failed already
        message = message[: REASON_CHARACTERS - 1] + "…"
    if type(error).__name__ == "UnidentifiedImageError" or message.startswith("cannot identify image file"):
        return "not an image, or a format Pillow cannot read"
    # Pillow's words for a file cut short, in any format: in its data, or in its headers.
    if message.startswith(("image file is truncated", "Truncated File Read")):
        return "truncated: the file ends before the image does (an interrupted download or copy?)"
    code = re.fullmatch(r"decoder error (-?\d+)", message)  # a codec's status, its own message (libtiff's) on standard error
    if code:
        return f"damaged image data (Pillow's decoder error {code[1]}: {ImageFile.ERRORS.get(int(code[1]), 'unknown')})"
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


# The most characters of a failure's reason, as /failed and the terminal keep it.
REASON_CHARACTERS = 300


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation that :func:`_upright` applies: 1 (upright as stored) if none can be read."""
    try:
        return int(image.getexif().get(_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - as in _upright: a malformed EXIF block
        return 1


def _upright(image: Image.Image) -> Image.Image:
    try:
        ImageOps.exif_transpose(image, in_place=True)  # in place: no copy of an upright image
    except Exception:  # noqa: BLE001 - a malformed EXIF block should not cost the image its pixels
        pass
    return image


def _to_rgb(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        # "I", a 32-bit integer container, holds 8- or 16-bit data in practice: a PNG's is 16-bit
        # gray (Pillow 10 opens it so, where later ones give I;16), however dark the image; a PGM's
        # too (Pillow opens one of maxval above 255 as "I", scaled to 16 bits).
        pixels = np.asarray(image)
        if mode in ("I;16", "I;16B") and image.format == "TIFF" and image.tag_v2.get(262) == 0:
            # PhotometricInterpretation WhiteIsZero: Pillow inverts 1- to 8-bit gray of it, not 16-bit.
            pixels = 65535 - pixels
        sixteen = mode != "I" or image.format in ("PNG", "PPM") or pixels.max(initial=0) > 255
        gray = _scale_to_8bit(pixels, bit_depth=16 if sixteen else 8)
        transparent = image.info.get("transparency")
        if isinstance(transparent, int):  # a PNG's one transparent gray value: white, as alpha over white
            gray[pixels == transparent] = 255
        return _gray_to_rgb(gray)
    if mode == "F":
        pixels = np.asarray(image, dtype=np.float64)
        scale = 255.0 if np.nanmax(pixels, initial=0.0) <= 1.0 else 1.0
        return _gray_to_rgb(np.clip(np.nan_to_num(pixels) * scale, 0, 255).round().astype(np.uint8))
    if "A" in mode or "a" in mode or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE)
        image = Image.alpha_composite(background, rgba)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.array(image, dtype=np.uint8)  # one writable copy, as torch wants


def _scale_to_8bit(pixels: np.ndarray, bit_depth: int) -> np.ndarray:
    pixels = pixels.astype(np.int64)
    top = (1 << bit_depth) - 1
    if pixels.max(initial=0) > top:  # 32-bit integer data: stretch what is there
        top = int(pixels.max())
    return np.clip(np.rint(pixels * (255.0 / top)), 0, 255).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
