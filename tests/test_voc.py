"""PASCAL VOC's image sets from a devkit folder, and its "difficult" images: left out of their
class's SVM and average precision only, as VOC's evaluation (VOCevalcls) leaves them out."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

import vggfeat.report
from runhelpers import error_line, run_main
from svmhelpers import write_features
from vggfeat.errors import VggfeatError
from vggfeat.metrics import ap_area, ap_voc07_11pt, multilabel_metrics
from vggfeat.rerun import recorded_in_file
from vggfeat.svm import LinearSVM, load_model
from vggfeat.voc import DIFFICULT, read_image_set, targets_of_set, train_difficult

CLASSES = ("cat", "dog")


def write_devkit(root, sets: dict[str, dict[str, dict[str, int]]]):
    """``sets``: {set name: {image id: {class: 1, -1 or 0}}} as ImageSets/Main's files."""
    folder = root / "ImageSets" / "Main"
    folder.mkdir(parents=True)
    for name, images in sets.items():
        (folder / f"{name}.txt").write_text("".join(f"{image}\n" for image in images))
        for cls in CLASSES:
            # The devkit's own format: the label right-aligned in two places ("%s %2d").
            (folder / f"{cls}_{name}.txt").write_text("".join(f"{image} {labels[cls]:2d}\n" for image, labels in images.items()))
    return root


def test_an_image_set_is_read_with_its_difficult_images(tmp_path):
    devkit = write_devkit(tmp_path / "VOC2007", {"test": {"000001": {"cat": 1, "dog": -1}, "000002": {"cat": 0, "dog": 1}}})
    voc = read_image_set(devkit, "test")
    assert voc.ids == ["000001", "000002"] and voc.classes == ["cat", "dog"]
    assert voc.labels.tolist() == [[1, -1], [0, 1]]
    # Rows found by file name, whatever folder the features file was extracted from.
    targets = targets_of_set(voc, ["JPEGImages/000002.jpg", "JPEGImages/000001.jpg", "JPEGImages/000003.jpg"], "test")
    assert targets.paths == ["JPEGImages/000001.jpg", "JPEGImages/000002.jpg"]
    assert targets.y.tolist() == [[True, False], [False, True]]
    assert targets.ignore.tolist() == [[False, False], [True, False]]
    # A region of an image (vggfeat.regions) is not the image that the set labels.
    beside = ["JPEGImages/000001.jpg", "JPEGImages/000002.jpg#xywh=0,0,40,40", "JPEGImages/000002.jpg"]
    assert targets_of_set(voc, beside, "test").paths == ["JPEGImages/000001.jpg", "JPEGImages/000002.jpg"]
    with pytest.raises(VggfeatError, match=r"1 of the 2 test images are not in the features file \(e.g. 000002\)"):
        targets_of_set(voc, beside[:2], "test")


def test_what_is_not_a_devkit_set_is_refused_clearly(tmp_path):
    with pytest.raises(VggfeatError, match=r"is not a VOC devkit folder: it has no ImageSets/Main"):
        read_image_set(tmp_path, "test")
    devkit = write_devkit(tmp_path / "VOC2007", {"trainval": {"000001": {"cat": 1, "dog": -1}}})
    with pytest.raises(VggfeatError, match=r"has no image set 'test' .*; its sets: trainval"):
        read_image_set(devkit, "test")
    (devkit / "ImageSets" / "Main" / "dog_trainval.txt").write_text("000001 -1\n000009  1\n")
    with pytest.raises(VggfeatError, match=r"dog_trainval.txt, line 2: an id not in the set: '000009 1'"):
        read_image_set(devkit, "trainval")
    # Two lines of one id: the other image of the set, unlabelled, read as difficult (0), silently.
    two = write_devkit(tmp_path / "two", {"trainval": {"000001": {"cat": 1, "dog": -1}, "000002": {"cat": -1, "dog": 1}}})
    (two / "ImageSets" / "Main" / "cat_trainval.txt").write_text("000001  1\n000001  1\n")
    with pytest.raises(VggfeatError, match=r"cat_trainval.txt, line 2: an id labelled on an earlier line: '000001 1'"):
        read_image_set(two, "trainval")
    (devkit / "ImageSets" / "Main" / "dog_trainval.txt").write_text("000001 yes\n")
    with pytest.raises(VggfeatError, match=r"line 1: expected 'id label', label 1, -1 or 0"):
        read_image_set(devkit, "trainval")
    voc = read_image_set(write_devkit(tmp_path / "other", {"test": {"000001": {"cat": 1, "dog": -1}}}), "test")
    with pytest.raises(VggfeatError, match=r"1 of the 1 test images are not in the features file \(e.g. 000001\)"):
        targets_of_set(voc, ["000002.jpg"], "test")


def test_a_difficult_image_leaves_its_own_classs_ap_only():
    scores = np.array([[0.9, 0.1], [0.8, 0.7], [0.3, 0.9], [0.2, 0.2]])
    truth = np.array([[True, False], [False, True], [True, True], [False, False]])
    ignore = np.zeros_like(truth)
    ignore[1, 0] = True  # the second image is difficult for class 0: a high-scoring negative there otherwise
    metrics = multilabel_metrics(truth, scores, ["a", "b"], ignore)
    kept = [0, 2, 3]
    assert metrics["per_class"][0]["ap_voc07_11pt"] == pytest.approx(ap_voc07_11pt(scores[kept, 0], truth[kept, 0]))
    assert metrics["per_class"][0]["ap_voc07_11pt"] == pytest.approx(1.0)
    assert multilabel_metrics(truth, scores, ["a", "b"])["per_class"][0]["ap_voc07_11pt"] < 0.99  # counted, it costs
    assert metrics["per_class"][1] == {**multilabel_metrics(truth, scores, ["a", "b"])["per_class"][1], "ignored": 0}
    assert (metrics["per_class"][0]["ignored"], metrics["per_class"][0]["support"]) == (1, 2)


def test_a_row_ignored_for_a_class_is_left_out_of_that_classs_svm_only():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 6))
    Y = np.stack([X[:, 0] > 0, X[:, 1] > 0], axis=1)
    ignore = np.zeros_like(Y)
    ignore[:8, 0] = True
    params = dict(C=1.0, multilabel=True, tol=1e-10, max_iter=100_000, normalize=False)
    with_ignore = LinearSVM(**params).fit(X, Y, ignore=ignore)
    without_rows = LinearSVM(**params).fit(X[8:], Y[8:])  # class 0's problem without those rows
    plain = LinearSVM(**params).fit(X, Y)
    np.testing.assert_allclose(with_ignore.coef_[0], without_rows.coef_[0], atol=1e-6)
    np.testing.assert_allclose(with_ignore.intercept_[0], without_rows.intercept_[0], atol=1e-6)
    np.testing.assert_array_equal(with_ignore.coef_[1], plain.coef_[1])  # the other class trains on every row
    assert not np.allclose(with_ignore.coef_[0], plain.coef_[0], atol=1e-3)
    with pytest.raises(VggfeatError, match="multi-label"):
        LinearSVM(C=1.0).fit(X, Y[:, 0], ignore=ignore)


def clustered_devkit(tmp_path):
    """Cats and dogs in clusters; in each set, a cat-like image difficult for cat and a dog-like
    one difficult for dog. Returns (devkit, features file, sets, rows)."""
    rng = np.random.default_rng(1)
    centres = {"cat": np.array([4.0, 0, 0, 0]), "dog": np.array([0, 4.0, 0, 0]), None: np.array([0, 0, 4.0, 0])}
    sets, rows = {}, []
    for name, start, count in (("trainval", 0, 30), ("test", 100, 15)):
        images = {}
        for i in range(count):
            image, kind = f"{start + i:06d}", (None, "cat", "dog")[i % 3]
            labels = {cls: 1 if cls == kind else -1 for cls in CLASSES}
            if i in (4, 5):  # a cat-like image difficult for cat, a dog-like one for dog
                labels[kind] = 0
            images[image] = labels
            rows.append((f"JPEGImages/{image}.jpg", centres[kind] + 0.3 * rng.standard_normal(4)))
        sets[name] = images
    devkit = write_devkit(tmp_path / "VOCdevkit" / "VOC2007", sets)
    features = write_features(tmp_path / "voc07.h5", np.array([x for _, x in rows]), [p for p, _ in rows],
                              np.full(len(rows), -1), [])
    return devkit, features, sets, rows


def test_protocol_voc_from_a_devkit(tmp_path):
    """Each test set's difficult image of a class sits in that class's cluster but is not a
    positive: VOC leaves it out of the class's AP, where it would otherwise be a false positive
    ranked first."""
    devkit, features, sets, rows = clustered_devkit(tmp_path)
    code, out, err = run_main(["protocol", "voc", features, "--voc-devkit", devkit, "--C", "1", "--json", tmp_path / "voc.json"])
    assert code == 0, err
    result = json.loads((tmp_path / "voc.json").read_text())
    assert (result["train_rows"], result["test_rows"], result["train_set"], result["test_set"]) == (30, 15, "trainval", "test")
    assert [(row["class"], row["support"], row["ignored"]) for row in result["per_class"]] == [("cat", 4, 1), ("dog", 4, 1)]
    assert result["map_voc07_11pt"] == pytest.approx(1.0)  # each difficult image left out of its class's ranking
    assert "(trainval / test of" in out and "| class | positives | difficult |" in out and "| cat | 4 | 1 |" in out

    # train-svm and evaluate with the devkit: the protocol's model and numbers, step by step.
    model = tmp_path / "voc.svm.h5"
    code, out, err = run_main(["train-svm", features, model, "--voc-devkit", devkit, "--C", "1"])
    assert code == 0, err
    assert "trained 2 labels on 30 rows" in out
    code, out, err = run_main(["evaluate", model, features, "--voc-devkit", devkit, "--report", tmp_path / "report"])
    assert code == 0, err
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["per_class"] == result["per_class"] and metrics["examples"] == 15
    code, _, err = run_main(["evaluate", model, features, "--voc-devkit", devkit, "--voc-set", "none-such"])
    assert code == 2 and "has no image set 'none-such'" in error_line(err)

    # The same commands again, with the devkit's set files unchanged since: nothing to do; a class file
    # changed since is named.
    again = {"protocol": ["protocol", "voc", features, "--voc-devkit", devkit, "--C", "1", "--json", tmp_path / "voc.json"],
             "train-svm": ["train-svm", features, model, "--voc-devkit", devkit, "--C", "1"],
             "evaluate": ["evaluate", model, features, "--voc-devkit", devkit, "--report", tmp_path / "report"]}
    if recorded_in_file(tmp_path / "voc.json") is not None:  # where the file system keeps extended attributes
        for name, args in again.items():
            code, out, err = run_main(args)
            assert code == 0 and "nothing to do" in out.splitlines()[0], (name, err)
        class_file = devkit / "ImageSets" / "Main" / "cat_test.txt"
        class_file.write_text(class_file.read_text())  # written anew: its time changed
        for name in ("protocol", "evaluate"):
            code, _, err = run_main(again[name])
            assert code == 2 and "made from cat_test.txt before it last changed" in error_line(err), (name, err)
        assert run_main(again["train-svm"])[0] == 0  # made from the trainval set's files alone

    # The same sets without the difficult flags (difficult images as negatives) rank them first.
    lines = {"train": [], "test": []}
    for name, which in (("trainval", "train"), ("test", "test")):
        for image, labels in sets[name].items():
            lines[which].append(f"JPEGImages/{image}.jpg")
    labels_csv = tmp_path / "labels.csv"
    labels_csv.write_text("".join(f"JPEGImages/{image}.jpg,{';'.join(c for c in CLASSES if labels[c] == 1) or 'none'}\n"
                                  for images in sets.values() for image, labels in images.items()))
    for which in lines:
        (tmp_path / f"{which}.txt").write_text("\n".join(lines[which]) + "\n")
    code, _, err = run_main(["protocol", "voc", features, "--labels", labels_csv, "--train-list", tmp_path / "train.txt",
                             "--test-list", tmp_path / "test.txt", "--C", "1", "--json", tmp_path / "plain.json"])
    assert code == 0, err
    plain = {row["class"]: row["ap_voc07_11pt"] for row in json.loads((tmp_path / "plain.json").read_text())["per_class"]}
    assert plain["cat"] < 0.95 and plain["dog"] < 0.95

    # Two networks' files of the same images are fused (here a file and its copy: the same SVMs, scaled).
    copy = shutil.copy(features, tmp_path / "copy.h5")
    code, _, err = run_main(["protocol", "voc", features, copy, "--voc-devkit", devkit, "--C", "1",
                             "--json", tmp_path / "fused.json"])
    assert code == 0, err
    assert json.loads((tmp_path / "fused.json").read_text())["map_voc07_11pt"] == pytest.approx(1.0)
    partial = write_features(tmp_path / "partial.h5", np.array([x for _, x in rows[:-1]]), [p for p, _ in rows[:-1]],
                             np.full(len(rows) - 1, -1), [])
    code, _, err = run_main(["protocol", "voc", features, partial, "--voc-devkit", devkit, "--C", "1"])
    assert code == 2 and "cannot fuse" in error_line(err) and "not in the second (e.g. JPEGImages/000114.jpg)" in error_line(err)

    code, _, err = run_main(["protocol", "voc", features, "--voc-devkit", devkit, "--labels", labels_csv])
    assert code == 2 and "--voc-devkit gives the sets and their labels" in error_line(err)


def test_images_of_a_set_that_the_features_file_could_not_describe_are_left_out_with_a_warning(tmp_path):
    """A corrupt JPEG of the test set is a failure of the file, not a row: the protocol runs on the
    others and says so, where it would refuse an image the file does not know."""
    devkit, _, sets, rows = clustered_devkit(tmp_path)
    failed = "JPEGImages/000107.jpg"  # a test image
    kept = [(path, x) for path, x in rows if path != failed]
    features = write_features(tmp_path / "failed.h5", np.array([x for _, x in kept]), [p for p, _ in kept],
                              np.full(len(kept), -1), [], failed={failed: "truncated JPEG"})
    code, _, err = run_main(["protocol", "voc", features, "--voc-devkit", devkit, "--C", "1", "--json", tmp_path / "voc.json"])
    assert code == 0, err
    assert ("warning: 1 image(s) of the test set are left out, having no descriptor "
            f"(e.g. {failed}: truncated JPEG)") in err
    result = json.loads((tmp_path / "voc.json").read_text())
    assert (result["train_rows"], result["test_rows"]) == (30, 14)
    # The same with a labels CSV and lists of each set's paths.
    labels_csv = tmp_path / "labels.csv"
    labels_csv.write_text("".join(f"JPEGImages/{image}.jpg,{';'.join(c for c in CLASSES if labels[c] == 1) or 'none'}\n"
                                  for images in sets.values() for image, labels in images.items()))
    for name, which in (("trainval", "train"), ("test", "test")):
        (tmp_path / f"{which}.txt").write_text("".join(f"JPEGImages/{image}.jpg\n" for image in sets[name]))
    code, _, err = run_main(["protocol", "voc", features, "--labels", labels_csv, "--train-list", tmp_path / "train.txt",
                             "--test-list", tmp_path / "test.txt", "--C", "1", "--json", tmp_path / "listed.json"])
    assert code == 0, err
    assert f"1 image(s) of {labels_csv} are left out, having no descriptor" in err
    assert json.loads((tmp_path / "listed.json").read_text())["test_rows"] == 14
    # The same CSV with a file for each set, which serves both.
    test_rows = [(path, x) for path, x in kept if path.startswith("JPEGImages/0001")]
    train = write_features(tmp_path / "train.h5", np.array([x for _, x in rows[:30]]), [p for p, _ in rows[:30]],
                           np.full(30, -1), [])
    test = write_features(tmp_path / "test.h5", np.array([x for _, x in test_rows]), [p for p, _ in test_rows],
                          np.full(len(test_rows), -1), [], failed={failed: "truncated JPEG"})
    code, _, err = run_main(["protocol", "voc", train, test, "--labels", labels_csv, "--C", "1", "--json", tmp_path / "two.json"])
    assert code == 0, err
    assert f"1 image(s) of {labels_csv} are left out, having no descriptor (e.g. {failed}: truncated JPEG)" in err
    assert json.loads((tmp_path / "two.json").read_text())["test_rows"] == 14
    # And with the file's own labels (here the clusters' kinds) for the listed paths.
    kinds = [("cat", "dog", "none").index(next((c for c in CLASSES if labels[c] == 1), "none"))
             for images in sets.values() for labels in images.values()]
    labelled = write_features(tmp_path / "labelled.h5", np.array([x for _, x in kept]), [p for p, _ in kept],
                              [kind for (path, _), kind in zip(rows, kinds) if path != failed], ["cat", "dog", "none"],
                              failed={failed: "truncated JPEG"})
    code, _, err = run_main(["protocol", "voc", labelled, "--train-list", tmp_path / "train.txt", "--test-list",
                             tmp_path / "test.txt", "--C", "1", "--json", tmp_path / "own.json"])
    assert code == 0, err
    assert f"1 image(s) of the test list are left out, having no descriptor (e.g. {failed}" in err
    assert json.loads((tmp_path / "own.json").read_text())["test_rows"] == 14
    partial = write_features(tmp_path / "partial.h5", np.array([x for _, x in kept]), [p for p, _ in kept],
                             np.full(len(kept), -1), [])  # the image is not even a failure: other images
    code, _, err = run_main(["protocol", "voc", partial, "--voc-devkit", devkit, "--C", "1"])
    assert code == 2 and "1 of the 15 test images are not in the features file (e.g. 000107)" in error_line(err)


@pytest.mark.parametrize("difficult", DIFFICULT)
def test_difficult_training_images_left_out_negatives_or_positives_as_chosen(tmp_path, difficult):
    """The paper does not say how its SVMs took VOC's difficult images; the devkit's example
    classifier takes them as negatives, others as positives. The test set's are left out of the
    AP whatever the choice."""
    devkit, features, sets, rows = clustered_devkit(tmp_path)
    train, test = read_image_set(devkit, "trainval"), read_image_set(devkit, "test")
    paths = [path for path, _ in rows]
    X = np.array([x for _, x in rows])
    positives, difficult_images = train.labels == 1, train.labels == 0
    fitted = {"ignore": dict(Y=positives, ignore=difficult_images), "negative": dict(Y=positives, ignore=None),
              "positive": dict(Y=positives | difficult_images, ignore=None)}[difficult]
    targets = train_difficult(targets_of_set(train, paths, "training"), difficult)
    np.testing.assert_array_equal(targets.y, fitted["Y"])
    assert (targets.ignore is None) == (fitted["ignore"] is None)
    svm = LinearSVM(C=1.0, multilabel=True).fit(X[:30], fitted["Y"], classes=list(CLASSES), ignore=fitted["ignore"])
    scores = svm.decision_function(X[30:])
    expected = multilabel_metrics(test.labels == 1, scores, list(CLASSES), test.labels == 0)

    code, out, err = run_main(["protocol", "voc", features, "--voc-devkit", devkit, "--voc-difficult", difficult, "--C", "1",
                               "--results", tmp_path / "results", "--json", tmp_path / "voc.json"])
    assert code == 0, err
    for k, cls in enumerate(CLASSES):  # the test scores of SVMs trained so
        lines = (tmp_path / "results" / f"comp2_cls_test_{cls}.txt").read_text().splitlines()
        np.testing.assert_allclose([float(line.split()[1]) for line in lines], scores[:, k], atol=1e-6)
    result = json.loads((tmp_path / "voc.json").read_text())
    assert result["difficult_in_training"] == difficult
    assert result["per_class"] == expected["per_class"]
    assert {"ignore": "difficult images left out of each class's SVM and AP",
            "negative": "difficult images negatives in each class's SVM, left out of its AP",
            "positive": "difficult images positives in each class's SVM, left out of its AP"}[difficult] in out
    code, out, err = run_main(["train-svm", features, tmp_path / "m.h5", "--voc-devkit", devkit, "--voc-difficult",
                               difficult, "--C", "1"])
    assert code == 0, err
    assert load_model(tmp_path / "m.h5").training["labels"].endswith(f"difficult images: {difficult}")
    code, _, err = run_main(["train-svm", features, tmp_path / "n.h5", "--voc-difficult", difficult])
    assert code == 2 and "--voc-difficult is for the difficult images of a VOC devkit's sets" in error_line(err)


def test_a_test_set_without_a_positive_says_its_map_is_undefined(tmp_path):
    """Every AP undefined (no class with a positive test image): the summary ended in a TypeError."""
    devkit, features, sets, _ = clustered_devkit(tmp_path)
    for cls in CLASSES:
        (devkit / "ImageSets" / "Main" / f"{cls}_test.txt").write_text("".join(f"{image} -1\n" for image in sets["test"]))
    code, out, err = run_main(["protocol", "voc", features, "--voc-devkit", devkit, "--C", "1"])
    assert code == 0, err
    assert "| cat | 0 | 0 | – | – |" in out and out.splitlines()[-1] == "mAP: – (no class has a positive test image)"
    # evaluate --report too: its plot's title ended in a TypeError, its report half written.
    model = tmp_path / "voc.svm.h5"
    assert run_main(["train-svm", features, model, "--voc-devkit", devkit, "--voc-set", "trainval", "--C", "1"])[0] == 0
    code, out, err = run_main(["evaluate", model, features, "--voc-devkit", devkit, "--report", tmp_path / "report"])
    assert code == 0, err
    assert "mAP (area under PR curve)  undefined (no class has a positive test example)" in out
    assert "- map_area: –" in (tmp_path / "report" / "per_class.md").read_text()


def test_a_reports_curves_leave_out_what_the_aps_leave_out(tmp_path, monkeypatch):
    """Each class's precision-recall curve was drawn over every test row, its difficult image a
    false positive ranked first, under a legend of its AP without it (1.000); the tables had no
    count of the rows left out."""
    devkit, features, sets, _ = clustered_devkit(tmp_path)
    model = tmp_path / "voc.svm.h5"
    assert run_main(["train-svm", features, model, "--voc-devkit", devkit, "--C", "1"])[0] == 0
    drawn = []
    curve = vggfeat.report.precision_recall
    monkeypatch.setattr(vggfeat.report, "precision_recall", lambda scores, positive: drawn.append(
        ap_area(scores, positive)) or curve(scores, positive))
    assert run_main(["evaluate", model, features, "--voc-devkit", devkit, "--report", tmp_path / "report"])[0] == 0
    assert drawn == [pytest.approx(1.0), pytest.approx(1.0)]  # as the legend says: AP 1.000
    assert next(csv.DictReader(open(tmp_path / "report" / "per_class.csv")))["ignored"] == "1"


def test_a_test_set_without_labels_gets_voc_result_files(tmp_path):
    """VOC2012's test labels are withheld: the scores go to result files for VOC's evaluation
    server, one per class, a line '<id> <score>' per test image, and nothing is written over."""
    rng = np.random.default_rng(2)
    trainval = {f"2008_{i:06d}": {"cat": 1 if i % 2 else -1, "dog": -1 if i % 2 else 1} for i in range(12)}
    test_ids = [f"2009_{i:06d}" for i in range(5)]
    devkit = write_devkit(tmp_path / "VOC2012", {"trainval": trainval})
    (devkit / "ImageSets" / "Main" / "test.txt").write_text("".join(f"{image}\n" for image in test_ids))
    assert read_image_set(devkit, "test").classes == []  # no class files
    (devkit / "ImageSets" / "Main" / "cat_test.txt").write_text("".join(f"{image}\n" for image in test_ids))
    assert read_image_set(devkit, "test").classes == []  # class files of ids alone
    paths = [f"{image}.jpg" for image in [*trainval, *test_ids]]
    X = rng.standard_normal((len(paths), 4))
    features = write_features(tmp_path / "voc12.h5", X, paths, np.full(len(paths), -1), [])

    code, _, err = run_main(["protocol", "voc", features, "--voc-devkit", devkit, "--C", "1"])
    assert code == 2 and "test set 'test' of" in error_line(err) and "pass a results folder (--results)" in error_line(err)
    results = tmp_path / "results"
    code, out, err = run_main(["protocol", "voc", features, "--voc-devkit", devkit, "--C", "1", "--results", results,
                               "--json", tmp_path / "voc12.json"])
    assert code == 0, err
    assert "wrote 2 result files into" in out and "mAP" not in out
    svm = LinearSVM(C=1.0, multilabel=True).fit(X[:12], np.array([[v["cat"] == 1, v["dog"] == 1] for v in trainval.values()]))
    expected = svm.decision_function(X[12:])
    for k, cls in enumerate(CLASSES):
        lines = (results / f"comp2_cls_test_{cls}.txt").read_text().splitlines()
        assert [line.split()[0] for line in lines] == test_ids
        np.testing.assert_allclose([float(line.split()[1]) for line in lines], expected[:, k], atol=1e-6)
    assert json.loads((tmp_path / "voc12.json").read_text())["results"] == [
        str(results / f"comp2_cls_test_{cls}.txt") for cls in CLASSES]

    before = (results / "comp2_cls_test_cat.txt").read_text()
    code, _, err = run_main(["protocol", "voc", features, "--voc-devkit", devkit, "--C", "10", "--results", results])
    assert code == 2 and "already holds result files (comp2_cls_test_cat.txt, ...); pass --overwrite" in error_line(err)
    assert (results / "comp2_cls_test_cat.txt").read_text() == before
    code, _, err = run_main(["protocol", "voc", features, "--voc-devkit", devkit, "--C", "10", "--results", results,
                             "--overwrite"])
    assert code == 0, err
    assert (results / "comp2_cls_test_cat.txt").read_text() != before
