"""Retrieval end to end with the network: near-duplicates (crop, flip, colour change) find each other
first; batched retrieval poolings equal one image at a time; query configurations are checked."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from imagefiles import smooth_rgb, write_corrupt
from runhelpers import error_line, reusing_network, run_main
from vggfeat import Extractor
from vggfeat.errors import VggfeatError
from vggfeat.index import VectorIndex, build_index
from vggfeat.montage import montage_size
from vggfeat.search import describe_images, extractor_for, search

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


def test_near_duplicates_retrieve_each_other_first(tmp_path, random_vgg16):
    images = tmp_path / "photos"
    write_near_duplicates(images)
    with reusing_network(random_vgg16):
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
    with pytest.raises(VggfeatError, match="resize-side long works with conv and pool layers"):
        Extractor(random_vgg16, layer="fc7", resize_side="long", device="cpu")
    Image.fromarray(smooth_rgb(64, 64)).save(tmp_path / "x.png")
    with reusing_network(random_vgg16):
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
    with reusing_network(random_vgg16):
        queries = extractor_for(index, device="cpu")
    assert queries.config() == database.config()
