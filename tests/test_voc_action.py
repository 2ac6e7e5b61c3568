"""VOC2012's action classification (the paper's appendix): the persons of its action sets,
each a box of its image, described as regions, classified per action, scored by VOC's AP and
written as the evaluation server's result files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from imagefiles import write_rgb
from runhelpers import FAST, error_line, read_output, run_main
from svmhelpers import write_features
from vggfeat.errors import VggfeatError
from vggfeat.features import load_features
from vggfeat.metrics import multilabel_metrics
from vggfeat.regions import Region
from vggfeat.svm import LinearSVM
from vggfeat.voc import read_action_set, row_key, targets_of_set

# Each image: its objects, in annotation order, (name, xmin, ymin, xmax, ymax) in VOC's 1-based,
# inclusive pixels, and, for a person of a set, its action.
ANNOTATED = {
    "2011_000001": [("dog", 1, 1, 40, 40, None), ("person", 11, 21, 70, 120, "jumping"), ("person", 101, 1, 180, 150, "walking")],
    "2011_000002": [("person", 1, 1, 90, 100, "walking")],
    "2011_000003": [("person", 51, 31, 150, 130, "other"), ("person", 1, 41, 60, 160, "jumping")],
    "2011_000004": [("person", 21, 11, 100, 140, "walking"), ("chair", 1, 1, 20, 20, None), ("person", 111, 21, 190, 150, "jumping")],
    "2012_000001": [("person", 31, 21, 130, 150, "jumping"), ("person", 131, 11, 200, 160, "walking")],
    "2012_000002": [("person", 41, 1, 140, 90, "walking")],
}
SETS = {"trainval": ["2011_000001", "2011_000002", "2011_000003", "2011_000004"], "test": ["2012_000001", "2012_000002"]}
ACTIONS = ("jumping", "other", "walking")


def write_action_devkit(root, withheld: bool = False):
    """A VOC2012-like devkit: JPEGImages (200x160), Annotations, and ImageSets/Action's files for
    SETS (``withheld``: the test set's files list 'id object' without labels, as VOC2012's)."""
    for folder in ("JPEGImages", "Annotations", "ImageSets/Action"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for seed, (image, objects) in enumerate(ANNOTATED.items()):
        write_rgb(root / "JPEGImages" / f"{image}.jpg", 160, 200, seed=seed)
        boxes = "".join(f"<object><name>{name}</name><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax>"
                        f"<ymax>{y2}</ymax></bndbox></object>" for name, x1, y1, x2, y2, _ in objects)
        (root / "Annotations" / f"{image}.xml").write_text(f"<annotation><filename>{image}.jpg</filename>{boxes}</annotation>")
    for name, images in SETS.items():
        (root / "ImageSets" / "Action" / f"{name}.txt").write_text("".join(f"{image}\n" for image in images))
        persons = [(image, number, action) for image in images
                   for number, (*_, action) in enumerate(ANNOTATED[image], start=1) if action]
        for action in ACTIONS:
            label = "" if withheld and name == "test" else None
            (root / "ImageSets" / "Action" / f"{action}_{name}.txt").write_text("".join(
                f"{image} {number}" + (label if label is not None else f" {1 if done == action else -1:2d}") + "\n"
                for image, number, done in persons))
    return root


def test_an_action_set_is_its_persons_with_their_boxes_and_actions(tmp_path):
    devkit = write_action_devkit(tmp_path / "VOC2012")
    trainval = read_action_set(devkit, "trainval")
    assert trainval.ids == ["2011_000001", "2011_000001", "2011_000002", "2011_000003", "2011_000003", "2011_000004",
                            "2011_000004"]
    assert trainval.objects == [2, 3, 1, 1, 2, 1, 3]  # the dog and the chair are objects too
    assert trainval.regions[:2] == [Region(10, 20, 60, 100), Region(100, 0, 80, 150)]  # 1-based inclusive corners
    assert trainval.classes == ["jumping", "walking"]  # "other" is no action scored
    assert trainval.labels.tolist() == [[1, -1], [-1, 1], [-1, 1], [-1, -1], [1, -1], [-1, 1], [1, -1]]
    assert trainval.keys[0] == "2011_000001#xywh=10,20,60,100" == row_key("../x/JPEGImages/2011_000001.jpg#xywh=10,20,60,100")
    # Persons are matched by their image's id and box, whatever folder the list named; whole images are not persons.
    paths = [f"JPEGImages/{key.replace('#', '.jpg#')}" for key in trainval.keys] + ["JPEGImages/2011_000002.jpg"]
    targets = targets_of_set(trainval, paths[::-1], "training")
    assert targets.paths == paths[:-1] and targets.y.tolist() == (trainval.labels == 1).tolist()
    with pytest.raises(VggfeatError, match=r"1 of the 7 training persons are not in the features file \(e.g. "
                                           r"2011_000004#xywh=110,20,80,130\): describe their regions"):
        targets_of_set(trainval, paths[:-2], "training")
    assert read_action_set(write_action_devkit(tmp_path / "withheld", withheld=True), "test").classes == []
    with pytest.raises(VggfeatError, match="has no action set 'val' .* its sets: test, trainval"):
        read_action_set(devkit, "val")
    (devkit / "ImageSets" / "Action" / "walking_test.txt").write_text("2012_000001 1  1\n")
    with pytest.raises(VggfeatError, match="walking_test.txt lists other persons than jumping_test.txt"):
        read_action_set(devkit, "test")


def test_protocol_voc_classifies_persons_by_the_action_sets_with_their_images(tmp_path):
    """Features of persons (regions) fused with their whole images (I+B): SVMs per action on
    trainval, VOC's AP on test, "other" a negative of each; result files for the server."""
    devkit = write_action_devkit(tmp_path / "VOC2012")
    sets = {name: read_action_set(devkit, name) for name in SETS}
    persons = [f"JPEGImages/{key.replace('#', '.jpg#')}" for name in SETS for key in sets[name].keys]
    images = sorted({f"JPEGImages/{image}.jpg" for image in ANNOTATED})
    rng = np.random.default_rng(0)
    X_boxes, X_images = rng.standard_normal((len(persons), 6)), rng.standard_normal((len(images), 5))
    boxes = write_features(tmp_path / "boxes.h5", X_boxes, persons, np.full(len(persons), -1), [])
    whole = write_features(tmp_path / "images.h5", X_images, images, np.full(len(images), -1), [])
    results = tmp_path / "results"
    code, out, err = run_main(["protocol", "voc", boxes, whole, "--voc-devkit", devkit, "--C", "1", "--results", results,
                               "--json", tmp_path / "voc.json"])
    assert code == 0, err
    stacked = np.hstack([X_boxes, X_images[[images.index(p.split("#")[0]) for p in persons]]])
    train, test = stacked[:7], stacked[7:]
    svm = LinearSVM(C=1.0, multilabel=True).fit(train, sets["trainval"].labels == 1)
    scores = svm.decision_function(test)
    expected = multilabel_metrics(sets["test"].labels == 1, scores, ["jumping", "walking"])
    result = json.loads((tmp_path / "voc.json").read_text())
    assert result["persons"] and result["classes"] == ["jumping", "walking"] and result["train_rows"] == 7
    assert result["map_area"] == pytest.approx(expected["map_area"]) and "voc protocol: 7 training / 3 test persons (trainval / test of" in out
    assert "comp10_action_test_<class>.txt): VOC's evaluation server takes them in results/VOC2012/Action/" in out
    for k, action in enumerate(["jumping", "walking"]):
        lines = [line.split() for line in (results / f"comp10_action_test_{action}.txt").read_text().splitlines()]
        assert [fields[:2] for fields in lines] == [["2012_000001", "1"], ["2012_000001", "2"], ["2012_000002", "1"]]
        np.testing.assert_allclose([float(fields[2]) for fields in lines], scores[:, k], atol=1e-6)
    assert not (results / "comp10_action_test_other.txt").exists()
    # Two networks' regions and images (the paper's D & E, I+B): the regions' files first.
    more_boxes = write_features(tmp_path / "boxes-e.h5", X_boxes + 1, persons, np.full(len(persons), -1), [])
    more_images = write_features(tmp_path / "images-e.h5", X_images + 1, images, np.full(len(images), -1), [])
    fused = load_features([boxes, more_boxes, whole, more_images])
    assert fused.paths == persons
    np.testing.assert_allclose(fused.X, np.hstack([X_boxes, X_boxes + 1, stacked[:, 6:], stacked[:, 6:] + 1]), rtol=1e-6)


def test_voc_persons_lists_what_extract_describes_and_protocol_voc_finds(tmp_path):
    devkit = write_action_devkit(tmp_path / "VOCdevkit" / "VOC2012")
    lists = tmp_path / "lists"
    lists.mkdir()
    code, out, err = run_main(["protocol", "voc-persons", devkit, lists / "persons.txt", "--images", lists / "images.txt"])
    assert code == 0, err
    assert out.strip() == f"wrote {lists / 'persons.txt'}: 10 persons of 6 images (trainval, test), and their 6 images whole " \
                          f"into {lists / 'images.txt'}"
    lines = (lists / "persons.txt").read_text().splitlines()
    assert lines[0] == "../VOCdevkit/VOC2012/JPEGImages/2011_000001.jpg#xywh=10,20,60,100" and len(lines) == 10
    code, _, err = run_main(["protocol", "voc-persons", devkit, lists / "persons.txt"])
    assert code == 2 and "persons.txt already exists; pass --overwrite" in error_line(err)
    # Never over a file the devkit's sets are read from, nor both lists into one file, even with --overwrite.
    action_set = devkit / "ImageSets" / "Action" / "jumping_trainval.txt"
    before = action_set.read_bytes()
    code, _, err = run_main(["protocol", "voc-persons", devkit, action_set, "--set", "trainval", "--overwrite"])
    assert code == 2 and "jumping_trainval.txt is an input of this command too" in error_line(err), err
    assert action_set.read_bytes() == before
    code, _, err = run_main(["protocol", "voc-persons", devkit, lists / "p.txt", "--images", lists / "p.txt"])
    assert code == 2 and "--images " in error_line(err) and "is OUTPUT too" in error_line(err)
    assert not (lists / "p.txt").exists()
    for name in ("persons", "images"):
        code, _, err = run_main(["extract", "--file-list", lists / f"{name}.txt", tmp_path / f"{name}.h5", *FAST,
                                 "--layer", "conv1_1"])
        assert code == 0, err
    assert read_output(tmp_path / "persons.h5")["sizes"][0].tolist() == [100, 60]  # the first person's box
    code, out, err = run_main(["protocol", "voc", tmp_path / "persons.h5", tmp_path / "images.h5", "--voc-devkit", devkit,
                               "--C", "1"])
    assert code == 0 and "voc protocol: 7 training / 3 test persons" in out and "| jumping |" in out, err
