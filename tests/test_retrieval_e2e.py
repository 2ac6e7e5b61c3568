"""Retrieval end to end with the network: near-duplicates (crop, flip, colour change) find each other
first; batched retrieval poolings equal one image at a time; query configurations are checked."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagefiles import smooth_rgb, write_corrupt
from runhelpers import error_line, run_main
from vggfeat import Extractor
from vggfeat.errors import VggfeatError
from vggfeat.index import VectorIndex, build_index
from vggfeat.montage import QUERY_BOX, montage_size
from vggfeat.rerun import recorded_in_file
from vggfeat.retrieval import evaluate_ground_truth, read_ground_truth
from vggfeat.search import describe_crops, describe_images, extractor_for, search

RETRIEVAL = ["--weights", "random", "--seed", "0", "--layer", "conv5_3", "--scales", "224", "--resize-side", "long",
             "--device", "cpu", "--quiet"]


def write_near_duplicates(root) -> list[str]:
    """Three pictures (classes a, b, c), each with a crop, a mirror image and a colour change."""
    paths = []
    for name, seed in (("a", 11), ("b", 22), ("c", 33)):
        (root / name).mkdir(parents=True)
        base = smooth_rgb(240, 320, seed)
        variants = {"orig": base, "crop": base[20:220, 24:290], "flip": base[:, ::-1],
                    "colour": np.clip(base * 0.85 + 20, 0, 255).astype(np.uint8)}
        for kind, picture in variants.items():
            Image.fromarray(np.ascontiguousarray(picture)).save(root / name / f"{kind}.png")
            paths.append(f"{name}/{kind}.png")
    return sorted(paths)


def test_near_duplicates_retrieve_each_other_first(tmp_path):
    images = tmp_path / "photos"
    write_near_duplicates(images)
    code, _, err = run_main(["extract", images, tmp_path / "db.h5", "--pooling", "rmac", *RETRIEVAL])
    assert code == 0, err
    assert run_main(["index", tmp_path / "db.h5", tmp_path / "db.index"])[0] == 0
    code, out, err = run_main(["search", tmp_path / "db.index", "--queries", tmp_path / "db.h5", "--k", "4",
                               tmp_path / "hits.csv"])
    assert code == 0, err
    rows = list(csv.DictReader(open(tmp_path / "hits.csv")))
    for row in rows:
        if row["rank"] in ("2", "3", "4"):  # rank 1 is the image itself; then its 3 duplicates
            assert row["path"].split("/")[0] == row["query"].split("/")[0], row
    code, out, err = run_main(["retrieval-eval", tmp_path / "db.h5"])
    assert code == 0, err
    assert "mAP        1.0000" in out and "recall@1   1.0000" in out
    # A query image, described as the database was (the index says how), and a montage.
    code, out, err = run_main(["search", tmp_path / "db.index", images / "b" / "crop.png", "--k", "3",
                               "--montage", tmp_path / "m.png", "--tile", "64"])
    assert code == 0, err
    listed = [line.split()[-1] for line in out.splitlines() if line.startswith("  ")]
    assert listed[0] == "b/crop.png" and {p.split("/")[0] for p in listed} == {"b"}
    with Image.open(tmp_path / "m.png") as montage:
        assert montage.format == "PNG" and montage.size == montage_size(1, 4, 64)
    assert out.splitlines()[-1] == f"wrote {tmp_path / 'm.png'}: 1 query, 3 hits each (286x104 px)"  # --k 3 of 8
    # No query described: an error, not an empty result that reads as "no hits".
    code, out, err = run_main(["search", tmp_path / "db.index", write_corrupt(tmp_path / "broken.jpg"),
                               tmp_path / "none.csv"])
    assert code == 2 and not (tmp_path / "none.csv").exists() and err.startswith("skipped query ")
    assert error_line(err) == "Error: no query image could be described (each is named above, with the reason)"


def test_mac_retrieves_near_duplicates_from_python(tmp_path, random_vgg16):
    images = tmp_path / "photos"
    paths = write_near_duplicates(images)
    extractor = Extractor(random_vgg16, pooling="mac", layer="conv5_3", scales=[224], resize_side="long", device="cpu")
    assert extractor.pooling == "max" and extractor.normalize == "none"  # MAC is max; the paper's default kept
    X = extractor.extract([images / p for p in paths])
    index = build_index(X, paths, extractor.config(), backend="numpy")
    for result in search(index, X, paths, k=4):
        assert {p.split("/")[0] for p in result.paths} == {result.query.split("/")[0]}
    # A query image that cannot be read is skipped with the decoder's reason.
    broken = write_corrupt(tmp_path / "broken.jpg")
    done = []  # the failed image counted with the described: a progress bar reaches its end
    Q, described, failures = describe_images(index, [broken, images / paths[0]], extractor=extractor, progress=done.append)
    assert sum(done) == 2
    np.testing.assert_allclose(Q, X[:1], rtol=1e-5, atol=1e-6)
    assert described == [str(images / paths[0])]
    assert failures == [(str(broken), failures[0][1])] and "not an image" in failures[0][1].lower()
    # A query described differently is refused before any image is read.
    other = Extractor(random_vgg16, pooling="gem", scales=[224], resize_side="long", device="cpu")
    with pytest.raises(VggfeatError, match="pooling: max expected, gem found"):
        describe_images(index, [images / paths[0]], extractor=other)


@pytest.mark.parametrize("pooling,aggregate", [("gem", "gem"), ("rmac", "mean")])
def test_batched_retrieval_descriptor_equals_one_image_at_a_time(random_vgg16, pooling, aggregate):
    # Different sizes and aspect ratios share padded batches; R-MAC's region grid and GeM's mean
    # must follow each image's own valid area.
    pictures = [smooth_rgb(160, 230, 1), smooth_rgb(240, 150, 2), smooth_rgb(200, 200, 3)]
    extractor = Extractor(random_vgg16, pooling=pooling, aggregate=aggregate, scales=[224, 232], resize_side="long",
                          flip=False, device="cpu", batch_size=8)
    assert extractor.layer == "conv5_3" and extractor.normalize == "l2"
    together = extractor.describe(pictures)
    alone = np.concatenate([extractor.describe([p]) for p in pictures])
    np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1, rtol=1e-5)
    config = extractor.config()
    assert config["resize_side"] == "long" and config["pooling"] == pooling
    assert ("gem_p" in config) == (pooling == "gem")


def test_resize_side_long_is_refused_for_fully_connected_layers(random_vgg16, tmp_path):
    with pytest.raises(VggfeatError, match=r"resize_side='long' \(--resize-side long\) works with conv and pool layers"):
        Extractor(random_vgg16, layer="fc7", resize_side="long", device="cpu")
    Image.fromarray(smooth_rgb(64, 64)).save(tmp_path / "x.png")
    code, _, err = run_main(["extract", tmp_path, tmp_path / "o.h5", "--weights", "random", "--resize-side", "long",
                             "--device", "cpu"])
    assert code == 2 and "not fc7" in error_line(err)


def test_resize_side_long_sets_the_longest_side():
    from vggfeat.resize import resized_shape

    assert resized_shape(300, 400, 224, "long") == (168, 224)
    assert resized_shape(400, 300, 224, "long") == (224, 168)
    assert resized_shape(300, 400, 224) == (224, 298)  # the paper's: shortest side
    assert resized_shape(40, 4000, 224, "long") == (32, 224)  # a panorama keeps a poolable height


def test_index_refuses_query_images_when_the_weights_file_is_unknown(tmp_path):
    index = VectorIndex(paths=["x"], config={"weights": "file:mine.pth", "model": "vgg16"}, vectors=np.ones((1, 4), np.float32))
    with pytest.raises(VggfeatError, match="pass --weights PATH"):
        describe_images(index, [tmp_path / "q.png"])


@pytest.mark.parametrize("options", [{"center_crop": True}, {"jpeg_draft": True}])
def test_query_images_are_described_as_the_database_was(random_vgg16, options):
    database = Extractor(random_vgg16, scales=[256], device="cpu", **options)
    index = VectorIndex(paths=["x"], config=database.config(), vectors=np.ones((1, database.dim), np.float32))
    queries = extractor_for(index.config, device="cpu")
    assert queries.config() == database.config()


# --------------------------------------------------------------------------- query crops (Oxford/Paris protocol)


def test_a_query_crop_is_described_as_the_cropped_picture_alone(tmp_path, random_vgg16):
    """describe_crops equals describing a file of the crop PIL makes of the box (fractional corners
    rounded as PIL rounds them, halves to even); a box past the image is clipped to it."""
    picture = smooth_rgb(240, 320, seed=5)
    Image.fromarray(picture).save(tmp_path / "q.png")
    box, clipped = [30.5, 20.4, 250.5, 200.6], [100, 50, 400, 300]
    with Image.open(tmp_path / "q.png") as image:
        image.crop(box).save(tmp_path / "crop.png")
        image.crop([100, 50, 320, 240]).save(tmp_path / "clipped.png")
    extractor = Extractor(random_vgg16, pooling="gem", scales=[224], resize_side="long", device="cpu")
    done = []
    crops = describe_crops(extractor, [tmp_path / "q.png"] * 2, [box, clipped], progress=done.append)
    expected = extractor.extract([tmp_path / "crop.png", tmp_path / "clipped.png"])
    np.testing.assert_allclose(crops, expected, rtol=1e-5, atol=1e-6)
    assert sum(done) == 2
    whole = extractor.extract([tmp_path / "q.png"])
    assert np.abs(crops[0] - whole[0]).max() > 1e-3  # the crop is not the whole image
    for file, bad_box, words in ((tmp_path / "q.png", [400, 300, 500, 400], r"the region lies outside the image \(320x240\)"),
                                 (tmp_path / "q.png", [0, 0, 20, 200], "the region is 20x200 within the image; the smallest side must be at least 32"),
                                 (write_corrupt(tmp_path / "broken.jpg"), box, "not an image")):
        with pytest.raises(VggfeatError, match=rf"query {file} cropped to \[.*\]: {words}"):
            describe_crops(extractor, [file], [bad_box])


def write_landmarks(root):
    """Three 'landmarks' (a, b, c), each a picture with its object in the middle, its crop and a
    mirrored crop; queries: a and b, boxed on their objects. Returns the ground-truth folder."""
    for name, seed in (("a", 41), ("b", 42), ("c", 43)):
        (root / "images").mkdir(parents=True, exist_ok=True)
        scene = smooth_rgb(240, 320, seed)
        scene[:, :80] = scene[:, -80:] = 128  # around the object: what the other scenes share
        Image.fromarray(scene).save(root / "images" / f"{name}_scene.png")
        Image.fromarray(np.ascontiguousarray(scene[:, 80:240])).save(root / "images" / f"{name}_object.png")
        Image.fromarray(np.ascontiguousarray(scene[:, 80:240][:, ::-1])).save(root / "images" / f"{name}_mirror.png")
    gt = root / "gt"
    gt.mkdir()
    for name in ("a", "b"):
        (gt / f"{name}_1_query.txt").write_text(f"oxc1_{name}_scene 80 0 240 240\n")
        (gt / f"{name}_1_good.txt").write_text(f"{name}_object\n{name}_mirror\n")
        (gt / f"{name}_1_junk.txt").write_text(f"{name}_scene\n")
    return gt


def test_retrieval_eval_crops_the_queries_to_their_boxes(tmp_path, random_vgg16):
    gt = write_landmarks(tmp_path)
    assert run_main(["extract", tmp_path / "images", tmp_path / "db.h5", "--pooling", "gem", *RETRIEVAL])[0] == 0
    code, out, err = run_main(["retrieval-eval", tmp_path / "db.h5", "--gt", gt, "--crop-queries", "--device", "cpu",
                               "--json", tmp_path / "cropped.json", "-q"])
    assert code == 0, err
    code, whole_out, err = run_main(["retrieval-eval", tmp_path / "db.h5", "--gt", gt])
    assert code == 0, err
    # A ground truth folder is compared by its files: the same command again has nothing to do
    # until one of them changes.
    evaluation = ["retrieval-eval", tmp_path / "db.h5", "--gt", gt, "--json", tmp_path / "whole.json"]
    assert run_main(evaluation)[0] == 0
    if recorded_in_file(tmp_path / "whole.json") is not None:
        code, again, err = run_main(evaluation)
        assert code == 0 and again.startswith(f"{tmp_path / 'whole.json'} already holds the results of this command"), err
        (gt / "b_1_junk.txt").write_text("b_scene\nc_scene\n")
        code, _, err = run_main(evaluation)
        assert code == 2 and error_line(err) == (f"Error: {tmp_path / 'whole.json'} already exists, made from gt before it "
                                                 "last changed; pass --overwrite to replace it"), err
        (gt / "b_1_junk.txt").write_text("b_scene\n")  # as it was, for what follows
    assert out.splitlines()[0] == "ground truth (ok / junk): 2 queries (cropped to their boxes) against 9 images"
    assert whole_out.splitlines()[0] == "ground truth (ok / junk): 2 queries against 9 images"
    # What the command reports is the API's evaluation with the crops' descriptors.
    from vggfeat.features import FeatureFile
    from vggfeat.retrieval import prepare

    with FeatureFile(tmp_path / "db.h5") as f:
        X, paths = prepare(f.read(dtype="float32")), f.paths
    extractor = Extractor(random_vgg16, layer="conv5_3", pooling="gem", scales=[224], resize_side="long", device="cpu")
    truth = read_ground_truth(gt)
    Q = prepare(describe_crops(extractor, [tmp_path / "images" / f"{q}_scene.png" for q in ("a", "b")],
                               [item["bbox"] for item in truth]))
    expected = evaluate_ground_truth(X, paths, Q, ["a_scene", "b_scene"], truth)
    reported = json.loads((tmp_path / "cropped.json").read_text())
    assert reported["queries_cropped"] is True
    assert reported["ap_per_query"] == pytest.approx(expected["ap_per_query"])
    assert f"mAP        {expected['map']:.4f}" in out


def test_the_readmes_revisited_evaluation_searches_imlist_with_the_queries_cropped_from_the_whole_folder(
        tmp_path, random_vgg16):
    """The README's revisited evaluation (--protocol --crop-queries) of FEATURES made of the
    dataset's whole folder: the query images, which revisitop's database (imlist) does not hold,
    are cropped from their files but ranked for no query (they were, as non-relevant hits)."""
    write_landmarks(tmp_path)
    database = ["a_object", "a_mirror", "b_object", "b_mirror", "c_scene", "c_object", "c_mirror"]
    (tmp_path / "gnd.json").write_text(json.dumps({"imlist": database, "qimlist": ["a_scene", "b_scene"], "gnd": [
        {"easy": [0, 1], "hard": [], "junk": [], "bbx": [80, 0, 240, 240]},
        {"easy": [2], "hard": [3], "junk": [], "bbx": [80, 0, 240, 240]}]}))
    assert run_main(["extract", tmp_path / "images", tmp_path / "db.h5", "--pooling", "gem", *RETRIEVAL])[0] == 0
    code, out, err = run_main(["retrieval-eval", tmp_path / "db.h5", "--gt", tmp_path / "gnd.json", "--protocol", "medium",
                               "--crop-queries", "--device", "cpu", "--json", tmp_path / "r.json", "-q"])
    assert code == 0 and "warning" not in err, err
    assert out.splitlines()[0] == "revisited ground truth, medium: 2 queries (cropped to their boxes) against 7 images"
    reported = json.loads((tmp_path / "r.json").read_text())
    assert (reported["database"], reported["distractors"], reported["query_images_left_out"]) == (7, 0, 2)
    # The API's evaluation of the crops against the rows of imlist alone.
    from vggfeat.features import FeatureFile
    from vggfeat.retrieval import prepare

    with FeatureFile(tmp_path / "db.h5") as f:
        X, paths = prepare(f.read(dtype="float32")), f.paths
    kept = [row for row, path in enumerate(paths) if Path(path).stem in database]
    extractor = Extractor(random_vgg16, layer="conv5_3", pooling="gem", scales=[224], resize_side="long", device="cpu")
    truth = read_ground_truth(tmp_path / "gnd.json", "medium")
    Q = prepare(describe_crops(extractor, [tmp_path / "images" / f"{q}_scene.png" for q in ("a", "b")],
                               [item["bbox"] for item in truth]))
    expected = evaluate_ground_truth(X[kept], [paths[row] for row in kept], Q, None, truth)
    assert reported["ap_per_query"] == pytest.approx(expected["ap_per_query"])


def test_crop_queries_says_where_it_looked_for_query_images_not_found(tmp_path):
    gt = write_landmarks(tmp_path)
    assert run_main(["extract", tmp_path / "images", tmp_path / "db.h5", "--pooling", "gem", *RETRIEVAL])[0] == 0
    (tmp_path / "images").rename(tmp_path / "moved")
    base = ["retrieval-eval", tmp_path / "db.h5", "--gt", gt, "--crop-queries", "--device", "cpu"]
    code, _, err = run_main(base)
    assert code == 2 and (f"2 query images not found (e.g. {tmp_path / 'images' / 'a_scene.png'}); they are looked for in "
                          f"{tmp_path / 'images'}, where they were described: --root names another folder") in error_line(err)
    code, _, err = run_main([*base, "--root", tmp_path / "elsewhere"])
    assert code == 2 and f"is --root {tmp_path / 'elsewhere'} their folder?" in error_line(err)
    assert run_main([*base, "--root", tmp_path / "moved", "-q"])[0] == 0


def test_crop_queries_needs_ground_truth_with_boxes(tmp_path):
    gt = write_landmarks(tmp_path)
    (gt / "b_1_query.txt").write_text("oxc1_b_scene\n")  # no box
    for args, message in ((["--crop-queries"], "--crop-queries goes with --gt"),
                          (["--gt", gt, "--crop-queries"], "--crop-queries: 1 query of the ground truth without a "
                                                           "bounding box (e.g. b_scene)")):
        code, _, err = run_main(["retrieval-eval", tmp_path / "nowhere.h5", *args])
        assert code == 2 and message in error_line(err), err


def test_search_for_what_a_box_of_the_query_image_holds(tmp_path):
    write_landmarks(tmp_path)
    query = tmp_path / "images" / "a_scene.png"
    assert run_main(["extract", tmp_path / "images", tmp_path / "db.h5", "--pooling", "gem", *RETRIEVAL])[0] == 0
    assert run_main(["index", tmp_path / "db.h5", tmp_path / "db.index", "-q"])[0] == 0
    code, out, err = run_main(["search", tmp_path / "db.index", query, "--box", "80,0,240.4,240", "--k", "4",
                               tmp_path / "hits.csv", "--montage", tmp_path / "m.png", "--tile", "64", "-q"])
    assert code == 0, err
    with Image.open(tmp_path / "m.png") as montage:  # the box outlined on the query (tests/test_retrieval.py)
        assert (np.asarray(montage.convert("RGB")) == QUERY_BOX).all(axis=2).any()
    index = VectorIndex.load(tmp_path / "db.index")
    crop = describe_crops(extractor_for(index.config, device="cpu"), [query], [[80, 0, 240.4, 240]])
    whole = describe_images(index, [query], device="cpu")[0]
    expected = search(index, crop, [str(query)], k=4)[0]
    rows = list(csv.DictReader(open(tmp_path / "hits.csv")))
    assert [row["path"] for row in rows] == expected.paths
    np.testing.assert_allclose([float(row["score"]) for row in rows], expected.scores, atol=1e-5)
    whole = search(index, whole, [str(query)], k=4)[0]
    assert not np.allclose(whole.scores, expected.scores, atol=1e-4)  # the box, not the whole image
    # A query file whose name is not UTF-8 is named as every other query of such a name is (a traceback before).
    odd = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9.png"))
    shutil.copy(query, odd)
    code, _, err = run_main(["search", tmp_path / "db.index", odd, "--box", "80,0,240.4,240", "--k", "1",
                             tmp_path / "odd.csv", "-q"])
    assert code == 0, err
    assert [row["query"] for row in csv.DictReader(open(tmp_path / "odd.csv"))] == [f"{tmp_path}/caf\\xe9.png"]
    # The same box as a region of the query image, beside the whole image: a query each.
    code, out, err = run_main(["search", tmp_path / "db.index", f"{query}#xywh=80,0,160,240", query, "--k", "4",
                               tmp_path / "both.csv", "--montage", tmp_path / "both.png", "-q"])
    assert code == 0, err
    rows = list(csv.DictReader(open(tmp_path / "both.csv")))
    assert [row["query"] for row in rows] == [f"{query}#xywh=80,0,160,240"] * 4 + [str(query)] * 4
    assert [row["path"] for row in rows] == expected.paths + whole.paths
    np.testing.assert_allclose([float(row["score"]) for row in rows[:4]], expected.scores, atol=1e-5)
    code, _, err = run_main(["search", tmp_path / "db.index", f"{query}#xywh=80,0,0,240"])
    assert code == 2 and "query " in error_line(err) and "the region is empty" in error_line(err), err
    for args, message in (([query, query, "--box", "1,2,3,4"], "--box crops one query image: give one image file"),
                          ([query, "--box", "1,2,3"], "Invalid value for '--box': a bounding box is 4 numbers x1 y1 x2 y2 "
                                                      "with x1 < x2 and y1 < y2, got '1,2,3'"),
                          ([query, "--box", "5,2,3,4"], "a bounding box is 4 numbers x1 y1 x2 y2")):
        code, _, err = run_main(["search", tmp_path / "db.index", *args])
        assert code == 2 and message in error_line(err), err
