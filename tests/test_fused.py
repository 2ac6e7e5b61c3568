"""``vggfeat extract --model vgg11,vgg13``: several networks' descriptors side by side in one run,
each image read once; the file that extracting with each and ``vggfeat stack`` make, and one
extraction's file (resumed, updated, searched) as any other."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from torchvision.models import vgg13

from imagefiles import write_rgb
from runhelpers import FAST, assert_same_output, error_line, read_output, run_main, write_labelled_folder, write_plain_folder
from vggfeat.discover import find_images
from vggfeat.extractor import Extractor
from vggfeat.features import FeatureFile, config_differences
from vggfeat.fused import FusedExtractor
from vggfeat.multidevice import MultiDeviceJob
from vggfeat.reading import ImageReader
from vggfeat.search import extractor_for
from vggfeat.stack import StackedExtractor, stacked_config

# Two small networks (VGG11 and VGG13: A and B) at a cheap layer, random weights, on the CPU.
OPTIONS = {"weights": "random", "seed": 0, "layer": "conv3_1", "scales": [224], "flip": False, "device": "cpu"}
CHEAP = [*FAST, "--layer", "conv3_1", "--quiet"]


def test_fused_descriptors_are_each_networks_side_by_side_from_one_read_of_each_image(tmp_path, monkeypatch):
    """The rows are each network's own descriptors, in the order of the models, and the
    configuration is what 'vggfeat stack' records of their files; each image is read once."""
    paths = [tmp_path / f"{i}.png" for i in range(3)]
    for i, path in enumerate(paths):
        write_rgb(path, 224, 240 + 16 * i, seed=i)
    read = []
    real_read = ImageReader.read

    def counting_read(reader, files, lookahead):
        read.extend(files)
        return real_read(reader, files, lookahead)

    monkeypatch.setattr(ImageReader, "read", counting_read)
    fused = FusedExtractor(["vgg11", "vgg13"], **OPTIONS)
    X = fused.extract(paths)
    assert read == paths
    each = [Extractor(model, **OPTIONS) for model in ("vgg11", "vgg13")]
    np.testing.assert_allclose(X, np.hstack([extractor.extract(paths) for extractor in each]), rtol=1e-6, atol=1e-6)
    assert X.shape == (3, fused.dim) == (3, 2 * 256)
    assert fused.config() == stacked_config([extractor.config() for extractor in each], [False, False])


def test_fused_weights_are_one_for_all_or_one_per_network():
    with pytest.raises(ValueError, match="two or more networks"):
        FusedExtractor(["vgg11"], **OPTIONS)
    with pytest.raises(ValueError, match="one weights for each of the 2 networks, got 3"):
        FusedExtractor(["vgg11", "vgg13"], **{**OPTIONS, "weights": ["a.pth", "b.pth", "c.pth"]})


def test_extract_with_two_models_writes_the_file_that_stacking_each_networks_file_writes(tmp_path, monkeypatch):
    """Rows, failures, labels and sizes as 'vggfeat stack' of one file per network; the
    configurations match, so a model or an index of either takes the other; info names both
    networks; the file's attributes are those the networks share, the rest comma-separated."""
    monkeypatch.chdir(tmp_path)
    write_labelled_folder(tmp_path / "images")
    for args in (["extract", "images", "de.h5", *CHEAP, "--model", "vgg11,vgg13"],
                 ["extract", "images", "d.h5", *CHEAP, "--model", "vgg11"],
                 ["extract", "images", "e.h5", *CHEAP, "--model", "vgg13"], ["stack", "d.h5", "e.h5", "stacked.h5", "-q"]):
        code, _, err = run_main(args)
        assert code == 0, (args, err)
    fused, stacked = read_output("de.h5"), read_output("stacked.h5")
    for key in ("paths", "labels", "sizes", "failed_paths", "failed_errors", "failed_labels"):
        np.testing.assert_array_equal(fused[key], stacked[key])
    np.testing.assert_allclose(fused["features"], stacked["features"], rtol=1e-6, atol=1e-6)
    with FeatureFile("de.h5") as a, FeatureFile("stacked.h5") as b:
        assert config_differences(a.config, b.config) == [] and a.config["dim"] == 512
    attrs = fused["attrs"]
    assert (attrs["model"], attrs["layer"], attrs["dim"], attrs["random_weights"]) == ("vgg11,vgg13", "conv3_1", 512, True)
    code, out, _ = run_main(["info", "de.h5"])
    assert code == 0 and "  models       vgg11 (random weights, sha256 " in out and "vgg13 (random weights" in out


def test_a_fused_file_is_updated_and_refuses_other_networks(tmp_path, monkeypatch):
    """--update after the collection grew gives the file a fresh fused run writes; other models
    are refused, naming them."""
    monkeypatch.chdir(tmp_path)
    write_labelled_folder(tmp_path / "images")
    fused = ["--model", "vgg11,vgg13"]
    assert run_main(["extract", "images", "de.h5", *CHEAP, *fused])[0] == 0
    write_rgb(tmp_path / "images" / "cats" / "new.png", 230, 224, seed=9)
    code, _, err = run_main(["extract", "images", "de.h5", *CHEAP, "--model", "vgg11,vgg16", "--update"])
    assert code == 2 and error_line(err).startswith("Error: de.h5 was made with other options (model: vgg11,vgg13 then, "
                                                    "vgg11,vgg16 now; ")
    code, _, err = run_main(["extract", "images", "de.h5", *CHEAP, *fused, "--update"])
    assert code == 0, err
    shutil.move(tmp_path / "de.h5", tmp_path / "updated.h5")
    assert run_main(["extract", "images", "de.h5", *CHEAP, *fused])[0] == 0
    updated, fresh = read_output("updated.h5"), read_output("de.h5")
    assert "cats/new.png" in fresh["paths"]
    assert_same_output(updated, fresh)


def test_every_weights_file_is_looked_for_before_a_network_loads(tmp_path):
    (tmp_path / "d.pth").write_bytes(b"")
    code, out, err = run_main(["extract", tmp_path, tmp_path / "de.h5", "--model", "vgg16,vgg19", "--weights",
                             f"{tmp_path / 'd.pth'},{tmp_path / 'e.pth'}"])
    assert code == 2 and f"Invalid value for '--weights': weights file not found: {tmp_path / 'e.pth'}" in error_line(err)
    assert "loading" not in out + err


def test_each_network_takes_imagenet_random_or_a_file(tmp_path):
    """'--weights random,FILE': a name or a file per network, in the order of --model (the help's
    "imagenet, random, or a file each"); 'random,random' was looked for as two files."""
    write_plain_folder(tmp_path / "images", 1)
    torch.save(vgg13(weights=None).state_dict(), tmp_path / "b.pth")
    code, _, err = run_main(["extract", tmp_path / "images", tmp_path / "ab.h5", *CHEAP, "--model", "vgg11,vgg13",
                             "--weights", f"random,{tmp_path / 'b.pth'}"])
    assert code == 0, err
    assert run_main(["extract", tmp_path / "images", tmp_path / "rr.h5", *CHEAP, "--model", "vgg11,vgg13",
                     "--weights", "random,random"])[0] == 0
    assert read_output(tmp_path / "ab.h5")["attrs"]["weights"] == "random,file:b.pth"
    code, _, err = run_main(["extract", tmp_path / "images", tmp_path / "a.h5", *CHEAP, "--weights", "random,random"])
    assert code == 2 and error_line(err) == ("Error: Invalid value for '--weights': 2 weights for one model (vgg16): give "
                                             "one, or as many models, comma-separated (--model vgg16,vgg19) (see 'vggfeat extract --help')")


def test_fused_descriptors_are_written_on_several_devices_as_on_one(tmp_path):
    """Each device's process builds the FusedExtractor again, every network of it."""
    write_plain_folder(tmp_path / "images", 3)
    fused = FusedExtractor(["vgg11", "vgg13"], **OPTIONS)
    result = MultiDeviceJob(fused, ["cpu", "cpu"], find_images(tmp_path / "images"), tmp_path / "two.h5").run()
    assert (result.rows, result.failed) == (3, 0)
    data = read_output(tmp_path / "two.h5")
    expected = fused.extract([tmp_path / "images" / path for path in data["paths"]])
    np.testing.assert_allclose(data["features"], expected, rtol=0, atol=1e-5)
    assert data["attrs"]["model"] == "vgg11,vgg13" and json.loads(data["attrs"]["config"])["dim"] == 512


def test_query_images_of_networks_stacked_alike_are_read_once_for_all(tmp_path):
    """search: stacked descriptors of whole images described alike are described by one
    FusedExtractor (each query read once); others (I+B) by one extractor per part."""
    parts = [Extractor(model, **OPTIONS).config() for model in ("vgg11", "vgg13")]
    alike = extractor_for({**stacked_config(parts, [False, False]), "dtype": "float32"}, device="cpu")
    assert isinstance(alike, FusedExtractor) and [alike.network.arch, alike.others[0].network.arch] == ["vgg11", "vgg13"]
    boxes_and_images = extractor_for(stacked_config(parts, [False, True]), device="cpu")
    assert isinstance(boxes_and_images, StackedExtractor)
    scales_differ = [parts[0], {**parts[1], "scales": [256]}]
    assert isinstance(extractor_for(stacked_config(scales_differ, [False, False]), device="cpu"), StackedExtractor)
    assert json.dumps(alike.config(), sort_keys=True) == json.dumps(stacked_config(parts, [False, False]), sort_keys=True)
