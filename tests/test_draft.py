"""JPEG draft (``--jpeg-draft``): large JPEGs decoded at 1/2, 1/4 or 1/8 of their size by libjpeg,
never below what the largest scale needs; sizes recorded whole; descriptors close to whole decoding."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch

from imagefiles import write_exif_rotated, write_rgb
from runhelpers import FAST, read_output, run_main
from vggfeat import Extractor, ImageError
from vggfeat.decode import decode_image, decode_image_reduced
from vggfeat.jpeg import decoder_library
from vggfeat.reading import JPEG_GROUP, Budget, ImageReader, Reduced
from vggfeat.resize import IMAGENET_STD, jpeg_reduction, to_inputs

DECODERS = ["pil"] + ([] if decoder_library() == "none" else ["torchvision"])
PAPER = (256, 384, 512)


@pytest.mark.parametrize(("height", "width", "scales", "side", "factor"), [
    (3000, 4000, PAPER, "short", 4),  # 750x1000 holds Q=512's 512x682; 375x500 would not
    (3000, 4000, (224,), "short", 8),  # 375x500 holds 224x298
    (4000, 3000, PAPER, "short", 4),  # either orientation
    (1200, 1600, (256,), "short", 4),  # 300x400 holds 256x341
    (1023, 1365, (256,), "short", 4),  # sides rounded up, as libjpeg does: 256x342 holds 256x341
    (1020, 1365, (256,), "short", 2),  # a quarter is a row short (255): a half
    (510, 700, (256,), "short", 1),  # a half is a row short: decoded whole
    (500, 375, PAPER, "short", 1),  # a small photo is decoded whole
    (3000, 4000, (512,), "long", 4),  # the long side is Q: 1000 >= 512, 500 < 512
])
def test_the_reduction_keeps_the_largest_resized_shape(height, width, scales, side, factor):
    assert jpeg_reduction(height, width, scales, side) == factor


def test_the_reduction_is_the_largest_that_keeps_every_side():
    for height, width in [(1023, 1365), (1200, 1600), (3001, 4003), (2048, 257), (640, 480), (7, 9)]:
        for scales, side in [(PAPER, "short"), ((224,), "short"), ((512,), "long")]:
            factor = jpeg_reduction(height, width, scales, side)
            needed = np.array(to_inputs([torch.zeros(3, height, width, dtype=torch.uint8)], max(scales), side)[0].shape[1:])
            if factor > 1:
                assert (-(-np.array([height, width]) // factor) >= needed).all(), (height, width, scales, factor)
            if factor < 8:  # the next one would not hold it
                assert (-(-np.array([height, width]) // (2 * factor)) < needed).any(), (height, width, scales, factor)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A large JPEG (1200x1600), a large one turned by its EXIF orientation, a small JPEG and a
    large PNG (not a JPEG: decoded whole)."""
    folder = tmp_path_factory.mktemp("draft")
    paths = {"large": folder / "a-large.jpg", "turned": folder / "b-turned.jpg", "small": folder / "c-small.jpg",
             "png": folder / "d-large.png"}
    write_rgb(paths["large"], 1200, 1600, seed=1)
    write_exif_rotated(paths["turned"], orientation=6, height=1200, width=1600, fmt="JPEG")
    write_rgb(paths["small"], 375, 500, seed=2)
    write_rgb(paths["png"], 1200, 1600, seed=3)
    return paths


REDUCTION = functools.partial(jpeg_reduction, scales=(256,), side="short")


def test_a_large_jpeg_is_decoded_smaller_and_keeps_its_full_size(photos):
    whole = decode_image(photos["large"])
    pixels, full_size = decode_image_reduced(photos["large"], REDUCTION)
    assert full_size == whole.shape[:2] == (1200, 1600)
    assert pixels.shape == (300, 400, 3) and pixels.dtype == np.uint8
    # The same picture: the whole one averaged over 4x4 blocks, within a few levels.
    blocks = whole.reshape(300, 4, 400, 4, 3).mean(axis=(1, 3))
    assert np.abs(pixels - blocks).mean() < 1.0


def test_a_turned_jpeg_is_decoded_smaller_upright_with_its_upright_size(photos):
    whole = decode_image(photos["turned"])
    pixels, full_size = decode_image_reduced(photos["turned"], REDUCTION)
    assert full_size == whole.shape[:2] == (1600, 1200)
    assert pixels.shape == (400, 300, 3)
    assert np.abs(pixels - whole[::4, ::4]).mean() < 8  # quadrants: only the edges differ


@pytest.mark.parametrize("name", ["small", "png"])
def test_other_images_are_decoded_whole(photos, name):
    pixels, full_size = decode_image_reduced(photos[name], REDUCTION)
    np.testing.assert_array_equal(pixels, decode_image(photos[name]))
    assert full_size == pixels.shape[:2]


def test_limits_apply_to_the_full_size(photos):
    with pytest.raises(ImageError, match="1600x1200"):
        decode_image_reduced(photos["large"], REDUCTION, max_pixels=1_000_000)


def read_all(paths, decoder: str, processes: bool) -> list:
    reader = ImageReader(torch.device("cpu"), decoder, workers=2, max_pixels=10**8, min_side=32, processes=processes,
                         reduction=REDUCTION)
    with reader.read(paths, lookahead=JPEG_GROUP) as results:
        return list(results)


@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
@pytest.mark.parametrize("decoder", DECODERS)
def test_the_reader_gives_large_jpegs_reduced_with_their_full_size(photos, decoder, processes):
    paths = list(photos.values())
    results = read_all(paths, decoder, processes)
    for name, result in zip(photos, results):
        if name in ("large", "turned"):
            assert isinstance(result, Reduced), name
            expected, full_size = decode_image_reduced(photos[name], REDUCTION)
            pixels, got_size = result
        else:
            assert not isinstance(result, Reduced), name
            expected, full_size, pixels, got_size = decode_image(photos[name]), None, result, None
        pixels = pixels if isinstance(pixels, np.ndarray) else pixels.permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(pixels, expected)
        assert got_size == full_size


@pytest.mark.parametrize("decoder", DECODERS)
def test_a_worker_fills_its_slot_by_the_drafted_size(photos, decoder):
    """A decoding process decodes as many files as its slot of shared memory holds, reckoned by
    their headers: a drafted JPEG by its drafted size (300x400 here), not its full one (1200x1600)."""
    reader = ImageReader(torch.device("cpu"), decoder, 1, 10**8, 32, reduction=REDUCTION)
    two_drafted = 2 * 3 * 300 * 400  # less than one whole photo's bytes
    decoded, _ = reader._decode_group([photos["large"], photos["turned"], photos["png"]], 0, Budget(None), two_drafted)
    assert [type(d) for d in decoded] == [Reduced, Reduced]  # and the PNG, whole, waits for the next slot


@pytest.fixture(scope="module")
def described(photos):
    """The photos' chunk (descriptors and sizes), decoded whole and drafted, at Q=256 (a quarter's
    size) and, the large JPEGs only, at Q=256,512 (a half's, resized to both); by VGG11, half
    VGG16's work."""
    out = {}
    for scales in [(256,), (256, 512)]:
        paths = list(photos.values()) if scales == (256,) else [photos["large"], photos["turned"]]
        for draft in (False, True):
            extractor = Extractor("vgg11", weights="random", scales=scales, flip=False, device="cpu", jpeg_draft=draft)
            (chunk,) = extractor.iter_chunks(paths)
            out[scales, draft] = chunk
    return out


@pytest.mark.parametrize("scales", [(256,), (256, 512)], ids=["Q256", "Q256,512"])
def test_drafted_descriptors_are_close_to_whole_decodings(described, scales):
    whole, drafted = described[scales, False], described[scales, True]
    assert drafted.sizes == whole.sizes == [(1200, 1600), (1600, 1200), (375, 500), (1200, 1600)][: len(whole.sizes)]
    a, b = whole.features, drafted.features
    cosine = (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert (cosine > 0.9999).all(), cosine
    np.testing.assert_array_equal(a[2:], b[2:])  # the small JPEG and the PNG: decoded whole either way
    assert not np.array_equal(a[0], b[0]) and not np.array_equal(a[1], b[1])  # the large JPEGs were drafted


def test_drafted_network_inputs_differ_by_about_a_level(photos):
    """What the network sees at each scale, drafted against whole: within a level or so on
    average (the figures of README's "JPEG draft")."""
    reduction = functools.partial(jpeg_reduction, scales=PAPER, side="short")
    whole = torch.from_numpy(decode_image(photos["large"])).permute(2, 0, 1)
    pixels, _ = decode_image_reduced(photos["large"], reduction)
    drafted = torch.from_numpy(pixels).permute(2, 0, 1)
    levels = torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255  # normalised units back to 0..255 levels
    for scale in PAPER:
        a, b = to_inputs([whole], scale)[0], to_inputs([drafted], scale)[0]
        assert a.shape == b.shape
        assert ((a - b) * levels).abs().mean() < 0.5, scale


def test_drafted_images_are_resized_to_whole_decodings_shapes(tmp_path, random_vgg16, monkeypatch):
    """Sides that are not multiples of the factor: 1200x1603 drafted by 2 is 600x802, whose own
    aspect would give Q=512 a 512x684 input; the whole image's is 512x683, and so is the drafted one's."""
    path = tmp_path / "odd.jpg"
    write_rgb(path, 1200, 1603, seed=4)
    pixels, full_size = decode_image_reduced(path, functools.partial(jpeg_reduction, scales=PAPER, side="short"))
    drafted, whole = torch.from_numpy(pixels).permute(2, 0, 1), torch.zeros(3, *full_size, dtype=torch.uint8)
    for scale in PAPER:
        expected = to_inputs([whole], scale)[0].shape
        assert to_inputs([drafted], scale)[0].shape != expected  # what the drafted pixels alone would give
        assert to_inputs([drafted], scale, sizes=[full_size])[0].shape == expected
    shapes = []

    def recording(images, scale, *args, **kwargs):
        inputs = to_inputs(images, scale, *args, **kwargs)
        shapes.extend(tuple(x.shape[1:]) for x in inputs)
        return inputs

    monkeypatch.setattr("vggfeat.extractor.to_inputs", recording)
    Extractor(random_vgg16, scales=PAPER, device="cpu", layer="conv1_1", jpeg_draft=True).extract([path])  # inputs only
    assert shapes == [(256, 341), (256, 341), (384, 512), (384, 512), (512, 683), (512, 683)]  # and flips


def test_the_option_is_recorded_and_compared(described, random_vgg16):
    whole = Extractor(random_vgg16, scales=[256], device="cpu")
    drafted = Extractor(random_vgg16, scales=[256], device="cpu", jpeg_draft=True)
    assert "jpeg_draft" not in whole.config()  # files made before the option compare equal
    assert drafted.config() == {**whole.config(), "jpeg_draft": True}


def test_extract_with_jpeg_draft_writes_full_sizes_and_resumes_only_as_drafted(photos, tmp_path):
    output = tmp_path / "out.h5"
    args = ["extract", "--file-list", tmp_path / "files.txt", output, *FAST, "--quiet"]
    (tmp_path / "files.txt").write_text("".join(f"{path}\n" for path in photos.values()))
    code, _, err = run_main([*args, "--jpeg-draft"])
    assert code == 0, err
    written = read_output(output)
    assert json.loads(written["attrs"]["config"])["jpeg_draft"] is True
    assert written["sizes"].tolist() == [[1200, 1600], [1600, 1200], [375, 500], [1200, 1600]]
    code, out, _ = run_main(["info", output])
    assert code == 0 and "large JPEGs drafted (--jpeg-draft)" in out
    # Its update must draft too: the same command without the option is refused.
    code, _, err = run_main([*args, "--update"])
    assert code != 0 and "jpeg_draft" in err
