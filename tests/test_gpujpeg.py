"""``--decoder nvimgcodec``: NVIDIA's nvImageCodec in the reading path, checked without a GPU.

On a GPU it decodes on the hardware JPEG engines (tests/test_gpu.py compares its pixels and
descriptors with PIL's there). Here the same decoder runs nvImageCodec's CPU backend (libjpeg-turbo,
PIL's pixels exactly) through the reader, so that what vggfeat does around the library (which files
go to it, what a rejected file becomes, the layout of its pixels, its quiet) is tested on every run.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import vggfeat.gpujpeg
import vggfeat.reading
from imagefiles import write_bad_files, write_gray, write_odd_files, write_rgb, write_truncated_jpeg
from vggfeat import Extractor, ImageError, VggfeatError
from vggfeat.decode import DEFAULT_MAX_PIXELS
from vggfeat.gpujpeg import BatchDecoder
from vggfeat.jpeg import EncodedJpeg, decode_jpegs, read_jpeg
from vggfeat.reading import JPEG_GROUP, ImageReader

installed = pytest.mark.skipif(vggfeat.gpujpeg.version() is None, reason="nvImageCodec is not installed")


def decoded(decoder: str, paths) -> list:
    reader = ImageReader(torch.device("cpu"), decoder, workers=2, max_pixels=DEFAULT_MAX_PIXELS, min_side=32)
    with reader.read(paths, lookahead=8) as results:
        return list(results)


@installed
def test_the_reader_gives_pils_pixels_failures_and_reasons(tmp_path):
    odd = write_odd_files(tmp_path / "odd")  # rotated, CMYK, 16-bit... go to PIL
    bad = write_bad_files(tmp_path / "bad")  # PIL words why each cannot be used
    plain = [tmp_path / f"plain{i}.jpg" for i in range(JPEG_GROUP + 3)]  # more than one batch
    for i, path in enumerate(plain):
        write_rgb(path, 40 + i, 60, seed=i, fmt="JPEG", progressive=i % 2 == 1)
    write_gray(tmp_path / "gray.jpg")
    paths = sorted([*(o.path for o in odd.values()), *bad.values(), *plain, tmp_path / "gray.jpg"])
    by_pil, by_nvimgcodec = decoded("pil", paths), decoded("nvimgcodec", paths)
    assert len(by_nvimgcodec) == len(paths)
    for path, a, b in zip(paths, by_pil, by_nvimgcodec):
        if isinstance(a, ImageError):
            assert isinstance(b, ImageError) and str(b) == str(a), path.name
        elif read_jpeg(path, DEFAULT_MAX_PIXELS, 32) is not None:  # decoded by nvImageCodec: [3, H, W]
            assert isinstance(b, torch.Tensor) and b.dtype == torch.uint8, path.name
            assert np.array_equal(b.permute(1, 2, 0).numpy(), a), path.name
        else:  # by PIL
            assert np.array_equal(b, a), path.name


@installed
def test_a_file_the_decoder_rejects_is_none_and_its_batch_is_decoded(tmp_path):
    paths = [tmp_path / f"{i}.jpg" for i in range(3)]
    for i, path in enumerate(paths):
        write_rgb(path, 50, 60 + i, seed=i, fmt="JPEG")
    truncated = write_truncated_jpeg(tmp_path / "truncated.jpg")  # read_jpeg would send it to PIL
    files = [read_jpeg(path, 10**9, 32) for path in paths]
    files.insert(1, EncodedJpeg(truncated, torch.frombuffer(bytearray(truncated.read_bytes()[:200]), dtype=torch.uint8)))
    pixels = decode_jpegs(files, torch.device("cpu"), BatchDecoder(torch.device("cpu")))
    assert pixels[1] is None
    by_torchvision = decode_jpegs([files[i] for i in (0, 2, 3)], torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip([pixels[i] for i in (0, 2, 3)], by_torchvision))


@installed
def test_it_is_quiet_at_the_terminal(tmp_path):
    """nvImageCodec prints, on import, the codecs it lacks (JPEG 2000, TIFF), and a warning for each
    file it rejects: vggfeat's output must stay its own."""
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a JPEG after all \xff\xd9")
    script = ("import sys, torch; from vggfeat.gpujpeg import BatchDecoder; "
              "data = torch.frombuffer(bytearray(open(sys.argv[1], 'rb').read()), dtype=torch.uint8); "
              "print(BatchDecoder(torch.device('cpu'))([data]))")
    # As a user's shell has it: without the verbosity that this process's import of it set.
    env = {name: value for name, value in os.environ.items() if name != "PYNVIMGCODEC_VERBOSITY"}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "bad.jpg")], capture_output=True, text=True,
                          check=True, env=env)
    assert done.stdout.strip() == "[None]" and done.stderr == ""


@pytest.mark.parametrize("where, expected", [
    (dict(device="cpu"), r"decoder='nvimgcodec' \(--decoder nvimgcodec\) decodes on a CUDA device"),
    (dict(device="cpu", decode_in="processes"),
     r"decoder='nvimgcodec' \(--decoder nvimgcodec\) decodes on the GPU, from this process"),
])
def test_it_is_refused_where_it_cannot_run(random_vgg16, where, expected):
    with pytest.raises(VggfeatError, match=expected):
        Extractor(random_vgg16, decoder="nvimgcodec", **where)


def test_without_nvimgcodec_the_message_says_what_to_install(random_vgg16, monkeypatch):
    monkeypatch.setattr(vggfeat.gpujpeg, "version", lambda: None)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    from vggfeat.settings import check_options

    with pytest.raises(VggfeatError, match=r"not installed: pip install nvidia-nvimgcodec-cu13 nvidia-nvjpeg;"):
        check_options(torch.device("cuda"), random_vgg16, "fc7", "avg", "mean", "bf16", "short", False, "none", 3.0,
                      "auto", "nvimgcodec", "threads", "auto", "auto")
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    assert vggfeat.gpujpeg.install_command() == "pip install nvidia-nvimgcodec-cu12 nvidia-nvjpeg-cu12"


def test_a_decoder_that_cannot_start_stops_the_run_saying_why(tmp_path, monkeypatch):
    def cannot_start(device):
        raise RuntimeError("no JPEG engine answered")

    monkeypatch.setattr(vggfeat.reading, "BatchDecoder", cannot_start)
    write_rgb(tmp_path / "a.jpg", 40, 60, fmt="JPEG")
    with pytest.raises(VggfeatError, match="nvImageCodec cannot decode on cpu: no JPEG engine answered; use --decoder torchvision"):
        decoded("nvimgcodec", [tmp_path / "a.jpg"])
