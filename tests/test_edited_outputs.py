"""Shards and posteriors files edited by hand or damaged: 'vggfeat merge', 'export --to csv' and
'classify' refuse them in one line naming the file, never with a traceback, a huge allocation, or
NaN and wrong classes written as results; and the merge or CSV refused is not left behind.
"""

from __future__ import annotations

import importlib
import resource
import shutil
import subprocess

import h5py
import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models import VGG

import vggfeat.extractor
from runhelpers import FAST, command, error_line, run_main, write_labelled_folder
from vggfeat import DenseVGG, ExtractionJob, Extractor, find_images
from vggfeat.architectures import make_features
from vggfeat.errors import VggfeatError
from vggfeat.predictions import evaluate_file
from vggfeat.weights import WeightsInfo


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A small VGG's (~1000x cheaper than VGG16) files of a labelled folder (5 images, 1 broken):
    two shards of descriptors (s1.h5, s2.h5) and every posterior of the images (p.h5)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vgg = VGG(make_features([8, "M", 8, "M", 8, "M", 8, "M", 512, "M"]), num_classes=1000)
        vgg.classifier[0], vgg.classifier[3], vgg.classifier[6] = nn.Linear(512 * 7 * 7, 64), nn.Linear(64, 64), nn.Linear(64, 1000)
    small = DenseVGG(vgg.eval().requires_grad_(False), "vgg16", WeightsInfo("random", "small", 0))
    folder = tmp_path_factory.mktemp("made")
    write_labelled_folder(folder / "images")
    extractor = Extractor(small, scales=[224], flip=False, device="cpu", layer="conv1_1")
    for index in (1, 2):
        ExtractionJob(extractor, find_images(folder / "images").shard(index, 2), folder / f"s{index}.h5").run()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(vggfeat.extractor, "load_network", lambda model, weights="imagenet", seed=0: small)
        assert run_main(["classify", folder / "images", folder / "p.h5", *FAST, "-q"])[0] == 0
    return folder, small


def copied(made, tmp_path, *names):
    folder, _ = made
    for name in names:
        shutil.copy(folder / name, tmp_path / name)
    return [tmp_path / name for name in names]


def edit(path, **attrs):
    with h5py.File(path, "r+") as f:
        for key, value in attrs.items():
            f.attrs[key] = value


def run_limited(args, memory: int = 4 * 2**30) -> subprocess.CompletedProcess:
    """``vggfeat ARGS`` in a process of at most ``memory`` bytes of address space: an allocation
    of gigabytes fails there at once, rather than taking the machine's memory."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (memory, resource.getrlimit(resource.RLIMIT_AS)[1]))
    return subprocess.run(command(args), capture_output=True, text=True, timeout=120, preexec_fn=limit)


# --------------------------------------------------------------------------- merge


@pytest.mark.parametrize("shard, key, value", [
    (1, "shard_count", -1), (1, "shard_count", 0), (1, "shard_count", 2.5),
    (1, "shard_count", "two"), (2, "shard_index", 3), (1, "shard_index", "x"), (1, "collection_images", "six"),
])
def test_merge_refuses_shard_numbers_edited_by_hand(made, tmp_path, shard, key, value):
    shards = copied(made, tmp_path, "s1.h5", "s2.h5")
    for path in shards if key != "shard_index" else shards[shard - 1 : shard]:  # a count edited in both agrees
        edit(path, **{key: value})
    code, _, err = run_main(["merge", *shards, tmp_path / "merged.h5"])
    line = error_line(err)
    assert code == 2 and line.startswith(f"Error: {shards[0 if key != 'shard_index' else shard - 1]} is damaged: its {key} ")
    assert "--shard command" in line and not (tmp_path / "merged.h5").exists()


def test_merge_of_a_count_of_a_billion_shards_answers_at_once(made, tmp_path):
    """A whole number, so not a damaged file: the shards missing are counted, not listed."""
    shards = copied(made, tmp_path, "s1.h5", "s2.h5")
    for path in shards:
        edit(path, shard_count=10**9)
    done = run_limited(["merge", *shards, tmp_path / "merged.h5"])
    assert done.returncode == 2 and error_line(done.stderr) == (
        "Error: missing shard 3/1000000000, 4/1000000000, 5/1000000000, 6/1000000000, 7/1000000000 and 999,999,993 "
        "more: a merge needs all 1,000,000,000")


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_merge_refuses_a_shard_holding_nan_naming_its_row_and_leaves_nothing(made, tmp_path, value):
    shards = copied(made, tmp_path, "s1.h5", "s2.h5")
    with h5py.File(shards[1], "r+") as f:
        f["features"][1, 3] = value
        image = f["paths"].asstr()[1]
    code, _, err = run_main(["merge", *shards, tmp_path / "merged.h5"])
    assert code == 2 and error_line(err).startswith(f"Error: {shards[1]} is damaged: row 1 of its /features ({image}) "
                                                    "holds NaN or infinite values")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["s1.h5", "s2.h5"]  # no merged file, whole or partial


# --------------------------------------------------------------------------- posteriors


@pytest.mark.parametrize("key, value", [("dim", "x"), ("dim", 10), ("dim", 2.5), ("keep_top", 10**9), ("scales", 5),
                                        ("model", [1, 2])])
def test_export_refuses_posteriors_attributes_edited_by_hand(made, tmp_path, key, value):
    posteriors, = copied(made, tmp_path, "p.h5")
    edit(posteriors, **{key: value})
    code, _, err = run_main(["export", posteriors, tmp_path / "p.csv", "--to", "csv"])
    assert code == 2 and error_line(err).startswith(f"Error: {posteriors} is damaged: its {key} attribute ")
    assert "classify its images into it again" in error_line(err) and not (tmp_path / "p.csv").exists()


def test_export_of_a_dim_of_a_billion_classes_answers_at_once(made, tmp_path):
    posteriors, = copied(made, tmp_path, "p.h5")
    edit(posteriors, dim=10**9)  # as many class names
    done = run_limited(["export", posteriors, tmp_path / "p.csv", "--to", "csv"])
    assert done.returncode == 2 and error_line(done.stderr).startswith(
        f"Error: {posteriors} is damaged: its dim attribute 1000000000 is not the 1000 values of each of its rows")


@pytest.mark.parametrize("value", [np.nan, np.inf, -1.0])
def test_a_csv_is_not_written_from_posteriors_holding_nan(made, tmp_path, value):
    posteriors, = copied(made, tmp_path, "p.h5")
    with h5py.File(posteriors, "r+") as f:
        image = f["paths"].asstr()[2]
        f["features"][2, int(np.argmax(f["features"][2]))] = value  # NaN ranked at the top would go unseen
    code, _, err = run_main(["export", posteriors, tmp_path / "p.csv", "--to", "csv"])
    assert code == 2 and error_line(err).startswith(f"Error: {posteriors} is damaged: the posteriors of {image} hold NaN")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["p.h5"]  # no CSV, whole or partial


def test_errors_of_posteriors_holding_nan_are_refused_saying_what_to_do(made, tmp_path):
    """classify's top-1/top-5 errors of an .h5 (--labels) read it as export does: the refusal said
    nothing after its "; "."""
    posteriors, = copied(made, tmp_path, "p.h5")
    with h5py.File(posteriors, "r+") as f:
        f["features"][0, :] = np.nan
        image = f["paths"].asstr()[0]
    with pytest.raises(VggfeatError, match=f"the posteriors of {image} hold NaN, infinite or impossible values; classify "
                                           r"its images into it again \(--overwrite\)$"):
        evaluate_file(posteriors, {image: 1}, [str(k) for k in range(1000)])


def test_fused_posteriors_holding_nan_name_the_file_fused(made, tmp_path):
    posteriors, other = copied(made, tmp_path, "p.h5", "p.h5")[0], tmp_path / "q.h5"
    shutil.copy(posteriors, other)
    with h5py.File(other, "r+") as f:
        f["features"][0, :] = np.nan
    code, _, err = run_main(["export", posteriors, tmp_path / "p.csv", "--to", "csv", "--fuse", other])
    assert code == 2 and error_line(err).startswith(f"Error: {other} is damaged: the posteriors of cats/a.png hold NaN")
    assert not (tmp_path / "p.csv").exists()


@pytest.fixture
def left_by_a_killed_run(made, tmp_path, monkeypatch):
    """A CSV's own posteriors (each image's top classes), left by a run killed before its CSV; and
    the run's arguments."""
    folder, small = made
    monkeypatch.setattr(vggfeat.extractor, "load_network", lambda model, weights="imagenet", seed=0: small)
    args = ["classify", folder / "images", tmp_path / "out.csv", *FAST, "-q"]

    def killed(*args, **kwargs):
        raise RuntimeError("killed")

    with monkeypatch.context() as patch:
        patch.setattr(importlib.import_module("vggfeat.cli.posteriors"), "write_predictions", killed)
        with pytest.raises(RuntimeError, match="killed"):
            run_main(args)
    left = tmp_path / "out.csv.posteriors.h5"
    assert left.is_file()
    return left, args


@pytest.mark.parametrize("where, value", [("keep_top", 10**9), ("keep_top", "x"), ("class", -1.0), ("class", 2.5),
                                          ("class", 5000.0), ("probability", np.nan)])
def test_classify_refuses_its_own_posteriors_edited_then_makes_them_again(left_by_a_killed_run, tmp_path, where, value):
    """A class index of -1 was written as the last class, silently; a keep_top of 1e9 as no class."""
    left, args = left_by_a_killed_run
    with h5py.File(left, "r+") as f:
        kept = int(f.attrs["keep_top"])
        if where == "keep_top":
            f.attrs["keep_top"] = value
        else:
            f["features"][0, kept if where == "class" else 0] = value
    code, _, err = run_main(args)
    assert code == 2 and error_line(err).startswith(f"Error: {left} is damaged: ")
    assert error_line(err).endswith("; remove it and run the same classify command again")
    assert not (tmp_path / "out.csv").exists()
    left.unlink()  # as the refusal says
    code, _, err = run_main(args)
    assert code == 0 and (tmp_path / "out.csv").is_file(), err


def test_classify_takes_its_posteriors_with_an_array_edited_into_config_as_made_otherwise(left_by_a_killed_run, tmp_path):
    left, args = left_by_a_killed_run
    edit(left, config=[1, 2])
    code, _, err = run_main(args)
    assert code == 0 and (tmp_path / "out.csv").is_file() and not left.exists(), err
