"""``vggfeat classify``: the paper's dense and multi-crop evaluation against direct computation.

Dense classification at 224 is checked against torchvision's own VGG16 (seeded random weights).
The averaging of softmaxes over flips, scales and crops is checked on a small VGG (torchvision's
``VGG`` class with narrow conv and FC layers and a sharpened fc8, ~1000x cheaper than VGG16, whose
posteriors are far from uniform), computed view by view straight from the network.
"""

from __future__ import annotations

import copy
import csv
import importlib
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import VGG
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from imagefiles import BAD_FILES, write_bad_files, write_rgb
from runhelpers import (FAST, Killed, assert_same_output, crash_on_part, error_line, flaky_storage,
                        needs_extended_attributes, read_output, run_main)
from reference import assert_close, reference_input
import vggfeat.cli.options
import vggfeat.extractor
import vggfeat.job
import vggfeat.predictions
from vggfeat import DenseVGG, rerun
from vggfeat.architectures import make_features
from vggfeat.classifier import Classifier, crop_grid, imagenet_categories
from vggfeat.cli.common import size_text
from vggfeat.parts import output_locked
from vggfeat.predictions import Evaluation, folder_labels, imagenet_wordnet_ids, match_labels, read_labels, top_classes
from vggfeat.resize import as_tensor, resized_shape, to_input
from vggfeat.store import posteriors_file_of
from vggfeat.weights import WeightsInfo

@pytest.fixture(scope="module")
def small_vgg():
    """A torchvision VGG with 8-channel conv blocks (the last 512, as fc6 expects) and 64-unit fc6 and
    fc7, made dense."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vgg = VGG(make_features([8, "M", 8, "M", 8, "M", 8, "M", 512, "M"]), num_classes=1000)
        vgg.classifier[0], vgg.classifier[3], vgg.classifier[6] = nn.Linear(512 * 7 * 7, 64), nn.Linear(64, 64), nn.Linear(64, 1000)
    vgg.eval().requires_grad_(False)
    vgg.classifier[6].weight.mul_(30)  # scores differing by whole units between views
    return DenseVGG(vgg, "vgg16", WeightsInfo("random", "small", 0))


@pytest.fixture
def small_network_for_cli(small_vgg, monkeypatch):
    """``--model vgg16 --weights random`` in the CLI loads the small VGG."""
    monkeypatch.setattr(vggfeat.extractor, "load_network", lambda model, weights="imagenet", seed=0: small_vgg)


def write_half_noise(path, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Black on the left, noise on the right: views (flips, scales, crops) that a random network
    scores clearly differently, so that the order of softmax and averaging shows."""
    picture = np.zeros((height, width, 3), dtype=np.uint8)
    picture[:, width // 2 :] = np.random.default_rng(seed).integers(0, 256, (height, width - width // 2, 3))
    Image.fromarray(picture).save(path)
    return picture


def view_posterior(network: DenseVGG, x: torch.Tensor) -> torch.Tensor:
    """softmax of the spatially averaged fc8 map of one network input [3, H, W], run alone."""
    with torch.inference_mode():
        scores, _ = network(x.unsqueeze(0), "fc8")
    return scores.mean(dim=(2, 3))[0].softmax(dim=-1)


# --------------------------------------------------------------------------- dense evaluation


@pytest.mark.parametrize("flip", [False, True])
def test_dense_at_224_is_torchvisions_softmax(random_vgg16, reference_vgg16, image_224, flip):
    vgg = reference_vgg16
    x = reference_input(image_224)
    with torch.inference_mode():
        logits = vgg(x)
        expected = logits.softmax(dim=1)
        if flip:
            expected = (expected + vgg(x.flip(-1)).softmax(dim=1)) / 2
    classifier = Classifier(random_vgg16, scales=[224], flip=flip, device="cpu")
    probabilities = classifier.extract([image_224])
    assert probabilities.shape == (1, 1000) and probabilities.dtype == np.float32
    assert probabilities.sum() == pytest.approx(1, abs=1e-5)
    assert_close(probabilities, expected.numpy(), 1e-4, "posteriors")
    if not flip:  # the scores behind them, however close to uniform the posteriors of random weights
        centred = np.log(probabilities[0]) - np.log(probabilities[0]).mean()
        assert_close(centred, (logits[0] - logits[0].mean()).numpy(), 1e-4, "log-posteriors")


def test_flips_and_scales_average_softmaxes(small_vgg, tmp_path):
    path = tmp_path / "wide.png"
    picture = write_half_noise(path, 224, 260, seed=5)
    pixels = as_tensor(picture, torch.device("cpu"))
    views = []
    for scale in (224, 256):
        x = to_input(pixels, resized_shape(224, 260, scale))
        views += [x, x.flip(-1)]
    expected = torch.stack([view_posterior(small_vgg, x) for x in views]).mean(dim=0).numpy()
    probabilities = Classifier(small_vgg, scales=[224, 256], device="cpu").extract([path])[0]
    assert_close(probabilities, expected, 1e-4, "average of 4 posteriors")
    # Averaging the scores before one softmax would be a different classifier: the test can tell.
    with torch.inference_mode():
        scores = torch.stack([small_vgg(x.unsqueeze(0), "fc8")[0].mean(dim=(2, 3))[0] for x in views]).mean(dim=0)
    assert np.abs(scores.softmax(dim=-1).numpy() - expected).max() > 0.05 * expected.max(), "weak test"


def test_padded_batch_gives_each_image_its_posterior(small_vgg, tmp_path):
    paths = [tmp_path / f"{i}.png" for i in range(3)]
    for i, path in enumerate(paths):
        write_rgb(path, 224 + 8 * i, 250 - 12 * i, seed=30 + i)
    together = Classifier(small_vgg, scales=[224], device="cpu", batch_size=6).extract(paths)
    alone = np.concatenate([Classifier(small_vgg, scales=[224], device="cpu").extract([p]) for p in paths])
    assert_close(together, alone, 1e-5, "batched vs alone")


# --------------------------------------------------------------------------- multi-crop


def test_crop_grid_geometry():
    height, width = 256, 341
    crops = crop_grid((height, width))
    assert len(crops) == 25 and len(set(crops)) == 25
    assert all(0 <= top <= height - 224 and 0 <= left <= width - 224 for top, left in crops)
    assert crops[0] == (0, 0) and crops[4] == (0, width - 224)
    assert crops[20] == (height - 224, 0) and crops[24] == (height - 224, width - 224)
    # The middle crop is torchvision's centre crop.
    image = torch.arange(height * width).view(1, height, width)
    top, left = crops[12]
    assert torch.equal(image[:, top : top + 224, left : left + 224], TF.center_crop(image, [224, 224]))
    # Evenly spaced: 5 positions along each side, steps differing by at most a pixel.
    tops, lefts = sorted({t for t, _ in crops}), sorted({l for _, l in crops})
    assert len(tops) == len(lefts) == 5
    assert max(np.diff(lefts)) - min(np.diff(lefts)) <= 1 and max(np.diff(tops)) - min(np.diff(tops)) <= 1
    assert crop_grid((224, 224)) == [(0, 0)] * 25
    with pytest.raises(ValueError):
        crop_grid((200, 300))


def test_multi_crop_is_the_average_over_crops_and_flips(small_vgg, tmp_path):
    path = tmp_path / "photo.png"
    picture = write_half_noise(path, 240, 300, seed=6)
    x = to_input(as_tensor(picture, torch.device("cpu")), resized_shape(240, 300, 256))
    assert tuple(x.shape[1:]) == (256, 320)
    crops = [x[:, t : t + 224, l : l + 224] for t, l in crop_grid((256, 320))]
    assert all(tuple(crop.shape) == (3, 224, 224) for crop in crops)
    expected = torch.stack([view_posterior(small_vgg, c) for c in crops + [c.flip(-1) for c in crops]]).mean(dim=0)
    multi = Classifier(small_vgg, scales=[256], dense=False, multi_crop=True, device="cpu", batch_size=16)
    probabilities = multi.extract([path])[0]
    assert_close(probabilities, expected.numpy(), 1e-4, "50 crops")
    dense = Classifier(small_vgg, scales=[256], device="cpu").extract([path])[0]
    both = Classifier(small_vgg, scales=[256], multi_crop=True, device="cpu", batch_size=16).extract([path])[0]
    assert_close(both, (dense + probabilities) / 2, 1e-5, "dense & multi-crop")
    assert np.abs(dense - probabilities).max() > 0.05 * probabilities.max()  # different evaluations


def test_nothing_to_evaluate_is_refused(small_vgg):
    with pytest.raises(vggfeat.VggfeatError, match="dense, multi-crop"):
        Classifier(small_vgg, dense=False, multi_crop=False, device="cpu")


# --------------------------------------------------------------------------- labels and errors


def test_read_labels_both_formats(tmp_path):
    listing = tmp_path / "val.txt"
    listing.write_text("# ILSVRC2012 style\nILSVRC2012_val_00000001.JPEG 65\n\nsub/b.png,970\nc d.jpg 0\n")
    assert read_labels(listing) == {"ILSVRC2012_val_00000001.JPEG": 65, "sub/b.png": 970, "c d.jpg": 0}
    assert match_labels(["x/ILSVRC2012_val_00000001.JPEG", "sub/b.png", "b.png", "e.jpg"], read_labels(listing)) == [
        65, 970, None, None]
    listing.write_text("tabbed.jpg\t7\n")
    assert read_labels(listing) == {"tabbed.jpg": 7}
    # A name with a comma: quoted as csv.writer writes it (its quotes were kept: no image matched),
    # or before a space and a number (it was split at the comma, and refused).
    listing.write_text('"a,b.jpg",5\nc,d.jpg 6\n"q".jpg 7\ne.jpg ,8\n')
    assert read_labels(listing) == {"a,b.jpg": 5, "c,d.jpg": 6, '"q".jpg': 7, "e.jpg": 8}
    listing.write_text("a.jpg 3\nb.jpg cat\n")
    with pytest.raises(vggfeat.VggfeatError, match=r"val.txt:2"):
        read_labels(listing)
    listing.write_text("a.jpg 3\na.jpg 4\n")
    with pytest.raises(vggfeat.VggfeatError, match="twice"):
        read_labels(listing)
    listing.write_text("a.jpg 1000\n")
    with pytest.raises(vggfeat.VggfeatError, match="0..999"):
        read_labels(listing, classes=1000)


def test_top1_top5_error_by_hand():
    evaluation = Evaluation()
    probabilities = np.array([[0.30, 0.25, 0.15, 0.10, 0.08, 0.07, 0.05]])  # class 0 first ... class 6 last
    for truth in (0, 2, 4, 5):  # ranks 1, 3, 5, 6
        evaluation.add(top_classes(probabilities, 5)[0], truth)
    assert evaluation.images == 4
    assert evaluation.top1_error == 3 / 4  # only rank 1 is right
    assert evaluation.top5_error == 1 / 4  # only rank 6 is outside the top 5


def test_top_classes_are_those_of_a_stable_sort_ties_included():
    rng = np.random.default_rng(0)
    probabilities = rng.random((300, 50), dtype=np.float32)
    probabilities[::3, 10:20] = 0.5  # ties inside the top k, across the k-th place, and below it
    probabilities[1::3, [3, 7, 40]] = 2.0
    probabilities[2::7] = 0.25  # every class tied
    for k in (1, 5, 11, 50, 60):
        expected = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
        assert np.array_equal(top_classes(probabilities, k), expected), k
    assert top_classes(probabilities[:0], 5).shape == (0, 5)


def test_kept_top_classes_are_the_posteriors_ranked_ties_included(small_vgg, tmp_path):
    """keep_top: an image's top classes and their probabilities, exactly those of its whole
    posterior ranked as a CSV ranks them, ties to the lower class."""
    paths = [tmp_path / f"{i}.png" for i in range(3)]
    for i, path in enumerate(paths):
        write_half_noise(path, 224, 240 + 16 * i, seed=40 + i)
    tied = copy.deepcopy(small_vgg)
    fc8 = tied.fc8  # a 1x1 convolution
    best = Classifier(small_vgg, scales=[224], device="cpu").extract(paths).argsort(axis=1)[:, ::-1]
    for image in range(3):  # each image's best class scored again by a higher class, another's by a lower one
        for copy_to, copy_from in ((999 - image, best[image, 0]), (image, best[image, 2])):
            fc8.weight[copy_to], fc8.bias[copy_to] = fc8.weight[copy_from], fc8.bias[copy_from]
    whole = Classifier(tied, scales=[224], device="cpu").extract(paths)
    kept = Classifier(tied, scales=[224], device="cpu", keep_top=6)
    rows = kept.extract(paths)
    assert kept.dim == 12 and rows.shape == (3, 12) and kept.config()["keep_top"] == 6
    expected = top_classes(whole, 6)
    assert np.array_equal(rows[:, 6:], expected) and np.array_equal(rows[:, :6], np.take_along_axis(whole, expected, 1))
    assert (np.diff(rows[:, :6], axis=1) == 0).any(), "no tie among the top classes: a weak test"
    assert Classifier(tied, scales=[224], device="cpu", keep_top=5000).keep_top == 1000  # all of them
    with pytest.raises(vggfeat.VggfeatError, match="keep_top"):
        Classifier(tied, scales=[224], device="cpu", keep_top=0)


def test_kept_classes_too_few_for_the_csv_are_refused(small_vgg, folder, tmp_path):
    images, _ = folder
    classifier = Classifier(small_vgg, scales=[224], flip=False, device="cpu", keep_top=3)
    found = vggfeat.find_images(images)
    for topk, labels, needed in ((4, None, 4), (3, {"a.png": 1}, 5)):
        with pytest.raises(vggfeat.VggfeatError, match=f"keeps the top 3 classes of each image; {needed} are needed"):
            vggfeat.predictions.classify_images(classifier, found, tmp_path / "out.csv", topk=topk, labels=labels)
    result = vggfeat.predictions.classify_images(classifier, found, tmp_path / "out.csv", topk=3)
    assert result.classified == 3 and not list(tmp_path.glob("out.csv.*"))


# --------------------------------------------------------------------------- the command


def read_csv(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


@pytest.fixture
def folder(tmp_path):
    images = tmp_path / "images"
    (images / "good").mkdir(parents=True)
    write_rgb(images / "good" / "a.png", 224, 240, seed=1)
    write_rgb(images / "good" / "b.jpg", 236, 224, seed=2)
    write_rgb(images / "good" / "c.png", 224, 224, seed=3)
    bad = {f"bad/{name}": reason for name, (_, reason) in BAD_FILES.items()}
    write_bad_files(images / "bad")
    return images, bad


GOOD = ["good/a.png", "good/b.jpg", "good/c.png"]


def labels_by_rank(small_vgg, images, folder) -> tuple[np.ndarray, np.ndarray, Path]:
    """(the API's posteriors of the GOOD images, their classes by rank, a labels file): a is right
    at rank 1, b at rank 4 (top-5 only), c last (wrong both ways); one listed file is missing."""
    api = Classifier(small_vgg, scales=[224], flip=False, device="cpu").extract([images / p for p in GOOD])
    ranked = np.argsort(-api, axis=1)
    labels = folder / "val.txt"
    labels.write_text(f"a.png {ranked[0, 0]}\nb.jpg,{ranked[1, 3]}\nc.png {ranked[2, -1]}\nbad/corrupt.jpg 1\nnone.png 2\n")
    return api, ranked, labels


def test_cli_predictions_and_errors(small_network_for_cli, small_vgg, folder, tmp_path):
    images, bad = folder
    good = GOOD
    api, ranked, labels = labels_by_rank(small_vgg, images, tmp_path)
    output = tmp_path / "predictions.csv"
    code, out, err = run_main(["classify", images, output, *FAST, "--topk", "3", "--labels", labels])
    assert code == 0, err
    assert "top-1 error 66.67%, top-5 error 33.33% over 3 labelled images" in out
    assert "WARNING: random weights" in err and "Traceback" not in err
    assert f"3 images classified, {len(bad)} failed" in err

    rows = read_csv(output)
    assert [row["path"] for row in rows] == sorted([*good, *bad])
    categories = imagenet_categories()
    for row in rows:
        if row["path"] in bad:
            assert bad[row["path"]] in row["error"].lower()
            assert row["class_1"] == row["probability_1"] == ""
            continue
        i = good.index(row["path"])
        assert row["error"] == ""
        assert [int(row[f"class_{r}"]) for r in (1, 2, 3)] == ranked[i, :3].tolist()
        assert [row[f"label_{r}"] for r in (1, 2, 3)] == [categories[c] for c in ranked[i, :3]]
        probabilities = [float(row[f"probability_{r}"]) for r in (1, 2, 3)]
        np.testing.assert_allclose(probabilities, api[i, ranked[i, :3]], atol=1e-6)
        assert probabilities == sorted(probabilities, reverse=True)
    by_path = {row["path"]: row for row in rows}
    assert by_path["good/a.png"]["true_class"] == str(ranked[0, 0])
    assert by_path["good/a.png"]["true_label"] == categories[ranked[0, 0]]
    assert by_path["bad/corrupt.jpg"]["true_class"] == "1"
    assert set(rows[0]) == {"path", "true_class", "true_label", "error",
                            *(f"{field}_{r}" for r in (1, 2, 3) for field in ("class", "label", "probability"))}


def test_cli_posteriors_into_an_h5_file_resume_and_score(small_network_for_cli, small_vgg, folder, tmp_path, monkeypatch):
    """For millions of images: every posterior kept, as extract keeps descriptors, and a killed run
    goes on where it stopped."""
    images, bad = folder
    api, _, labels = labels_by_rank(small_vgg, images, tmp_path)
    output, args = tmp_path / "posteriors.h5", ["classify", images, tmp_path / "posteriors.h5", *FAST, "--part-size", "1"]
    crash_on_part(monkeypatch, 3)  # killed after two parts
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_main(args)
    monkeypatch.undo()
    monkeypatch.setattr(vggfeat.extractor, "load_network", lambda model, weights="imagenet", seed=0: small_vgg)
    code, out, err = run_main([*args, "--labels", labels])
    assert code == 0, err
    assert "resuming: 2 of" in err and f"the posteriors of 3 images (1000 classes), {len(bad)} failed" in err
    assert "top-1 error 66.67%, top-5 error 33.33% over 3 labelled images" in out  # as the CSV's (test above)
    assert "not counted: 0 images without a label in" in err and "1 labelled image that failed" in err
    data = read_output(output)
    assert data["paths"] == GOOD and data["failed_paths"] == sorted(bad)
    np.testing.assert_allclose(data["features"], api, rtol=0, atol=1e-6)
    assert data["attrs"]["dense"] and data["attrs"]["command"].startswith("vggfeat classify")
    # The same command again has nothing to describe, and scores the file it finds.
    before = output.read_bytes()
    code, again, err = run_main([*args, "--labels", labels])
    assert code == 0 and "already holds this extraction: the posteriors of 3 images" in err and again == out
    assert output.read_bytes() == before
    code, _, err = run_main([*args, "--flip"])  # other options: refused, saying which
    assert code == 2 and error_line(err).endswith("made with other options (flip: false then, true now); pass --overwrite "
                                                  "to replace it")
    code, _, err = run_main(["extract", *args[1:]])  # the same line with extract: another kind of file, not other options
    assert code == 2 and error_line(err) == (f"Error: {output} already exists: it is a posteriors file (made by 'vggfeat "
                                             "classify'): --overwrite replaces only a file of the kind this command "
                                             "writes; name another output (or remove that file first)")


def test_cli_posteriors_file_in_shards_updated_and_retried(small_network_for_cli, small_vgg, folder, tmp_path):
    """A posteriors file is kept as extract's files are: written in shards that 'vggfeat merge'
    joins, brought up to date with a grown collection, its failures retried, each equal to a fresh
    run's file."""
    images, bad = folder
    shards = [tmp_path / f"shard{k}.h5" for k in (1, 2)]
    for k, shard in enumerate(shards, 1):
        code, _, err = run_main(["classify", images, shard, *FAST, "--shard", f"{k}/2", "-q"])
        assert code == 0, err
    output = tmp_path / "posteriors.h5"
    code, _, err = run_main(["merge", *shards, output])
    assert code == 0, err
    for again in ([], ["--overwrite"]):  # posteriors, as the shards: not "another kind" of file
        code, _, err = run_main(["merge", *shards, output, *again])
        assert code == 0, err
    fresh = tmp_path / "fresh.h5"
    assert run_main(["classify", images, fresh, *FAST, "-q"])[0] == 0
    assert_same_output(read_output(output), read_output(fresh))

    write_rgb(images / "good" / "d.png", 230, 224, seed=4)  # the collection grows and loses a file
    (images / "bad" / "empty.jpg").unlink()
    code, _, err = run_main(["classify", images, output, *FAST, "--update"])
    assert code == 0, err
    assert "updated" in err and "the posteriors of 4 images (1000 classes)" in err and "1 image added, 1 left out" in err
    (images / "bad" / "corrupt.jpg").write_bytes((images / "good" / "b.jpg").read_bytes())  # repaired
    code, _, err = run_main(["classify", images, output, *FAST, "--retry-failed"])
    assert code == 0, err
    assert "1 of the " in err and "images that had failed are described now" in err
    assert run_main(["classify", images, fresh, *FAST, "-q", "--overwrite"])[0] == 0
    data = read_output(output)
    assert data["paths"] == ["bad/corrupt.jpg", *GOOD, "good/d.png"]
    assert_same_output(data, read_output(fresh))
    code, _, err = run_main(["classify", images, output, *FAST, "--update", "--flip"])
    assert code == 2 and "made with other options (flip: false then, true now)" in error_line(err)


@pytest.mark.parametrize("rewrite", ["--retry-failed", "--update"])
def test_a_posteriors_file_holding_nan_is_refused_before_it_is_rewritten(small_network_for_cli, folder, tmp_path, rewrite):
    """A posteriors file a row of which holds NaN (classify never writes one: an edit, a bad disk):
    --retry-failed and --update, which copy its rows into the file written anew, refuse it before
    any image is classified, as its CSV (export, --labels) would refuse it after; --overwrite
    classifies its images again."""
    images, bad = folder
    output = tmp_path / "posteriors.h5"
    assert run_main(["classify", images, output, *FAST, "-q"])[0] == 0
    with h5py.File(output, "r+") as f:
        f["features"][1, 3] = np.nan
        image = f["paths"][1].decode()
    before = sorted(tmp_path.iterdir()), output.read_bytes()
    (images / "bad" / "corrupt.jpg").write_bytes((images / "good" / "b.jpg").read_bytes())  # repaired: one to retry
    code, _, err = run_main(["classify", images, output, *FAST, rewrite])
    assert code == 2 and error_line(err) == (
        f"Error: {output} is damaged: the posteriors of {image} hold NaN, infinite or impossible values; classify its "
        "images into it again (--overwrite)")
    assert not [line for line in err.splitlines()[:-1] if "image" in line]  # refused before the images are found
    assert (sorted(tmp_path.iterdir()), output.read_bytes()) == before
    code, _, err = run_main(["classify", images, output, *FAST, "--overwrite", "-q"])
    assert code == 0, err
    with h5py.File(output, "r") as f:
        assert np.isfinite(f["features"][:]).all() and len(f["failed/paths"]) == len(bad) - 1


def test_cli_labels_naming_no_image_report_no_error_rate(small_network_for_cli, folder, tmp_path):
    images, _ = folder
    labels = tmp_path / "val.txt"
    labels.write_text("elsewhere.png 3\n")
    code, out, err = run_main(["classify", images, tmp_path / "predictions.csv", *FAST, "--labels", labels])
    assert code == 0, err
    assert "top-1 error" not in out and "nan" not in out
    assert "no classified image has a label in" in err


def test_a_label_list_naming_a_file_that_several_images_are_is_refused_before_the_work(small_network_for_cli, folder,
                                                                                          tmp_path):
    """'a.png 3' labelled good/a.png and other/a.png alike, the errors counted over both."""
    images, _ = folder
    (images / "other").mkdir()
    shutil.copy(images / "good" / "a.png", images / "other" / "a.png")
    labels = tmp_path / "val.txt"
    labels.write_text("a.png 3\n")
    code, _, err = run_main(["classify", images, tmp_path / "predictions.csv", *FAST, "--labels", labels])
    assert code == 2 and error_line(err) == ("Error: the labels list names a.png, which more than one image is (good/a.png, "
                                             "other/a.png): list the images by their paths, as the descriptor file holds them")
    assert not (tmp_path / "predictions.csv").exists() and not posteriors_file_of(tmp_path / "predictions.csv").exists()
    labels.write_text("good/a.png 3\nother/a.png 4\n")  # by their paths: each its own
    assert match_labels(["good/a.png", "other/a.png", "good/b.jpg"], read_labels(labels)) == [3, 4, None]


def test_cli_multi_crop_and_file_list(small_network_for_cli, small_vgg, folder, tmp_path):
    images, _ = folder
    listing = tmp_path / "list.txt"
    listing.write_text(f"{images / 'good' / 'a.png'}\n{images / 'bad' / 'empty.jpg'}\n")
    output = tmp_path / "crops.csv"
    code, _, err = run_main(["classify", "--file-list", listing, output, *FAST, "--multi-crop", "--no-dense",
                             "--batch-size", "25", "--topk", "1"])
    assert code == 0, err
    rows = read_csv(output)
    assert [row["path"] for row in rows] == ["images/bad/empty.jpg", "images/good/a.png"]  # relative to the list
    assert [row["error"] == "" for row in rows] == [False, True]
    expected = Classifier(small_vgg, scales=[224], flip=False, dense=False, multi_crop=True, device="cpu")
    probabilities = expected.extract([images / "good" / "a.png"])[0]
    assert int(rows[1]["class_1"]) == int(probabilities.argmax())
    assert float(rows[1]["probability_1"]) == pytest.approx(float(probabilities.max()), abs=1e-6)


def test_cli_existing_output_is_kept_unless_overwrite(small_network_for_cli, folder, tmp_path):
    images, _ = folder
    output = tmp_path / "predictions.csv"
    output.write_text("precious\n")
    code, _, err = run_main(["classify", images, output, *FAST])
    assert code == 2 and "--overwrite" in error_line(err)
    assert output.read_text() == "precious\n"
    code, _, err = run_main(["classify", images, output, *FAST, "--overwrite", "-q"])
    assert code == 0, err
    assert len(read_csv(output)) == 3 + len(BAD_FILES)
    assert not list(tmp_path.glob(".predictions.csv.*"))  # no temporary file left


def test_cli_the_same_csv_command_again_has_nothing_to_do_and_says_its_result_again(small_network_for_cli, small_vgg,
                                                                                       folder, tmp_path, monkeypatch):
    """A CSV records how it was made (its options, labels, weights and images): the same command
    on the same images has nothing to do, before any network loads, and says its result again;
    other options, or images added since, are refused saying so (--overwrite classified them all
    anew, hours of a GPU's for a large collection)."""
    images, bad = folder
    _, _, labels = labels_by_rank(small_vgg, images, tmp_path)
    output = tmp_path / "out.csv"
    args = ["classify", images, output, *FAST, "--labels", labels, "-q"]
    code, said, err = run_main(args)
    assert code == 0 and said.startswith("top-1 error "), err
    if rerun.recorded_in_file(output) is None:
        pytest.skip("this file system keeps no extended attributes")
    written = output.stat().st_mtime_ns
    with monkeypatch.context() as patch:
        patch.setattr(Classifier, "__init__", lambda *_, **__: pytest.fail("a network loaded"))
        code, out, err = run_main(args)
    count = 3 + len(bad)
    assert code == 0 and out == said and err == (f"{output} already holds the classes of this command's {count} "
                                                        "images, unchanged since; nothing to do\n"), err
    assert output.stat().st_mtime_ns == written
    code, out, _ = run_main(["info", output])
    assert code == 0 and f"\n  images       {count} in {images}, sha256 " in out and f"\n  result       {said}" in out
    code, _, err = run_main([*args, "--topk", "3"])
    assert code == 2 and error_line(err) == (f"Error: {output} already exists, made with other options (--topk: 5 then, 3 "
                                             "now); pass --overwrite to replace it")
    write_rgb(images / "good" / "d.png", 224, 224, seed=4)
    code, _, err = run_main(args)
    assert code == 2 and error_line(err).startswith(f"Error: {output} already exists, made with other options (images: "
                                                    f"{count} in {images}, sha256 "), err
    assert f" then, {count + 1} in {images}, sha256 " in error_line(err)
    assert output.stat().st_mtime_ns == written


def test_cli_stops_when_the_storage_goes_away_writing_no_predictions(small_network_for_cli, tmp_path, monkeypatch):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(8):
        write_rgb(images / f"{i}.png", 224, 230, seed=i)
    output = tmp_path / "predictions.csv"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(vggfeat.job, "STORAGE_FAILURES_TO_STOP", 3)
        flaky_storage(patch, {f"{i}.png": 10**6 for i in range(4, 8)})  # gone after the fourth image
        code, _, err = run_main(["classify", images, output, *FAST, "-q", "--part-size", "2"])
    assert code == 1
    assert "could not be read (storage error (Input/output error), 3 tries): their storage seems to be unavailable" in err
    assert "run the same command to resume" in err and "Traceback" not in err
    assert not output.exists() and not list(tmp_path.glob(".predictions.csv*")), "no CSV of images all failed, nor a temporary one"
    # One file the storage fails to give is a failed row, not a stop; the images described go on.
    flaky_storage(monkeypatch, {"5.png": 10**6})
    code, _, err = run_main(["classify", images, output, *FAST, "--part-size", "2"])
    assert code == 0, err
    assert "resuming: 4 of 8 images were done by an interrupted run" in err
    assert [row["error"] != "" for row in read_csv(output)] == [i == 5 for i in range(8)]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["images", "predictions.csv"]  # no posteriors left


def killed_before_its_csv(args: list) -> None:
    """Run ``vggfeat classify ARGS`` in this process and let it die once its images are described,
    before its CSV is written."""
    def killed(*_, **__):
        raise RuntimeError("killed before the CSV")

    with pytest.MonkeyPatch.context() as patch, pytest.raises(RuntimeError, match="killed before the CSV"):
        patch.setattr(importlib.import_module("vggfeat.cli.posteriors"), "write_predictions", killed)
        run_main(["classify", *args])


def test_cli_a_killed_csv_run_resumes_to_the_csv_of_one_run(small_network_for_cli, small_vgg, folder, tmp_path, monkeypatch):
    """Killed while the images are described, or after, before the CSV is written: the same command
    goes on from what was done and writes the CSV one run writes."""
    images, bad = folder
    _, _, labels = labels_by_rank(small_vgg, images, tmp_path)
    fresh, output = tmp_path / "fresh.csv", tmp_path / "predictions.csv"
    args = [*FAST, "--part-size", "1", "--topk", "2", "--labels", labels]
    code, fresh_out, _ = run_main(["classify", images, fresh, *args])
    assert code == 0
    with pytest.MonkeyPatch.context() as patch, pytest.raises(RuntimeError, match="simulated crash"):
        crash_on_part(patch, 3)  # killed after two parts
        run_main(["classify", images, output, *args])
    assert not output.exists() and (tmp_path / "predictions.csv.posteriors.h5.parts").is_dir()
    code, _, err = run_main(["classify", images, output, *args[:-4], "--topk", "7"])  # keeps 7 classes, not 5
    assert code == 2 and "interrupted run with a different configuration (dim: 10 then, 14 now; keep_top (--topk, " \
                         "5 at least): 5 then, 7 now)" in error_line(err)
    code, _, err = run_main(["info", output])
    assert code == 2 and ("predictions.csv is not written yet: an interrupted or running classification has done 2 of "
                          f"{3 + len(bad)} images and keeps its work in") in error_line(err)
    killed_before_its_csv([images, output, *args])  # resumed, then killed
    assert not output.exists() and (tmp_path / "predictions.csv.posteriors.h5").is_file()
    code, _, err = run_main(["info", output])
    assert code == 2 and "its images are described, in" in error_line(err) and "to write it" in error_line(err)
    code, out, _ = run_main(["info", tmp_path / "predictions.csv.posteriors.h5"])  # only what the CSV needs
    assert code == 0 and "10-d float32" in out and "the top 5 classes of each image kept" in out
    code, out, err = run_main(["classify", images, output, *args])
    assert code == 0, err
    assert "the posteriors of every image were described by an interrupted run" in err
    assert out == fresh_out and "top-1 error 66.67%" in out
    assert read_csv(output) == read_csv(fresh)
    assert not list(tmp_path.glob("predictions.csv.*"))  # its posteriors removed with their work


def test_cli_a_second_run_into_a_csv_being_written_is_refused(small_network_for_cli, folder, tmp_path):
    """Two runs into one CSV: one removed the other's posteriors file as "made otherwise", or
    wrote its CSV from the other's (another seed's numbers under its own command)."""
    images, _ = folder
    output = tmp_path / "predictions.csv"
    with output_locked(output):  # as a run into it holds it, from its posteriors to its CSV
        code, _, err = run_main(["classify", images, output, *FAST])
    assert code == 2 and error_line(err) == (f"Error: another vggfeat run is writing {output} (lock held on "
                                             f"{tmp_path / 'predictions.csv.parts'}/lock)"), err
    assert run_main(["classify", images, output, *FAST])[0] == 0
    assert sorted(path.name for path in tmp_path.glob("predictions.csv*")) == ["predictions.csv"]


def test_cli_a_csv_of_no_classified_image_exits_1(small_network_for_cli, folder, tmp_path):
    """Every image failed: it said "wrote", exit 0, as extract did."""
    images, _ = folder
    code, _, err = run_main(["classify", images / "bad", tmp_path / "p.csv", *FAST])
    assert code == 1 and error_line(err) == (f"Error: no image could be described: {len(BAD_FILES)} failed, which "
                                             f"{tmp_path / 'p.csv'} lists with their reasons"), err
    assert (tmp_path / "p.csv").is_file()  # the failures, each with its reason
    if rerun.recorded_in_file(tmp_path / "p.csv") is not None:  # the same command again has nothing to do, and fails alike
        again, _, err_again = run_main(["classify", images / "bad", tmp_path / "p.csv", *FAST])
        assert again == 1 and "nothing to do" in err_again and error_line(err_again) == error_line(err), err_again


def test_cli_an_existing_csv_refused_names_what_a_killed_run_left_beside_it(small_network_for_cli, folder, tmp_path):
    """A run killed as it removed its posteriors, its CSV in place: the same command refuses the
    CSV and names the file left (disk the user would not know of), which --overwrite takes up."""
    images, _ = folder
    output, fresh = tmp_path / "out.csv", tmp_path / "fresh.csv"
    assert run_main(["classify", images, fresh, *FAST, "-q"])[0] == 0
    killed_before_its_csv([images, output, *FAST, "-q"])
    shutil.copy(fresh, output)  # the CSV in place, then killed
    code, _, err = run_main(["classify", images, output, *FAST, "-q"])
    assert code == 2 and error_line(err) == (f"Error: {output} already exists; pass --overwrite to replace it (a killed run "
                                             "left out.csv.posteriors.h5 beside it: --overwrite takes up what it described "
                                             "with the same options; or remove it)")
    code, _, err = run_main(["classify", images, output, *FAST, "--overwrite"])
    assert code == 0 and "the posteriors of every image were described by an interrupted run" in err
    assert read_csv(output) == read_csv(fresh)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["fresh.csv", "images", "out.csv"]
    shutil.copy(tmp_path / "out.csv", tmp_path / "out.csv.posteriors.h5")  # a user's own file of that name: not named
    code, _, err = run_main(["classify", images, output, *FAST, "-q"])
    assert code == 2 and error_line(err) == f"Error: {output} already exists; pass --overwrite to replace it"


def test_folder_labels_are_imagenets_wordnet_ids_all_or_some():
    ids = imagenet_wordnet_ids()
    # Torchvision's class order, in which its weights' category names are (two of them: both cranes).
    assert len(set(ids)) == 1000 and ids == sorted(ids)
    assert [ids[i] for i in (0, 1, 134, 517, 999)] == ["n01440764", "n01443537", "n02012849", "n03126707", "n15075141"]
    names = imagenet_categories()
    assert [names[i] for i in (0, 1, 134, 517, 999)] == ["tench", "goldfish", "crane bird", "crane", "toilet tissue"]
    assert folder_labels(["a.JPEG", "b.JPEG", "c.JPEG"], [3, -1, 999], ids) == {"a.JPEG": 3, "c.JPEG": 999}
    # Some classes only (Imagenette's folders, say): each is its place among the 1000.
    assert folder_labels(["a.JPEG", "b.JPEG", "c.JPEG"], [0, 1, -1], ["n15075141", "n01443537"]) == {"a.JPEG": 999, "b.JPEG": 1}
    for names, classes, message in (([*ids[:9], "dog"], 1000, "'dog' is not one of ImageNet's 1000 classes"),
                                    (["n00000001"], 1000, "'n00000001' is not one of"), ([], 1000, "no class found"),
                                    (ids, 10, "the network has 10: pass a label list")):
        with pytest.raises(vggfeat.VggfeatError, match=message):
            folder_labels(["a.JPEG"], [0], names, classes)


def test_cli_labels_from_imagenet_class_folders(small_network_for_cli, small_vgg, folder, tmp_path):
    """--labels folders: ImageFolder's layout of ImageNet's validation set, a folder per WordNet id,
    all 1000 or some of them. Here a list's labels are the folders: the 3 images under test, and
    two missing files of other classes."""
    images, _ = folder
    _, ranked, _ = labels_by_rank(small_vgg, images, tmp_path)
    classes = {"good/a.png": ranked[0, 0], "good/b.jpg": ranked[1, 3], "good/c.png": ranked[2, -1]}
    wordnet_id = imagenet_wordnet_ids().__getitem__
    missing = sorted(set(range(10)) - set(classes.values()))[:2]  # some classes only, as Imagenette's 10
    listing = tmp_path / "val.txt"
    listing.write_text("".join([*(f"images/{path},{wordnet_id(c)}\n" for path, c in classes.items()),
                                *(f"gone/{c}.JPEG,{wordnet_id(c)}\n" for c in missing)]))
    code, out, err = run_main(["classify", "--file-list", listing, tmp_path / "p.csv", *FAST, "--labels", "folders"])
    assert code == 0, err
    assert "top-1 error 66.67%, top-5 error 33.33% over 3 labelled images" in out
    assert f"{len(missing)} labelled images that failed" in err
    rows = {row["path"]: row for row in read_csv(tmp_path / "p.csv")}
    assert all(rows[f"images/{path}"]["true_class"] == str(c) for path, c in classes.items())
    # The same from every posterior kept in an .h5 (whose classes are those folders), exported,
    # the failed images' true classes included; classify without --labels says that it could
    # report the errors.
    code, _, err = run_main(["classify", "--file-list", listing, tmp_path / "p.h5", *FAST])
    assert code == 0 and "the images' classes are ImageNet's WordNet ids: --labels folders reports" in err
    code, exported_out, err = run_main(["export", tmp_path / "p.h5", tmp_path / "e.csv", "--to", "csv", "--labels", "folders"])
    assert code == 0, err
    assert exported_out == out and f"{len(missing)} labelled images that failed" in err
    assert read_csv(tmp_path / "e.csv") == list(rows.values())
    listing.write_text(f"images/good/a.png,{wordnet_id(1)}\nimages/good/b.jpg,cat\n")
    code, _, err = run_main(["classify", "--file-list", listing, tmp_path / "q.csv", *FAST, "--labels", "folders"])
    assert code == 2 and "ImageNet's WordNet ids (n01440764, ...), all 1000 or some of them: 'cat' is not one of" in error_line(err)
    assert not (tmp_path / "q.csv").exists()


def test_the_api_writes_the_csv_of_the_command(small_network_for_cli, small_vgg, folder, tmp_path):
    images, bad = folder
    assert run_main(["classify", images, tmp_path / "cli.csv", *FAST, "-q", "--no-flip", "--scales", "224"])[0] == 0
    classifier = Classifier(small_vgg, scales=[224], flip=False, device="cpu")
    result = vggfeat.predictions.classify_images(classifier, vggfeat.find_images(images), tmp_path / "api.csv", topk=5)
    assert (result.classified, result.failed) == (3, len(bad)) and result.seconds > 0
    assert read_csv(tmp_path / "api.csv") == read_csv(tmp_path / "cli.csv")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["api.csv", "cli.csv", "images"]
    with output_locked(tmp_path / "held.csv"), pytest.raises(vggfeat.VggfeatError, match="another vggfeat run is writing"):
        vggfeat.predictions.classify_images(classifier, vggfeat.find_images(images), tmp_path / "held.csv")  # as the command


def test_cli_a_csvs_posteriors_are_counted_in_the_disk_warning(small_network_for_cli, folder, tmp_path, monkeypatch):
    images, bad = folder
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1000))
    code, _, err = run_main(["classify", images, tmp_path / "predictions.csv", *FAST, "-q"])
    assert code == 0, err
    needed = (3 + len(bad)) * (2 * 5 * 4 + vggfeat.job._ROW_EXTRAS)  # the top 5 classes an image, float32, at most
    assert f"WARNING: this run needs up to {size_text(needed)} more disk and 1000 B is free" in " ".join(err.split())
    assert "--dtype" not in err  # classify has none


def test_cli_fused_networks_are_all_counted_in_the_first_disk_warning(two_networks, folder, tmp_path, monkeypatch):
    images, bad = folder
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1000))
    code, _, err = run_main(["classify", images, tmp_path / "predictions.csv", *FAST, "--model", "vgg16,vgg19", "-q"])
    assert code == 0, err
    per_network = (3 + len(bad)) * (1000 * 4 + vggfeat.job._ROW_EXTRAS)  # every posterior, float32, at most
    warnings = [" ".join(line.split()) for line in err.splitlines() if line.startswith("WARNING: this run needs")]
    assert [warning.split(" more disk")[0] for warning in warnings] == [
        f"WARNING: this run needs up to {size_text(2 * per_network)}", f"WARNING: this run needs up to {size_text(per_network)}"]


@pytest.mark.parametrize("command", ["classify", "export"])
def test_a_csv_killed_once_written_is_taken_up_by_the_same_command(small_network_for_cli, small_vgg, folder, tmp_path,
                                                                   monkeypatch, command):
    """classify's CSV, and export --to csv's, the command killed just after the CSV was written
    (renamed into place; classify's posteriors files removed): the same command again has nothing
    to do and says the errors again, where it refused the CSV as another's (--overwrite, which
    classified every image again)."""
    import vggfeat.cli.posteriors

    images, _ = folder
    needs_extended_attributes(tmp_path)
    _, _, labels = labels_by_rank(small_vgg, images, tmp_path)
    output = tmp_path / "top.csv"
    args = ["classify", images, output, *FAST, "--topk", "3", "--labels", labels]
    if command == "export":
        posteriors = tmp_path / "posteriors.h5"
        assert run_main(["classify", images, posteriors, *FAST, "-q"])[0] == 0
        args = ["export", posteriors, output, "--to", "csv", "--topk", "3", "--labels", labels]
    write_predictions = vggfeat.cli.posteriors.write_predictions

    def killed_once_written(*args, **kwargs):
        write_predictions(*args, **kwargs)
        raise Killed()

    monkeypatch.setattr(vggfeat.cli.posteriors, "write_predictions", killed_once_written)
    with pytest.raises(Killed):
        run_main(args)
    monkeypatch.undo()
    left = sorted(tmp_path.iterdir())
    code, out, err = run_main(args)
    assert code == 0, err
    assert f"{output} already holds the " in err + out and "nothing to do" in err + out
    assert out.splitlines()[-1] == "top-1 error 66.67%, top-5 error 33.33% over 3 labelled images (dense, Q=224)"
    assert sorted(tmp_path.iterdir()) == left


def test_a_csv_is_written_from_a_posteriors_file_as_classify_writes_it(small_network_for_cli, small_vgg, folder, tmp_path):
    """Posteriors kept in an .h5 (merged from shards, say) give the CSV that classify writes, and
    stay: from Python, and with 'vggfeat export --to csv'."""
    images, bad = folder
    _, _, labels = labels_by_rank(small_vgg, images, tmp_path)
    posteriors = tmp_path / "posteriors.h5"
    assert run_main(["classify", images, posteriors, *FAST, "-q"])[0] == 0
    code, direct_out, direct_err = run_main(["classify", images, tmp_path / "direct.csv", *FAST, "--topk", "3", "--labels", labels])
    assert code == 0
    result = vggfeat.predictions.write_predictions(tmp_path / "api.csv", imagenet_categories(), 3, labels=read_labels(labels),
                                                   posteriors=posteriors)
    assert read_csv(tmp_path / "api.csv") == read_csv(tmp_path / "direct.csv") and result.classified == 3
    code, out, err = run_main(["export", posteriors, "--to", "csv", "--topk", "3", "--labels", labels])
    assert code == 0, err
    assert read_csv(tmp_path / "posteriors.csv") == read_csv(tmp_path / "direct.csv")
    assert out == direct_out and "top-1 error 66.67%, top-5 error 33.33% over 3 labelled images (dense, Q=224)" in out
    assert f"wrote {tmp_path / 'posteriors.csv'}: 3 images classified, {len(bad)} failed" in err
    assert posteriors.is_file()
    code, _, err = run_main(["export", posteriors, "--to", "csv"])
    assert code == 2 and "already exists" in error_line(err)
    if rerun.recorded_in_file(tmp_path / "posteriors.csv") is not None:  # the same command again: its result again
        assert "made with other options (" in error_line(err) and "; --topk: 3 then, none now)" in error_line(err)
        code, again, err = run_main(["export", posteriors, "--to", "csv", "--topk", "3", "--labels", labels])
        assert code == 0 and again == (f"{tmp_path / 'posteriors.csv'} already holds the CSV of this command on these "
                                       f"files, unchanged since; nothing to do\n{out}"), err
    code, _, err = run_main(["export", posteriors, tmp_path / "all.csv", "--to", "csv", "--topk", "1001"])
    assert code == 2 and "--topk must be between 1 and 1000" in error_line(err) and not (tmp_path / "all.csv").exists()
    code, _, err = run_main(["export", posteriors, tmp_path / "x.npy", "--to", "npy", "--topk", "3"])
    assert code == 2 and "--topk, --labels and --fuse go with --to csv" in err


def test_networks_fused_by_averaging_their_posteriors(small_vgg, folder, tmp_path, monkeypatch):
    """The paper's ConvNet fusion (Sec. 4.4): two networks' posteriors over the same images,
    averaged, ranked; files of other images, or of top classes only, do not fuse."""
    images, bad = folder
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        other = copy.deepcopy(small_vgg)
        other.fc8.weight.copy_(torch.randn_like(other.fc8.weight) * other.fc8.weight.std())
    networks = {0: small_vgg, 1: other}  # by --seed
    monkeypatch.setattr(vggfeat.extractor, "load_network", lambda model, weights="imagenet", seed=0: networks[seed])
    fast = [arg for arg in FAST if arg not in ("--seed", "0")]
    for seed in (0, 1):
        assert run_main(["classify", images, tmp_path / f"{seed}.h5", *fast, "--seed", str(seed), "-q"])[0] == 0
    code, out, err = run_main(["export", tmp_path / "0.h5", tmp_path / "fused.csv", "--to", "csv", "--fuse", tmp_path / "1.h5"])
    assert code == 0, err
    good = [images / path for path in GOOD]
    fused = np.mean([Classifier(networks[seed], scales=[224], flip=False, device="cpu").extract(good) for seed in (0, 1)], axis=0)
    alone = Classifier(small_vgg, scales=[224], flip=False, device="cpu").extract(good)
    rows = [row for row in read_csv(tmp_path / "fused.csv") if not row["error"]]
    assert [row["path"] for row in rows] == GOOD and len(read_csv(tmp_path / "fused.csv")) == 3 + len(bad)
    for row, expected, single in zip(rows, fused, alone):
        top = top_classes(expected[None], 5)[0]
        assert [int(row[f"class_{r}"]) for r in range(1, 6)] == top.tolist()
        np.testing.assert_allclose([float(row[f"probability_{r}"]) for r in range(1, 6)], expected[top], atol=2e-6)
        assert not np.allclose(expected, single, atol=1e-4), "the second network changed nothing: a weak test"
    (images / "good" / "c.png").unlink()  # other images
    assert run_main(["classify", images, tmp_path / "fewer.h5", *fast, "--seed", "1", "-q"])[0] == 0
    code, _, err = run_main(["export", tmp_path / "0.h5", tmp_path / "x.csv", "--to", "csv", "--fuse", tmp_path / "fewer.h5"])
    assert code == 2 and "holds the posteriors of 9 images over 1000 classes" in error_line(err)
    code, _, err = run_main(["export", tmp_path / "0.h5", tmp_path / "x.csv", "--to", "csv", "--fuse", tmp_path / "0.h5"])
    assert code == 2 and f"--fuse {tmp_path / '0.h5'} is the posteriors file itself" in error_line(err)  # was fused, silently
    killed_before_its_csv([images, tmp_path / "p.csv", *fast, "--seed", "0", "-q"])  # a CSV run's own file, of top classes
    with pytest.raises(vggfeat.VggfeatError, match="keeps each image's top classes only"):
        vggfeat.predictions.write_predictions(tmp_path / "x.csv", imagenet_categories(), posteriors=tmp_path / "0.h5",
                                              fuse=[tmp_path / "p.csv.posteriors.h5"])
    assert not (tmp_path / "x.csv").exists()


@pytest.fixture
def two_networks(small_vgg, monkeypatch) -> list:
    """``--model vgg16,vgg19`` loads the small VGG as vgg16 and, as vgg19, one with another fc8;
    returns the (model, weights) that each load was given."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        other = copy.deepcopy(small_vgg)
        other.fc8.weight.copy_(torch.randn_like(other.fc8.weight) * other.fc8.weight.std())
    other.arch, other.weights = "vgg19", WeightsInfo("random", "other", 0)
    networks, loaded = {"vgg16": small_vgg, "vgg19": other}, []

    def load_network(model, weights="imagenet", seed=0):
        loaded.append((model, str(weights)))
        return networks[model]

    monkeypatch.setattr(vggfeat.extractor, "load_network", load_network)
    return loaded


def test_cli_fuses_several_models_in_one_run_as_export_fuses_their_files(two_networks, small_vgg, folder, tmp_path):
    """``--model vgg16,vgg19`` writes the CSV, and reports the errors, that classifying into an .h5
    with each model and exporting the first fused with the second give; killed while the second
    model describes the images, it goes on from there."""
    images, bad = folder
    _, _, labels = labels_by_rank(small_vgg, images, tmp_path)
    args = [*FAST, "--labels", labels, "--part-size", "1"]
    for model in ("vgg16", "vgg19"):
        assert run_main(["classify", images, tmp_path / f"{model}.h5", *FAST, "--model", model, "-q"])[0] == 0
    code, by_export, err = run_main(["export", tmp_path / "vgg16.h5", tmp_path / "export.csv", "--to", "csv",
                                     "--labels", labels, "--fuse", tmp_path / "vgg19.h5"])
    assert code == 0, err
    assert "vgg16 + vgg19 fused" in by_export
    output = tmp_path / "fused.csv"
    with pytest.MonkeyPatch.context() as patch, pytest.raises(RuntimeError, match="simulated crash"):
        crash_on_part(patch, 3 + len(bad) + 2)  # a part an image: vgg16's, then vgg19's first one
        run_main(["classify", images, output, *args, "--model", "vgg16,vgg19"])
    assert (tmp_path / "fused.csv.vgg16.posteriors.h5").is_file() and (tmp_path / "fused.csv.vgg19.posteriors.h5.parts").is_dir()
    code, _, err = run_main(["info", output])
    assert code == 2 and (f"fused.csv is not written yet, the posteriors of its networks: vgg16: its images are described, "
                          f"in {tmp_path / 'fused.csv.vgg16.posteriors.h5'}; run the same classify command to write it; vgg19: "
                          f"an interrupted or running classification has done 1 of {3 + len(bad)} images") in error_line(err)
    two_networks.clear()
    code, out, err = run_main(["classify", images, output, *args, "--model", "vgg16,vgg19"])
    assert code == 0, err
    assert two_networks == [("vgg16", "random"), ("vgg19", "random")]
    assert "vgg16: the posteriors of every image were described by an interrupted run" in err
    assert f"vgg19: {3 + len(bad) - 1} images in" in err  # all but its first, and none of vgg16's again
    assert out == by_export
    assert output.read_bytes() == (tmp_path / "export.csv").read_bytes()
    assert not list(tmp_path.glob("fused.csv.*"))  # every network's posteriors removed with their work


def test_an_image_that_one_network_failed_is_failed_in_the_fusion(two_networks, folder, tmp_path, monkeypatch):
    """Networks may disagree on which images failed (storage that failed one run's reads, say): the
    fusion fails an image that any network failed, naming it, and averages the others."""
    images, bad = folder
    for model, unreadable in (("vgg16", "c.png"), ("vgg19", "b.jpg")):
        with pytest.MonkeyPatch.context() as patch:
            flaky_storage(patch, {unreadable: 100})
            assert run_main(["classify", images, tmp_path / f"{model}.h5", *FAST, "--model", model, "-q"])[0] == 0
    code, _, err = run_main(["export", tmp_path / "vgg16.h5", tmp_path / "fused.csv", "--to", "csv",
                             "--fuse", tmp_path / "vgg19.h5"])
    assert code == 0, err
    assert f"wrote {tmp_path / 'fused.csv'}: 1 image classified, {2 + len(bad)} failed" in err
    rows = {row["path"]: row for row in read_csv(tmp_path / "fused.csv")}
    assert list(rows) == sorted([*GOOD, *bad])
    assert rows["good/b.jpg"]["error"].startswith("vgg19: ") and "input/output error" in rows["good/b.jpg"]["error"].lower()
    assert rows["good/c.png"]["error"].startswith("vgg16: ")
    assert all(not rows[path]["error"].startswith("vgg") and bad[path] in rows[path]["error"].lower() for path in bad)
    fused = np.mean([Classifier(model, weights="random", scales=[224], flip=False, device="cpu").extract([images / "good" / "a.png"])
                     for model in ("vgg16", "vgg19")], axis=0)[0]
    top = top_classes(fused[None], 5)[0]
    assert [int(rows["good/a.png"][f"class_{r}"]) for r in range(1, 6)] == top.tolist()
    np.testing.assert_allclose([float(rows["good/a.png"][f"probability_{r}"]) for r in range(1, 6)], fused[top], atol=2e-6)


def test_the_api_fuses_classifiers_as_the_command(two_networks, small_vgg, folder, tmp_path):
    images, _ = folder
    assert run_main(["classify", images, tmp_path / "cli.csv", *FAST, "--model", "vgg16,vgg19", "-q"])[0] == 0
    classifiers = [Classifier(model, weights="random", scales=[224], flip=False, device="cpu") for model in ("vgg16", "vgg19")]
    vggfeat.predictions.classify_images(classifiers, vggfeat.find_images(images), tmp_path / "api.csv")
    assert (tmp_path / "api.csv").read_bytes() == (tmp_path / "cli.csv").read_bytes()
    with pytest.raises(vggfeat.VggfeatError, match="each network fuses once, got vgg16, vgg16"):
        vggfeat.predictions.classify_images([classifiers[0]] * 2, vggfeat.find_images(images), tmp_path / "x.csv")
    top = Classifier("vgg19", weights="random", scales=[224], flip=False, device="cpu", keep_top=5)
    with pytest.raises(vggfeat.VggfeatError, match="fused networks keep every posterior"):
        vggfeat.predictions.classify_images([classifiers[0], top], vggfeat.find_images(images), tmp_path / "x.csv")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["api.csv", "cli.csv", "images"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["out.h5", "--model", "vgg16,vgg19"], "networks fuse into a CSV OUTPUT; for every posterior, classify into an .h5"),
        (["out.csv", "--model", "vgg16,vgg16"], "each model once, got 'vgg16,vgg16'"),
        (["out.csv", "--model", "vgg16,vgg20"], "'vgg20': choose from vgg11"),
        (["out.csv", "--model", "vgg16,vgg19", "--weights", "d.pth"], "one weights per model (2, comma-separated"),
    ],
)
def test_cli_fusion_user_errors(two_networks, folder, tmp_path, monkeypatch, args, message):
    images, _ = folder
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(["classify", *FAST, images, *args])
    assert code == 2 and message in error_line(err)
    assert two_networks == [] and sorted(path.name for path in tmp_path.iterdir()) == ["images"]


def test_cli_fusion_refuses_a_networks_file_it_did_not_make_before_any_work(two_networks, folder, tmp_path, monkeypatch):
    images, _ = folder
    foreign = tmp_path / "out.csv.vgg19.posteriors.h5"
    assert run_main(["classify", images, foreign, *FAST, "--model", "vgg19", "-q"])[0] == 0  # a user's own file
    monkeypatch.setattr(importlib.import_module("vggfeat.cli.posteriors"), "run_job", lambda *_, **__: pytest.fail("a network ran"))
    code, _, err = run_main(["classify", images, tmp_path / "out.csv", *FAST, "--model", "vgg16,vgg19", "-q"])
    assert code == 2 and f"{foreign} exists and was not made for {tmp_path / 'out.csv'}" in error_line(err)
    assert foreign.is_file() and sorted(path.name for path in tmp_path.iterdir()) == ["images", foreign.name]


def test_cli_names_the_work_that_a_run_with_other_networks_left(two_networks, folder, tmp_path):
    images, _ = folder
    output = tmp_path / "out.csv"
    killed_before_its_csv([images, output, *FAST, "-q"])  # VGG16 alone
    code, _, err = run_main(["classify", images, output, *FAST, "--model", "vgg16,vgg19"])
    assert code == 0, err
    left = tmp_path / "out.csv.posteriors.h5"
    assert f"note: {left} was left by an interrupted run of this CSV with other --model networks" in err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["images", "out.csv", left.name]  # not removed unasked


def test_cli_fused_models_take_a_weights_file_each(two_networks, folder, tmp_path):
    images, _ = folder
    weights = [tmp_path / "d.pth", tmp_path / "e.pth"]
    for each in weights:  # looked for before the (faked) loading
        each.write_bytes(b"")
    code, _, err = run_main(["classify", images, tmp_path / "out.csv", *FAST[4:], "--model", "vgg16,vgg19",
                             "--weights", ",".join(map(str, weights)), "-q"])
    assert code == 0, err
    assert two_networks == [("vgg16", str(weights[0])), ("vgg19", str(weights[1]))]


def test_export_to_csv_takes_classifys_posteriors_only(small_network_for_cli, folder, tmp_path):
    images, _ = folder
    descriptors = tmp_path / "descriptors.h5"
    assert run_main(["extract", images, descriptors, *FAST, "-q"])[0] == 0
    code, _, err = run_main(["export", descriptors, "--to", "csv"])
    assert code == 2 and error_line(err) == (f"Error: {descriptors} holds descriptors, not the posteriors that 'vggfeat "
                                             "classify' writes, of which a CSV is made (descriptors are exported as .npy or "
                                             ".parquet)")
    with pytest.raises(vggfeat.VggfeatError, match="holds descriptors"):
        vggfeat.predictions.write_predictions(tmp_path / "out.csv", imagenet_categories(), posteriors=descriptors)
    killed_before_its_csv([images, tmp_path / "p.csv", *FAST, "-q"])  # a CSV run's own file, of top classes
    code, _, err = run_main(["export", tmp_path / "p.csv.posteriors.h5", "--to", "csv"])
    assert code == 2 and "run that command again to write it" in error_line(err)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["descriptors.h5", "images", "p.csv.posteriors.h5"]


def test_cli_a_csvs_posteriors_are_its_own(small_network_for_cli, folder, tmp_path, monkeypatch):
    """Posteriors left for this CSV with other images are described again; a file by that name that
    classify did not make for this CSV is left alone, and the run refused."""
    images, _ = folder
    output = tmp_path / "predictions.csv"
    posteriors = tmp_path / "predictions.csv.posteriors.h5"
    assert run_main(["classify", images, posteriors, *FAST, "-q"])[0] == 0  # a user's own .h5
    code, _, err = run_main(["classify", images, output, *FAST, "-q"])
    assert code == 2 and f"{posteriors} exists and was not made for {output}" in error_line(err)
    assert posteriors.is_file() and not output.exists()
    posteriors.unlink()
    killed_before_its_csv([images, output, *FAST, "-q"])
    write_rgb(images / "good" / "d.png", 224, 224, seed=4)  # the collection grew before the rerun
    code, _, err = run_main(["classify", images, output, *FAST])
    assert code == 0, err
    assert "interrupted run" not in err and f"{3 + 1} images classified" in err
    assert [row["path"] for row in read_csv(output) if not row["error"]] == [*GOOD, "good/d.png"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing_folder", "out.csv"], "not found"),
        (["IMAGES", "out.csv", "--no-dense"], "dense, multi-crop"),
        (["IMAGES", "out.csv", "--topk", "1001"], "between 1 and 1000"),
        (["IMAGES", "out.csv", "--topk", "0"], "--topk"),
        (["IMAGES", "out.csv", "--scales", "200"], "224"),
        (["IMAGES", "out.csv", "--labels", "nolabels.txt"], "labels file not found"),
        (["IMAGES"], "IMAGES and OUTPUT"),
        (["IMAGES", "out.csv", "--shard", "1/2"], "--shard: for an OUTPUT .h5"),
        (["IMAGES", "out.csv", "--update"], "--update: for an OUTPUT .h5"),
        (["IMAGES", "out.csv", "--retry-failed"], "--retry-failed: for an OUTPUT .h5"),
        (["IMAGES", "out.h5", "--update", "--shard", "1/2"], "it takes no --shard"),
        (["IMAGES", "out.h5", "--update"], "(the same command without --update makes it)"),
    ],
)
def test_cli_user_errors(small_network_for_cli, folder, tmp_path, monkeypatch, args, message):
    images, _ = folder
    monkeypatch.chdir(tmp_path)
    args = [str(images) if arg == "IMAGES" else arg for arg in args]
    code, _, err = run_main(["classify", *FAST, *args])
    assert code == 2
    assert message in error_line(err)
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize("output", ["out.csv", "out.h5"])
def test_cli_labels_beyond_the_classes_are_refused_before_the_images_are_found(small_network_for_cli, folder, tmp_path,
                                                                              monkeypatch, output):
    images, _ = folder
    (tmp_path / "val.txt").write_text("a.png 1000\n")
    monkeypatch.setattr(vggfeat.cli.options, "read_images", lambda *args: pytest.fail("the images were searched"))
    code, _, err = run_main(["classify", images, tmp_path / output, *FAST, "--labels", tmp_path / "val.txt"])
    assert code == 2 and "label 1000 in the labels file, but the network has 1000 classes" in error_line(err)


def test_categories_are_torchvisions():
    categories = imagenet_categories()
    assert len(categories) == 1000 and categories[0] == "tench"
    assert categories == torchvision.models.VGG19_Weights.IMAGENET1K_V1.meta["categories"]
