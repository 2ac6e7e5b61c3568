"""End to end: images -> ``ExtractionJob`` (seeded random VGG16) -> ``vggfeat train-svm``,
``predict``, ``evaluate --report``, ``protocol caltech`` / ``voc``; and the refusals, each one
``Error:`` line with exit code 2.

The three classes (red stripes, green checks, blue rings) differ in colour and texture, so even
random-weight fc7 descriptors separate them: the assertions are on real outcomes.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import re

import h5py
import numpy as np
import pytest

from runhelpers import Killed, error_line, killed_after_renaming, needs_extended_attributes, run_main
from svmhelpers import LOOKS, blobs, edit_config, set_attr, write_features, write_look_folder
from vggfeat import ExtractionJob, Extractor, find_images, transfer
from vggfeat.features import load_features
from vggfeat.rerun import FILE_ATTRIBUTE, made_from, recorded_in_file
from vggfeat.svm import load_model

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def data(tmp_path_factory, random_vgg16):
    """train.h5 (6 images per class) and test.h5 (3 per class, other images), extracted for real."""
    root = tmp_path_factory.mktemp("transfer")
    extractor = Extractor(random_vgg16, scales=[224], flip=False, device="cpu")
    files = {}
    for name, per_class, seed in (("train", 6, 0), ("test", 3, 50)):
        write_look_folder(root / name, per_class, start_seed=seed)
        files[name] = root / f"{name}.h5"
        ExtractionJob(extractor, find_images(root / name), files[name]).run()
    return root, files


def ok(args) -> str:
    code, out, err = run_main(args)
    assert code == 0, err
    return out


def refused(args) -> str:
    code, _, err = run_main(args)
    assert code == 2, err
    return error_line(err)


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_predict_and_evaluate_say_which_images_have_no_descriptor(data, tmp_path, monkeypatch):
    """A test set's failed images are rows of predict's CSV too, in path order, as classify writes
    them (and its progress counts them), and evaluate says how many labelled ones it could not
    score: an image never silently missing from the results."""
    from vggfeat.cli import common

    monkeypatch.setattr(common, "LOG_EVERY", 0.0)  # a progress line at every update
    root, files = data
    model = tmp_path / "m.h5"
    ok(["train-svm", files["train"], model])
    test = tmp_path / "test.h5"
    test.write_bytes(files["test"].read_bytes())
    failed = ["a_first.jpg", "green_checks/zz_truncated.jpg"]
    with h5py.File(test, "r+") as f:
        for name, values in (("paths", failed), ("errors", ["not an image", "truncated file"]), ("labels", [-1, 1])):
            del f[f"failed/{name}"]
            f.create_dataset(f"failed/{name}", data=values, dtype=h5py.string_dtype("utf-8") if name != "labels" else "int32")
        del f["failed/read_after"]  # (of the failures before: a file of an earlier vggfeat has none)
    code, out, err = run_main(["predict", model, test, tmp_path / "p.csv"])
    assert code == 0 and re.findall(r"^scoring: (\d+) of (\d+) rows", err, flags=re.MULTILINE)[-1] == ("11", "11"), err
    assert out.strip() == (f"wrote {tmp_path / 'p.csv'}: 9 rows, 3 class scores each; 2 images without a descriptor "
                           "(failed), with the reason")
    rows = read_csv(tmp_path / "p.csv")
    assert [r["path"] for r in rows] == sorted([r["path"] for r in rows]) and len(rows) == 11
    by_path = {r["path"]: r for r in rows}
    assert [(by_path[p]["predicted"], by_path[p]["score:green_checks"], by_path[p]["error"]) for p in failed] == [
        ("", "", "not an image"), ("", "", "truncated file")]
    ok(["predict", model, files["test"], tmp_path / "q.csv"])  # the same rows, but for the failures
    assert [r for r in rows if not r["error"]] == read_csv(tmp_path / "q.csv")
    # Named .h5: the scores in HDF5, the failures beside them; 'info' says what it holds.
    code, out, err = run_main(["predict", model, test, tmp_path / "s.h5"])
    assert code == 0 and re.findall(r"^scoring: (\d+) of (\d+) rows", err, flags=re.MULTILINE)[-1] == ("11", "11"), err
    assert out.strip() == (f"wrote {tmp_path / 's.h5'}: 9 rows, 3 class scores each; 2 images without a descriptor "
                           "(failed), with the reason")
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert list(f["paths"].asstr()[:]) == [r["path"] for r in rows if not r["error"]]
        assert list(f["failed/paths"].asstr()[:]) == failed
        classes = list(f["classes"].asstr()[:])
        assert [classes[k] for k in f["predicted"][:]] == [r["predicted"] for r in rows if not r["error"]]
    assert ok(["info", tmp_path / "s.h5"]).splitlines()[:5] == [
        f"{tmp_path / 's.h5'}: a vggfeat scores file, one-vs-rest",
        "  rows         9, 3 scores each (/scores); /predicted: the class of the highest score",
        f"  classes      3: {', '.join(classes)}", "  failed       2 (no descriptor; /failed)",
        f"  model        {model}, checksum {load_model(model).checksum[:16]}…"]
    assert refused(["train-svm", tmp_path / "s.h5", tmp_path / "m2.h5"]).endswith(
        "is not a vggfeat features file: it is a scores file (made by 'vggfeat predict')")
    code, out, err = run_main(["evaluate", model, test])  # the labelled failure is not scored, and said so
    assert code == 0 and "9 test rows" in out
    assert (f"warning: 1 image(s) labelled in {test} are left out, having no descriptor "
            "(e.g. green_checks/zz_truncated.jpg: truncated file)") in err


def test_train_predict_evaluate_with_a_report(data, tmp_path):
    _, files = data
    model = tmp_path / "model.svm.h5"
    out = ok(["train-svm", files["train"], model, "--cv", "2", "--C-grid", "0.1,10"])
    assert "trained 3 classes on 18 rows (4096-d, L2-normalised)" in out and "chosen by 2-fold CV" in out
    saved = load_model(model)
    assert saved.extraction_configs[0]["layer"] == "fc7" and saved.extraction_configs[0]["scales"] == [224]
    assert saved.svm.C_ in (0.1, 10.0) and saved.svm.normalize
    info = ok(["info", model]).splitlines()
    assert info[:2] == [f"{model}: a vggfeat linear SVM model, one-vs-rest", f"  classes      3: {', '.join(sorted(LOOKS))}"]
    assert info[2:4] == [f"  input        4096-d, L2-normalised; C = {saved.svm.C_:g} (by cross-validation); solver liblinear",
                         f"  trained on   18 rows of {files['train']}; labels: the file's own"]

    ok(["predict", model, files["test"], tmp_path / "predictions.csv"])
    rows = read_csv(tmp_path / "predictions.csv")
    assert [r["path"] for r in rows] == [f"{look}/img{i:02d}.png" for look in sorted(LOOKS) for i in range(3)]
    assert list(rows[0]) == ["path", "predicted", *(f"score:{c}" for c in sorted(LOOKS)), "error"]
    assert all(r["error"] == "" for r in rows)
    for r in rows:  # the predicted class is the best-scoring one, and it is right
        scores = {c: float(r[f"score:{c}"]) for c in LOOKS}
        assert r["predicted"] == max(scores, key=scores.get)
    correct = sum(r["predicted"] == r["path"].split("/")[0] for r in rows)
    assert correct >= 8, rows

    out = ok(["evaluate", model, files["test"], "--report", tmp_path / "report"])
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(correct / 9)
    assert f"accuracy                   {correct / 9:.4f}" in out
    truth = np.array([r["path"].split("/")[0] for r in rows])
    predicted = np.array([r["predicted"] for r in rows])
    recalls = [np.mean(predicted[truth == c] == c) for c in sorted(LOOKS)]
    assert metrics["mean_class_recall"] == pytest.approx(np.mean(recalls))
    assert np.trace(np.array(metrics["confusion_matrix"])) == correct
    table = read_csv(tmp_path / "report" / "per_class.csv")
    assert [t["class"] for t in table] == sorted(LOOKS) and all(t["support"] == "3" for t in table)
    assert "| class | support | recall |" in (tmp_path / "report" / "per_class.md").read_text()
    png = (tmp_path / "report" / "confusion_matrix.png").read_bytes()
    assert png.startswith(PNG) and len(png) > 5000


def test_warnings_reach_the_terminal_as_one_line_each(data, tmp_path):
    _, files = data
    code, out, err = run_main(["train-svm", files["train"], tmp_path / "model.svm.h5", "--C", "1", "--max-iter", "1"])
    assert code == 0 and "trained 3 classes" in out
    assert err.splitlines() == ["warning: liblinear reached max_iter=1 before converging in 3 of 3 fits (C = 1); those "
                                "SVMs may be slightly off: raise max_iter (--max-iter), or use a smaller C"]


def test_evaluating_a_model_on_its_own_training_rows_is_said_to_be_that(data, tmp_path, monkeypatch):
    """It printed an accuracy of 1.0 as it would a test set's."""
    _, files = data
    monkeypatch.chdir(files["train"].parent)  # trained on a relative name, evaluated on an absolute one
    ok(["train-svm", files["train"].name, tmp_path / "m.h5", "--C", "1"])
    code, _, err = run_main(["evaluate", tmp_path / "m.h5", files["train"]])
    assert code == 0 and err.splitlines() == [f"warning: {files['train']} is what the model was trained on, by its own "
                                              "labels: these are scores of its training rows, not of a test set"]
    code, _, err = run_main(["evaluate", tmp_path / "m.h5", files["test"]])
    assert code == 0 and err == ""


def test_training_shows_its_fits_progress_and_a_refusal_none(data, tmp_path, monkeypatch):
    from vggfeat.cli import common

    _, files = data
    monkeypatch.setattr(common, "LOG_EVERY", 0.0)  # a line at every fit (a minute apart in a real log)
    code, _, err = run_main(["train-svm", files["train"], tmp_path / "m.h5", "--cv", "2", "--C-grid", "0.1,10"])
    assert code == 0, err
    counts = re.findall(r"^training SVMs: (\d+) of 15 fits \(", err, flags=re.MULTILINE)  # 3 classes x (2 C x 2 folds + 1)
    assert counts == [str(n) for n in range(1, 16)], err
    code, _, err = run_main(["train-svm", files["train"], tmp_path / "m2.h5", "--exclude-class", "nothing-such"])
    assert code == 2 and "training SVMs" not in err
    # --quiet, for a script's log: the result and the warnings, no progress.
    code, out, err = run_main(["train-svm", files["train"], tmp_path / "m3.h5", "--cv", "2", "--C-grid", "0.1,10",
                               "--max-iter", "1", "-q"])
    assert code == 0 and "trained 3 classes" in out
    assert err.startswith("warning: liblinear reached max_iter=1") and "training SVMs" not in err
    for protocol in (["caltech", files["train"], "--train-per-class", "3", "--splits", "1"], ["voc", files["train"], files["test"]]):
        code, out, err = run_main(["protocol", *protocol, "--C", "1", "-q"])
        assert code == 0 and "training SVMs" not in err and out, err


def test_protocol_caltech(data, tmp_path):
    _, files = data
    out = ok(["protocol", "caltech", files["train"], "--train-per-class", "3", "--test-per-class", "2", "--splits", "2",
              "--seed", "1", "--C", "10", "--json", tmp_path / "caltech.json"])
    result = json.loads((tmp_path / "caltech.json").read_text())
    assert result["seed"] == 1 and "2 split(s), seed 1" in out  # --seed draws the splits (they were seed 0's)
    assert [(s["train"], s["test"]) for s in result["splits"]] == [(9, 6), (9, 6)]
    recalls = [s["mean_class_recall"] for s in result["splits"]]
    assert result["mean_class_recall_mean"] == pytest.approx(np.mean(recalls))
    assert result["mean_class_recall_std"] == pytest.approx(np.std(recalls, ddof=1))
    assert result["mean_class_recall_mean"] >= 0.8
    assert f"mean class recall: {100 * np.mean(recalls):.2f} ±" in out and "| split | train | test |" in out
    again = ok(["protocol", "caltech", files["train"], "--train-per-class", "3", "--test-per-class", "2", "--splits", "2",
                "--seed", "1", "--C", "10"])
    assert again.splitlines()[-1] == out.splitlines()[-2]  # seeded: the same splits, the same numbers
    # The same command again into its --json file, unchanged since: nothing to do; the result said again.
    made = (tmp_path / "caltech.json").stat().st_mtime_ns
    if recorded_in_file(tmp_path / "caltech.json") is not None:  # where the file system keeps extended attributes
        again = ok(["protocol", "caltech", files["train"], "--train-per-class", "3", "--test-per-class", "2", "--splits", "2",
                    "--seed", "1", "--C", "10", "--json", tmp_path / "caltech.json"])
        assert again.splitlines() == [f"{tmp_path / 'caltech.json'} already holds the results of this command on these "
                                      "files, unchanged since; nothing to do", *out.splitlines()[:-1]]
        assert (tmp_path / "caltech.json").stat().st_mtime_ns == made
        assert refused(["protocol", "caltech", files["train"], "--train-per-class", "3", "--test-per-class", "2", "--splits",
                        "2", "--seed", "2", "--C", "10", "--json", tmp_path / "caltech.json"]) == (
            f"Error: {tmp_path / 'caltech.json'} already exists, made with other options (--seed: 1 then, 2 now); pass "
            "--overwrite to replace it")
    out = ok(["protocol", "caltech", files["train"], "--train-per-class", "3", "--splits", "1", "--C", "10",
              "--exclude-class", "blue_rings"])
    assert "2 classes" in out


def test_evaluate_leaves_out_the_classes_that_training_excluded(data, tmp_path):
    """Caltech-101's way: BACKGROUND_Google left out of training is left out of the test rows too,
    said, rather than refused as a class the model does not know."""
    _, files = data
    model = tmp_path / "m.h5"
    ok(["train-svm", files["train"], model, "--C", "10", "--exclude-class", "blue_rings", "-q"])
    code, out, err = run_main(["evaluate", model, files["test"]])
    assert code == 0, err
    assert "warning: 3 test rows of 'blue_rings' left out: the model was trained without it (--exclude-class)" in err
    assert out.splitlines()[0] == "single-label, 6 test rows, 2 classes"
    # Multi-label: the class's column is left out, every row stays.
    labels = tmp_path / "labels.csv"
    labels.write_text("".join(f"{path},{path.split('/')[0]}\n" for path in load_features(files["train"]).paths))
    test_labels = tmp_path / "test-labels.csv"
    test_labels.write_text("".join(f"{path},{path.split('/')[0]}\n" for path in load_features(files["test"]).paths))
    ok(["train-svm", files["train"], tmp_path / "ml.h5", "--labels", labels, "--multilabel", "--C", "10",
        "--exclude-class", "blue_rings", "-q"])
    code, out, err = run_main(["evaluate", tmp_path / "ml.h5", files["test"], "--labels", test_labels])
    assert code == 0, err
    assert "warning: 'blue_rings' left out: the model was trained without it (--exclude-class)" in err
    assert out.splitlines()[0] == "multi-label, 9 test rows, 2 classes"


def test_multilabel_training_fusion_and_voc_protocol(data, tmp_path):
    _, files = data
    # Labels by path, several per image: the look, plus 'warm' for red and 'cool' for green and blue.
    csvs = {}
    for name in ("train", "test"):
        lines = ["path,label"]
        for path in load_features(files[name]).paths:
            look = path.split("/")[0]
            lines.append(f"{path},{look};{'warm' if look == 'red_stripes' else 'cool'}")
        csvs[name] = tmp_path / f"labels-{name}.csv"
        csvs[name].write_text("\n".join(lines) + "\n")
    labels = csvs["train"]
    model = tmp_path / "ml.svm.h5"
    # Fusion: a file and its copy stand for two networks (Net-D & Net-E): 8192-d descriptors.
    copies = {name: shutil.copy(files[name], tmp_path / f"copy-{name}.h5") for name in ("train", "test")}
    ok(["train-svm", "--features", files["train"], "--features", copies["train"], model, "--labels", labels,
        "--multilabel", "--C", "10"])  # random-weight descriptors are alike (cosine > 0.94): C=1 underfits
    assert load_model(model).svm.n_features_in_ == 8192
    ok(["predict", model, "--features", files["test"], "--features", copies["test"], tmp_path / "p.csv"])
    rows = read_csv(tmp_path / "p.csv")
    assert sum(set(r["predicted"].split(";")) == {r["path"].split("/")[0], "warm" if r["path"].startswith("red") else "cool"}
               for r in rows) >= 8
    code, _, err = run_main(["predict", model, files["test"], tmp_path / "q.csv"])
    assert code == 2 and "trained on 2 fused features file(s), got 1" in error_line(err)

    # One CSV for both sets (the two folders use the same relative names, with the same labels).
    out = ok(["protocol", "voc", files["train"], files["test"], "--labels", labels, "--C", "10", "--json", tmp_path / "voc.json"])
    result = json.loads((tmp_path / "voc.json").read_text())
    assert result["train_rows"] == 18 and result["test_rows"] == 9
    assert sorted(row["class"] for row in result["per_class"]) == sorted([*LOOKS, "cool", "warm"])
    assert result["map_area"] >= 0.8 and "mAP:" in out
    assert result["map_area"] == pytest.approx(np.mean([row["ap_area"] for row in result["per_class"]]))
    if recorded_in_file(tmp_path / "voc.json") is not None:  # the same command again: nothing to do
        again = ok(["protocol", "voc", files["train"], files["test"], "--labels", labels, "--C", "10", "--json",
                    tmp_path / "voc.json"])
        assert again.splitlines()[1:] == out.splitlines()[:-1] and "nothing to do" in again.splitlines()[0]

    code, out, err = run_main(["evaluate", model, "--features", files["test"], "--features", copies["test"],
                               "--labels", csvs["test"], "--report", tmp_path / "ml-report"])
    assert code == 0, err
    assert (tmp_path / "ml-report" / "precision_recall.png").read_bytes().startswith(PNG)
    metrics = json.loads((tmp_path / "ml-report" / "metrics.json").read_text())
    assert metrics["task"] == "multi-label" and metrics["examples"] == 9 and metrics["map_area"] >= 0.8
    assert "| class | support | ap_voc07_11pt | ap_area |" in (tmp_path / "ml-report" / "per_class.md").read_text()
    if recorded_in_file(tmp_path / "ml-report" / "metrics.json") is not None:  # the same command again: nothing to do
        evaluate = ["evaluate", model, "--features", files["test"], "--features", copies["test"], "--labels", csvs["test"],
                    "--report", tmp_path / "ml-report"]
        code, again, err = run_main(evaluate)
        assert code == 0 and again.splitlines() == [
            f"{tmp_path / 'ml-report'} already holds the report of this command on these files, unchanged since; nothing "
            "to do", *out.splitlines()[:-1]], err
        (tmp_path / "ml-report" / "per_class.md").write_text("my notes\n")
        assert refused(evaluate).startswith(f"Error: {tmp_path / 'ml-report'} already holds a report (metrics.json, ")


def test_results_are_never_written_over_an_existing_file_unasked(data, tmp_path):
    """predict's CSV, evaluate's report and a protocol's --json: an existing file is refused before
    any work and left as it was; --overwrite replaces it, whole."""
    _, files = data
    model = tmp_path / "model.h5"
    ok(["train-svm", files["train"], model, "--C", "1"])
    report = tmp_path / "report"
    report.mkdir()
    kept = {path: f"the user's own {path.name}\n" for path in
            (tmp_path / "predictions.csv", report / "per_class.csv", tmp_path / "caltech.json")}
    for path, text in kept.items():
        path.write_text(text)
    caltech = ["protocol", "caltech", files["train"], "--train-per-class", "3", "--splits", "1", "--C", "1",
               "--json", tmp_path / "caltech.json"]
    assert refused(["predict", model, files["test"], tmp_path / "predictions.csv"]) == (
        f"Error: {tmp_path / 'predictions.csv'} already exists; pass --overwrite to replace it")
    assert refused(["evaluate", model, files["test"], "--report", report]) == (
        f"Error: {report} already holds a report (per_class.csv); pass --overwrite to replace it, or name another folder")
    assert "caltech.json already exists; pass --overwrite" in refused(caltech)
    assert refused([*caltech[:-1], files["train"], "--overwrite"]) == (  # a slip that --overwrite made hours of work lost
        f"Error: Invalid value for '--json': {files['train']} names a .h5 file: --json writes JSON, give a .json file "
        "(see 'vggfeat protocol caltech --help')")
    inputs_json = tmp_path / "inputs.json"  # an input named as --json is refused whatever its name
    inputs_json.write_text("[]")
    assert refused(["protocol", "voc", files["train"], files["test"], "--labels", inputs_json, "--json", inputs_json,
                    "--overwrite"]) == (f"Error: {inputs_json} is an input of this command too: name another output "
                                        "(--overwrite replaces outputs, never inputs)")
    assert refused(["evaluate", model, files["test"], "--labels", report / "per_class.csv", "--report", report,
                    "--overwrite"]) == (f"Error: {report / 'per_class.csv'} is an input of this command too: name "
                                        "another output (--overwrite replaces outputs, never inputs)")
    assert {path: path.read_text() for path in kept} == kept
    assert sorted(p.name for p in report.iterdir()) == ["per_class.csv"]  # nothing written beside it either

    ok(["predict", model, files["test"], tmp_path / "predictions.csv", "--overwrite"])
    ok(["evaluate", model, files["test"], "--report", report, "--overwrite"])
    ok([*caltech, "--overwrite"])
    assert len(read_csv(tmp_path / "predictions.csv")) == 9
    assert [t["class"] for t in read_csv(report / "per_class.csv")] == sorted(LOOKS)
    assert json.loads((tmp_path / "caltech.json").read_text())["splits"][0]["train"] == 9
    assert not [p for p in tmp_path.rglob(".*.tmp")]  # no temporary file left behind
    # A report folder with files of its own, but none of a report's, takes the report.
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    ok(["evaluate", model, files["test"], "--report", other])
    assert (other / "notes.txt").read_text() == "mine" and (other / "metrics.json").exists()


@pytest.mark.parametrize("renamed", [1, 3, 4])
def test_a_report_killed_as_its_files_are_renamed_is_taken_up_by_the_same_command(data, tmp_path, monkeypatch, renamed):
    """evaluate --report killed after ``renamed`` of its 4 files were renamed into place (4: all,
    before the command's next step): the same command again takes the folder for its own, with
    nothing to do or the report written whole, never refusing it as another's (--overwrite)."""
    import vggfeat.files

    _, files = data
    probe = tmp_path / "probe"
    probe.touch()
    try:
        os.setxattr(probe, FILE_ATTRIBUTE, b"{}")
    except (AttributeError, OSError):
        pytest.skip("this file system keeps no extended attributes: a report records nothing")
    model, report = tmp_path / "model.h5", tmp_path / "report"
    ok(["train-svm", files["train"], model, "--C", "1"])
    evaluate = ["evaluate", model, files["test"], "--report", report]
    replace, renames = vggfeat.files.replace_durably, []

    def killed_after_the_renames(*args, **kwargs) -> None:
        replace(*args, **kwargs)
        renames.append(args[1].name)
        if len(renames) == renamed:
            raise Killed()

    monkeypatch.setattr(vggfeat.files, "replace_durably", killed_after_the_renames)
    with pytest.raises(Killed):
        run_main(evaluate)
    monkeypatch.undo()
    assert sorted(p.name for p in report.iterdir()) == sorted(renames)
    code, out, err = run_main(evaluate)
    assert code == 0, err
    assert ("already holds the report of this command" in out) == (renamed == 4)
    written = sorted(report.iterdir())
    assert [p.name for p in written] == ["confusion_matrix.png", "metrics.json", "per_class.csv", "per_class.md"]
    made = recorded_in_file(written[0])
    assert made is not None and all(recorded_in_file(path) == made for path in written)
    assert json.loads((report / "metrics.json").read_text())["examples"] == 9
    assert ok(evaluate).startswith(f"{report} already holds the report of this command on these files, unchanged since")


@pytest.mark.parametrize("command", ["predict", "protocol --json"])
def test_an_output_killed_as_it_is_renamed_into_place_is_taken_up_by_the_same_command(data, tmp_path, monkeypatch,
                                                                                       command):
    """predict's CSV and a --json file, the command killed just after the file was renamed into
    place: the file records how it was made all the same, and the same command again has nothing
    to do, where it refused the file as another's (--overwrite)."""
    _, files = data
    needs_extended_attributes(tmp_path)
    if command == "predict":
        model, output = tmp_path / "model.h5", tmp_path / "predictions.csv"
        ok(["train-svm", files["train"], model, "--C", "1"])
        args, holds = ["predict", model, files["test"], output], "the predictions of this command"
    else:
        output = tmp_path / "caltech.json"
        args = ["protocol", "caltech", files["train"], "--train-per-class", "3", "--test-per-class", "2", "--splits", "1",
                "--C", "1", "--json", output]
        holds = "the results of this command"
    killed_after_renaming(monkeypatch, output.name)
    with pytest.raises(Killed):
        run_main(args)
    monkeypatch.undo()
    written = output.read_bytes()
    assert ok(args).startswith(f"{output} already holds {holds} on these files, unchanged since; nothing to do")
    assert output.read_bytes() == written
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith(".")) == []  # no temporary left


def test_the_same_training_again_has_nothing_to_do_until_an_option_or_a_file_changes(data, tmp_path, monkeypatch):
    """A script run twice: the model of this command on these files, unchanged since, is left as it
    is (exit 0; the same files named otherwise too); other options, files or labels changed since
    are refused, saying which."""
    _, files = data
    monkeypatch.chdir(files["train"].parent)
    model = tmp_path / "model.h5"
    ok(["train-svm", "train.h5", model, "--C", "1"])
    made = model.stat().st_mtime_ns
    assert f"  command      vggfeat train-svm train.h5 {model} --C 1\n" in ok(["info", model])  # what made it
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(transfer, "train_svm", lambda *_, **__: pytest.fail("trained again"))
        for args in ([files["train"], model, "--C", "1"], ["--features", "train.h5", model, "--C", "1.0", "--normalize"]):
            code, out, err = run_main(["train-svm", *args])
            assert code == 0 and out == (f"{model} already holds the SVMs of this command on these files, unchanged since: "
                                         "3 classes, C=1; nothing to do\n"), err
        labels = tmp_path / "labels.csv"
        lines = [f"{path},{path.split('/')[0]}\n" for path in load_features(files["train"]).paths]
        labels.write_text("".join(lines))
        for args, error in ((["train.h5", model, "--C", "2"], "made with other options (--C: 1.0 then, 2.0 now)"),
                            (["test.h5", model, "--C", "1"], "made from other files (train.h5)"),
                            (["train.h5", model, "--C", "1", "--labels", labels],
                             f"made with other options (--labels: none then, {labels} now)")):
            assert refused(["train-svm", *args]) == f"Error: {model} already exists, {error}; pass --overwrite to replace it"
    ok(["train-svm", "train.h5", model, "--C", "1", "--labels", labels, "--overwrite"])
    labels.write_text("".join([lines[-1].split(",")[0] + "," + lines[0].split(",")[1], *lines[:-1]]))  # one relabelled
    os.utime(labels, ns=(labels.stat().st_atime_ns, labels.stat().st_mtime_ns + 10**9))
    assert refused(["train-svm", "train.h5", model, "--C", "1", "--labels", labels]) == (
        f"Error: {model} already exists, made from labels.csv before it last changed; pass --overwrite to replace it")
    assert model.stat().st_mtime_ns != made


def two_networks(tmp_path):
    """d.h5 (4-d) and e.h5 (6-d, 100 times as long) of the same 30 images of 3 classes."""
    X, y, paths, names = blobs(classes=3, per_class=10, dim=10)
    d = write_features(tmp_path / "d.h5", X[:, :4], paths, y, names)
    e = write_features(tmp_path / "e.h5", 100 * X[:, 4:], paths, y, names, config={"model": "vgg19"})
    return d, e


def test_holdout_and_normalize_parts_train_record_and_say_so(tmp_path):
    """--holdout chooses C on one hold-out (the paper's Caltech protocol), --normalize-parts
    normalises each network's part of fused files: said, recorded in the model and shown by info."""
    d, e = two_networks(tmp_path)
    model = tmp_path / "m.h5"
    out = ok(["train-svm", "--features", d, "--features", e, model, "--holdout", "0.2", "--normalize-parts", "-q"])
    assert "on 30 rows (10-d, each part (4 + 6) L2-normalised); C=" in out and "(chosen on a 20% hold-out, score " in out
    params = load_model(model).svm.get_params()
    assert (params["holdout"], params["normalize"], params["part_dims"]) == (0.2, "parts", [4, 6])
    info = ok(["info", model]).splitlines()
    assert info[2].startswith("  input        10-d, each part (4 + 6) L2-normalised; C = ")
    assert "(chosen on a 20% hold-out)" in info[2]


def test_a_stacked_files_parts_and_the_protocols_take_normalize_parts_and_holdout(tmp_path):
    """A 'vggfeat stack' file's parts are its networks' (its config's); protocol caltech chooses
    C on a hold-out of each split's training images, each part normalised."""
    d, e = two_networks(tmp_path)
    X, y, paths, names = blobs(classes=3, per_class=10, dim=10)
    stacked = write_features(tmp_path / "de.h5", X, paths, y, names, config={"stacked": [{"model": "vgg16", "dim": 4},
                                                                                        {"model": "vgg19", "dim": 6}]})
    assert "(10-d, each part (4 + 6) L2-normalised); C=1 (fixed)" in ok(
        ["train-svm", stacked, tmp_path / "stacked.h5", "--normalize-parts", "--C", "1", "-q"])
    out = ok(["protocol", "caltech", d, e, "--train-per-class", "5", "--test-per-class", "2", "--splits", "1", "--holdout",
              "0.2", "--normalize-parts", "-q"])
    assert "mean class recall: " in out


def test_holdout_and_normalize_parts_are_refused_where_they_contradict_or_cannot_be(tmp_path):
    """Each refused before any fit, in a line naming the options (or the file) at odds."""
    d, e = two_networks(tmp_path)
    train = ["train-svm", "--features", d, "--features", e, tmp_path / "other.h5"]
    help_hint = " (see 'vggfeat train-svm --help')"
    assert refused([*train, "--holdout", "0.2", "--C", "1"]) == (
        f"Error: --C 1 fixes C; --holdout 0.2: how a hold-out would choose it: give one or the other{help_hint}")
    assert refused([*train, "--holdout", "0.2", "--cv", "5"]) == (
        f"Error: --holdout 0.2 chooses C on one hold-out, --cv 5 by cross-validation folds: give one or the other{help_hint}")
    assert "Invalid value for '--holdout'" in refused([*train, "--holdout", "1"])
    assert refused([*train, "--normalize-parts", "--no-normalize"]) == (
        f"Error: --normalize-parts L2-normalises each part of the row, --no-normalize nothing: give one or the other{help_hint}")
    assert refused(["train-svm", d, tmp_path / "one.h5", "--normalize-parts"]) == (
        f"Error: --normalize-parts (normalize='parts') L2-normalises each network's part of descriptors side by side, and "
        f"{d} holds one network's (4-d): fuse files (--features d.h5 --features e.h5), or train on a 'vggfeat stack' file; "
        "or normalise the row whole (without --normalize-parts)")
    assert refused(["protocol", "caltech", d, e, "--train-per-class", "2", "--holdout", "0.2"]) == (
        "Error: 2 training images per class are too few to choose C on a 20% hold-out: of the 6 of 3 classes it holds out "
        "2 and trains on 4, where each side needs one of each class: fix --C (in place of --holdout), change --holdout or "
        "raise --train-per-class")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["d.h5", "e.h5"]


def test_a_folder_among_the_inputs_is_recorded_by_its_files(tmp_path):
    """A folder (query images, a ground truth's files) is compared by the files in its tree: the
    same files unchanged, the same record; one added, removed, written anew or renamed, another."""
    (tmp_path / "gt" / "deeper").mkdir(parents=True)
    (tmp_path / "gt" / "a_1_good.txt").write_text("x\n")
    (tmp_path / "gt" / "deeper" / "a_1_query.txt").write_text("oxc1_q 1 2 3 4\n")
    made = made_from([tmp_path / "gt"], {"command": "retrieval-eval"})
    entry = json.loads(made)["inputs"][0]
    assert entry[:3] == [os.path.realpath(tmp_path / "gt"), "folder", 2]
    assert made_from([tmp_path / "gt"], {"command": "retrieval-eval"}) == made
    records = [made]
    for change in (lambda: (tmp_path / "gt" / "a_1_junk.txt").write_text("z\n"),
                   lambda: (tmp_path / "gt" / "a_1_junk.txt").unlink(),  # as it was
                   lambda: (tmp_path / "gt" / "a_1_good.txt").write_text("x\ny\n"),
                   lambda: (tmp_path / "gt" / "deeper" / "a_1_query.txt").rename(tmp_path / "gt" / "deeper" / "b_1_query.txt")):
        change()
        records.append(made_from([tmp_path / "gt"], {"command": "retrieval-eval"}))
    assert records[2] == made and len(set(records)) == 4
    # The command's own output written among those files (--json gt/results.json) is not one of them.
    results = tmp_path / "gt" / "results.json"
    before = made_from([tmp_path / "gt"], {}, outputs=[results])
    results.write_text("{}")
    assert made_from([tmp_path / "gt"], {}, outputs=[results]) == before != made_from([tmp_path / "gt"], {})
    assert made_from([tmp_path / "gt", tmp_path / "absent"], {}) is None


def test_the_same_scoring_again_has_nothing_to_do_into_an_h5_or_a_csv(data, tmp_path):
    """A CSV records how it was made in its extended attributes, with its own size and time: one
    changed since, or copied without them, is refused as any other existing file."""
    _, files = data
    model, scores, csv_file = tmp_path / "model.h5", tmp_path / "scores.h5", tmp_path / "p.csv"
    ok(["train-svm", files["train"], model, "--C", "1"])
    for output in (scores, csv_file):
        ok(["predict", model, files["test"], output])
    made = {output: output.stat().st_mtime_ns for output in (scores, csv_file)}
    assert ok(["predict", model, files["test"], scores]) == (
        f"{scores} already holds the scores of this command on these files, unchanged since: 9 rows, 3 class scores "
        "each; nothing to do\n")
    if recorded_in_file(csv_file) is None:
        pytest.skip("this file system keeps no extended attributes")
    assert ok(["predict", model, "--features", files["test"], csv_file]) == (
        f"{csv_file} already holds the predictions of this command on these files, unchanged since; nothing to do\n")
    assert {output: output.stat().st_mtime_ns for output in made} == made
    assert ok(["info", csv_file]) == (f"{csv_file}: written by vggfeat predict {model} {files['test']} {csv_file}\n"
                                      f"  made from    {model} (unchanged since)\n"
                                      f"               {files['test']} (unchanged since)\n")
    assert refused(["predict", model, files["train"], csv_file]) == (
        f"Error: {csv_file} already exists, made from other files (model.h5, test.h5); pass --overwrite to replace it")
    copied = tmp_path / "copy.csv"
    shutil.copyfile(csv_file, copied)  # its contents alone
    with open(csv_file, "a") as f:
        f.write("a row of the user's\n")
    for output in (csv_file, copied):
        assert refused(["predict", model, files["test"], output]) == f"Error: {output} already exists; pass --overwrite to replace it"
    ok(["predict", model, files["test"], csv_file, "--overwrite"])
    ok(["train-svm", files["train"], model, "--C", "2", "--overwrite"])
    for output in (scores, csv_file):
        assert refused(["predict", model, files["test"], output]) == (
            f"Error: {output} already exists, made from model.h5 before it last changed; pass --overwrite to replace it")
    assert f"  made from    {model} (changed since, or gone)\n" in ok(["info", csv_file])
    none = "records no vggfeat command that wrote it (vggfeat's CSV, JSON and export files keep it in an extended"
    assert refused(["info", copied]).startswith(f"Error: {copied} {none}")  # a copy without them
    os.setxattr(copied, FILE_ATTRIBUTE, b'{"made_from": "[]", "file": [0, 0]}')  # a record damaged: none
    assert refused(["info", copied]).startswith(f"Error: {copied} {none}")


def test_refusals(data, tmp_path):
    _, files = data
    model = tmp_path / "model.h5"
    ok(["train-svm", files["train"], model, "--C", "1"])
    assert "already exists" in refused(["train-svm", files["train"], model, "--C", "2"])  # other options (the same: nothing to do)
    # An existing output of another kind says what it is, and --overwrite does not replace it: a
    # slip (train-svm d.h5 e.h5, meaning to fuse them) that would make hours of work lost.
    descriptors, svm = "a descriptor file (made by 'vggfeat extract')", "an SVM model (made by 'vggfeat train-svm')"
    for args, output, kind in ((["train-svm", files["train"]], files["test"], descriptors),
                               (["predict", model, files["test"]], files["train"], descriptors),
                               (["extract", files["train"].parent / "train"], model, svm)):
        for overwrite in ([], ["--overwrite"]):
            assert refused([*args, output, *overwrite, *(["--weights", "random"] if args[0] == "extract" else [])]) == (
                f"Error: {output} already exists: it is {kind}: --overwrite replaces only a file of the kind this "
                "command writes; name another output (or remove that file first)")

    for name in ("p.npy", "p.json", "-"):  # each got CSV text (and '-' a file of that name)
        assert refused(["predict", model, files["test"], tmp_path / name]) == (
            f"Error: OUTPUT {name}: name it .csv (each row's predicted classes and scores) or .h5 (the scores in HDF5) "
            "(see 'vggfeat predict --help')")
        assert not (tmp_path / name).exists()

    other = tmp_path / "other-config.h5"
    other.write_bytes(files["test"].read_bytes())
    edit_config(other, layer="fc6", flip=True)
    assert refused(["predict", model, other, tmp_path / "p.csv"]) == (
        "Error: features extracted with a different configuration than the model: "
        "layer: fc7 expected, fc6 found; flip: false expected, true found")
    assert "different configuration" in refused(["evaluate", model, other])

    tampered = tmp_path / "tampered.h5"
    tampered.write_bytes(model.read_bytes())
    with h5py.File(tampered, "r+") as f:
        f["intercept"][0] = 5.0
    assert "was modified or is damaged (checksum mismatch)" in refused(["evaluate", tampered, files["test"]])

    incomplete = tmp_path / "incomplete.h5"
    incomplete.write_bytes(files["test"].read_bytes())
    set_attr(incomplete, "complete", False)
    assert refused(["evaluate", model, incomplete]) == (
        f"Error: {incomplete} is incomplete (complete=False) and no run is under way into it: written so by other code "
        "than vggfeat's, or damaged; extract it again (--overwrite)")
    code, out, _ = run_main(["info", incomplete])
    assert code == 0 and out.splitlines()[0] == (f"{incomplete}: INCOMPLETE (and no run is under way into it: written so "
                                                 "by other code than vggfeat's, or damaged)")
    (tmp_path / "incomplete.h5.parts").mkdir()  # a run's work folder beside it
    assert refused(["train-svm", incomplete, tmp_path / "m2.h5"]).endswith(
        "is incomplete (complete=False): finish its extraction (the same command resumes it) first")

    unknown = tmp_path / "unknown.csv"
    unknown.write_text("red_stripes/img00.png,red\nnot/there.png,red\nred_stripes/img01.png,blue\n")
    assert "1 path(s) of" in refused(["train-svm", files["train"], tmp_path / "m3.h5", "--labels", unknown])
    one = tmp_path / "one.csv"
    one.write_text("red_stripes/img00.png,red\nred_stripes/img01.png,red\nred_stripes/img02.png,red\ngreen_checks/img00.png,green\n"
                   "blue_rings/img00.png,blue\nblue_rings/img01.png,blue\n")
    assert ("class 'green' has only 1 training example(s); at least 2, one per cross-validation fold, needed to "
            "choose C: fix C (--C, in place of --cv), lower cv (--cv), leave the class out (--exclude-class) or add images"
            ) in refused(["train-svm", files["train"], tmp_path / "m4.h5", "--labels", one, "--cv", "2"])
    for fix in (["--C", "1"], ["--cv", "2", "--exclude-class", "green"]):  # as the message says
        assert run_main(["train-svm", files["train"], tmp_path / "m4.h5", "--labels", one, *fix, "-q", "--overwrite"])[0] == 0

    empty = tmp_path / "empty-class.h5"
    empty.write_bytes(files["train"].read_bytes())
    with h5py.File(empty, "r+") as f:
        labels = f["labels"][:]
        del f["classes"]
        f.create_dataset("classes", data=[*sorted(LOOKS), "zebras"], dtype=h5py.string_dtype())
        f["labels"][:] = labels
    assert "class 'zebras' has no image" in refused(["train-svm", empty, tmp_path / "m5.h5"])

    fewer = tmp_path / "fewer.h5"
    fewer.write_bytes(files["train"].read_bytes())
    with h5py.File(fewer, "r+") as f:  # other images, other dimension: cannot be fused
        paths = list(f["paths"].asstr()[:])
        del f["paths"]
        f.create_dataset("paths", data=[p.replace("img", "other") for p in paths], dtype=h5py.string_dtype())
    assert "cannot fuse" in refused(["train-svm", "--features", files["train"], "--features", fewer, tmp_path / "m6.h5"])

    assert "too few for 6 training images" in refused(["protocol", "caltech", files["train"], "--train-per-class", "6"])
    assert refused(["protocol", "caltech", files["train"], "--train-per-class", "2"]) == (  # said of "class 0"
        "Error: 2 training images per class are too few to choose C by 3-fold cross-validation (one per fold): "
        "fix --C (in place of --cv), lower --cv or raise --train-per-class")
    assert f"--features gives FEATURES: expected no other path, got {files['test']}" in refused(
        ["evaluate", model, files["test"], "--features", files["test"]])
    assert f"--features gives FEATURES: expected MODEL alone, got {files['test']} {model}" in refused(
        ["train-svm", files["test"], model, "--features", files["test"]])
    assert "expected FEATURES, got none" in refused(["evaluate", model])
    assert "cannot exclude unknown class 'cats'" in refused(["protocol", "caltech", files["train"], "--exclude-class", "cats"])
