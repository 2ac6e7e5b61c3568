"""``vggfeat stack``: the descriptors of the same images from several files side by side in one
descriptor file (the paper's Net-D & Net-E, or I+B), which every command then reads as any other."""

from __future__ import annotations

import json
import os
import shutil
import warnings

import h5py
import numpy as np
import pytest

from imagefiles import write_rgb
from runhelpers import FAST, error_line, run_main
from svmhelpers import blobs, edit_config, write_features
import vggfeat.parts
from vggfeat import transfer
from vggfeat.errors import VggfeatError
from vggfeat.features import FeatureFile, load_features
from vggfeat.index import VectorIndex
from vggfeat.search import describe_crops, describe_images, extractor_for
from vggfeat.stack import stack_files, stacked_config

CHEAP = [*FAST, "--layer", "conv3_1", "--quiet"]


@pytest.fixture
def d_and_e(tmp_path):
    """Two networks' files of the same images, the second in another row order, one image failed
    in it: (d.h5, e.h5, the images' paths, labels, classes)."""
    X, y, paths, names = blobs()
    d = write_features(tmp_path / "d.h5", X, paths, y, names, failed={"zz.png": "not an image"})
    order = [i for i in np.random.default_rng(1).permutation(len(paths)) if i != 4]
    e = write_features(tmp_path / "e.h5", 2 * X[order] + 1, [paths[i] for i in order], y[order], names,
                       config={"model": "vgg19"}, failed={paths[4]: "Input/output error", "zz.png": "not an image"})
    return d, e, paths, y, names


def test_a_stacked_file_holds_each_images_descriptors_side_by_side(d_and_e, tmp_path):
    """Each row is the image's row of the first file then its row of the second (matched by path,
    whatever their order), with the first's label; an image one file could not describe is a
    failure, with the reason and its label; the configuration records both files'."""
    d, e, paths, y, names = d_and_e
    with pytest.raises(VggfeatError, match=f"^{d} is given twice: fused or stacked with itself"):
        stack_files([d, d], tmp_path / "dd.h5")  # the same object twice
    with pytest.warns(RuntimeWarning, match="1 image\\(s\\) of .* are left out"):
        result = stack_files([d, e], tmp_path / "de.h5", provenance={"command": "vggfeat stack ..."})
    assert (result.rows, result.failed, result.dim) == (len(paths) - 1, 2, 16)
    with pytest.warns(RuntimeWarning):
        fused = load_features([d, e])
    with FeatureFile(tmp_path / "de.h5") as stacked:
        assert stacked.paths == fused.paths == [p for i, p in enumerate(paths) if i != 4]
        np.testing.assert_array_equal(stacked.read(), fused.X)
        np.testing.assert_array_equal(stacked.labels, np.delete(y, 4))
        assert stacked.classes == names and stacked.config["dim"] == 16
        assert [c["model"] for c in stacked.config["stacked"]] == ["vgg16", "vgg19"]
        failed = stacked.failed()
        assert list(zip(failed.paths, failed.reasons, failed.labels.tolist())) == [
            (paths[4], f"failed in {e}: Input/output error", int(y[4])), ("zz.png", "not an image", -1)]
    with h5py.File(tmp_path / "de.h5", "r") as f:
        assert f["sizes"].shape == (len(paths) - 1, 2) and f.attrs["command"] == "vggfeat stack ..."


def test_files_whose_configuration_records_no_dimension_are_stacked(d_and_e, tmp_path):
    """Files written by other code than vggfeat's need not record their descriptors' dimension in
    their configuration (a KeyError's traceback): each part records its file's own."""
    d, e, *_ = d_and_e
    for path in (d, e):
        with h5py.File(path, "r+") as f:
            f.attrs["config"] = json.dumps({key: value for key, value in json.loads(f.attrs["config"]).items()
                                            if key != "dim"})
    with pytest.warns(RuntimeWarning, match="are left out"):
        stack_files([d, e], tmp_path / "de.h5")
    with FeatureFile(tmp_path / "de.h5") as stacked:
        assert [part["dim"] for part in stacked.config["stacked"]] == [8, 8] and stacked.config["dim"] == 16


def test_a_stack_is_refused_while_another_run_writes_its_output(d_and_e, tmp_path, monkeypatch):
    """It took no lock: an extraction or a merge into the same file, ending after it, replaced it."""
    from vggfeat.parts import output_locked

    with output_locked(tmp_path / "de.h5"), pytest.raises(VggfeatError, match="another vggfeat run is writing"):
        stack_files(d_and_e[:2], tmp_path / "de.h5")
    assert not (tmp_path / "de.h5").exists()
    with pytest.warns(RuntimeWarning, match="left out, having no descriptor"):  # the image e.h5 failed
        stack_files(d_and_e[:2], tmp_path / "de.h5")
    with monkeypatch.context() as patch:  # done: no lock taken (whose folder a read-only disk refuses)
        patch.setattr(vggfeat.parts, "output_locked", lambda output: pytest.fail("locked"))
        assert stack_files(d_and_e[:2], tmp_path / "de.h5").already_done


def test_a_stacked_row_was_read_after_the_earlier_of_its_files_runs(d_and_e, tmp_path):
    """/read_after (what --update compares a file's time with) was the first file's alone: an image
    changed between the second file's run and a later first one was not seen as changed."""
    d, e, _, _, _ = d_and_e
    started = {}
    for name, times in ((d, lambda rows: 2000.0 + 10 * np.arange(rows)),
                        (e, lambda rows: np.r_[5000.0, np.full(rows - 1, 1000.0)])):  # e ran first, but for a row
        with h5py.File(name, "r+") as f:
            f["read_after"] = times(f["paths"].shape[0])
            started[name] = dict(zip(f["paths"].asstr()[:], f["read_after"][:]))
    with pytest.warns(RuntimeWarning):
        stack_files([d, e], tmp_path / "de.h5")
    with FeatureFile(tmp_path / "de.h5") as stacked:
        expected = [min(started[d][path], started[e][path]) for path in stacked.paths]
        np.testing.assert_array_equal(stacked.read_after(), expected)
        assert expected != [started[d][path] for path in stacked.paths]  # the first file's alone, as before


def test_files_that_label_an_image_differently_are_not_fused_on_their_labels(d_and_e, tmp_path):
    """One file's labels must not silently stand for another's: files whose labels of an image
    differ (one made with --archive-classes and one without, say) are refused, naming an image,
    by stack (which writes nothing) and by train-svm and evaluate on the files' own labels; with a
    labels CSV, or to predict, the files' labels play no part and they fuse. The same labels
    under another order of the classes fuse."""
    d, e, paths, y, names = d_and_e
    relabelled = y.copy()
    relabelled[[7, 8]] = (y[[7, 8]] + 1) % len(names)
    failed = {"zz.png": "not an image"}
    other = write_features(tmp_path / "other.h5", 2 * blobs()[0], paths, relabelled, names, failed=failed)
    refusal = (f"cannot fuse {d} and {other}: they label 2 image\\(s\\) differently \\(e.g. {paths[7]}: "
               f"'{names[y[7]]}' in the first, '{names[relabelled[7]]}' in the second\\)")
    with pytest.raises(VggfeatError, match=refusal), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # zz.png, failed in both
        stack_files([d, other], tmp_path / "de.h5")
    assert not (tmp_path / "de.h5").exists()
    with pytest.raises(VggfeatError, match=refusal):
        transfer.train_svm([d, other], C=1.0)
    labels_csv = tmp_path / "labels.csv"
    labels_csv.write_text("".join(f"{path},{names[label]}\n" for path, label in zip(paths, y)))
    model = transfer.train_svm([d, other], labels_csv=labels_csv, C=1.0)
    assert len(transfer.predict(model, [d, other]).paths) == len(paths)
    with pytest.raises(VggfeatError, match=refusal):
        transfer.evaluate(model, [d, other])
    reordered = write_features(tmp_path / "reordered.h5", blobs()[0], paths, len(names) - 1 - y, names[::-1],
                               failed=failed)
    stack_files([d, reordered], tmp_path / "reordered-stack.h5")
    with FeatureFile(tmp_path / "reordered-stack.h5") as stacked:
        assert stacked.classes == names and stacked.labels.tolist() == y.tolist()


def test_an_unlabelled_file_takes_the_labels_of_the_file_stacked_or_fused_with_it(tmp_path):
    """A file described from a flat folder or a list has no classes: stacked with a labelled one
    (in either order), every row and failure takes that file's labels and classes; train-svm on
    them fused trains on those labels."""
    X, y, paths, names = blobs()
    unlabelled = write_features(tmp_path / "flat.h5", np.delete(X, 4, axis=0), np.delete(paths, 4), np.full(len(y) - 1, -1),
                                [], failed={paths[4]: "not an image"})
    labelled = write_features(tmp_path / "labelled.h5", X, paths, y, names, config={"model": "vgg19"})
    for files in ([unlabelled, labelled], [labelled, unlabelled]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # paths[4], failed in the flat file
            stack_files(files, tmp_path / "stacked.h5", overwrite=True)
        with FeatureFile(tmp_path / "stacked.h5") as stacked:
            assert stacked.classes == names and stacked.paths == list(np.delete(paths, 4))
            np.testing.assert_array_equal(stacked.labels, np.delete(y, 4))
            failed = stacked.failed()
            assert failed.paths == [paths[4]] and failed.labels.tolist() == [y[4]]
    with pytest.warns(RuntimeWarning, match=f"1 image\\(s\\) labelled in {unlabelled} are left out"):
        model = transfer.train_svm([unlabelled, labelled], C=1.0)
    assert list(model.svm.classes_) == names and model.training["rows"] == len(paths) - 1


def test_an_svm_on_a_stacked_file_is_the_svm_on_the_files_fused(d_and_e, tmp_path):
    """train-svm on d.h5 and e.h5 fused (--features twice) and on their stacked file: the same
    rows, the same model, the same scores; a model of one scores only files stacked alike."""
    d, e, _, _, _ = d_and_e
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the image that e.h5 failed, left out
        stack_files([d, e], tmp_path / "de.h5")
        fused = transfer.train_svm([d, e], C=1.0)
        stacked = transfer.train_svm(tmp_path / "de.h5", C=1.0)
        np.testing.assert_allclose(stacked.svm.coef_, fused.svm.coef_, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(transfer.score(stacked, tmp_path / "de.h5").scores, transfer.score(fused, [d, e]).scores,
                                   rtol=1e-6, atol=1e-9)
        stack_files([e, d], tmp_path / "ed.h5")
    with pytest.raises(transfer.VggfeatError, match="features extracted with a different configuration than the model: "
                                                    "stacked file 1, model: vgg16 expected, vgg19 found; stacked file 2, "
                                                    "model: vgg19 expected, vgg16 found$"):
        transfer.score(stacked, tmp_path / "ed.h5")
    with pytest.raises(transfer.VggfeatError, match="^the model was trained on the descriptors of 2 network\\(s\\) side by "
                                                    "side \\(vgg16, vgg19\\), got 1 \\(vgg16\\); pass the same networks"):
        transfer.score(stacked, d)


def test_a_model_of_files_fused_scores_their_stacked_file_and_the_other_way_round(d_and_e, tmp_path):
    """d.h5 and e.h5 fused and their stacked file give the same rows, laid out alike: a model of
    either scored the other's (score, evaluate, predict) only as the files it was trained on (the
    number of files was compared). Refused, naming the part as it was given: the networks in
    another order, one extracted otherwise, another number of networks."""
    d, e, paths, _, _ = d_and_e
    e256 = shutil.copy(e, tmp_path / "e256.h5")
    edit_config(e256, scales=[256])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the image that e.h5 failed; scores of training rows
        for files, output in (([d, e], "de.h5"), ([e, d], "ed.h5"), ([d, e256], "de256.h5")):
            stack_files(files, tmp_path / output)
        fused = transfer.train_svm([d, e], C=1.0, normalize="parts")
        stacked = transfer.train_svm(tmp_path / "de.h5", C=1.0, normalize="parts")
        for model, own, other in ((fused, [d, e], tmp_path / "de.h5"), (stacked, tmp_path / "de.h5", [d, e])):
            np.testing.assert_array_equal(transfer.score(model, other).scores, transfer.score(model, own).scores)
            assert transfer.evaluate(model, other)[0]["accuracy"] == transfer.evaluate(model, own)[0]["accuracy"]
            written = transfer.write_predictions(tmp_path / "p.csv", model, other)
            assert (written.rows, written.failed) == (len(paths) - 1, 2)
    different = "^features extracted with a different configuration than the model: "
    for model, files, refusal in (
        (fused, tmp_path / "ed.h5", "stacked file 1, model: vgg16 expected, vgg19 found; stacked file 2, model: vgg19 "
                                    "expected, vgg16 found$"),
        (stacked, [e, d], "features file 1, model: vgg16 expected, vgg19 found; features file 2, model: vgg19 expected, "
                          "vgg16 found$"),
        (fused, tmp_path / "de256.h5", "stacked file 2, scales: \\[224\\] expected, \\[256\\] found$"),
        (stacked, [d, e256], "features file 2, scales: \\[224\\] expected, \\[256\\] found$"),
    ):
        with pytest.raises(VggfeatError, match=different + refusal):
            transfer.score(model, files)
        with pytest.raises(VggfeatError, match=different + refusal):
            transfer.write_predictions(tmp_path / "p.csv", model, files)
    with pytest.raises(VggfeatError, match="^the model was trained on the descriptors of 2 network\\(s\\) side by side "
                                           "\\(vgg16, vgg19\\), got 3 \\(vgg16, vgg19, vgg16\\); pass the same networks "
                                           "in the same order: a --features file each, or one file stacked from them$"):
        transfer.score(fused, [tmp_path / "de.h5", d])


def test_a_model_of_regions_with_their_images_scores_only_rows_that_describe_the_images_alike(tmp_path):
    """I+B grouped otherwise: a model of a stacked file of regions and their images (whole_image
    [False, True]) scored fused files whose second held the regions again (another network's, of
    the same configuration) as its own rows, scores off by up to 1.95: its networks were matched
    part by part, whether a part described the region or its image unasked. Refused, naming the
    part; so is a stacked file of those (a stacked file's flags were not compared either), and a
    stacked I+B file scored by a model of fused files, which record not which of them gave the
    regions their images. The files fused as the stacked one was made, and as the fused model
    was trained, are scored as ever."""
    rng = np.random.default_rng(0)
    images = [f"{i}.jpg" for i in range(6)]
    regions = [f"{image}#xywh={x},0,40,40" for image in images for x in (0, 50)]
    labels, names = np.arange(len(regions)) % 2, ["run", "walk"]
    boxes = write_features(tmp_path / "boxes.h5", rng.random((12, 4)), regions, labels, names)
    wholes = write_features(tmp_path / "images.h5", rng.random((6, 3)), images, [-1] * 6, [], config={"model": "vgg19"})
    boxes19 = write_features(tmp_path / "boxes19.h5", rng.random((12, 3)), regions, labels, names,
                             config={"model": "vgg19"})
    stack_files([boxes, wholes], tmp_path / "ib.h5")
    stack_files([boxes, boxes19], tmp_path / "bb.h5")
    stacked = transfer.train_svm(tmp_path / "ib.h5", C=1.0)
    fused = transfer.train_svm([boxes, wholes], C=1.0)
    own = transfer.score(stacked, tmp_path / "ib.h5").scores
    np.testing.assert_array_equal(transfer.score(stacked, [boxes, wholes]).scores, own)
    np.testing.assert_array_equal(transfer.score(fused, [boxes, wholes]).scores, own)
    different = "^features extracted with a different configuration than the model: "
    for files, refusal in (([boxes, boxes19], "features file 2, whole_image: true expected, false found$"),
                           (tmp_path / "bb.h5", "stacked file 2, whole_image: true expected, false found$")):
        with pytest.raises(VggfeatError, match=different + refusal):
            transfer.score(stacked, files)
    with pytest.raises(VggfeatError, match="^the model was trained on 2 fused features files, whose configurations do "
                                           "not record which gave each region its whole image's descriptor \\(I\\+B\\), "
                                           "and these rows are regions: pass the features files fused as it was "
                                           "trained \\(a --features file each\\)$"):
        transfer.score(fused, tmp_path / "ib.h5")


def test_a_stacked_file_stacked_again_gives_its_parts_in_its_place(d_and_e, tmp_path):
    """Stacking D & E with D is stacking D, E and D: one level of parts, which every reader
    (search's query extractor, info) takes as any; for I+B, each part keeps whether it describes
    whole images."""
    d, e, _, _, _ = d_and_e
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the image that e.h5 failed, left out
        stack_files([d, e], tmp_path / "de.h5")
        stack_files([tmp_path / "de.h5", d], tmp_path / "ded.h5")
    with FeatureFile(tmp_path / "ded.h5") as f:
        assert [part["model"] for part in f.config["stacked"]] == ["vgg16", "vgg19", "vgg16"] and f.config["dim"] == 24
        assert "whole_image" not in f.config and f.read().shape[1] == 24
    box, image, other = ({"model": name, "dim": 4} for name in ("box", "image", "other"))
    regions_and_images = stacked_config([box, image], [False, True])
    assert stacked_config([regions_and_images, other], [False, True]) == {
        "stacked": [box, image, other], "dim": 12, "whole_image": [False, True, True]}


def test_regions_stacked_with_their_images(tmp_path):
    """I+B in one file: each region's descriptor, then its image's; a region whose image failed in
    the file of whole images is a failure."""
    boxes = ["a.jpg#xywh=0,0,40,40", "a.jpg#xywh=10,10,40,40", "b.jpg#xywh=5,5,50,50", "c.jpg#xywh=1,1,40,40"]
    B = np.arange(4 * 3, dtype=np.float32).reshape(4, 3)
    regions = write_features(tmp_path / "boxes.h5", B, boxes, [0, 1, 0, 1], ["run", "walk"])
    images = write_features(tmp_path / "images.h5", [[10.0, 11.0], [20.0, 21.0]], ["a.jpg", "b.jpg"], [-1, -1], [],
                            config={"model": "vgg19"}, failed={"c.jpg": "truncated"})
    with pytest.warns(RuntimeWarning):
        stack_files([regions, images], tmp_path / "ib.h5")
    with FeatureFile(tmp_path / "ib.h5") as stacked:
        assert stacked.paths == boxes[:3] and stacked.classes == ["run", "walk"]
        np.testing.assert_array_equal(stacked.read(), np.hstack([B[:3], [[10, 11], [10, 11], [20, 21]]]))
        assert stacked.failed().reasons == [f"failed in {images}: truncated"]


def test_the_stack_command_and_what_reads_its_file(d_and_e, tmp_path, monkeypatch):
    """The command's line, info's account, an index searched with stacked queries; refused: one
    file, an input as the output, a file given twice, an update of the stacked file."""
    d, e, paths, _, _ = d_and_e
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(["stack", "d.h5", "e.h5", "de.h5"])
    assert code == 0 and out == "wrote de.h5: 29 descriptors (16-d) from 2 files, 2 failed\n", err
    code, out, _ = run_main(["info", "de.h5"])
    assert code == 0 and ("  descriptors  16-d, stacked:\n"
                          "                 vgg16 (random weights) fc7, avg-pooled, scales 224, 8-d\n"
                          "                 vgg19 (random weights) fc7, avg-pooled, scales 224, 8-d\n"
                          "  stacked      from d.h5, e.h5 (rows matched by path)\n") in out
    assert run_main(["index", "de.h5", "de.index.h5", "-q"])[0] == 0
    code, out, err = run_main(["search", "de.index.h5", "--queries", "de.h5", "-k", "1"])  # -k: as --k
    assert code == 0 and out.splitlines()[:3] == [f"query {paths[0]}", f"    1  1.0000  {paths[0]}", f"query {paths[1]}"], err
    for args, error in (
        (["stack", "d.h5", "de2.h5"], "expected two or more FILES and then OUTPUT (see 'vggfeat stack --help')"),
        (["stack", "d.h5", "e.h5", "d.h5", "--overwrite"], "d.h5 is an input of this command too: name another output "
                                                            "(--overwrite replaces outputs, never inputs)"),
        (["stack", "d.h5", "./d.h5", "dd.h5"], "d.h5 is given twice: fused or stacked with itself, a file's "
                                               "descriptors would be repeated side by side"),
        (["train-svm", "--features", "e.h5", "--features", str(e), "m.h5"],
         f"e.h5 and {e} are the same file: fused or stacked with itself, a file's descriptors would be repeated side by side"),
        (["extract", ".", "de.h5", "--update", "--weights", "random", "--device", "cpu"],
         "de.h5 is stacked from d.h5, e.h5 ('vggfeat stack'): run --update on each of those, then stack them again"),
    ):
        code, _, err = run_main(args)
        assert code == 2 and error_line(err) == f"Error: {error}", args


def test_the_same_stack_command_again_has_nothing_to_do_until_a_file_changes(d_and_e, tmp_path, monkeypatch):
    """A script run twice: the stacked file of these very files, unchanged since, is left as it is
    (exit 0); other files, another order or a file written anew since are refused, saying which."""
    monkeypatch.chdir(tmp_path)
    assert run_main(["stack", "d.h5", "e.h5", "de.h5", "-q"])[0] == 0
    made = (tmp_path / "de.h5").stat().st_mtime_ns
    code, out, err = run_main(["stack", "d.h5", str(tmp_path / "e.h5"), "de.h5"])  # the same file, named otherwise
    assert code == 0 and out == ("de.h5 already holds the stack of these files, unchanged since: 29 descriptors (16-d) "
                                 "from 2 files, 2 failed; nothing to do\n"), err
    assert (tmp_path / "de.h5").stat().st_mtime_ns == made
    assert stack_files(["d.h5", "e.h5"], "de.h5").already_done
    (tmp_path / "d2.h5").write_bytes((tmp_path / "e.h5").read_bytes())
    for args, error in (
        (["e.h5", "d.h5"], "made from these files in another order (d.h5, e.h5)"),
        (["d.h5", "d2.h5"], "made from other files (d.h5, e.h5)"),
    ):
        code, _, err = run_main(["stack", *args, "de.h5"])
        assert code == 2 and error_line(err) == f"Error: de.h5 already exists, {error}; pass --overwrite to replace it"
    for overwrite in ([], ["--overwrite"]):  # a slip: the stack named as a model, which --overwrite replaced
        code, _, err = run_main(["train-svm", "d.h5", "de.h5", "--C", "1", *overwrite])
        assert code == 2 and error_line(err) == ("Error: de.h5 already exists: it is a descriptor file (made by 'vggfeat "
                                                 "extract'): --overwrite replaces only a file of the kind this command "
                                                 "writes; name another output (or remove that file first)")
    assert run_main(["train-svm", "d.h5", "m.h5", "--C", "1", "-q"])[0] == 0
    code, _, err = run_main(["stack", "d.h5", "e.h5", "m.h5", "--overwrite"])  # and the other way round
    assert code == 2 and error_line(err).startswith("Error: m.h5 already exists: it is an SVM model (made by 'vggfeat "
                                                    "train-svm'): --overwrite replaces only a file of the kind")
    e = tmp_path / "e.h5"
    e.write_bytes(e.read_bytes())  # written anew (as --update does), a second later
    os.utime(e, ns=(e.stat().st_atime_ns, e.stat().st_mtime_ns + 10**9))
    code, _, err = run_main(["stack", "d.h5", "e.h5", "de.h5"])
    assert code == 2 and error_line(err) == ("Error: de.h5 already exists, made from e.h5 before it last changed; pass "
                                             "--overwrite to replace it")
    assert (tmp_path / "de.h5").stat().st_mtime_ns == made


def test_query_images_of_a_stacked_index_are_described_by_each_network(tmp_path, monkeypatch):
    """D & E: a query image of a stacked index is described by each network, side by side, as the
    database's row of that image; I+B: a query region is its box's descriptor, then its image's."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos").mkdir()
    for name, seed in (("a.jpg", 1), ("b.png", 2), ("c.png", 3)):
        write_rgb(tmp_path / "photos" / name, 240, 300, seed=seed)
    (tmp_path / "boxes.txt").write_text("a.jpg#xywh=10,20,150,200\nb.png#xywh=0,0,230,230\n")
    for args in (["extract", "photos", "d.h5", *CHEAP], ["extract", "photos", "e.h5", *CHEAP, "--model", "vgg11"],
                 ["extract", "--file-list", "boxes.txt", "--root", "photos", "boxes.h5", *CHEAP],
                 ["stack", "d.h5", "e.h5", "de.h5"], ["stack", "boxes.h5", "e.h5", "ib.h5"],
                 ["index", "de.h5", "de.index.h5", "-q"], ["index", "ib.h5", "ib.index.h5", "-q"]):
        code, _, err = run_main(args)
        assert code == 0, (args, err)
    code, out, err = run_main(["search", "de.index.h5", "photos/b.png", "--k", "1", "--device", "cpu"])
    assert code == 0 and out.splitlines() == ["query photos/b.png", "    1  1.0000  b.png"], err
    for stacked, queries, rows in (("de", ["photos/c.png", "photos/a.jpg"], ["c.png", "a.jpg"]),
                                   ("ib", ["photos/b.png#xywh=0,0,230,230"], ["b.png#xywh=0,0,230,230"])):
        index = VectorIndex.load(f"{stacked}.index.h5")
        X, described, failures = describe_images(index, queries, device="cpu")
        with FeatureFile(f"{stacked}.h5") as f:
            expected = f.read([f.paths.index(path) for path in rows], dtype=np.float32)
        assert described == queries and not failures
        np.testing.assert_allclose(X, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    # retrieval-eval --crop-queries: a box of the query image, the whole image for the B part.
    crops = describe_crops(extractor_for(index.config, device="cpu"), ["photos/b.png"], [[0, 0, 230, 230]])
    np.testing.assert_allclose(crops, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    with FeatureFile("ib.h5") as f:
        assert f.config["whole_image"] == [False, True] and "whole_image" not in FeatureFile("de.h5").config


def test_a_stacked_database_made_with_weights_files_needs_one_for_each_before_a_network_loads():
    recipe = {"layer": "fc7", "pooling": "avg", "scales": [256], "aggregate": "mean", "flip": True, "dim": 4096}
    config = {"stacked": [{"model": "vgg16", "weights": "file:d.pth", **recipe},
                          {"model": "vgg19", "weights": "imagenet:IMAGENET1K_V1", **recipe},
                          {"model": "vgg19", "weights": "file:e.pth", **recipe}], "dim": 3 * 4096}
    for weights, got in ((None, 0), ("d.pth", 1), (["d.pth", "e.pth", "f.pth"], 3)):
        with pytest.raises(VggfeatError, match=f"stacked from 3 files, of which these were described with weights from "
                                               f"a file \\(1: file:d.pth, 3: file:e.pth\\); pass --weights with one file for "
                                               f"each, comma-separated in that order \\(got {got}\\)$"):
            extractor_for(config, weights=weights)
    with pytest.raises(VggfeatError, match="none of the 2 files that the database's descriptors are stacked from was "
                                           "described with weights from a file: drop --weights$"):
        extractor_for({"stacked": [config["stacked"][1]] * 2, "dim": 2 * 4096}, weights="d.pth")
    with pytest.raises(VggfeatError, match="weights file not found: nowhere/d.pth"):  # in order: the first part's
        extractor_for(config, weights="nowhere/d.pth, nowhere/e.pth", device="cpu")
