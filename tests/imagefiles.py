"""Write small test image files: good, bad, and odd-but-valid.

Plain functions, no pytest magic, so any test file can ``from imagefiles import ...``.

Every ``write_*`` function takes the path to write and returns what a caller needs to check the
result: for images that should decode, the RGB ``uint8`` array (height, width, 3) that
``decode_image`` is expected to return (exact for lossless formats, the pre-compression picture for
JPEG); for bad files, the path written.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

WHITE = np.array([255, 255, 255], dtype=np.uint8)
JPEG_QUALITY = 95


# --------------------------------------------------------------------------- pictures (arrays)


def smooth_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A seeded random but smooth RGB picture: low-frequency waves plus a few soft blobs.

    Smooth content keeps JPEG round trips close to the original, so tests can use tight tolerances.
    Values stay within 16..239, away from clipping.
    """
    rng = np.random.default_rng(seed)
    y = np.linspace(0.0, 1.0, height)[:, None]
    x = np.linspace(0.0, 1.0, width)[None, :]
    picture = np.empty((height, width, 3), dtype=np.uint8)
    for channel in range(3):
        fy, fx = rng.uniform(0.3, 1.5, size=2)
        phase = rng.uniform(0, 2 * np.pi)
        # sin(a + b) from the rows' a and the columns' b: no sine of every pixel
        a, b = 2 * np.pi * fy * y + phase, 2 * np.pi * fx * x
        value = np.sin(a) * np.cos(b) + np.cos(a) * np.sin(b)
        for _ in range(3):
            cy, cx = rng.uniform(0, 1, size=2)
            radius = rng.uniform(0.15, 0.4)
            weight = rng.uniform(-1, 1)  # a Gaussian blob, the product of its row and column profiles
            value += weight * (np.exp(-((y - cy) ** 2) / (2 * radius**2)) * np.exp(-((x - cx) ** 2) / (2 * radius**2)))
        value = (value - value.min()) / max(float(np.ptp(value)), 1e-9)
        picture[..., channel] = np.round(16 + value * 223)  # 24-megapixel pictures: no float copy of all three
    return picture


def quadrants(height: int, width: int) -> np.ndarray:
    """Four solid, clearly different quadrants: red top-left, green top-right, blue bottom-left,
    yellow bottom-right. Rotations and flips are easy to recognise even after JPEG."""
    picture = np.zeros((height, width, 3), dtype=np.uint8)
    half_h, half_w = height // 2, width // 2
    picture[:half_h, :half_w] = (220, 30, 30)
    picture[:half_h, half_w:] = (30, 200, 30)
    picture[half_h:, :half_w] = (30, 30, 220)
    picture[half_h:, half_w:] = (230, 230, 40)
    return picture


def quadrant_colors(picture: np.ndarray) -> np.ndarray:
    """Mean color of the central part of each quadrant, shape (2, 2, 3): rows top/bottom,
    columns left/right. Sampling away from the edges ignores JPEG ringing at the boundaries."""
    height, width = picture.shape[:2]
    colors = np.zeros((2, 2, 3))
    for row in range(2):
        for col in range(2):
            top, left = row * height // 2, col * width // 2
            block = picture[top + height // 8 : top + 3 * height // 8, left + width // 8 : left + 3 * width // 8]
            colors[row, col] = block.reshape(-1, 3).mean(axis=0)
    return colors


# --------------------------------------------------------------------------- good images


def _save(image: Image.Image, path: Path, fmt: str | None, options: dict, **jpeg_defaults) -> None:
    fmt_name = (fmt or Image.registered_extensions().get(path.suffix.lower(), "")).upper()
    if fmt_name == "JPEG":
        options = {"quality": JPEG_QUALITY, **jpeg_defaults, **options}
    image.save(path, format=fmt, **options)


def write_rgb(path, height: int, width: int, seed: int = 0, fmt: str | None = None, **options) -> np.ndarray:
    """A smooth RGB picture; the format comes from ``fmt`` or the extension (any case).

    Returns the array written: what decodes exactly from lossless formats, and approximately
    (JPEG quality 95 unless ``quality=`` says otherwise) from JPEG.
    """
    path = Path(path)
    picture = smooth_rgb(height, width, seed)
    _save(Image.fromarray(picture), path, fmt, options)
    return picture


def write_gray(path, height: int = 48, width: int = 64, seed: int = 0, **options) -> np.ndarray:
    """An 8-bit grayscale (mode L) image. Returns the gray values, shape (height, width)."""
    gray = smooth_rgb(height, width, seed)[:, :, 0]
    _save(Image.fromarray(gray, mode="L"), Path(path), None, options)
    return gray


def write_gray16_png(path, height: int = 40, width: int = 56) -> np.ndarray:
    """A 16-bit grayscale PNG (Pillow mode I;16) covering the whole 0..65535 range, including values
    under 256. Returns the uint16 values, shape (height, width)."""
    values = np.linspace(0, 65535, height * width).round().astype(np.uint16).reshape(height, width)
    Image.fromarray(values).save(path, format="PNG")
    return values


def write_rgb16_png(path, height: int = 40, width: int = 56, seed: int = 0) -> np.ndarray:
    """A 16-bit-per-channel RGB PNG, written by hand (Pillow cannot write one).

    The low byte is random, so an 8-bit reading that used it would be visibly wrong. Returns the
    uint16 values, shape (height, width, 3).
    """
    high = smooth_rgb(height, width, seed).astype(np.uint16)
    low = np.random.default_rng(seed + 1).integers(0, 256, size=high.shape, dtype=np.uint16)
    values = (high << 8) | low
    rows = [b"\0" + row.astype(">u2").tobytes() for row in values]  # filter type 0, big-endian
    Path(path).write_bytes(png_bytes(width, height, bit_depth=16, color_type=2, rows=rows))
    return values


def write_rgba(path, height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """An RGBA PNG: left third fully transparent over a garbage color, middle third half transparent,
    right third opaque. Returns the expected RGB after compositing over white."""
    color = smooth_rgb(height, width, seed)
    alpha = np.full((height, width), 255, dtype=np.uint8)
    third = width // 3
    color[:, :third] = (255, 0, 255)  # garbage under transparent pixels must not show
    alpha[:, :third] = 0
    alpha[:, third : 2 * third] = 128
    Image.fromarray(np.dstack([color, alpha]), mode="RGBA").save(path, format="PNG")
    a = alpha[:, :, None].astype(np.float64) / 255
    return (color * a + 255 * (1 - a)).round().astype(np.uint8)


def write_la(path, height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """A gray + alpha (LA) PNG: top half transparent over black, bottom half opaque.
    Returns the expected RGB."""
    gray = smooth_rgb(height, width, seed)[:, :, 1]
    alpha = np.full((height, width), 255, dtype=np.uint8)
    gray[: height // 2] = 0
    alpha[: height // 2] = 0
    Image.fromarray(np.dstack([gray, alpha]), mode="LA").save(path, format="PNG")
    expected = np.repeat(gray[:, :, None], 3, axis=2)
    expected[: height // 2] = 255
    return expected


PALETTE = np.array(
    [[0, 0, 0], [200, 20, 20], [20, 180, 40], [30, 40, 210], [240, 220, 30], [90, 90, 90]], dtype=np.uint8
)


def _palette_indices(height: int, width: int) -> np.ndarray:
    rows, cols = np.mgrid[0:height, 0:width]
    return ((rows // 8 + cols // 8) % len(PALETTE)).astype(np.uint8)


def _palette_image(indices: np.ndarray) -> Image.Image:
    image = Image.fromarray(indices, mode="P")
    image.putpalette(PALETTE.flatten().tolist())
    return image


def write_palette(path, height: int = 48, width: int = 64) -> np.ndarray:
    """A palette (mode P) PNG in stripes of PALETTE colors. Returns the expected RGB."""
    indices = _palette_indices(height, width)
    _palette_image(indices).save(path, format="PNG")
    return PALETTE[indices]


def write_palette_transparent(path, height: int = 48, width: int = 64) -> np.ndarray:
    """A palette PNG whose index 0 (black) is transparent. Returns the expected RGB: white there."""
    indices = _palette_indices(height, width)
    _palette_image(indices).save(path, format="PNG", transparency=0)
    expected = PALETTE[indices]
    expected[indices == 0] = 255
    return expected


def write_cmyk_jpeg(path, height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """A CMYK JPEG made from a smooth RGB picture. Returns that RGB picture (match is approximate)."""
    picture = smooth_rgb(height, width, seed)
    Image.fromarray(picture).convert("CMYK").save(path, format="JPEG", quality=JPEG_QUALITY)
    return picture


# EXIF orientation: how the stored pixels must be turned to be shown upright.
_UPRIGHT = {
    1: lambda a: a,
    3: lambda a: np.rot90(a, 2),
    6: lambda a: np.rot90(a, -1),  # rotate 90 degrees clockwise
    8: lambda a: np.rot90(a, 1),  # rotate 90 degrees counter-clockwise
}


def write_exif_rotated(path, orientation: int = 6, height: int = 64, width: int = 96, fmt: str | None = None) -> np.ndarray:
    """Four-quadrant pixels stored ``height`` x ``width`` with an EXIF orientation tag (1, 3, 6 or 8).

    Returns the picture as it should be displayed: for 6 and 8 its shape is (width, height, 3).
    """
    stored = quadrants(height, width)
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    # Full-resolution chroma (subsampling=0) keeps the sharp color edges within a few levels in JPEG.
    _save(Image.fromarray(stored), Path(path), fmt, {"exif": exif}, subsampling=0)
    return np.ascontiguousarray(_UPRIGHT[orientation](stored))


def write_animated_gif(path, height: int = 40, width: int = 48) -> np.ndarray:
    """A three-frame GIF: red, then green, then blue. Returns the first (red) frame."""
    colors = [(220, 20, 20), (20, 200, 20), (20, 20, 220)]
    frames = [Image.new("RGB", (width, height), color) for color in colors]
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return np.array(frames[0])


def write_gif_small_first_frame(path, height: int = 40, width: int = 48, box=(8, 12, 24, 28)) -> np.ndarray:
    """A two-frame GIF whose first frame (red) covers only ``box`` (left, top, right, bottom) of its
    canvas, palette index 0 black and the background index blue, neither frame with a transparent
    index: browsers show the rest of the canvas transparent. Returns the first frame as vggfeat
    shows it: red on white."""
    palette = [0, 0, 0, 220, 20, 20, 20, 200, 20, 20, 20, 220]
    size = (box[2] - box[0], box[3] - box[1])
    frames = [Image.new("P", size, index) for index in (1, 2)]
    for frame in frames:
        frame.putpalette(palette)
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0, background=3)
    data = bytearray(buffer.getvalue())
    data[6:10] = struct.pack("<HH", width, height)  # the canvas (logical screen)
    at = 13 + 3 * 2 ** ((data[10] & 7) + 1)  # past the global colour table
    while data[at] == 0x21:  # an extension: its label, then sub-blocks up to an empty one
        at += 2
        while data[at]:
            at += data[at] + 1
        at += 1
    assert data[at] == 0x2C, "Pillow wrote the GIF otherwise: find its first image anew"
    data[at + 1 : at + 5] = struct.pack("<HH", box[0], box[1])  # where the first frame goes
    Path(path).write_bytes(bytes(data))
    expected = np.full((height, width, 3), 255, dtype=np.uint8)
    expected[box[1] : box[3], box[0] : box[2]] = (220, 20, 20)
    return expected


# --------------------------------------------------------------------------- bad files


def write_corrupt(path, size: int = 2048, seed: int = 0) -> Path:
    """Random bytes (under a name such as ``x.jpg``)."""
    Path(path).write_bytes(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    return Path(path)


def write_truncated_jpeg(path, height: int = 96, width: int = 128) -> Path:
    """The first half of a valid JPEG: the header is fine, the pixel data stops early."""
    write_rgb(path, height, width, fmt="JPEG")
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])
    return Path(path)


def write_damaged_jpeg(path, height: int = 64, width: int = 96, seed: int = 0) -> np.ndarray:
    """A JPEG with 30 bytes of junk before its end marker, as some cameras and uploads leave them:
    libjpeg warns ("Corrupt JPEG data: 28 extraneous bytes before marker 0xd9") and decodes the
    pixels of the same JPEG without them, which it returns."""
    picture = write_rgb(path, height, width, seed, fmt="JPEG")
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[:-2] + b"\x12" * 30 + data[-2:])
    return picture


def write_damaged_exif(path, height: int = 64, width: int = 96) -> np.ndarray:
    """A JPEG whose EXIF block says it holds more entries than it does: Pillow warns ("Corrupt EXIF
    data. Expecting to read 12 bytes but only got 4.") and turns it by the orientation (6) that it
    read before the damage; returns the upright picture."""
    upright = write_exif_rotated(path, 6, height, width)
    data = bytearray(Path(path).read_bytes())
    tiff = data.index(b"Exif\0\0") + 6
    order = "little" if data[tiff : tiff + 2] == b"II" else "big"
    directory = tiff + int.from_bytes(data[tiff + 4 : tiff + 8], order)
    data[directory : directory + 2] = (40).to_bytes(2, order)
    Path(path).write_bytes(bytes(data))
    return upright


def write_damaged_avif_or_heic(path, height: int = 40, width: int = 56) -> Path:
    """An AVIF whose image item's type is damaged, or a HEIC whose width says 754,974,784 (by
    ``path``'s suffix): their decoders raise RuntimeError ("Missing or empty image item", "Security
    limit exceeded"), not an OSError."""
    buffer = io.BytesIO()
    avif = Path(path).suffix.lower() == ".avif"
    Image.fromarray(smooth_rgb(height, width)).save(buffer, "AVIF" if avif else "HEIF")
    data = buffer.getvalue()
    mark, damage = (b"av01", lambda at: b"av0-") if avif else (b"ispe", lambda at: b"ispe" + data[at + 4 : at + 8] + b"\x2d\0\0\x40")
    assert data.count(mark) == 1, "an encoder writing another layout: find what to damage anew"
    at = data.index(mark)
    replaced = damage(at)
    Path(path).write_bytes(data[:at] + replaced + data[at + len(replaced):])
    return Path(path)


def write_damaged_tiff(path, height: int = 40, width: int = 56) -> Path:
    """An LZW-compressed TIFF with a byte of its data flipped: libtiff prints "tempfile.tif: Using
    code not yet in table." to descriptor 2 and Pillow's decoder fails (its error -2)."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)).save(
        buffer, "TIFF", compression="tiff_lzw")
    data = bytearray(buffer.getvalue())
    assert data[:4] == b"II*\0" and int.from_bytes(data[4:8], "little") > 160, "the data no longer first: damage it anew"
    data[148] ^= 0xFF
    Path(path).write_bytes(bytes(data))
    return Path(path)


def write_tiff_of_45_samples(path, height: int = 40, width: int = 56) -> Path:
    """A TIFF whose header says 45 samples per pixel: Pillow logs "More samples per pixel than can be
    decoded: 45" (an error record, which logging prints where no handler is set) and refuses it."""
    buffer = io.BytesIO()
    Image.fromarray(smooth_rgb(height, width)).save(buffer, "TIFF")
    samples = struct.pack("<HHIH", 277, 3, 1, 3)  # SamplesPerPixel, a SHORT, one of them: 3
    data = buffer.getvalue()
    assert data.count(samples) == 1, "Pillow wrote the tag otherwise: find it anew"
    Path(path).write_bytes(data.replace(samples, struct.pack("<HHIH", 277, 3, 1, 45)))
    return Path(path)


def write_empty(path) -> Path:
    """A 0-byte file."""
    Path(path).write_bytes(b"")
    return Path(path)


def write_text(path) -> Path:
    """A text file (under a name such as ``x.png``)."""
    Path(path).write_text("This is not an image.\nIt is a note someone saved with the wrong name.\n")
    return Path(path)


def write_tiny(path, side: int = 8) -> Path:
    """A valid PNG too small to use (``side`` x ``side``)."""
    write_rgb(path, side, side, fmt="PNG")
    return Path(path)


def write_bomb_png(path, side: int = 20000) -> Path:
    """A valid black 1-bit PNG of ``side`` x ``side`` pixels (400 million for the default) that
    takes only ~50 KB on disk: decoding it to RGB would need over a gigabyte."""
    Path(path).write_bytes(_bomb_bytes(side))
    return Path(path)


def write_fifo(path) -> Path:
    """A named pipe with an image's name: a read would wait for a writer that never comes."""
    os.mkfifo(path)
    return Path(path)


@lru_cache(maxsize=4)
def _bomb_bytes(side: int) -> bytes:
    row = b"\0" * (1 + (side + 7) // 8)  # filter byte + packed bits
    return png_bytes(side, side, bit_depth=1, color_type=0, rows=(row for _ in range(side)))


def png_bytes(width: int, height: int, bit_depth: int, color_type: int, rows, trns: bytes = b"") -> bytes:
    """A PNG file from raw scanlines (each already starting with its filter byte); with a tRNS
    chunk (the transparent gray value or RGB colour, 16-bit big-endian each) if ``trns``."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for row in rows) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    transparency = chunk(b"tRNS", trns) if trns else b""
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + transparency + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# --------------------------------------------------------------------------- whole sets


BAD_FILES = {
    # file name: (writer, a word the ImageError message must contain, lower case)
    "corrupt.jpg": (write_corrupt, "not an image"),
    "truncated.jpg": (write_truncated_jpeg, "truncated"),
    "empty.jpg": (write_empty, "empty file"),
    "notes.png": (write_text, "not an image"),
    "tiny.png": (write_tiny, "smallest side"),
    "bomb.png": (write_bomb_png, "limit"),
    "pipe.jpg": (write_fifo, "not a regular file"),
}


def write_bad_files(folder) -> dict[str, Path]:
    """Every kind of unusable file in ``folder``: {file name: path}. See BAD_FILES."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return {name: writer(folder / name) for name, (writer, _) in BAD_FILES.items()}


@dataclass(frozen=True)
class OddImage:
    path: Path
    expected: np.ndarray  # RGB uint8, as decode_image should return it
    tolerance: int  # largest allowed per-pixel difference (0: exact; JPEG: approximate)


def write_odd_files(folder) -> dict[str, OddImage]:
    """One of each odd-but-valid image in ``folder``: {file name: OddImage}.

    All are at least 40 px on each side, so they pass the default 32 px minimum.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    def gray_rgb(gray):
        return np.repeat(gray[:, :, None], 3, axis=2)

    def from16(values):
        return (values / 257).round().astype(np.uint8)

    jpeg = 40  # per-pixel; smooth pictures at quality 95 stay well inside this
    writers = {
        "gray.png": (lambda p: gray_rgb(write_gray(p)), 0),
        "gray.jpg": (lambda p: gray_rgb(write_gray(p)), jpeg),
        "gray16.png": (lambda p: gray_rgb(from16(write_gray16_png(p))), 0),
        "rgb16.png": (lambda p: from16(write_rgb16_png(p)), 1),
        "palette.png": (write_palette, 0),
        "palette_transparent.png": (write_palette_transparent, 0),
        "rgba.png": (write_rgba, 1),
        "la.png": (write_la, 0),
        "cmyk.jpg": (write_cmyk_jpeg, jpeg),
        "exif6.jpg": (lambda p: write_exif_rotated(p, 6), jpeg),
        "exif8.png": (lambda p: write_exif_rotated(p, 8), 0),
        "animated.gif": (write_animated_gif, 0),
        "rgb.tif": (lambda p: write_rgb(p, 40, 52, seed=3), 0),
        "rgb.bmp": (lambda p: write_rgb(p, 44, 50, seed=4), 0),
        "rgb.webp": (lambda p: write_rgb(p, 46, 60, seed=5, lossless=True), 0),
        "upper.JPG": (lambda p: write_rgb(p, 50, 70, seed=6), jpeg),
    }
    return {
        name: OddImage(folder / name, writer(folder / name), tolerance)
        for name, (writer, tolerance) in writers.items()
    }
