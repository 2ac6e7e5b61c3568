"""Decode JPEG batches on a GPU with NVIDIA's nvImageCodec (``--decoder nvimgcodec``): on the
hardware JPEG engines of the GPUs that have them (A100, H100, H200 and their kin), which take
neither CUDA cores from the network nor CPU time from the host; with CUDA on other GPUs, and for
files the engines do not decode (progressive JPEGs, say).

nvImageCodec is optional and not installed with vggfeat: :func:`install_command` says what to
install for this torch's CUDA. As with ``--decoder nvjpeg``, only the files that
:func:`vggfeat.jpeg.read_jpeg` passes come here, and a file the decoder rejects comes back as None
for PIL to decode or refuse: one bad file never fails its batch.

On the host (a CPU ``device``) the same decoder runs nvImageCodec's libjpeg-turbo backend: PIL's
pixels exactly. vggfeat offers it only on a GPU (on a CPU ``--decoder torchvision`` is the same
thing); the tests use it to check this module without one.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import tempfile
from types import ModuleType

import numpy as np
import torch

# In order of preference, each image to the first that can decode it: the hardware engines, then
# CUDA (with the Huffman decoding on the GPU, then on the CPU).
GPU_BACKENDS = ("HW_GPU_ONLY", "GPU_ONLY", "HYBRID_CPU_GPU")
# Chroma upsampled by interpolation, as libjpeg-turbo (and so PIL) does, rather than by repetition:
# pixels closer to PIL's, and to the descriptors of the CPU's decoders.
OPTIONS = ":fancy_upsampling=1"


@functools.cache
def library() -> ModuleType | None:
    """``nvidia.nvimgcodec``, or None where it is not installed or cannot load."""
    # Its logger would print a warning for each file it rejects (PIL then decides); a user's own
    # setting is kept.
    os.environ.setdefault("PYNVIMGCODEC_VERBOSITY", "0")
    with _stderr_dropped():  # it says on import, whatever the verbosity, which of its codecs it lacks
        try:
            from nvidia import nvimgcodec
        except (ImportError, OSError, RuntimeError):
            return None
    return nvimgcodec


def version() -> str | None:
    """nvImageCodec's version, or None where it is not installed."""
    nvimgcodec = library()
    return None if nvimgcodec is None else f"nvImageCodec {nvimgcodec.__version__}"


def install_command() -> str:
    """What to install for nvImageCodec, for the CUDA this torch was built with."""
    major = (torch.version.cuda or "13").split(".")[0]
    nvjpeg = "nvidia-nvjpeg" if major == "13" else f"nvidia-nvjpeg-cu{major}"
    return f"pip install nvidia-nvimgcodec-cu{major} {nvjpeg}"


class BatchDecoder:
    """``decoder(datas)``: JPEG files' bytes (uint8 tensors on the host) decoded in one batch into
    RGB uint8 [3, H, W] tensors on ``device``, None for a file it rejects.

    On a GPU it runs on the current stream: the caller waits for that stream before it uses the
    pixels. One per thread: a decoder holds its engines' state and is not shared.
    """

    def __init__(self, device: torch.device) -> None:
        nvimgcodec = library()
        if nvimgcodec is None:
            raise RuntimeError(f"nvImageCodec is not installed: {install_command()}")
        on_gpu = device.type == "cuda"
        # Its index, resolved once: the images are made on that device, and the stream they are
        # decoded (and copied) on is that device's current one (see __call__).
        self.device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index) \
            if on_gpu else device
        kinds = GPU_BACKENDS if on_gpu else ("CPU_ONLY",)
        try:
            self._decoder = nvimgcodec.Decoder(
                device_id=self.device.index if on_gpu else nvimgcodec.NVIMGCODEC_DEVICE_CPU_ONLY,
                backends=[nvimgcodec.Backend(getattr(nvimgcodec.BackendKind, kind)) for kind in kinds],
                options=OPTIONS,
            )
            # Planar RGB is the network's [3, H, W]; EXIF orientations never come here (read_jpeg).
            self._params = nvimgcodec.DecodeParams(apply_exif_orientation=False, color_spec=nvimgcodec.ColorSpec.SRGB,
                                                   sample_format=nvimgcodec.SampleFormat.P_RGB)
        except TypeError as error:
            # An older nvImageCodec's bindings refuse an argument (DecodeParams without sample_format,
            # say) with pybind's TypeError: said as a decoder that cannot start, which the reader
            # reports ("cannot decode ...; use --decoder torchvision") rather than a traceback.
            first = (str(error).strip().splitlines() or [""])[0]
            raise RuntimeError(f"{version()} is too old for vggfeat ({first}); upgrade it: "
                               f"{install_command().replace('pip install', 'pip install -U', 1)}") from error

    def __call__(self, datas: list[torch.Tensor]) -> list[torch.Tensor | None]:
        encoded = [data.numpy() for data in datas]
        if self.device.type != "cuda":
            images = _one_per_file(self._decoder.decode(encoded, params=self._params), len(datas))
            return [None if image is None else torch.from_numpy(np.asarray(image.cpu())) for image in images]
        stream = torch.cuda.current_stream(self.device)
        images = _one_per_file(self._decoder.decode(encoded, params=self._params, cuda_stream=stream.cuda_stream),
                               len(datas))
        # Copies that PyTorch owns, not the images themselves. DLPack would share nvImageCodec's
        # memory, which it allocated with cudaMallocAsync on ``stream`` and frees with cudaFreeAsync
        # on ``stream`` as soon as the tensor dies; but the network uses the pixels on another stream
        # (resizing, queued ahead of the GPU), and record_stream, which keeps PyTorch's own memory
        # from being reused under such work, does nothing for memory PyTorch did not allocate:
        # pixels dropped with their chunk could be overwritten before the resizes read them (wrong
        # descriptors, silently). Each clone is queued on ``stream`` too (the current stream of the
        # images' device, this one), so it reads the decoded pixels after the decoding and before
        # the free that the images' end queues there behind it.
        return [None if image is None else torch.from_dlpack(image).clone() for image in images]


def _one_per_file(images: list, files: int) -> list:
    """The decoder's images, checked to be one per file. Some nvImageCodec releases leave out an
    image they failed to decode rather than give None for it: paired with the files by position,
    every later file would get its neighbour's pixels. A batch short of images raises, so that its
    files are decoded again one by one (:func:`vggfeat.jpeg.decode_jpegs`); a single file without
    its image failed (None: PIL decides)."""
    images = list(images)
    if len(images) == files:
        return images
    if files == 1 and not images:
        return [None]
    raise RuntimeError(f"nvImageCodec decoded {len(images)} images of {files} files")


@contextlib.contextmanager
def _stderr_dropped():
    """What the process writes to its standard error (file descriptor 2, where C libraries print)
    dropped, but shown if the block raises."""
    try:
        saved = os.dup(2)
    except OSError:  # no standard error to redirect
        yield
        return
    with tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            os.write(2, captured.read())
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
