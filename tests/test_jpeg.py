"""Batched JPEG decoding with torchvision (libjpeg-turbo on the CPU; nvJPEG on a GPU: test_gpu.py).

On the CPU torchvision's decoder is the same libjpeg-turbo as PIL's, so ``--decoder torchvision``
must give exactly PIL's pixels, failures and reasons, whatever mix of files a batch holds. Every
test runs with each library that can do the decoding: TorchCodec (used when installed) and
torchvision.io (deprecated since torchvision 0.29, used otherwise).
"""

from __future__ import annotations

import importlib
import os
import re

import numpy as np
import pytest
import torch

from imagefiles import smooth_rgb, write_bad_files, write_cmyk_jpeg, write_exif_rotated, write_gray, write_odd_files, write_rgb, write_truncated_jpeg
from reference import assert_close
from runhelpers import FAST, read_output, run_main
from vggfeat import Extractor, ImageError, VggfeatError
from vggfeat.decode import DEFAULT_MAX_PIXELS, decode_image
import vggfeat.jpeg
from vggfeat.jpeg import EncodedJpeg, decode_jpegs, read_jpeg
from vggfeat.reading import JPEG_GROUP, ImageReader

@pytest.fixture(autouse=True, params=list(vggfeat.jpeg.LIBRARIES))
def library(request, monkeypatch):
    """Decode with this library only (or skip where it cannot decode)."""
    monkeypatch.setattr(vggfeat.jpeg, "LIBRARIES", {request.param: vggfeat.jpeg.LIBRARIES[request.param]})
    vggfeat.jpeg.decoder_library.cache_clear()
    vggfeat.jpeg.batch_decoder.cache_clear()
    if vggfeat.jpeg.decoder_library() == "none":
        pytest.skip(f"{request.param} cannot decode JPEGs here")
    yield request.param
    vggfeat.jpeg.decoder_library.cache_clear()
    vggfeat.jpeg.batch_decoder.cache_clear()


def test_only_jpegs_torchvision_decodes_like_pil_are_sent_to_it(tmp_path):
    write_rgb(tmp_path / "rgb.jpg", 60, 80)
    write_gray(tmp_path / "gray.jpg")
    write_rgb(tmp_path / "rgb.png", 60, 80)
    write_cmyk_jpeg(tmp_path / "cmyk.jpg")
    write_exif_rotated(tmp_path / "rotated.jpg", 6)
    (tmp_path / "note.jpg").write_text("not an image")
    for name in ("rgb.jpg", "gray.jpg"):
        assert read_jpeg(tmp_path / name, 10**9, 32) is not None, name
    for name in ("rgb.png", "cmyk.jpg", "rotated.jpg", "note.jpg", "missing.jpg"):
        assert read_jpeg(tmp_path / name, 10**9, 32) is None, name  # PIL's to decode or to explain
    # A file too large to read whole (a 40 GB sparse one that began as a JPEG was read whole, a
    # MemoryError that stopped the run and each resume): PIL's, which reads what it decodes.
    huge = tmp_path / "huge.jpg"
    huge.write_bytes((tmp_path / "rgb.jpg").read_bytes())
    os.truncate(huge, vggfeat.jpeg.MOST_JPEG_BYTES + 1)  # sparse: no disk
    assert read_jpeg(huge, 10**9, 32) is None
    extractor = Extractor("vgg11", weights="random", scales=[64], flip=False, layer="pool5", device="cpu")
    assert np.isfinite(extractor.extract([huge])).all()


def test_the_header_scan_routes_jpegs_as_pillow_reads_them(tmp_path):
    """read_jpeg walks the markers itself (no Pillow header parse in every decoding thread)."""
    from PIL import Image

    write_rgb(tmp_path / "progressive.jpg", 60, 80, progressive=True)
    write_exif_rotated(tmp_path / "upright.jpg", 1)  # an EXIF block saying "as stored"
    first, second = (Image.fromarray(smooth_rgb(60, 80, seed=i)) for i in range(2))
    first.save(tmp_path / "pair.jpg", format="MPO", save_all=True, append_images=[second])
    (tmp_path / "garbled.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x02" + bytes(range(256)) + b"\xff\xd9")
    data = bytearray((tmp_path / "progressive.jpg").read_bytes())
    frame = data.index(b"\xff\xc2")
    data[frame + 5 : frame + 7] = b"\x00\x00"  # height 0: to be given by a DNL marker
    (tmp_path / "no_height.jpg").write_bytes(bytes(data))
    # A damaged EXIF signature: Pillow keeps the image as stored; TorchCodec turned it anyway.
    write_exif_rotated(tmp_path / "rotated.jpg", 6)
    (tmp_path / "damaged_exif.jpg").write_bytes((tmp_path / "rotated.jpg").read_bytes().replace(b"Exif\0\0", b"Ex<f\0\0", 1))
    with Image.open(tmp_path / "damaged_exif.jpg") as damaged:
        assert not damaged.getexif()
    for name in ("progressive.jpg", "upright.jpg"):
        jpeg = read_jpeg(tmp_path / name, 10**9, 32)
        assert jpeg is not None, name
        (pixels,) = decode_jpegs([jpeg], torch.device("cpu"))
        assert np.array_equal(pixels.permute(1, 2, 0).numpy(), decode_image(tmp_path / name)), name
    with Image.open(tmp_path / "pair.jpg") as pair:
        assert pair.format == "MPO"
    for name in ("pair.jpg", "garbled.jpg", "no_height.jpg", "damaged_exif.jpg"):  # Pillow's to open as it does, or to explain
        assert read_jpeg(tmp_path / name, 10**9, 32) is None, name


def test_size_limits_are_checked_from_the_header(tmp_path):
    write_rgb(tmp_path / "rgb.jpg", 60, 80)
    with pytest.raises(ImageError, match="80x60 .*over the limit of 4,000"):
        read_jpeg(tmp_path / "rgb.jpg", 4000, 32)
    with pytest.raises(ImageError, match="smallest side must be at least 64"):
        read_jpeg(tmp_path / "rgb.jpg", 10**9, 64)


def test_a_bad_file_does_not_fail_its_batch(tmp_path):
    names = ["0.jpg", "truncated.jpg", "1.jpg", "2.jpg"]
    for i, name in enumerate(names):
        write_rgb(tmp_path / name, 50 + i, 70, seed=i, fmt="JPEG")
    truncated = write_truncated_jpeg(tmp_path / "truncated.jpg")
    files = [read_jpeg(tmp_path / name, 10**9, 32) for name in names]
    files[1] = EncodedJpeg(truncated, torch.frombuffer(bytearray(truncated.read_bytes()), dtype=torch.uint8))
    decoded = decode_jpegs(files, "cpu")
    assert decoded[1] is None
    for name, pixels in zip(names, decoded):
        if name != "truncated.jpg":
            assert np.array_equal(pixels.permute(1, 2, 0).numpy(), decode_image(tmp_path / name)), name


def test_a_truncated_jpeg_goes_to_pil(tmp_path):
    """nvJPEG decodes a truncated file without an error; PIL, which refuses it, decides instead."""
    assert read_jpeg(write_truncated_jpeg(tmp_path / "truncated.jpg"), 10**9, 32) is None
    whole = tmp_path / "whole.jpg"
    write_rgb(whole, 50, 70, seed=0, fmt="JPEG")
    whole.write_bytes(whole.read_bytes() + b"\r\n")  # trailing bytes after the end marker are common
    assert read_jpeg(whole, 10**9, 32) is not None


def test_a_jpeg_missing_only_its_end_marker_is_decoded_as_pil_decodes_it(tmp_path):
    """It goes to PIL (it does not end as a whole JPEG does), which gives the whole file's pixels;
    a file cut short fails there, for the same reason by every decoder."""
    write_rgb(tmp_path / "whole.jpg", 48, 64, fmt="JPEG")
    data = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "open.jpg").write_bytes(data[:-2])
    (tmp_path / "cut.jpg").write_bytes(data[:-20])
    paths = [tmp_path / name for name in ("whole.jpg", "open.jpg", "cut.jpg")]
    assert read_jpeg(paths[1], 10**9, 32) is None
    whole = decode_image(paths[0])
    for decoder in ("pil", "torchvision"):
        *images, failure = decoded(decoder, paths)
        for pixels in images:
            pixels = pixels.permute(1, 2, 0).numpy() if isinstance(pixels, torch.Tensor) else pixels
            assert np.array_equal(pixels, whole), decoder
        assert isinstance(failure, ImageError) and str(failure).startswith("truncated: "), decoder


def with_xmp_orientation(jpeg: bytes, orientation: int) -> bytes:
    """``jpeg`` with an XMP block (APP1) that gives its orientation, and no EXIF block, as some
    editors' exports have them."""
    xmp = (b'http://ns.adobe.com/xap/1.0/\0<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf='
           b'"http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" '
           b'tiff:Orientation="%d"/></rdf:RDF></x:xmpmeta>' % orientation)
    return jpeg[:2] + b"\xff\xe1" + (len(xmp) + 2).to_bytes(2, "big") + xmp + jpeg[2:]


def test_a_jpeg_turned_by_its_xmp_alone_is_decoded_as_pillow_turns_it_by_every_decoder(tmp_path):
    """Pillow (11.2 on) takes the orientation from XMP where EXIF gives none; TorchCodec and
    torchvision never did: the default decoder described such a photo lying on its side, --decoder
    pil upright. (An earlier Pillow turns it by neither route.)"""
    turns = vggfeat.jpeg._pillow_turns_by_xmp()
    write_rgb(tmp_path / "stored.jpg", 40, 64, fmt="JPEG")
    stored = (tmp_path / "stored.jpg").read_bytes()
    (tmp_path / "turned.jpg").write_bytes(with_xmp_orientation(stored, 6))
    (tmp_path / "upright.jpg").write_bytes(with_xmp_orientation(stored, 1))
    assert (read_jpeg(tmp_path / "turned.jpg", 10**9, 32) is None) == turns  # PIL's, which turns it
    assert read_jpeg(tmp_path / "upright.jpg", 10**9, 32) is not None  # as stored: the batched decoders'
    paths = [tmp_path / "turned.jpg", tmp_path / "upright.jpg"]
    by_pil, by_torchvision = decoded("pil", paths), decoded("torchvision", paths)
    assert by_pil[0].shape == ((64, 40, 3) if turns else (40, 64, 3))  # (height, width): turned a quarter
    for a, b in zip(by_pil, by_torchvision):
        b = b.permute(1, 2, 0).numpy() if not isinstance(b, np.ndarray) else b
        assert np.array_equal(a, b)


def decoded(decoder: str, paths) -> list:
    reader = ImageReader(torch.device("cpu"), decoder, workers=2, max_pixels=DEFAULT_MAX_PIXELS, min_side=32)
    with reader.read(paths, lookahead=8) as results:
        return list(results)


def test_torchvision_decoder_gives_pils_pixels_failures_and_reasons(tmp_path):
    odd = write_odd_files(tmp_path / "odd")
    bad = write_bad_files(tmp_path / "bad")
    plain = [tmp_path / f"plain{i}.jpg" for i in range(JPEG_GROUP + 3)]  # more than one group
    for i, path in enumerate(plain):
        write_rgb(path, 40 + i, 60, seed=i, fmt="JPEG")
    paths = sorted([*(o.path for o in odd.values()), *bad.values(), *plain])
    by_pil, by_torchvision = decoded("pil", paths), decoded("torchvision", paths)
    assert len(by_torchvision) == len(paths)
    for path, a, b in zip(paths, by_pil, by_torchvision):
        if isinstance(a, ImageError):
            assert isinstance(b, ImageError) and str(b) == str(a), path.name
        else:
            b = b.permute(1, 2, 0).numpy() if not isinstance(b, np.ndarray) else b
            assert np.array_equal(a, b), path.name


def test_torchvision_decoder_end_to_end_equals_pil(random_vgg16, tmp_path):
    paths = [tmp_path / "a.jpg", tmp_path / "b.png", tmp_path / "c.jpg"]
    write_rgb(paths[0], 230, 300, seed=1, fmt="JPEG")
    write_rgb(paths[1], 240, 240, seed=2)
    write_truncated_jpeg(paths[2])
    options = dict(device="cpu", scales=[224], flip=False, layer="conv1_1")
    pil = Extractor(random_vgg16, decoder="pil", **options)
    torchvision = Extractor(random_vgg16, **options)  # the default where a library decodes
    assert torchvision.decoder == "torchvision"
    by_torchvision, by_pil = torchvision.extract(paths, errors="nan"), pil.extract(paths, errors="nan")
    assert_close(by_torchvision[:2], by_pil[:2], 0, "descriptors")
    assert np.isnan(by_torchvision[2]).all() and np.isnan(by_pil[2]).all()
    # The same pixels: files of either decoder resume and merge with each other.
    assert pil.config() == torchvision.config()


def test_nvjpeg_needs_a_gpu(random_vgg16):
    with pytest.raises(VggfeatError, match=r"decoder='nvjpeg' \(--decoder nvjpeg\) decodes on a CUDA device"):
        Extractor(random_vgg16, device="cpu", decoder="nvjpeg")


def test_the_chosen_library_decodes(library, tmp_path, monkeypatch):
    module, calls = importlib.import_module(vggfeat.jpeg.LIBRARIES[library]), []
    real = module.decode_jpeg
    monkeypatch.setattr(module, "decode_jpeg", lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    write_rgb(tmp_path / "a.jpg", 40, 60, fmt="JPEG")
    (pixels,) = decode_jpegs([read_jpeg(tmp_path / "a.jpg", 10**9, 32)], torch.device("cpu"))
    assert calls == [1] and np.array_equal(pixels.permute(1, 2, 0).numpy(), decode_image(tmp_path / "a.jpg"))


def test_without_a_decoding_library_the_decoder_options_are_refused(random_vgg16, monkeypatch):
    monkeypatch.setattr(vggfeat.jpeg, "LIBRARIES", {})
    vggfeat.jpeg.decoder_library.cache_clear()
    with pytest.raises(VggfeatError, match=r"decoder='torchvision' \(--decoder torchvision\) needs TorchCodec "
                                           r"\(pip install torchcodec\)"):
        Extractor(random_vgg16, device="cpu", decoder="torchvision")
    Extractor(random_vgg16, device="cpu", decoder="pil")  # PIL needs neither
    assert Extractor(random_vgg16, device="cpu").decoder == "pil"  # and auto falls back to it


def test_a_torchvision_that_decodes_one_jpeg_a_call_is_not_used(monkeypatch):
    """torchvision before 0.19 takes no list of JPEGs: each batch would fail, then each of its files."""
    import torchvision

    monkeypatch.setattr(vggfeat.jpeg, "LIBRARIES", {"torchvision": "torchvision.io"})
    for version, used in (("0.17.2+cu121", "none"), ("0.19.0", "torchvision 0.19.0"), ("0.29.1+cu130", "torchvision 0.29.1+cu130")):
        monkeypatch.setattr(torchvision, "__version__", version)
        vggfeat.jpeg.decoder_library.cache_clear()
        assert vggfeat.jpeg.decoder_library() == used
    vggfeat.jpeg.decoder_library.cache_clear()


def test_the_file_and_the_terminal_say_which_library_decoded(library, tmp_path):
    (tmp_path / "images").mkdir()
    write_rgb(tmp_path / "images" / "a.jpg", 230, 240, fmt="JPEG")
    code, _, err = run_main(["extract", tmp_path / "images", tmp_path / "out.h5", *FAST, "--decoder", "torchvision"])
    assert code == 0, err
    used = vggfeat.jpeg.decoder_library()
    assert used.startswith(f"{library} ") and re.search(rf"torchvision decoding threads? \({re.escape(used)}\)", err), err
    assert read_output(tmp_path / "out.h5")["attrs"]["decoder_library"] == used
