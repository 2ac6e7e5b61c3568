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
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import vggfeat.gpujpeg
import vggfeat.reading
from imagefiles import write_bad_files, write_gray, write_odd_files, write_rgb, write_truncated_jpeg
from vggfeat import Extractor, ImageError, VggfeatError
from vggfeat.decode import DEFAULT_MAX_PIXELS, decode_image
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


# --------------------------------------------------------------------------- a stand-in for nvImageCodec
# What vggfeat does with nvImageCodec's results, checked on every run (nvImageCodec installed or not, GPU
# or not): a module with its names, whose decoder decodes with PIL.


class FakeImage:
    """An image as nvImageCodec's decoder returns it: planar RGB pixels [3, H, W], on the host (``cpu``)
    and as DLPack (the GPU's images are read so). ``pixels``: the decoder's own buffer."""

    def __init__(self, pixels: torch.Tensor) -> None:
        self.pixels = pixels

    def cpu(self) -> np.ndarray:
        return self.pixels.numpy()

    def __dlpack__(self, **options):
        return self.pixels.__dlpack__(**options)

    def __dlpack_device__(self):
        return self.pixels.__dlpack_device__()


def fake_nvimgcodec(fails=lambda height, width: False, leaves_out: bool = False, decode_params=None):
    """A stand-in for ``nvidia.nvimgcodec``; its ``calls`` record each decode's files, CUDA stream and
    images given. It fails an image of a size that ``fails`` names: None in its place, or with
    ``leaves_out`` no image at all, as some releases of nvImageCodec do (their list is then shorter)."""
    import io

    from PIL import Image

    calls = []

    class Decoder:
        def __init__(self, device_id, backends, options):
            self.device_id = device_id

        def decode(self, encoded, params, cuda_stream=None):
            images = []
            for data in encoded:
                with Image.open(io.BytesIO(data.tobytes())) as image:
                    rgb = np.asarray(image.convert("RGB"))
                if fails(*rgb.shape[:2]):
                    if not leaves_out:
                        images.append(None)
                    continue
                images.append(FakeImage(torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))))
            calls.append(dict(files=len(encoded), cuda_stream=cuda_stream, images=images))
            return images

    names = ("HW_GPU_ONLY", "GPU_ONLY", "HYBRID_CPU_GPU", "CPU_ONLY")
    return SimpleNamespace(
        __version__="0.9.0", calls=calls, Decoder=Decoder, Backend=lambda kind: kind,
        BackendKind=SimpleNamespace(**{name: name for name in names}), NVIMGCODEC_DEVICE_CPU_ONLY=-99,
        DecodeParams=decode_params or (lambda **params: params), ColorSpec=SimpleNamespace(SRGB="SRGB"),
        SampleFormat=SimpleNamespace(P_RGB="P_RGB"))


def jpeg_bytes(path) -> torch.Tensor:
    return torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)


def test_a_gpus_decoded_pixels_are_pytorchs_own_copies_made_on_the_decoding_stream(tmp_path, monkeypatch):
    """nvImageCodec allocates its images' GPU memory itself (cudaMallocAsync) and frees it on its
    stream once they are dropped; record_stream, which keeps PyTorch's memory from reuse while
    another stream's work still reads it, does nothing for it. So the pixels handed on must be
    copies that PyTorch owns, not views of the decoder's buffers. Here on the CPU: the decoder's
    stream is the current one of the decoding device, and no pixels share the decoder's memory."""
    nvimgcodec = fake_nvimgcodec()
    monkeypatch.setattr(vggfeat.gpujpeg, "library", lambda: nvimgcodec)
    asked = []

    def current_stream(device=None):
        asked.append(device)
        return SimpleNamespace(cuda_stream=0x5EED)

    monkeypatch.setattr(torch.cuda, "current_stream", current_stream)
    paths = [tmp_path / f"{i}.jpg" for i in range(3)]
    for i, path in enumerate(paths):
        write_rgb(path, 40 + i, 60, seed=i, fmt="JPEG")
    decoder = BatchDecoder(torch.device("cuda", 1))
    pixels = decoder([jpeg_bytes(path) for path in paths])
    (call,) = nvimgcodec.calls
    assert call["cuda_stream"] == 0x5EED and asked == [torch.device("cuda", 1)]
    for got, image in zip(pixels, call["images"], strict=True):
        assert torch.equal(got, image.pixels)
        assert got.untyped_storage().data_ptr() != image.pixels.untyped_storage().data_ptr(), "the decoder's memory"


def test_a_decoder_that_leaves_out_a_failed_image_shifts_no_file_onto_its_neighbours(tmp_path, monkeypatch):
    """Some nvImageCodec releases leave an image they fail on out of their list rather than give
    None for it: paired with the files by position, each later file would get its neighbour's
    pixels. The batch is decoded again file by file; the failed file, alone, has no image, and PIL
    decodes it."""
    nvimgcodec = fake_nvimgcodec(fails=lambda height, width: height == 61, leaves_out=True)
    monkeypatch.setattr(vggfeat.gpujpeg, "library", lambda: nvimgcodec)
    paths = [tmp_path / f"{i}.jpg" for i in range(5)]
    for i, path in enumerate(paths):
        write_rgb(path, 60 + i, 70 + i, seed=i, fmt="JPEG")
    for path, pixels in zip(paths, decoded("nvimgcodec", paths), strict=True):
        pixels = pixels.permute(1, 2, 0).numpy() if isinstance(pixels, torch.Tensor) else pixels
        assert np.array_equal(pixels, decode_image(path)), path.name
    assert [call["files"] for call in nvimgcodec.calls] == [5, 1, 1, 1, 1, 1], "the batch, then file by file"
    assert BatchDecoder(torch.device("cpu"))([jpeg_bytes(paths[1])]) == [None]  # an empty list: it failed


def test_an_nvimgcodec_too_old_for_its_parameters_stops_the_run_saying_so(tmp_path, monkeypatch):
    """An older nvImageCodec's DecodeParams takes no sample_format: pybind's TypeError, said as a
    decoder that cannot start (with what to do), not a traceback."""
    def old_params(**params):
        if "sample_format" in params:
            raise TypeError("__init__(): incompatible constructor arguments. The following argument types are "
                            "supported:\n    1. DecodeParams(apply_exif_orientation: bool = True)")
        return params

    monkeypatch.setattr(vggfeat.gpujpeg, "library", lambda: fake_nvimgcodec(decode_params=old_params))
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    write_rgb(tmp_path / "a.jpg", 40, 60, fmt="JPEG")
    with pytest.raises(VggfeatError, match=r"^nvImageCodec cannot decode on cpu: nvImageCodec 0\.9\.0 is too old for "
                                           r"vggfeat \(__init__\(\): incompatible constructor arguments\. The following "
                                           r"argument types are supported:\); upgrade it: pip install -U "
                                           r"nvidia-nvimgcodec-cu13 nvidia-nvjpeg; use --decoder torchvision$"):
        decoded("nvimgcodec", [tmp_path / "a.jpg"])


def test_any_batched_decoder_short_of_images_leaves_its_batch_to_pil(tmp_path, monkeypatch):
    """The reader's own check, whichever decoder: a batch whose results are fewer than its files
    goes to PIL whole, rather than each file after the missing one getting its neighbour's pixels."""
    real = vggfeat.reading.decode_jpegs

    def leaving_one_out(jpegs, device, decode=None):
        return real(jpegs, device, decode)[1:]

    monkeypatch.setattr(vggfeat.reading, "decode_jpegs", leaving_one_out)
    paths = [tmp_path / f"{i}.jpg" for i in range(4)]
    for i, path in enumerate(paths):
        write_rgb(path, 40 + 10 * i, 50, seed=i, fmt="JPEG")
    for path, pixels in zip(paths, decoded("torchvision", paths), strict=True):
        assert isinstance(pixels, np.ndarray) and np.array_equal(pixels, decode_image(path)), path.name
