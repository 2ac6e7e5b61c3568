"""Weights: local files (.pth, .safetensors), refusal of pickled code, ImageNet cache and offline use.

VGG11 stands in wherever the architecture does not matter: its state dict is the cheapest to save.
Big temporary files (~0.5 GB each) are deleted as soon as their tests are done.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import shutil
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import pytest
import torch
import torch.hub
import torchvision

import vggfeat.weights
from vggfeat import VggfeatError
from vggfeat.weights import imagenet_cache_file, load_vgg, state_dict_sha256


@pytest.fixture(scope="module")
def vgg11():
    """(torchvision VGG11 with seeded random weights, its WeightsInfo)."""
    return load_vgg("vgg11", "random", 0)


@pytest.fixture(scope="module")
def saved_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def vgg11_pth(vgg11, saved_dir):
    path = saved_dir / "vgg11-random.pth"
    torch.save(vgg11[0].state_dict(), path)
    return path


def params_equal(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------- random


def test_random_is_seeded_and_recorded(vgg11):
    vgg, info = vgg11
    assert info.name == "random" and info.is_random and info.seed == 0
    assert info.sha256 == state_dict_sha256(vgg.state_dict()) and len(info.sha256) == 64
    assert not vgg.training and not any(p.requires_grad for p in vgg.parameters())
    # Another seed gives other weights, and seeding leaves the caller's random stream alone.
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    _, other_seed = load_vgg("vgg11", "random", 1)
    assert torch.equal(torch.rand(3), expected)
    assert other_seed.sha256 != info.sha256
    for seed in (-1, 2**32):  # -1 is what a file records for weights of no seed
        with pytest.raises(VggfeatError, match=f"seed {seed} of random weights: give one from 0 to 2"):
            load_vgg("vgg11", "random", seed)


def test_random_weights_are_drawn_as_torchvision_draws_them():
    """Each parameter from the distribution of torchvision's own initialisation (kaiming normal
    convolutions, N(0, 0.01) fully connected layers, zero biases, BatchNorm at 1 and 0), and the
    buffers as torchvision has them."""
    vgg, _ = load_vgg("vgg11_bn", "random", 0)
    torch.manual_seed(0)
    reference = torchvision.models.get_model("vgg11_bn", weights=None).state_dict()
    ours = vgg.state_dict()
    assert ours.keys() == reference.keys()
    for name, tensor in ours.items():
        expected = reference[name]
        assert tensor.shape == expected.shape and tensor.dtype == expected.dtype, name
        if tensor.dim() < 2:  # biases, BatchNorm's parameters and statistics
            assert torch.equal(tensor, expected), name
        else:
            spread = 5 / tensor.numel() ** 0.5  # five standard errors of a mean (of a std, about 1/sqrt(2))
            assert abs(tensor.mean()) < spread * expected.std(), name
            assert tensor.std() == pytest.approx(expected.std().item(), rel=spread), name


def test_batchnorm_models_hash():
    """BatchNorm's num_batches_tracked is a 0-dim int64 tensor: hashing must handle it."""
    vgg, info = load_vgg("vgg11_bn", "random", 0)
    assert "features.1.num_batches_tracked" in vgg.state_dict()
    assert info.sha256 == state_dict_sha256(vgg.state_dict())
    assert state_dict_sha256({"n": torch.tensor(5)}) != state_dict_sha256({"n": torch.tensor(6)})


def test_hash_covers_names_shapes_dtypes_and_values():
    base = {"a": torch.zeros(2, 3), "b": torch.ones(4)}
    digest = state_dict_sha256(base)
    assert digest == state_dict_sha256({"b": torch.ones(4), "a": torch.zeros(2, 3)})  # order-free
    assert digest != state_dict_sha256({"a": torch.zeros(3, 2), "b": torch.ones(4)})
    assert digest != state_dict_sha256({"a": torch.zeros(2, 3, dtype=torch.float64), "b": torch.ones(4)})
    assert digest != state_dict_sha256({"c": torch.zeros(2, 3), "b": torch.ones(4)})
    changed = {"a": torch.zeros(2, 3), "b": torch.ones(4)}
    changed["a"][1, 2] = 1e-30
    assert digest != state_dict_sha256(changed)


def test_unknown_model():
    with pytest.raises(VggfeatError, match="unknown model 'resnet50'.*vgg16"):
        load_vgg("resnet50", "random", 0)


# --------------------------------------------------------------------------- local files


def test_pth_file_loads_the_same_weights(vgg11, vgg11_pth):
    vgg, info = load_vgg("vgg11", vgg11_pth)
    assert info.sha256 == vgg11[1].sha256
    assert info.name == "file:vgg11-random.pth" and info.seed is None and not info.is_random
    assert params_equal(vgg, vgg11[0])
    assert not vgg.training


def test_safetensors_file_with_finetuned_fc8_loads(vgg11, saved_dir):
    """A .safetensors file loads with the weights_sha256 of its source, and a fine-tuned fc8 (10
    classes) is accepted: one ~0.5 GB file tests both."""
    from safetensors.torch import save_file

    state = dict(vgg11[0].state_dict())
    generator = torch.Generator().manual_seed(2)
    state["classifier.6.weight"] = torch.randn(10, 4096, generator=generator)
    state["classifier.6.bias"] = torch.randn(10, generator=generator)
    path = saved_dir / "finetuned.safetensors"
    save_file(state, str(path))
    try:
        vgg, info = load_vgg("vgg11", str(path))
    finally:
        path.unlink()
    assert info.name == "file:finetuned.safetensors" and info.seed is None
    assert vgg.classifier[6].out_features == 10
    assert torch.equal(vgg.classifier[6].weight, state["classifier.6.weight"])
    assert torch.equal(vgg.classifier[0].weight, state["classifier.0.weight"])  # fc6, used by vggfeat
    assert torch.equal(vgg.classifier[3].weight, state["classifier.3.weight"])  # fc7
    assert info.sha256 == state_dict_sha256(state) != vgg11[1].sha256


def test_a_float16_file_runs_in_float32_as_the_same_values_saved_as_float32(vgg11, saved_dir):
    """Weights saved with .half() (half the file) made the network compute in float16 on the CPU,
    its output file saying fp32. Also a .SAFETENSORS name in capitals: refused as damaged."""
    from safetensors.torch import save_file

    half = {name: value.half() for name, value in vgg11[0].state_dict().items()}
    path = saved_dir / "half.SAFETENSORS"
    save_file(half, str(path))
    try:
        vgg, info = load_vgg("vgg11", path)
    finally:
        path.unlink()
    assert {value.dtype for value in vgg.state_dict().values()} == {torch.float32}
    widened = {name: value.float() for name, value in half.items()}
    assert all(torch.equal(vgg.state_dict()[name], value) for name, value in widened.items())
    assert info.sha256 == state_dict_sha256(widened)  # as the same network's from a float32 file


@pytest.mark.parametrize("content, said", [
    ({"state_dict": {"features.0.weight": torch.zeros(1)}, "epoch": 3},
     "it is a training checkpoint, its weights under 'state_dict': save them alone with "
     "torch.save(checkpoint['state_dict'], path)"),
    ({"module.features.0.weight": torch.zeros(1)}, "are named 'module.…' (saved from DataParallel"),
])
def test_a_checkpoint_or_dataparallel_file_is_refused_saying_what_to_save(tmp_path, content, said):
    """Refused before as "does not hold a state dict" and "do not fit vgg11: Missing key(s)": no way out said."""
    torch.save(content, tmp_path / "checkpoint.pth")
    with pytest.raises(VggfeatError) as raised:
        load_vgg("vgg11", tmp_path / "checkpoint.pth")
    assert said in str(raised.value)


def test_other_architecture_is_refused(saved_dir):
    vgg19, _ = load_vgg("vgg19", "random", 0)
    path = saved_dir / "vgg19.pth"
    torch.save(vgg19.state_dict(), path)
    del vgg19
    try:
        with pytest.raises(VggfeatError) as raised:
            load_vgg("vgg16", path)
    finally:
        path.unlink()
    message = str(raised.value)
    assert str(path) in message and "do not fit vgg16" in message


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere.pth"
    with pytest.raises(VggfeatError, match="not found") as raised:
        load_vgg("vgg11", path)
    assert str(path) in str(raised.value)
    assert "(weights=, --weights: 'imagenet', 'random' or a file)" in str(raised.value)  # Extractor's name, and the CLI's


@pytest.mark.parametrize(
    "name, content",
    [
        ("garbage.pth", b"\x00\x01 not a checkpoint" * 50),
        ("garbage.safetensors", b"\x00\x01 not a checkpoint" * 50),
        ("empty.pth", b""),
    ],
)
def test_unreadable_file_is_refused(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(VggfeatError, match="cannot read weights") as raised:
        load_vgg("vgg11", path)
    assert str(path) in str(raised.value) and "weights_only" not in str(raised.value)


def _damaged_beyond_torchs_words() -> bytes:
    """A state dict in torch.save's legacy format with a byte changed, such that torch.load raises
    neither RuntimeError, OSError, ValueError, EOFError nor UnpicklingError but an error of its parts
    read as what they are not (AssertionError, KeyError, IndexError: found by tests/fuzz_inputs.py
    weights); the first such byte, looked for as torch.load reads it."""
    buffer = io.BytesIO()
    torch.save({"features.0.weight": torch.zeros(2), "features.0.bias": torch.ones(2)}, buffer,
               _use_new_zipfile_serialization=False)
    sound = buffer.getvalue()
    for at in range(len(sound)):
        damaged = sound[:at] + b"\0" + sound[at + 1:]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch's of an unusual pickle protocol, the byte being it
                torch.load(io.BytesIO(damaged), weights_only=True)
        except (RuntimeError, OSError, ValueError, EOFError, pickle.UnpicklingError):
            continue
        except Exception:  # noqa: BLE001 - what is looked for
            return damaged
    pytest.skip("this torch reads every such damage with an error of its own words")


def test_a_damaged_file_is_refused_in_a_line_whatever_torch_raises(tmp_path, empty_hub, monkeypatch):
    damaged = _damaged_beyond_torchs_words()
    (tmp_path / "damaged.pth").write_bytes(damaged)
    with pytest.raises(VggfeatError, match=r"^cannot read weights from .*damaged.pth: damaged \(\w+ in reading it: "):
        load_vgg("vgg11", tmp_path / "damaged.pth")
    published_in_the_cache(monkeypatch, tmp_path / "damaged.pth")  # as if damaged after its download
    with pytest.raises(VggfeatError, match=r"^the ImageNet weights of vgg11 failed to load \(damaged \(\w+ in reading it: "):
        load_vgg("vgg11", "imagenet")
    assert not empty_hub


@pytest.mark.parametrize(
    "content",
    [{"features.0.weight": 3}, {"state_dict": {"features.0.weight": torch.zeros(1)}, "epoch": 3}, [torch.zeros(1)],
     {1: torch.ones(1)}, {("features", 0): torch.ones(1)}],
)
def test_not_a_state_dict_is_refused(tmp_path, content):
    path = tmp_path / "checkpoint.pth"
    torch.save(content, path)
    with pytest.raises(VggfeatError, match="state dict"):
        load_vgg("vgg11", path)


def test_wrong_layout_state_dict_is_refused(tmp_path):
    path = tmp_path / "small.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, path)
    with pytest.raises(VggfeatError, match="do not fit vgg11"):
        load_vgg("vgg11", path)


def _vgg11_state(vgg11, name: str, value) -> dict:
    return {**vgg11[0].state_dict(), name: value}


@pytest.mark.parametrize("change, said", [
    # A 10 KB file whose fc8 is a view of one value as 16 TB: each copy (hash, float) would take it.
    (lambda w: w.expand(10**9, 4096), r"classifier.6.weight is a view of fewer values than its shape \(1000000000, 4096\)"),
    (lambda w: w.to(torch.complex64), "classifier.6.weight holds complex64 values, where the network's are real numbers"),
    (lambda w: w.to(torch.int32), "classifier.6.weight holds int32 values"),
    (lambda w: torch.ones(10, 5), r"classifier.6.weight is \(10, 5\), the network's \(10, 4096\)"),
])
def test_weights_of_the_wrong_kind_are_refused_before_they_are_copied(tmp_path, vgg11, change, said):
    path = tmp_path / "odd.pth"
    fc8 = vgg11[0].state_dict()["classifier.6.weight"]
    torch.save(_vgg11_state(vgg11, "classifier.6.weight", change(fc8[:1, :1].clone() if "view" in said else fc8)), path)
    with pytest.raises(VggfeatError, match=f"weights in {re.escape(str(path))} do not fit vgg11: {said}"):
        load_vgg("vgg11", path)


def test_weights_holding_nan_are_refused_naming_the_tensor(tmp_path, vgg11):
    """Taken, every image was recorded as failed for a NaN descriptor, said to be fp16's overflow."""
    weight = vgg11[0].state_dict()["features.3.weight"].clone()
    weight[0, 0, 0, 0] = float("nan")
    torch.save(_vgg11_state(vgg11, "features.3.weight", weight), tmp_path / "nan.pth")
    with pytest.raises(VggfeatError, match=r"hold NaN or infinite values \(features.3.weight\)"):
        load_vgg("vgg11", tmp_path / "nan.pth")


class LeavesMarker:
    """Unpickling this object opens (creates) a marker file: proof that pickled code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_marker_payload_works(tmp_path):
    """The payload below is real: plain unpickling does create the marker file."""
    marker = tmp_path / "control-marker"
    pickle.loads(pickle.dumps(LeavesMarker(marker))).close()
    assert marker.exists()


class RunsACommand:
    """Unpickling this object runs a shell command: a module torch blocks by name (its message differs)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


@pytest.mark.parametrize("how", ["torch.save", "pickle.dump", "os.system"])
def test_pickled_code_is_refused_and_never_runs(tmp_path, how):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    payload = {"features.0.weight": torch.zeros(64, 3, 3, 3),
               "extra": RunsACommand(marker) if how == "os.system" else LeavesMarker(marker)}
    if how != "pickle.dump":
        torch.save(payload, path)
    else:
        with open(path, "wb") as file:
            pickle.dump(payload, file, protocol=2)
    with pytest.raises(VggfeatError, match="cannot read weights") as raised:
        load_vgg("vgg11", path)
    assert str(path) in str(raised.value)
    assert not marker.exists(), "unpickling ran code from the weights file"
    # torch's message tells how to run the file's code; vggfeat's says what to save instead.
    assert re.search(r"it holds Python objects \(\S+\), not only tensors, and vggfeat runs no pickled code", str(raised.value))
    assert "weights_only" not in str(raised.value)


def test_a_whole_model_saved_is_refused_saying_to_save_its_state_dict(tmp_path, vgg11):
    torch.save(vgg11, tmp_path / "model.pth")
    with pytest.raises(VggfeatError) as raised:
        load_vgg("vgg11", tmp_path / "model.pth")
    assert str(raised.value) == (f"cannot read weights from {tmp_path / 'model.pth'}: it holds Python objects "
                                 "(torchvision.models.vgg.VGG), not only tensors, and vggfeat runs no pickled code: save "
                                 "the model's weights with torch.save(model.state_dict(), path)")


# --------------------------------------------------------------------------- ImageNet: cache and offline


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """torch.hub's directory moved to an empty folder, and every download failing (recorded)."""
    downloads: list[str] = []

    def offline(request, *args, **kwargs):
        downloads.append(getattr(request, "full_url", str(request)))
        raise urllib.error.URLError("network is unreachable (test)")

    monkeypatch.setattr(torch.hub, "urlopen", offline)  # what torch.hub.download_url_to_file calls
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    saved = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        yield downloads
    finally:
        torch.hub.set_dir(saved)


def published_in_the_cache(monkeypatch, file: Path) -> Path:
    """``file`` in torch's cache as torchvision's ImageNet weights of VGG11, as if torchvision
    published them under the hash in their name (``vgg11-<its first 8 hex digits>.pth``), which
    vggfeat checks: the cache's file, linked (or copied) there."""
    real = torchvision.models.VGG11_Weights.IMAGENET1K_V1

    class Published:
        url = f"{real.url.rsplit('-', 1)[0]}-{file_sha256(file)[:8]}.pth"

        def get_state_dict(self, **kwargs):  # as torchvision's Weights does
            return torch.hub.load_state_dict_from_url(self.url, **kwargs)

        def __str__(self):
            return str(real)

    monkeypatch.setattr(vggfeat.weights, "_imagenet_enum", lambda model: Published())
    cache = imagenet_cache_file("vgg11")
    cache.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(file, cache)
    except OSError:
        shutil.copyfile(file, cache)
    return cache


def file_sha256(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(2**20):
            hasher.update(block)
    return hasher.hexdigest()


def test_cache_file_follows_torch_hub_dir(empty_hub, tmp_path):
    path = imagenet_cache_file("vgg16")
    assert path.parent == tmp_path / "hub" / "checkpoints"
    assert path.name.startswith("vgg16-") and path.suffix == ".pth"
    assert imagenet_cache_file("vgg16_bn").name.startswith("vgg16_bn-")


def test_imagenet_offline_gives_a_clear_error(empty_hub):
    cache = imagenet_cache_file("vgg11")
    with pytest.raises(VggfeatError) as raised:
        load_vgg("vgg11", "imagenet")
    message = str(raised.value)
    assert empty_hub, "no download was attempted: the offline path was not exercised"
    assert str(cache) in message
    assert "--weights" in message and "offline" in message
    assert f"pass its path as weights= (--weights /path/to/{cache.name})" in message  # Extractor's name too
    assert not cache.exists()  # no broken or partial file left to be loaded next time
    assert not any(cache.parent.glob("*")) if cache.parent.exists() else True


def test_imagenet_loads_from_cache_without_download(empty_hub, vgg11, vgg11_pth, monkeypatch):
    """A file already in the cache is used, once its SHA-256 begins with the digits in its name
    (torch.hub checks them only as it downloads)."""
    cache = published_in_the_cache(monkeypatch, vgg11_pth)
    try:
        vgg, info = load_vgg("vgg11", "imagenet")
    finally:
        cache.unlink()  # ~0.5 GB: do not leave it in pytest's kept temporary folders
    assert not empty_hub, f"a download was attempted: {empty_hub}"
    assert info.name == "imagenet:VGG11_Weights.IMAGENET1K_V1" and info.seed is None
    assert info.sha256 == vgg11[1].sha256
    assert params_equal(vgg, vgg11[0])


def test_a_file_under_torchvisions_name_that_its_hash_does_not_match_is_refused(empty_hub, vgg11_pth, tmp_path):
    """Put in the cache by hand (offline), or passed as --weights under that name: a damaged copy,
    or other weights (these random ones), were used as ImageNet's."""
    cache = imagenet_cache_file("vgg11")
    cache.parent.mkdir(parents=True)
    copy = tmp_path / cache.name
    for path in (cache, copy):
        try:
            os.link(vgg11_pth, path)
        except OSError:
            shutil.copyfile(vgg11_pth, path)
    url = torchvision.models.VGG11_Weights.IMAGENET1K_V1.url
    expected = cache.name.split("-")[1][:8]
    begins = file_sha256(vgg11_pth)[:8]
    try:
        for weights, delete in (("imagenet", ", or delete it to download it again"), (copy, "")):
            with pytest.raises(VggfeatError) as raised:
                load_vgg("vgg11", weights)
            path = cache if weights == "imagenet" else copy
            assert str(raised.value) == (
                f"{path} is not the file torchvision publishes as the ImageNet weights of vgg11: its SHA-256 begins "
                f"{begins}, its name says {expected} (a damaged copy, or other weights under that name): fetch it "
                f"again from {url}{delete}")
    finally:
        cache.unlink()
        copy.unlink()
    assert not empty_hub, "a download was attempted"


def test_imagenet_damaged_cache_gives_a_clear_error(empty_hub):
    cache = imagenet_cache_file("vgg11")
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"\x80\x02 damaged download" * 20)
    with pytest.raises(VggfeatError) as raised:
        load_vgg("vgg11", "imagenet")
    assert not empty_hub
    assert str(cache) in str(raised.value) and "delete" in str(raised.value)


def test_imagenet_download_that_fails_its_hash_says_so_and_that_nothing_was_kept(empty_hub, monkeypatch):
    """It said to delete a cache file that torch.hub had not kept."""
    def damaged(url, dst, hash_prefix=None, progress=True):
        raise RuntimeError(f'invalid hash value (expected "{hash_prefix}", got "0123abcd")')

    monkeypatch.setattr(torch.hub, "download_url_to_file", damaged)
    with pytest.raises(VggfeatError) as raised:
        load_vgg("vgg11", "imagenet")
    assert "came damaged or incomplete (invalid hash value" in str(raised.value)
    assert "nothing was kept: run again" in str(raised.value) and "delete" not in str(raised.value)


def test_imagenet_cache_that_cannot_be_read_is_not_said_to_be_a_failed_download(empty_hub):
    """A folder (or another user's file) at the cache's name was "could not download ... if offline"."""
    cache = imagenet_cache_file("vgg11")
    cache.mkdir(parents=True)
    with pytest.raises(VggfeatError) as raised:
        load_vgg("vgg11", "imagenet")
    assert not empty_hub, "a download was attempted"
    assert str(raised.value).startswith(f"cannot read the ImageNet weights of vgg11 at {cache} (")
    assert "TORCH_HOME" in str(raised.value)


def test_imagenet_cache_file_is_never_unpickled(empty_hub, tmp_path, monkeypatch):
    """torch.hub alone would load its cache with weights_only=False; vggfeat asks for True."""
    marker = tmp_path / "code-ran"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3), "extra": LeavesMarker(marker)}, tmp_path / "code.pth")
    published_in_the_cache(monkeypatch, tmp_path / "code.pth")
    with pytest.raises(VggfeatError, match="failed to load"):
        load_vgg("vgg11", "imagenet")
    assert not marker.exists(), "unpickling ran code from the cached weights file"
