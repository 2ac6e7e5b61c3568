"""The options of an extraction: checked before anything loads, and resolved for the device.

A typo in an option should cost nothing: :func:`check_options` refuses bad values and
combinations before any weights load (a download, perhaps). ``auto`` choices are resolved here,
from the device and the libraries installed.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from .aggregate import AGGREGATIONS
from .choices import ARCHITECTURES, AUTOTUNES, DECODE_IN, DECODERS, PRECISIONS
from . import gpujpeg
from .errors import VggfeatError, check_choice
from .host import cpu_flags
from .jpeg import decoder_library
from .network import MIN_INPUT_SIDE, DenseVGG, layer_dims
from .pooling import POOLINGS, RETRIEVAL_POOLINGS
from .reading import GPU_DECODERS
from .resize import MIN_RESIZED_SIDE, RESIZE_SIDES

NORMALIZATIONS = ("auto", "none", "l2")


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 where the GPU computes it natively (Ampere, compute capability 8.0, and later;
    older GPUs only emulate it), fp32 elsewhere. bf16 keeps fp32's range, so activations cannot
    overflow as they can in fp16."""
    if precision != "auto":
        return precision
    if device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0):
        return "bf16"
    return "fp32"


def cpu_bf16() -> str:
    """How this CPU computes bf16: ``amx`` (Intel Xeon of the 4th generation and later), whose
    tiles compute bf16 matrix products: the network 3-4x as fast as in fp32; ``avx512_bf16`` (AMD
    Zen 4 and later, Intel Cooper Lake), AVX-512's bf16 dot products: 2.0x on an AMD EPYC;
    ``converted`` on other x86 CPUs, where bf16 is converted from and to fp32: 0.15-0.40x
    (RESULTS.md); ``unknown`` elsewhere (ARM's own bf16 instructions, untried). ``auto`` precision
    stays fp32 on a CPU; the CLI says which way bf16 would go."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return "unknown"
    flags = cpu_flags()
    if flags is not None:  # Linux lists AMX where both the CPU and the kernel support it
        return "amx" if "amx_bf16" in flags else "avx512_bf16" if "avx512_bf16" in flags else "converted"
    has_amx = getattr(torch.cpu, "_is_amx_tile_supported", None)  # elsewhere, torch's private check, if it has one
    return "amx" if has_amx is not None and has_amx() else "unknown"  # (without AMX, AVX512-BF16 or not)


def resolve_decoder(decoder: str) -> str:
    """``auto``: JPEGs in batches by libjpeg-turbo where a library can (PIL's pixels, at less host
    time per image: 1.7x the images/s end to end on an H100, RESULTS.md), else PIL."""
    if decoder != "auto":
        return decoder
    return "pil" if decoder_library() == "none" else "torchvision"


def decoder_library_of(decoder: str) -> str:
    """The library, with its version, that ``decoder`` (not ``pil``) decodes JPEGs with."""
    if decoder == "nvimgcodec":
        return gpujpeg.version() or "none"
    return decoder_library()


def check_options(
    device: torch.device, model: str | DenseVGG, layer: str, pooling: str, aggregate: str, precision: str,
    resize_side: str, center_crop: bool, normalize: str, gem_p: float, batch_size: int | str | None, decoder: str,
    decode_in: str, autotune: str, compile: str, workers: int | None = None,
) -> None:
    """Refuse bad options, and combinations of them, with a message saying what to do instead."""
    check_choice("pooling", pooling, POOLINGS + RETRIEVAL_POOLINGS)
    check_choice("aggregate", aggregate, AGGREGATIONS)
    check_choice("precision", precision, PRECISIONS)
    check_choice("resize side", resize_side, RESIZE_SIDES)
    check_choice("normalize", normalize, NORMALIZATIONS)
    if not gem_p > 0:
        raise VggfeatError(f"the GeM power p must be positive, got {gem_p}")
    if precision in ("tf32", "fp16") and device.type != "cuda":
        raise VggfeatError(f"precision={precision!r} (--precision {precision}) needs a CUDA device; use fp32 or bf16 on the CPU")
    check_choice("decoder", decoder, ("auto", *DECODERS))
    check_choice("autotune", autotune, AUTOTUNES)
    check_choice("compile", compile, AUTOTUNES)
    check_choice("place of decoding", decode_in, DECODE_IN)
    if decoder in GPU_DECODERS and decode_in == "processes":
        raise VggfeatError(f"decoder={decoder!r} (--decoder {decoder}) decodes on the GPU, from this process: use "
                           "decode_in='threads' (--decode-in threads)")
    if decoder in GPU_DECODERS and device.type != "cuda":
        raise VggfeatError(f"decoder={decoder!r} (--decoder {decoder}) decodes on a CUDA device; use torchvision or pil "
                           "on the CPU")
    if decoder == "nvimgcodec" and gpujpeg.version() is None:
        raise VggfeatError(f"decoder='nvimgcodec' (--decoder nvimgcodec) needs NVIDIA's nvImageCodec, which is not installed: "
                           f"{gpujpeg.install_command()}; or use nvjpeg or torchvision")
    if decoder in ("torchvision", "nvjpeg") and decoder_library() == "none":
        raise VggfeatError(f"decoder={decoder!r} (--decoder {decoder}) needs TorchCodec (pip install torchcodec) or a "
                           "torchvision that decodes JPEG batches (0.19 and later, before its removal of "
                           "torchvision.io.decode_jpeg); or use pil")
    if batch_size not in (None, "auto") and (isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer))
                                             or batch_size < 1):
        raise VggfeatError(f"batch size must be 'auto' or at least 1, got {batch_size!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise VggfeatError(f"workers must be None (as many as pay) or at least 1, got {workers!r}")
    if isinstance(model, str) and model not in ARCHITECTURES:
        raise VggfeatError(f"unknown model {model!r}; choose one of {', '.join(ARCHITECTURES)}")
    layers = model.layer_dims if isinstance(model, DenseVGG) else layer_dims(model)
    if layer not in layers:
        name = model.arch if isinstance(model, DenseVGG) else model
        raise VggfeatError(f"unknown layer {layer!r} for {name}; choose one of {', '.join(layers)}")
    if center_crop and resize_side == "long":
        raise VggfeatError("center_crop (--center-crop) takes the central 224x224 of the image resized by its short "
                           "side; it does not combine with resize_side='long' (--resize-side long)")
    # Refused as a combination rather than failing image by image: with the long side at Q, any
    # image more elongated than Q:224 would come out too small for fc6's 7x7 window.
    if resize_side == "long" and layer.startswith("fc"):
        raise VggfeatError(f"resize_side='long' (--resize-side long) works with conv and pool layers (e.g. conv5_3), "
                           f"not {layer}: fc6-fc8 need the short side >= {MIN_INPUT_SIDE} after resizing")
    if "gem" in (pooling, aggregate) and layer == "fc8":
        raise VggfeatError("gem pooling/aggregation needs non-negative activations; fc8 class scores are not")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise VggfeatError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise VggfeatError(f"device {name} asked for, but CUDA is not available here; use device='cpu' (--device cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise VggfeatError(f"device {name} asked for, but this machine has {count} GPU(s): cuda:0 to cuda:{count - 1}")
    return device


def default_layer(layer: str | None, pooling: str) -> str:
    """The layer described when none is given: conv5_3 for the retrieval poolings, else fc7."""
    return layer or ("conv5_3" if pooling in RETRIEVAL_POOLINGS else "fc7")


def check_scales(scales: Sequence[int], layer: str | None = None, center_crop: bool = False) -> tuple[int, ...]:
    """``scales`` as ints, refused if empty, not whole numbers, repeated or too small for ``layer`` (if given)."""
    if isinstance(scales, (str, bytes)) or not isinstance(scales, Iterable):  # "224" would be scales 2, 2 and 4
        raise VggfeatError(f"scales are a sequence of sizes such as [256, 384, 512], got {scales!r}")
    if any(isinstance(q, bool) or not float(q).is_integer() for q in scales):  # 224.9 would be 224, silently
        raise VggfeatError(f"scales are whole numbers of pixels, got {', '.join(map(str, scales))}")
    scales = tuple(int(q) for q in scales)
    if not scales:
        raise VggfeatError("give at least one scale")
    if len(set(scales)) != len(scales):
        raise VggfeatError(f"scales repeat: {','.join(map(str, scales))}")
    smallest = min(scales)
    if smallest < MIN_RESIZED_SIDE:
        raise VggfeatError(f"scale {smallest} is below {MIN_RESIZED_SIDE}, the network's total stride: "
                           f"pool5 would have no map to pool")
    if smallest < MIN_INPUT_SIDE and center_crop:
        raise VggfeatError(f"scale {smallest} is below {MIN_INPUT_SIDE}: center_crop (--center-crop) takes the central "
                           f"{MIN_INPUT_SIDE}x{MIN_INPUT_SIDE}, so Q must be >= {MIN_INPUT_SIDE}")
    # fc6 is a 7x7 window on the pool5 map; the conv and pool layers take any map of 1x1 or more.
    if smallest < MIN_INPUT_SIDE and layer is not None and layer.startswith("fc"):
        raise VggfeatError(f"scale {smallest} is below {MIN_INPUT_SIDE}: {layer} needs fc6's 7x7 window on the "
                           f"pool5 map, so Q must be >= {MIN_INPUT_SIDE} (conv and pool layers, such as conv5_3, "
                           f"take Q >= {MIN_RESIZED_SIDE})")
    return scales
