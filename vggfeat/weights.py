"""Weights: torchvision's VGG with ImageNet, local-file or seeded random parameters.

``"imagenet"`` goes through torchvision's weights API (downloaded once into torch's hub cache, then
reused); a path loads a torchvision-layout state dict (``.pth`` with ``weights_only=True``, or
``.safetensors``); ``"random"`` draws them from a seed as torchvision initialises a VGG, for smoke
tests only.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import urllib.error
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from safetensors import SafetensorError
from torch import nn
from torchvision.models import VGG

from .choices import ARCHITECTURES
from .errors import VggfeatError, not_a_file


@dataclass(frozen=True)
class WeightsInfo:
    """Which parameters a network holds, as recorded in output files."""

    name: str  # "imagenet:VGG16_Weights.IMAGENET1K_V1", "file:vgg16.pth" or "random"
    sha256: str  # of the parameters themselves (see state_dict_sha256), not of a file
    seed: int | None = None  # for "random"

    @property
    def is_random(self) -> bool:
        return self.name == "random"


def load_vgg(model: str, weights: str | Path = "imagenet", seed: int = 0) -> tuple[VGG, WeightsInfo]:
    """Build torchvision's ``model`` with the requested weights, frozen and in eval mode."""
    if model not in ARCHITECTURES:
        raise VggfeatError(f"unknown model {model!r}; choose one of {', '.join(ARCHITECTURES)}")
    weights = str(weights)
    if weights == "imagenet":
        vgg, name = _imagenet(model), f"imagenet:{_imagenet_enum(model)}"
    elif weights == "random":
        if not 0 <= seed < 2**32:  # a file records -1 for weights of no seed
            raise VggfeatError(f"seed {seed} of random weights: give one from 0 to 2**32 - 1")
        vgg, name = _random(model, seed), "random"
    else:
        vgg, name = _from_file(model, Path(weights)), f"file:{Path(weights).name}"
    vgg.eval().requires_grad_(False)
    info = WeightsInfo(name, state_dict_sha256(vgg.state_dict()), seed if weights == "random" else None)
    return vgg, info


def state_dict_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes, in name order.

    Hashing the parameters rather than a file makes the same weights hash alike whether they came
    from the torch cache, a ``.pth`` or a ``.safetensors`` file.
    """
    hasher = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous()
        hasher.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        # reshape(-1): a 0-dim tensor (BatchNorm's num_batches_tracked) cannot be viewed as bytes.
        hasher.update(tensor.reshape(-1).view(torch.uint8).numpy() if tensor.numel() else b"")
    return hasher.hexdigest()


def _random(model: str, seed: int) -> VGG:
    """torchvision's ``model`` initialised as ``VGG.__init__`` initialises it, from ``seed``, but
    without first running each layer's own initialisation, which that then replaces: the 100-million
    uniform draws for fc6 it skips are half of a build's 2.3 s on 2 cores."""
    with torch.device("meta"):
        vgg = torchvision.models.get_model(model, weights=None, init_weights=False)
    vgg.to_empty(device="cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in vgg.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
                module.reset_running_stats()
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)
    return vgg


def _imagenet_enum(model: str):
    return torchvision.models.get_model_weights(model).IMAGENET1K_V1


def imagenet_cache_file(model: str) -> Path:
    """Where torchvision keeps (or will keep) the ImageNet weights of ``model``."""
    url = _imagenet_enum(model).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _imagenet(model: str) -> VGG:
    enum = _imagenet_enum(model)
    if imagenet_cache_file(model).is_file():  # put there by hand, maybe: torch.hub checks only what it downloads
        _check_published(imagenet_cache_file(model), model, enum.url)
    try:
        # torchvision's weights API with torch.hub's cache, but weights_only=True: torch.hub would
        # otherwise unpickle whatever file sits in the cache.
        state_dict = enum.get_state_dict(progress=True, check_hash=True, weights_only=True)
    except Exception as error:  # noqa: BLE001 - see _imagenet_refusal
        raise _imagenet_refusal(model, enum.url, error) from None
    return _with_state_dict(model, state_dict, source=str(imagenet_cache_file(model)))


def _check_published(path: Path, model: str, url: str) -> None:
    """Refuse ``path``, named as torchvision's file of the ImageNet weights of ``model``
    (``vgg16-397923af.pth``), whose SHA-256 does not begin with the digits in that name: a damaged
    copy, or other weights under that name, which would be used as ImageNet's."""
    expected = torch.hub.HASH_REGEX.search(path.name)[1]
    hasher = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(2**20):
                hasher.update(block)
    except OSError:  # loading it says why it cannot be read
        return
    if not hasher.hexdigest().startswith(expected):
        delete = ", or delete it to download it again" if path == imagenet_cache_file(model) else ""
        raise VggfeatError(f"{path} is not the file torchvision publishes as the ImageNet weights of {model}: its SHA-256 "
                           f"begins {hasher.hexdigest()[:len(expected)]}, its name says {expected} (a damaged copy, or "
                           f"other weights under that name): fetch it again from {url}{delete}")


def _imagenet_refusal(model: str, url: str, error: Exception) -> VggfeatError:
    """Why the ImageNet weights of ``model`` did not load, and what to do: the download failed
    (offline, say), or came damaged (torch.hub then keeps nothing), or the cached file is there
    but cannot be read (another user's, say) or is damaged, or the cache cannot be written."""
    cache = imagenet_cache_file(model)
    fetch = (f"If this machine is offline, fetch that file elsewhere and put it at {cache}, or pass its path as "
             f"weights= (--weights /path/to/{cache.name}); weights='random' (--weights random) runs without them "
             "(smoke tests only)")
    if isinstance(error, (urllib.error.URLError, ConnectionError, TimeoutError)):
        return VggfeatError(f"could not download the ImageNet weights of {model} from {url} ({_short(error)}). {fetch}")
    if not cache.is_file() and "hash" in str(error):  # torch.hub's check of the download, which it then deleted
        return VggfeatError(f"the download of the ImageNet weights of {model} from {url} came damaged or incomplete "
                            f"({_short(error)}); nothing was kept: run again. {fetch}")
    if isinstance(error, OSError) and cache.exists():  # not read: a permission, a folder of that name
        return VggfeatError(f"cannot read the ImageNet weights of {model} at {cache} ({_short(error)}): make it readable "
                            "to this user, or point TORCH_HOME at a cache of your own")
    if isinstance(error, OSError):  # the cache's folder cannot be made or written
        return VggfeatError(f"cannot keep the ImageNet weights of {model} in torch's cache, {cache.parent} "
                            f"({_short(error)}): point TORCH_HOME at a folder you can write, or pass the file as weights= "
                            "(--weights FILE)")
    reason = _refused_pickle(error) if isinstance(error, pickle.UnpicklingError) else _unreadable(error)
    return VggfeatError(f"the ImageNet weights of {model} failed to load ({reason}); if {cache} is damaged, delete it to "
                        "download it again")


def _from_file(model: str, path: Path) -> VGG:
    if not path.is_file():
        raise VggfeatError(f"{not_a_file(path, 'weights file')} (weights=, --weights: 'imagenet', 'random' or a file)")
    published = _imagenet_enum(model).url
    if path.name == os.path.basename(published):  # the offline user's copy of torchvision's file
        _check_published(path, model, published)
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state_dict = load_file(str(path))
        else:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise VggfeatError(f"cannot read weights from {path}: {_refused_pickle(error)}") from None
    except Exception as error:  # noqa: BLE001 - see _unreadable
        raise VggfeatError(
            f"cannot read weights from {path}: {_unreadable(error)} "
            "(expected a torchvision state dict saved with torch.save, or a .safetensors file)"
        ) from None
    if not isinstance(state_dict, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                      for k, v in state_dict.items()):
        inside = next((key for key in ("state_dict", "model") if isinstance(state_dict, Mapping) and key in state_dict), None)
        held = (f": it is a training checkpoint, its weights under {inside!r}: save them alone with "
                f"torch.save(checkpoint[{inside!r}], path)") if inside else " (torchvision layout, e.g. features.0.weight)"
        raise VggfeatError(f"{path} does not hold a state dict of tensors{held}")
    if state_dict and all(name.startswith("module.") for name in state_dict):
        raise VggfeatError(f"the weights in {path} are named 'module.…' (saved from DataParallel or DistributedDataParallel):"
                           " save the network's own, torch.save(model.module.state_dict(), path)")
    return _with_state_dict(model, state_dict, source=str(path))


def _with_state_dict(model: str, state_dict: Mapping[str, torch.Tensor], source: str) -> VGG:
    # A fine-tuned fc8 may have any number of classes; fc6/fc7, which vggfeat uses, may not differ.
    fc8 = state_dict.get("classifier.6.weight")
    num_classes = fc8.shape[0] if fc8 is not None and fc8.ndim == 2 else 1000
    with torch.device("meta"):  # no random initialisation of parameters about to be replaced
        vgg = torchvision.models.get_model(model, weights=None, num_classes=num_classes)
    _check_values(state_dict, vgg.state_dict(), f"weights in {source} do not fit {model}")
    # Weights saved as float16 (half the file), bfloat16 or float64 are held as float32, exactly
    # but for float64's: the network runs in the precision asked for (--precision), not the file's.
    state_dict = {name: value.float() if value.is_floating_point() else value for name, value in state_dict.items()}
    try:
        vgg.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as error:
        raise VggfeatError(f"weights in {source} do not fit {model}: {_short(error, 300)}") from None
    broken = next((name for name, value in state_dict.items() if value.is_floating_point() and not value.isfinite().all()),
                  None)
    if broken is not None:  # every descriptor would be NaN, each image recorded as failed for it
        raise VggfeatError(f"weights in {source} hold NaN or infinite values ({broken}): a training that diverged, or a "
                           "damaged file")
    return vgg


def _check_values(state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], refusal: str) -> None:
    """Refuse, before any is copied (a 10 KB file's tensor can be a view of terabytes), a tensor of
    ``state_dict`` whose shape differs from the network's (``expected``), or whose values are not
    real numbers (a counter of BatchNorm's excepted)."""
    for name, value in state_dict.items():
        if value.numel() * value.element_size() > value.untyped_storage().nbytes():
            raise VggfeatError(f"{refusal}: {name} is a view of fewer values than its shape {tuple(value.shape)} holds "
                               "(an expanded tensor): save the weights with each tensor made whole (.contiguous())")
        if name in expected and tuple(value.shape) != tuple(expected[name].shape):
            raise VggfeatError(f"{refusal}: {name} is {tuple(value.shape)}, the network's {tuple(expected[name].shape)}")
        if name in expected and not value.is_floating_point() and not expected[name].dtype == value.dtype == torch.int64:
            raise VggfeatError(f"{refusal}: {name} holds {str(value.dtype).removeprefix('torch.')} values, where the "
                               "network's are real numbers")


def _refused_pickle(error: pickle.UnpicklingError) -> str:
    """What torch.load(weights_only=True) refused, in a line. torch's own message says how to
    load the file by running its pickled code, which vggfeat never does."""
    text = " ".join(str(error).split())
    found = re.search(r"[Uu]nsupported (?:global: )?GLOBAL (\S+)", text)  # torch < 2.9's words, and later ones
    if found:
        return (f"it holds Python objects ({found[1]}), not only tensors, and vggfeat runs no pickled code: save the "
                "model's weights with torch.save(model.state_dict(), path)")
    found = re.search(r"WeightsUnpickler error: (.+?)(?: Check the documentation|$)", text)
    return (f"not a file of tensors ({_short(found[1]) if found else _short(error)}): damaged, or not a checkpoint "
            "(expected a torchvision state dict saved with torch.save, or a .safetensors file)")


def _unreadable(error: Exception) -> str:
    """Why a weights file could not be read, in a line. Reading a damaged file, torch.load (its
    legacy format most) and safetensors raise errors of any kind: IndexError, struct.error,
    AssertionError, KeyError, AttributeError from its parts read as what they are not."""
    if isinstance(error, (RuntimeError, OSError, ValueError, EOFError, SafetensorError)):  # their messages are words
        return _short(error)
    return f"damaged ({type(error).__name__} in reading it: {_short(error)})"


def _short(error: BaseException | str, limit: int = 200) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"
