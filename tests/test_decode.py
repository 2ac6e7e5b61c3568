"""decode_image: every usable file becomes upright 8-bit RGB; every unusable one a one-line ImageError."""

from __future__ import annotations

import re
import struct
import time
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, features

import imagefiles
import vggfeat.decode
from imagefiles import (
    BAD_FILES,
    quadrant_colors,
    quadrants,
    smooth_rgb,
    write_animated_gif,
    write_bomb_png,
    write_cmyk_jpeg,
    write_damaged_avif_or_heic,
    write_exif_rotated,
    write_gif_small_first_frame,
    write_gray,
    write_gray16_png,
    write_la,
    write_odd_files,
    write_palette,
    write_palette_transparent,
    write_rgb,
    write_rgb16_png,
    write_rgba,
)
from vggfeat.decode import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, _to_rgb, decode_image, decode_image_reduced
from vggfeat.errors import ImageError


def assert_rgb(array, height, width):
    assert isinstance(array, np.ndarray)
    assert array.dtype == np.uint8
    assert array.shape == (height, width, 3)
    assert array.flags.c_contiguous


def max_diff(a, b):
    return int(np.abs(a.astype(np.int32) - b.astype(np.int32)).max())


# --------------------------------------------------------------------------- unusable files


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_file_raises_image_error_with_reason(tmp_path, name):
    writer, expected_word = BAD_FILES[name]
    path = writer(tmp_path / name)
    with pytest.raises(ImageError) as caught:
        decode_image(path)
    message = str(caught.value)
    assert expected_word in message.lower(), message
    assert "\n" not in message and message.strip() == message


def test_truncated_jpeg_header_is_still_readable(tmp_path):
    # Guard against a vacuous "truncated" test: Pillow identifies the file; only the pixels fail.
    path = imagefiles.write_truncated_jpeg(tmp_path / "t.jpg", height=96, width=128)
    with Image.open(path) as image:
        assert image.size == (128, 96)
    with pytest.raises(ImageError, match="truncated"):
        decode_image(path)


def test_a_reason_is_kept_short_where_the_error_holds_a_long_name(tmp_path):
    """A list's 10 MB line: its reason repeated the name, 10 MB on the terminal and in /failed."""
    with pytest.raises(ImageError) as raised:
        decode_image(tmp_path / ("a" * 100_000 + ".jpg"))
    assert str(raised.value).startswith("OSError: [Errno 36] File name too long") and len(str(raised.value)) <= 309


def test_a_jpeg_cut_in_its_headers_or_in_its_data_fails_for_the_same_reason(tmp_path):
    """Cut in its headers, Pillow's "Truncated File Read" was the reason, an OSError's words."""
    imagefiles.write_rgb(tmp_path / "full.jpg", 240, 260)
    data = (tmp_path / "full.jpg").read_bytes()
    for cut in (200, len(data) // 2):
        (tmp_path / "cut.jpg").write_bytes(data[:cut])
        with pytest.raises(ImageError, match=r"^truncated: the file ends before the image does"):
            decode_image(tmp_path / "cut.jpg")


def test_a_jpeg_missing_only_its_end_marker_decodes_as_the_whole_file(tmp_path):
    """A file that ends where its scan's data does, lacking only its EOI marker, was refused as
    truncated, where Pillow with LOAD_TRUNCATED_IMAGES gives the whole file's pixels."""
    for name, options in (("plain.jpg", {}), ("restarts.jpg", {"restart_marker_blocks": 1})):
        write_rgb(tmp_path / name, 48, 64, fmt="JPEG", **options)
        data = (tmp_path / name).read_bytes()
        assert data.endswith(b"\xff\xd9")
        (tmp_path / "open.jpg").write_bytes(data[:-2])
        np.testing.assert_array_equal(decode_image(tmp_path / "open.jpg"), decode_image(tmp_path / name))
        halved = [decode_image_reduced(tmp_path / n, lambda height, width: 2) for n in ("open.jpg", name)]
        assert halved[0][1] == halved[1][1] == (48, 64)
        np.testing.assert_array_equal(halved[0][0], halved[1][0])


def test_a_jpeg_missing_only_the_last_byte_of_its_end_marker_decodes_as_the_whole_file(tmp_path):
    """Ending in 0xFF, the EOI's first byte: the junk tails put after it made a marker (FF 5A) that
    Pillow refused ("broken data stream"), and the file with them."""
    write_rgb(tmp_path / "whole.jpg", 32, 48, fmt="JPEG")
    data = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "open.jpg").write_bytes(data[:-1])
    np.testing.assert_array_equal(decode_image(tmp_path / "open.jpg"), decode_image(tmp_path / "whole.jpg"))
    (tmp_path / "cut.jpg").write_bytes(data[:-3] + b"\xff")  # scan data missing, then an FF
    with pytest.raises(ImageError, match=r"^truncated: the file ends before the image does"):
        decode_image(tmp_path / "cut.jpg")


def test_a_jpeg_cut_short_is_tried_and_refused_at_the_size_it_is_decoded_to(tmp_path, monkeypatch):
    """Decoded smaller (draft), a file cut short was tried at its full size three times before it
    was refused: seconds and hundreds of MB for a photo of 24 Mpx. It costs two decodes at the
    reduced size, stopping at the first tail that differs; a file lacking its EOI alone, three."""
    probed, pixels = [], vggfeat.decode._pixels

    def probe(*args):
        probed.append(pixels(*args).shape)
        return pixels(*args)

    monkeypatch.setattr(vggfeat.decode, "_pixels", probe)
    write_rgb(tmp_path / "whole.jpg", 96, 128, fmt="JPEG")
    data = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"^truncated: the file ends before the image does"):
        decode_image_reduced(tmp_path / "cut.jpg", lambda height, width: 4)
    assert probed == [(24, 32, 3)] * 2
    probed.clear()
    (tmp_path / "open.jpg").write_bytes(data[:-2])
    rgb, size = decode_image_reduced(tmp_path / "open.jpg", lambda height, width: 4)
    assert probed == [(24, 32, 3)] * 3 and size == (96, 128)
    np.testing.assert_array_equal(rgb, decode_image_reduced(tmp_path / "whole.jpg", lambda height, width: 4)[0])


def test_a_jpeg_cut_short_is_still_truncated_whatever_it_lacks_besides_its_end_marker(tmp_path):
    """Cut in its data, even at the end of a restart interval, a file still fails; so does a
    progressive one without its EOI (cut between two scans, it would decode as though whole)."""
    write_rgb(tmp_path / "r.jpg", 48, 64, fmt="JPEG", restart_marker_blocks=1)
    data = (tmp_path / "r.jpg").read_bytes()
    last_restart = max(data.rfind(bytes((0xFF, 0xD0 + k))) for k in range(8))
    write_rgb(tmp_path / "p.jpg", 48, 64, fmt="JPEG", progressive=True)
    cuts = {"data": data[:-3], "half": data[: len(data) // 2], "progressive": (tmp_path / "p.jpg").read_bytes()[:-2]}
    if last_restart > 0:  # (Pillow before 10.2 writes no restart markers: -1, the whole file but its last byte)
        cuts["restart"] = data[:last_restart]
    for what, cut in cuts.items():
        (tmp_path / "cut.jpg").write_bytes(cut)
        with pytest.raises(ImageError, match=r"^truncated: the file ends before the image does"):
            decode_image(tmp_path / "cut.jpg")
            pytest.fail(what)


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        decode_image(tmp_path / "nowhere.jpg")


def test_too_small_message_gives_size_and_minimum(tmp_path):
    imagefiles.write_tiny(tmp_path / "tiny.png", side=8)
    with pytest.raises(ImageError) as caught:
        decode_image(tmp_path / "tiny.png")
    assert "8x8" in str(caught.value)
    assert str(DEFAULT_MIN_SIDE) in str(caught.value)


def test_bomb_is_refused_from_the_header_without_decoding(tmp_path, monkeypatch):
    path = write_bomb_png(tmp_path / "bomb.png", side=20000)
    assert path.stat().st_size < 200_000  # tiny file ...
    with monkeypatch.context() as patch:  # ... that honestly declares 400 million pixels
        patch.setattr(Image, "MAX_IMAGE_PIXELS", None)
        with Image.open(path) as image:
            assert image.size == (20000, 20000) and image.mode == "1"
    start = time.perf_counter()
    with pytest.raises(ImageError) as caught:
        decode_image(path)
    elapsed = time.perf_counter() - start
    # Decoding would take seconds and over a gigabyte of memory; reading the header takes ms.
    assert elapsed < 0.5, f"bomb took {elapsed:.2f}s to refuse: pixels were decoded"
    digits = str(caught.value).replace(",", "")
    assert "limit" in digits and str(DEFAULT_MAX_PIXELS) in digits, str(caught.value)


def test_max_pixels_guard_uses_the_given_limit_before_decoding(tmp_path):
    path = write_bomb_png(tmp_path / "bomb.png", side=6000)  # 36 M pixels: under Pillow's own guard
    start = time.perf_counter()
    with pytest.raises(ImageError) as caught:
        decode_image(path, max_pixels=10_000_000)
    assert time.perf_counter() - start < 0.5
    message = str(caught.value)
    assert "6000x6000" in message and "10,000,000" in message and "--max-pixels" in message


def test_max_pixels_above_pillows_guard_is_honored_without_its_warning(tmp_path, monkeypatch):
    # Shrink Pillow's guard so the case is cheap: Pillow alone would refuse over 2 x 1000 pixels,
    # and warn of a "decompression bomb DOS attack" over 1000 (by default: a 95-megapixel scan).
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    expected = write_rgb(tmp_path / "a.png", 60, 100)  # 6000 pixels
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        np.testing.assert_array_equal(decode_image(tmp_path / "a.png", max_pixels=10_000), expected)


def test_a_bomb_past_pillows_guard_is_refused_with_its_size(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses over 2000 pixels, before vggfeat's check
    write_rgb(tmp_path / "a.png", 60, 60)
    with pytest.raises(ImageError, match="3,600 pixels.*over the limit of 1,500 .*--max-pixels"):
        decode_image(tmp_path / "a.png", max_pixels=1500)


def test_max_pixels_limit_is_inclusive(tmp_path):
    write_rgb(tmp_path / "a.png", 40, 50)  # 2000 pixels
    assert_rgb(decode_image(tmp_path / "a.png", max_pixels=2000), 40, 50)
    with pytest.raises(ImageError, match="over the limit of 1,999"):
        decode_image(tmp_path / "a.png", max_pixels=1999)


def test_min_side_limit_is_inclusive_and_uses_the_smaller_side(tmp_path):
    write_rgb(tmp_path / "a.png", 40, 90)
    assert_rgb(decode_image(tmp_path / "a.png", min_side=40), 40, 90)
    with pytest.raises(ImageError, match="smallest side must be at least 41 px"):
        decode_image(tmp_path / "a.png", min_side=41)


def test_default_min_side_is_32(tmp_path):
    write_rgb(tmp_path / "ok.png", 32, 32)
    write_rgb(tmp_path / "small.png", 31, 200)
    assert_rgb(decode_image(tmp_path / "ok.png"), 32, 32)
    with pytest.raises(ImageError, match="smallest side"):
        decode_image(tmp_path / "small.png")


def test_min_side_applies_to_the_upright_image(tmp_path):
    # Stored 40 x 100, shown 100 x 40 (EXIF 6): the smallest side is 40 either way, but the
    # reported size must be the displayed one.
    write_exif_rotated(tmp_path / "r.png", 6, height=40, width=100)
    with pytest.raises(ImageError, match="40x100"):
        decode_image(tmp_path / "r.png", min_side=41)


# --------------------------------------------------------------------------- odd but valid images


def test_plain_rgb_png_is_exact(tmp_path):
    expected = write_rgb(tmp_path / "a.png", 45, 67, seed=1)
    decoded = decode_image(tmp_path / "a.png")
    assert_rgb(decoded, 45, 67)
    np.testing.assert_array_equal(decoded, expected)


def test_rgb_jpeg_is_close(tmp_path):
    expected = write_rgb(tmp_path / "a.jpg", 60, 80, seed=2)
    decoded = decode_image(tmp_path / "a.jpg")
    assert_rgb(decoded, 60, 80)
    assert np.abs(decoded.astype(int) - expected).mean() < 2.0


def test_grayscale_becomes_equal_channels(tmp_path):
    gray = write_gray(tmp_path / "g.png", 48, 64)
    decoded = decode_image(tmp_path / "g.png")
    assert_rgb(decoded, 48, 64)
    for channel in range(3):
        np.testing.assert_array_equal(decoded[:, :, channel], gray)


def test_grayscale_jpeg_has_equal_channels(tmp_path):
    gray = write_gray(tmp_path / "g.jpg", 48, 64)
    decoded = decode_image(tmp_path / "g.jpg")
    assert_rgb(decoded, 48, 64)
    np.testing.assert_array_equal(decoded[:, :, 0], decoded[:, :, 1])
    np.testing.assert_array_equal(decoded[:, :, 0], decoded[:, :, 2])
    assert np.abs(decoded[:, :, 0].astype(int) - gray).mean() < 2.0


def test_16bit_grayscale_is_scaled_by_257(tmp_path):
    values = write_gray16_png(tmp_path / "g16.png", 40, 56)
    with Image.open(tmp_path / "g16.png") as image:
        assert image.mode.startswith("I")  # really a 16-bit file, not silently 8-bit
    decoded = decode_image(tmp_path / "g16.png")
    assert_rgb(decoded, 40, 56)
    expected = (values / 257).round().astype(np.uint8)
    for channel in range(3):
        np.testing.assert_array_equal(decoded[:, :, channel], expected)
    assert decoded.min() == 0 and decoded.max() == 255


def test_dark_16bit_grayscale_is_not_mistaken_for_8bit(tmp_path):
    # All values <= 255 in a 16-bit file are nearly black, not a full 8-bit range.
    values = np.array([[0, 128, 255, 257 * 3]], dtype=np.uint16).repeat(40, axis=0).repeat(10, axis=1)
    Image.fromarray(values).save(tmp_path / "dark.png")
    decoded = decode_image(tmp_path / "dark.png")
    assert_rgb(decoded, 40, 40)
    np.testing.assert_array_equal(decoded[0, ::10, 0], [0, 0, 1, 3])
    with Image.open(tmp_path / "dark.png") as image:  # as Pillow 10 opens it: "I" (later ones, "I;16")
        legacy = image.convert("I")
        legacy.format = image.format
        np.testing.assert_array_equal(_to_rgb(legacy)[0, ::10, 0], [0, 0, 1, 3])  # was [0, 128, 255, 255]


def test_a_dark_16bit_pgm_is_not_mistaken_for_8bit(tmp_path):
    """Pillow opens a PGM of maxval 65535 as "I": one whose values are all under 256 was taken for
    8-bit data, 0..196 where a 16-bit PNG of the same values gives 0..1."""
    values = np.array([[0, 128, 200, 255]], dtype=np.uint16).repeat(40, axis=0).repeat(10, axis=1)
    (tmp_path / "dark.pgm").write_bytes(b"P5\n40 40\n65535\n" + values.astype(">u2").tobytes())
    Image.fromarray(values).save(tmp_path / "dark.png")
    decoded = decode_image(tmp_path / "dark.pgm")
    np.testing.assert_array_equal(decoded[0, ::10, 0], [0, 0, 1, 1])  # was [0, 128, 200, 255]
    np.testing.assert_array_equal(decoded, decode_image(tmp_path / "dark.png"))


def _write_gray16_png(path, values: np.ndarray, transparent: int) -> None:
    """A 16-bit grayscale PNG whose tRNS chunk makes one gray value transparent, written byte by
    byte: Pillow before 10.1 cannot write one ("cannot use transparency for this mode")."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    height, width = values.shape
    rows = b"".join(b"\0" + values[y].astype(">u2").tobytes() for y in range(height))  # filter 0 each row
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0))
                     + chunk(b"tRNS", struct.pack(">H", transparent)) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))


def test_16bit_grayscale_transparent_value_is_white_as_alpha_over_white(tmp_path):
    values = np.array([[0, 128, 255, 257 * 3]], dtype=np.uint16).repeat(40, axis=0).repeat(10, axis=1)
    _write_gray16_png(tmp_path / "clear.png", values, transparent=257 * 3)
    np.testing.assert_array_equal(decode_image(tmp_path / "clear.png")[0, ::10, 0], [0, 0, 1, 255])


def test_16bit_rgb_is_scaled_to_8bit(tmp_path):
    values = write_rgb16_png(tmp_path / "c16.png", 40, 56)
    decoded = decode_image(tmp_path / "c16.png")
    assert_rgb(decoded, 40, 56)
    # High byte or value / 257 rounded: they differ by at most 1. The low byte is random, so a
    # decoder that kept it would be far off.
    assert max_diff(decoded, (values / 257).round()) <= 1
    assert max_diff(decoded, values >> 8) <= 1


def test_16bit_rgb_transparent_colour_is_white_and_only_it(tmp_path):
    """A 16-bit RGB PNG's tRNS colour: Pillow compared it, 16-bit, with the samples' high bytes."""
    values = np.full((32, 32, 3), (0x1234, 0x5678, 0x9ABC), dtype=np.uint16)
    values[:, 16:, 0] = 0x1235  # the same high bytes, another colour: opaque
    rows = [b"\0" + row.astype(">u2").tobytes() for row in values]
    trns = struct.pack(">3H", 0x1234, 0x5678, 0x9ABC)
    (tmp_path / "key.png").write_bytes(imagefiles.png_bytes(32, 32, 16, 2, rows, trns=trns))
    decoded = decode_image(tmp_path / "key.png")
    assert (decoded[:, :16] == 255).all()
    assert (decoded[:, 16:] == (0x12, 0x56, 0x9A)).all()


@pytest.mark.parametrize("bits", [2, 4])
def test_2_and_4_bit_gray_transparent_level_is_white(tmp_path, bits):
    """Pillow scales their levels to 8 bits (x 85, x 17), but not the tRNS level."""
    top, per_byte = (1 << bits) - 1, 8 // bits
    levels = np.arange(32 * 32).reshape(32, 32) % (top + 1)
    packed = (levels.reshape(32, -1, per_byte) << (bits * np.arange(per_byte - 1, -1, -1))).sum(axis=2)
    rows = [b"\0" + row.astype(np.uint8).tobytes() for row in packed]
    (tmp_path / "g.png").write_bytes(imagefiles.png_bytes(32, 32, bits, 0, rows, trns=struct.pack(">H", 1)))
    expected = np.where(levels == 1, 255, levels * (255 // top))
    np.testing.assert_array_equal(decode_image(tmp_path / "g.png"), np.repeat(expected[:, :, None], 3, axis=2))


def test_16bit_white_is_zero_tiff_is_not_inverted(tmp_path):
    """PhotometricInterpretation 0 (WhiteIsZero): Pillow inverts 8-bit gray of it, not 16-bit."""
    values = np.linspace(0, 65535, 32 * 40).round().astype(np.uint16).reshape(32, 40)
    Image.fromarray(values).save(tmp_path / "white0.tif", tiffinfo={262: 0})  # the samples as given
    Image.fromarray(values).save(tmp_path / "black0.tif")
    with Image.open(tmp_path / "white0.tif") as image:
        assert image.mode == "I;16" and image.tag_v2[262] == 0
    np.testing.assert_array_equal(decode_image(tmp_path / "white0.tif")[..., 0], ((65535 - values) / 257).round())
    np.testing.assert_array_equal(decode_image(tmp_path / "black0.tif")[..., 0], (values / 257).round())


def test_palette(tmp_path):
    expected = write_palette(tmp_path / "p.png")
    decoded = decode_image(tmp_path / "p.png")
    assert_rgb(decoded, *expected.shape[:2])
    np.testing.assert_array_equal(decoded, expected)


def test_palette_transparency_becomes_white(tmp_path):
    expected = write_palette_transparent(tmp_path / "pt.png")
    with Image.open(tmp_path / "pt.png") as image:
        assert image.mode == "P" and "transparency" in image.info
    decoded = decode_image(tmp_path / "pt.png")
    np.testing.assert_array_equal(decoded, expected)
    white = (decoded == 255).all(axis=2)
    assert 0.05 < white.mean() < 0.5  # the transparent index really covers part of the picture


def test_alpha_is_composited_over_white(tmp_path):
    expected = write_rgba(tmp_path / "a.png", 48, 64)
    decoded = decode_image(tmp_path / "a.png")
    assert_rgb(decoded, 48, 64)
    third = 64 // 3
    # Fully transparent: white, whatever color was stored underneath (magenta here).
    assert (decoded[:, :third] == 255).all()
    # Opaque: the stored color, exactly.
    np.testing.assert_array_equal(decoded[:, 2 * third :], expected[:, 2 * third :])
    # Half transparent: halfway to white.
    assert max_diff(decoded, expected) <= 1


def test_gray_alpha_is_composited_over_white(tmp_path):
    expected = write_la(tmp_path / "la.png", 48, 64)
    decoded = decode_image(tmp_path / "la.png")
    assert_rgb(decoded, 48, 64)
    assert (decoded[:24] == 255).all()
    np.testing.assert_array_equal(decoded, expected)


def test_cmyk_jpeg_is_close_to_its_rgb_source(tmp_path):
    expected = write_cmyk_jpeg(tmp_path / "c.jpg", 48, 64)
    with Image.open(tmp_path / "c.jpg") as image:
        assert image.mode == "CMYK"
    decoded = decode_image(tmp_path / "c.jpg")
    assert_rgb(decoded, 48, 64)
    difference = np.abs(decoded.astype(int) - expected)
    assert difference.mean() < 3.0 and difference.max() < 40


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_jpeg_is_shown_upright(tmp_path, orientation):
    expected = write_exif_rotated(tmp_path / "r.jpg", orientation, height=64, width=96)
    decoded = decode_image(tmp_path / "r.jpg")
    assert_rgb(decoded, *expected.shape[:2])
    if orientation in (6, 8):
        assert decoded.shape[:2] == (96, 64)  # transposed
    # Every quadrant has the color it has when displayed (JPEG: within a few levels).
    assert np.abs(quadrant_colors(decoded) - quadrant_colors(expected)).max() < 12


def test_exif_orientation_6_rotates_clockwise(tmp_path):
    write_exif_rotated(tmp_path / "r.png", 6, height=64, width=96)
    decoded = decode_image(tmp_path / "r.png")
    # Stored: red top-left, green top-right, blue bottom-left, yellow bottom-right.
    # Turned 90 degrees clockwise: blue top-left, red top-right, yellow bottom-left, green bottom-right.
    colors = quadrant_colors(decoded).round().astype(int)
    assert colors[0, 0].tolist() == [30, 30, 220]
    assert colors[0, 1].tolist() == [220, 30, 30]
    assert colors[1, 0].tolist() == [230, 230, 40]
    assert colors[1, 1].tolist() == [30, 200, 30]


def test_exif_orientation_8_png_is_exact(tmp_path):
    expected = write_exif_rotated(tmp_path / "r.png", 8, height=64, width=96)
    decoded = decode_image(tmp_path / "r.png")
    assert_rgb(decoded, 96, 64)
    np.testing.assert_array_equal(decoded, expected)


def test_animated_gif_uses_first_frame(tmp_path):
    expected = write_animated_gif(tmp_path / "a.gif", 40, 48)
    with Image.open(tmp_path / "a.gif") as image:
        assert image.n_frames == 3
    decoded = decode_image(tmp_path / "a.gif")
    assert_rgb(decoded, 40, 48)
    np.testing.assert_array_equal(decoded, expected)
    assert decoded[0, 0].tolist() == [220, 20, 20]


def test_gif_canvas_around_a_smaller_first_frame_is_white(tmp_path):
    """Pillow filled it with palette index 0 (black here); browsers show it transparent."""
    expected = write_gif_small_first_frame(tmp_path / "s.gif")
    np.testing.assert_array_equal(decode_image(tmp_path / "s.gif"), expected)


@pytest.mark.parametrize("name", ["a.tif", "a.tiff", "a.bmp", "a.webp", "a.PNG"])
def test_lossless_formats_are_exact(tmp_path, name):
    options = {"lossless": True} if name.endswith("webp") else {}
    expected = write_rgb(tmp_path / name, 46, 58, seed=7, **options)
    decoded = decode_image(tmp_path / name)
    assert_rgb(decoded, 46, 58)
    np.testing.assert_array_equal(decoded, expected)


def test_jpeg_2000_is_exact_and_avif_close(tmp_path):
    expected = write_rgb(tmp_path / "a.jp2", 46, 58, seed=8)  # Pillow's default: reversible, lossless
    np.testing.assert_array_equal(decode_image(tmp_path / "a.jp2"), expected)
    if not features.check("avif"):
        pytest.skip("this Pillow does not decode AVIF")
    picture = smooth_rgb(48, 64, seed=9)
    Image.fromarray(picture).save(tmp_path / "a.avif", quality=95)
    decoded = decode_image(tmp_path / "a.avif")
    assert_rgb(decoded, 48, 64)
    assert np.abs(decoded.astype(int) - picture).mean() < 3.0


def test_heic_decodes_upright_with_pillow_heif(tmp_path):
    pytest.importorskip("pillow_heif")
    assert vggfeat.decode.heif_plugin()  # registered: Pillow now also writes HEIC
    picture = smooth_rgb(48, 64, seed=10)
    Image.fromarray(picture).save(tmp_path / "a.HEIC", quality=95)
    decoded = decode_image(tmp_path / "a.HEIC")
    assert_rgb(decoded, 48, 64)
    assert np.abs(decoded.astype(int) - picture).mean() < 3.0
    # A phone's portrait photo: stored turned, with its rotation (HEIF's irot, which pillow-heif
    # writes from the EXIF orientation, as phones write both); shown (and described) upright.
    stored = quadrants(64, 96)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "r.heic", exif=exif.tobytes(), quality=95)
    expected = np.rot90(stored, -1)  # turned 90 degrees clockwise
    decoded = decode_image(tmp_path / "r.heic")
    assert_rgb(decoded, 96, 64)
    assert np.abs(quadrant_colors(decoded) - quadrant_colors(expected)).max() < 12


@pytest.mark.parametrize("name", ["a.avif", "a.heic"])
def test_a_damaged_avif_or_heic_fails_alone(tmp_path, name):
    """Their decoders raise RuntimeError for a damaged file, which ended the whole run in a
    traceback (found by tests/fuzz_inputs.py formats): now the image fails with the reason."""
    if name.endswith(".avif") and not features.check("avif"):
        pytest.skip("this Pillow does not decode AVIF")
    if name.endswith(".heic") and not vggfeat.decode.heif_plugin():
        pytest.skip("pillow-heif is not installed")
    write_damaged_avif_or_heic(tmp_path / name)
    with pytest.raises(ImageError, match=r"^RuntimeError: .*(Missing or empty image item|Security limit exceeded)"):
        decode_image(tmp_path / name)


@pytest.mark.parametrize("name, plugin, words", [
    ("a.heic", "heif_plugin", "HEIC/HEIF image: decoding it needs pillow-heif (pip install pillow-heif); then --retry-failed"),
    ("a.avif", "features", "AVIF image: decoding it needs a Pillow that decodes AVIF (pip install -U pillow); then "
                           "--retry-failed"),
])
def test_a_format_this_installation_cannot_decode_says_what_to_install(tmp_path, monkeypatch, name, plugin, words):
    """Without the decoder (pillow-heif; a Pillow with AVIF) the file fails with what to do, not
    as 'not an image'; a file that is not one fails as before whatever is installed."""
    imagefiles.write_corrupt(tmp_path / name)  # what Pillow cannot open, as it cannot open a format it lacks
    if plugin == "heif_plugin":
        monkeypatch.setattr(vggfeat.decode, "heif_plugin", lambda: False)
    else:
        monkeypatch.setattr(vggfeat.decode.features, "check", lambda feature: False)
    with pytest.raises(ImageError, match=re.escape(words)):
        decode_image(tmp_path / name)
    monkeypatch.undo()
    if plugin == "heif_plugin" and vggfeat.decode.heif_plugin() or plugin == "features" and features.check("avif"):
        with pytest.raises(ImageError, match="not an image, or a format Pillow cannot read"):
            decode_image(tmp_path / name)


def test_images_of_a_format_not_decoded_here_are_counted_before_a_run(monkeypatch):
    paths = ["a/1.HEIC", "a/2.heif", "b/3.avif", "b/4.jpg", "b/heic.png", "c/5.Heic"]
    monkeypatch.setattr(vggfeat.decode, "heif_plugin", lambda: False)

    def unknown(feature):  # as a Pillow before 11.2 says of AVIF: at every run, no warning of vggfeat's
        warnings.warn(f"Unknown feature {feature!r}.")
        return None

    monkeypatch.setattr(vggfeat.decode.features, "check", unknown)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vggfeat.decode.formats_not_decoded(paths)
    assert vggfeat.decode.formats_not_decoded(paths) == [
        "3 HEIC/HEIF image(s): decoding them needs pillow-heif (pip install pillow-heif); without it each is recorded "
        "as failed",
        "1 AVIF image(s): decoding them needs a Pillow that decodes AVIF (pip install -U pillow); without it each is "
        "recorded as failed"]
    assert vggfeat.decode.formats_not_decoded(["b/4.jpg"]) == []
    monkeypatch.setattr(vggfeat.decode, "heif_plugin", lambda: True)
    monkeypatch.setattr(vggfeat.decode.features, "check", lambda feature: True)
    assert vggfeat.decode.formats_not_decoded(paths) == []


def test_uppercase_jpg_extension(tmp_path):
    expected = write_rgb(tmp_path / "PHOTO.JPG", 50, 70, seed=6)
    decoded = decode_image(tmp_path / "PHOTO.JPG")
    assert_rgb(decoded, 50, 70)
    assert np.abs(decoded.astype(int) - expected).mean() < 2.0


def test_format_comes_from_content_not_name(tmp_path):
    expected = write_rgb(tmp_path / "really_png.jpg", 40, 40, fmt="PNG")
    np.testing.assert_array_equal(decode_image(tmp_path / "really_png.jpg"), expected)


def test_whole_odd_set_decodes(tmp_path):
    # The set other tests reuse: every file decodes to what it promises.
    odd = write_odd_files(tmp_path)
    assert len(odd) >= 15
    for name, item in odd.items():
        decoded = decode_image(item.path)
        assert_rgb(decoded, *item.expected.shape[:2])
        difference = np.abs(decoded.astype(int) - item.expected)
        assert difference.max() <= item.tolerance, name
        if item.tolerance > 1:  # JPEG: close on average, not only within the worst-case bound
            assert difference.mean() < 3.0, name


def test_accepts_str_paths(tmp_path):
    expected = write_rgb(tmp_path / "a.png", 40, 40)
    np.testing.assert_array_equal(decode_image(str(tmp_path / "a.png")), expected)
