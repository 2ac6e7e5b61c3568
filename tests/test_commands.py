"""The ``vggfeat`` command itself: its list of commands, and what starts without importing torch
(two to seven seconds on a small machine) or scikit-learn (one or two): every command's --help,
and the commands that only read and write files."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import h5py
import numpy as np
import pytest

from runhelpers import error_line, run_main
from svmhelpers import blobs, misplace_a_chunk, set_attr, write_features
import vggfeat.cli
import vggfeat.files
import vggfeat.job
from vggfeat.cli import COMMANDS, cli
from vggfeat.errors import VggfeatError
from vggfeat.features import FeatureFile


@pytest.mark.parametrize("name", list(COMMANDS))
def test_the_list_of_commands_says_what_each_command_says_of_itself(name):
    command = cli.get_command(click.Context(cli), name)
    assert command.name == name
    assert click.Command(name, help=COMMANDS[name][2]).get_short_help_str(1000) == command.get_short_help_str(1000)


def test_help_lists_every_command_and_an_unknown_one_is_refused():
    code, out, _ = run_main(["--help"])
    assert code == 0
    listed = out[out.index("Commands:"):].splitlines()[1:]
    assert [line.split()[0] for line in listed if line.strip()] == list(COMMANDS)
    code, _, err = run_main(["extrakt"])
    assert code == 2 and "No such command 'extrakt'" in err


@pytest.mark.parametrize("args", [[], ["whiten"]])
def test_a_group_alone_shows_its_help_as_click_does(args):
    code, _, err = run_main(args)
    assert code == 2
    assert err.startswith("Usage: vggfeat") and "\nCommands:\n" in err and "Error" not in err and "\\n" not in err


# Commands in one process: the modules that each imported stay imported; it prints those of torch,
# torchvision and scikit-learn that it holds at the end.
IN_ONE_PROCESS = """
import contextlib, io, json, sys
from vggfeat.cli import main

for args in json.loads(sys.argv[1]):
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(args)
        except SystemExit as exit_:
            if exit_.code:
                sys.exit(f"vggfeat {' '.join(args)} exited with {exit_.code}")
print(json.dumps([name for name in ("torch", "torchvision", "sklearn") if name in sys.modules]))
"""


def heavy_modules_imported(runs: list[list]) -> list[str]:
    result = subprocess.run([sys.executable, "-c", IN_ONE_PROCESS, json.dumps([[str(arg) for arg in args] for args in runs])],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_help_imports_neither_torch_nor_scikit_learn():
    helps = [["--help"], *([name, "--help"] for name in COMMANDS), ["protocol", "caltech", "--help"], ["protocol", "voc", "--help"],
             ["whiten", "fit", "--help"]]
    assert heavy_modules_imported(helps) == []


def test_the_modules_the_readme_names_are_reached_from_a_plain_import():
    """``vggfeat.update.OutputUpdate`` after ``import vggfeat`` alone (an AttributeError before),
    the package's modules imported as first used; ``import vggfeat`` itself imports no torch."""
    code = ("import sys, vggfeat; assert 'torch' not in sys.modules; "
            "print(vggfeat.update.OutputUpdate.__name__, vggfeat.svm.LinearSVM.__name__, vggfeat.indexupdate.__name__, "
            "len(vggfeat.classifier.imagenet_categories())); "
            "assert getattr(vggfeat, 'update.x', None) is None and getattr(vggfeat, 'x.y', None) is None; "
            "vggfeat.no_such_module")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.stdout.split() == ["OutputUpdate", "LinearSVM", "vggfeat.indexupdate", "1000"], result.stderr
    assert result.stderr.strip().endswith("AttributeError: module 'vggfeat' has no attribute 'no_such_module'")


def test_commands_that_read_files_do_not_import_torch(tmp_path):
    X, labels, paths, classes = blobs(dim=16)
    features = write_features(tmp_path / "features.h5", X, paths, labels, classes)
    whitening, index, model = tmp_path / "whitening.h5", tmp_path / "index.h5", tmp_path / "model.h5"
    runs = [
        ["info", features], ["export", features, tmp_path / "x", "--to", "npy"],
        ["whiten", "fit", features, whitening, "-q"], ["index", features, index, "--whiten", whitening, "-q"],
        ["retrieval-eval", features], ["train-svm", features, model, "--C", "1", "-q"],
        ["evaluate", model, features], ["predict", model, features, tmp_path / "scores.h5", "-q"], ["info", whitening],
        ["search", index, "--queries", features, "-k", "2"],  # (its --device option imported torch)
        ["info", index], ["info", model], ["info", tmp_path / "scores.h5"],
    ]
    assert heavy_modules_imported(runs) == ["sklearn"]  # the SVM's


def test_a_descriptors_file_exported_to_csv_is_refused_without_importing_torch(tmp_path):
    """The refusal came after torch's import: seconds and most of a GB to say no."""
    X, labels, paths, classes = blobs(dim=16)
    features = write_features(tmp_path / "features.h5", X, paths, labels, classes)
    code = ("import sys\nfrom vggfeat.cli import main\ntry:\n    main(['export', sys.argv[1], '--to', 'csv'])\n"
            "except SystemExit as exit_:\n    print(exit_.code, 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code, str(features)], capture_output=True, text=True, timeout=300)
    assert result.stdout.split() == ["2", "False"] and "holds descriptors, not the posteriors" in result.stderr, result


def test_info_shows_a_model_and_a_scores_file_without_scikit_learn(tmp_path):
    """Reading the model file, or predict's scores file, needs only h5py: 'info model.h5' starts as
    fast as 'info features.h5'."""
    X, labels, paths, classes = blobs(dim=16)
    features = write_features(tmp_path / "features.h5", X, paths, labels, classes)
    model = tmp_path / "model.h5"
    assert run_main(["train-svm", features, model, "--C", "1", "-q"])[0] == 0
    assert run_main(["predict", model, features, tmp_path / "scores.h5", "-q"])[0] == 0
    assert heavy_modules_imported([["info", model], ["info", model, "--json"], ["info", tmp_path / "scores.h5"]]) == []


@pytest.mark.parametrize("args, error", [
    (["train-svm", ".", "m.h5"], ". is a folder, where a features file was expected"),
    (["predict", ".", "f.h5", "p.csv"], ". is a folder, where a model file was expected"),
    (["retrieval-eval", "."], ". is a folder, where a features file was expected"),
    (["export", ".", "--to", "npy"], ". is a folder, where a features file was expected"),
    (["export", ".", "--to", "csv"], ". is a folder, where a posteriors file was expected"),
    (["whiten", "fit", ".", "w.h5"], ". is a folder, where a features file was expected"),
    (["index", ".", "i.h5"], ". is a folder, where a features file was expected"),
    (["info", "."], ". is a folder: give a file that vggfeat wrote"),
])
def test_a_folder_where_a_file_belongs_is_refused_in_one_line(tmp_path, monkeypatch, args, error):
    """'.' (a name without a name, to pathlib) included: no traceback."""
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(args)
    assert code == 2 and error_line(err) == f"Error: {error}"
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("args, error", [
    (["extract", "images", "o.h5", "--root", "elsewhere"], "--root goes with --file-list, not given"),
    (["train-svm", "f.h5", "m.h5", "--C", "1", "--C-grid", "1,2"],
     "--C 1 fixes C; --C-grid: how cross-validation would choose it: give one or the other"),
    (["protocol", "caltech", "f.h5", "--C", "1", "--cv", "5"],
     "--C 1 fixes C; --cv: how cross-validation would choose it: give one or the other"),
    (["train-svm", "f.h5", "m.h5", "--solver", "lbfgs", "--n-jobs", "4"],
     "--n-jobs is liblinear's (a class per thread); --solver lbfgs trains every class at once"),
    (["train-svm", "f.h5", "m.h5", "--solver", "lbfgs", "--C", "1", "--seed", "3"],
     "--seed draws the cross-validation folds and liblinear's order; lbfgs with a fixed --C uses neither"),
    (["train-svm", "f.h5", "m.h5", "--voc-set", "test"], "--voc-set goes with --voc-devkit, not given"),
    (["evaluate", "m.h5", "f.h5", "--voc-set", "val"], "--voc-set goes with --voc-devkit, not given"),
    (["evaluate", "m.h5", "f.h5", "--overwrite"], "--overwrite goes with --report, not given"),
    (["protocol", "voc", "a.h5", "b.h5", "--train-set", "train", "--test-set", "val"],
     "--train-set, --test-set go with --voc-devkit, not given"),
    (["index", "f.h5", "i.h5", "--nlist", "5"], "--nlist goes with --kind ivfpq, not given"),
    (["index", "f.h5", "i.h5", "--kind", "ivfpq", "--ef-search", "5"], "--ef-search goes with --kind hnsw, not given"),
    (["search", "i.h5", "q.jpg", "--tile", "64", "--montage-hits", "3"], "--montage-hits, --tile go with --montage, not given"),
    (["search", "i.h5", "q.jpg", "--overwrite"], "--overwrite goes with OUTPUT or --montage, not given"),
    (["search", "i.h5", "--queries", "q.h5", "--weights", "w.pth", "--workers", "2"],
     "--weights, --workers: for query images, described here; --queries holds descriptors already"),
    (["retrieval-eval", "f.h5", "--gt", "gt", "--root", "images", "--device", "cpu"],
     "--root, --device go with --crop-queries, not given"),
    (["retrieval-eval", "f.h5", "--overwrite"], "--overwrite goes with --json, not given"),
    (["protocol", "caltech", "f.h5", "--overwrite"], "--overwrite goes with --json, not given"),
    (["protocol", "voc", "a.h5", "b.h5", "--overwrite"], "--overwrite goes with --json or --results, not given"),
    (["describe", "vgg16", "--kernels", "3,5"], "--kernels goes with --compare, not given"),
    (["describe", "--compare", "--size", "384"], "--size: for the models' layers; --compare counts weights"),
])
def test_an_option_that_would_do_nothing_is_refused(tmp_path, monkeypatch, args, error):
    """Ignored silently, it made the user believe it took effect (and a rerun then named it as a difference)."""
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(args)
    assert code == 2 and error_line(err).startswith(f"Error: {error}"), err


@pytest.mark.parametrize("args, output", [
    (["train-svm", "features.h5", "features.h5"], "features.h5"),
    (["predict", "model.h5", "features.h5", "features.h5"], "features.h5"),
    (["predict", "model.h5", "features.h5", "./model.h5"], "model.h5"),
    (["whiten", "fit", "features.h5", "features.h5"], "features.h5"),
    (["index", "features.h5", "whitening.h5", "--whiten", "whitening.h5"], "whitening.h5"),
    (["search", "index.h5", "--queries", "features.h5", "--montage", "index.h5"], "index.h5"),
    (["classify", "--file-list", "labels.csv", "labels.csv"], "labels.csv"),
])
def test_no_command_writes_over_one_of_its_inputs(tmp_path, monkeypatch, args, output):
    """Not even with --overwrite, which replaces an earlier output: an input named as the output is
    a slip of the keyboard that would lose it; refused before any work, the input untouched."""
    X, labels, paths, classes = blobs(dim=16)
    monkeypatch.chdir(tmp_path)
    write_features(tmp_path / "features.h5", X, paths, labels, classes)
    inputs = {name: tmp_path / name for name in ("features.h5", "model.h5", "labels.csv", "whitening.h5", "index.h5")}
    for name in ("model.h5", "labels.csv", "whitening.h5", "index.h5"):
        inputs[name].write_bytes(b"an input")
    before = {name: path.read_bytes() for name, path in inputs.items()}
    code, _, err = run_main([*args, "--overwrite"])
    assert code == 2 and error_line(err) == (f"Error: {output} is an input of this command too: name another output "
                                             "(--overwrite replaces outputs, never inputs)")
    assert {name: path.read_bytes() for name, path in inputs.items()} == before


def test_commands_and_options_complete_on_tab():
    """The completion the README gives for bash (click's), without importing every command."""
    complete = [sys.executable, "-c", "from vggfeat.cli import main; main()"]
    for words, expected in (("vggfeat in", ["info", "index"]), ("vggfeat info --", ["--json", "--help"]),
                            ("vggfeat extract --center", ["--center-crop"])):
        env = {**os.environ, "_VGGFEAT_COMPLETE": "bash_complete", "COMP_WORDS": words,
               "COMP_CWORD": str(len(words.split()) - 1)}
        result = subprocess.run(complete, capture_output=True, text=True, env=env, timeout=120)
        assert result.returncode == 0, result.stderr
        assert [line.split(",", 1)[1] for line in result.stdout.splitlines()] == expected


# A command line in a text: at a line's start, after a shell's '|', ';', '&&' or '$(', or in `...`.
_COMMAND_LINE = re.compile(r"(?:^\s*|[|;]\s*|&&\s*|\$\(|[`'])vggfeat\s+([^|;&#`'\n]*)", re.MULTILINE)


def _unknown_options(text: str) -> list[str]:
    """The commands and options that the command lines in ``text`` give and the CLI does not have."""
    context, unknown = click.Context(cli), []
    for match in _COMMAND_LINE.finditer(text.replace("\\\n", " ")):  # a line continued, joined
        command, words = cli, ["vggfeat", *match[1].split()]
        while isinstance(command, click.Group) and len(words) > 1 and not words[1].startswith("-"):
            if words[1].isupper():  # 'vggfeat COMMAND --help': a placeholder
                break
            command, words = command.get_command(context, words[1]), words[1:]
            if command is None:
                unknown.append(words[0])
                break
        else:
            options = {option for param in command.get_params(context) for option in param.opts + param.secondary_opts}
            unknown += [word for word in words[1:] if re.match(r"--?[a-z]", word) and word.split("=")[0] not in options]
    return unknown


def test_the_command_lines_that_the_readme_the_help_and_messages_give_are_real():
    """Every command line a user may copy (the README's code, each command's help, the messages
    that say what to run) names real commands and options."""
    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert _unknown_options("\n".join(re.findall(r"```[a-z]*\n(.*?)```", readme, re.DOTALL))) == []
    assert _unknown_options("\n".join(span.replace("\n", " ") for span in re.findall(r"`(vggfeat [^`]*)`", readme))) == []
    context = click.Context(cli)
    commands = [cli.get_command(context, name) for name in COMMANDS]
    commands += [sub for command in commands if isinstance(command, click.Group) for sub in command.commands.values()]
    helps = {command.name: "\n".join([command.help or "", *(getattr(param, "help", None) or "" for param in command.params)])
             for command in commands}
    assert {name: _unknown_options(text) for name, text in helps.items()} == {name: [] for name in helps}
    sources = sorted((root / "vggfeat").rglob("*.py"))
    messages = {str(path): "\n".join(re.findall(r"'(vggfeat [^'\n{]*)'", path.read_text(encoding="utf-8"))) for path in sources}
    assert {path: _unknown_options(text) for path, text in messages.items()} == {path: [] for path in messages}
    # What it finds, where a text gives a command or an option that is not there:
    assert _unknown_options("vggfeat extract ./i o.h5 --scale 256\n'vggfeat whiten learn a b'\nvggfeat COMMAND --help") == [
        "--scale", "learn"]


def test_file_names_with_control_characters_print_on_one_line(tmp_path):
    """A file name may hold a line break or a terminal escape sequence: printed, it is escaped as
    Python writes it, so that it can neither split a line of output nor act on the terminal."""
    X, labels, paths, classes = blobs(dim=4)
    odd = "zz/bad\nname\x1b[2J.png"
    features = write_features(tmp_path / "features.h5", X, paths, labels, classes, failed={odd: "truncated\rfile"})
    code, out, _ = run_main(["info", features])
    assert code == 0 and "  failed: zz/bad\\nname\\x1b[2J.png: truncated\\rfile\n" in out
    code, _, err = run_main(["info", tmp_path / "new\nfile.h5"])
    assert code == 2 and err.count("\n") == 1 and "new\\nfile.h5" in err
    odd_class = write_features(tmp_path / "classes.h5", X, paths, labels, ["cl\nass", *classes[1:]])
    code, out, _ = run_main(["info", odd_class])
    assert code == 0 and "classes      3: cl\\nass, " in out and "cl\nass" not in out


def test_what_a_descriptor_file_records_is_shown_by_info_as_text(tmp_path):
    """A file edited (or written by other code) to record escape sequences, in its attributes or the
    JSON of its configuration, shows them escaped: sent as they are, they retitled the terminal or
    wrote over the lines shown before."""
    X, labels, paths, classes = blobs(dim=4)
    evil = "\x1b]0;pwned\x07\x1b[2K\r"
    features = write_features(tmp_path / "features.h5", X, paths, labels, classes,
                              config={"model": f"vgg16{evil}", "layer": f"fc7{evil}"})
    with h5py.File(features, "r+") as f:
        f.attrs.update(model=f"vgg16{evil}", device=f"cpu{evil}", merge_command=f"vggfeat merge{evil}",
                       shards=json.dumps([{"shard": 1, "command": f"vggfeat extract{evil}"}]))
    code, out, err = run_main(["info", features])
    assert code == 0 and "\x1b" not in out and out.count("\\x1b]0;pwned\\x07") == 4, (out, err)
    assert "shard 1's: vggfeat extract\\x1b]0;pwned\\x07\\x1b[2K\\r\n" in out


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_a_descriptor_of_nan_or_infinities_is_refused_naming_its_row_and_image(tmp_path, dtype):
    """Extraction records an image whose descriptor is not finite as failed: such a row is a damaged
    file, which every command that reads descriptors refuses, naming the row and its image, where
    results would have been NaN or meaningless, silently (retrieval-eval gave recall 1.0). Rows a
    command does not read (left out by --labels) are not its concern."""
    X, labels, paths, classes = blobs(dim=8)
    model = tmp_path / "model.h5"
    assert run_main(["train-svm", write_features(tmp_path / "good.h5", X, paths, labels, classes), model, "-q"])[0] == 0
    features = write_features(tmp_path / "features.h5", X, paths, labels, classes)
    with h5py.File(features, "r+") as f:
        del f["features"]
        f["features"] = np.where(np.arange(len(X))[:, None] == 13, np.float32(np.inf) if dtype == "float16" else np.nan,
                                 X).astype(dtype)
    error = (f"Error: {features} is damaged: the descriptor of row 13 ({paths[13]}) holds NaN or infinite values, which "
             "extraction never writes (it records such an image as failed); describe the images again (extract --overwrite)")
    for args in (["train-svm", features, tmp_path / "m.h5"], ["predict", model, features, tmp_path / "p.csv"],
                 ["evaluate", model, features], ["index", features, tmp_path / "i.h5"],
                 ["whiten", "fit", features, tmp_path / "w.h5"], ["retrieval-eval", features],
                 ["export", features, tmp_path / "e.npy"]):
        code, _, err = run_main([str(arg) for arg in args])
        assert code == 2 and error_line(err) == error, (args, err)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["features.h5", "good.h5", "model.h5"]
    labelled = tmp_path / "labels.csv"
    labelled.write_text("".join(f"{path},{classes[label]}\n" for path, label in zip(paths, labels) if path != paths[13]))
    assert run_main(["train-svm", features, tmp_path / "m.h5", "--labels", labelled, "-q"])[0] == 0


def test_a_flat_index_whose_vectors_were_changed_is_refused_naming_the_row(tmp_path):
    """A flat index holds unit vectors (or zeros): one that is not was changed since it was
    written, and search would have ranked by it silently, and the same index command again have
    found it what it made."""
    X, labels, paths, classes = blobs(dim=8)
    features = write_features(tmp_path / "features.h5", X, paths, labels, classes)
    index = tmp_path / "index.h5"
    assert run_main(["index", features, index, "-q"])[0] == 0
    assert run_main(["search", index, "--queries", features])[0] == 0
    for value in (0.5, np.nan):
        with h5py.File(index, "r+") as f:
            f["vectors"][7, 2] = value
        for args in (["search", index, "--queries", features], ["index", features, index, "-q"]):  # the same command again too
            code, _, err = run_main(args)
            assert code == 2 and error_line(err).startswith(f"Error: {index} is damaged: the vector of row 7 ({paths[7]}) is "
                                                            "not of unit length (squared norm "), err
            assert error_line(err).endswith("); build it again with 'vggfeat index'")


def test_a_whitening_changed_since_it_was_written_is_refused_by_its_checksum(tmp_path):
    """A whitening's arrays are checksummed, on its own or in an index: one edited or damaged since
    is refused wherever it is read, the same command run again included; one written before the
    checksum was added is read as it is."""
    X, labels, paths, classes = blobs(dim=8)
    features = write_features(tmp_path / "features.h5", X, paths, labels, classes)
    whitening, index = tmp_path / "w.h5", tmp_path / "i.h5"
    fit = ["whiten", "fit", features, whitening, "--dim", "4"]
    assert run_main(fit)[0] == 0 and run_main(["index", features, index, "--whiten", whitening])[0] == 0
    with h5py.File(whitening, "r+") as f, h5py.File(index, "r+") as g:
        f["projection"][1, 2] += 1e-3
        g["whitening/mean"][3] += 1e-3
    remedy = "was modified or is damaged (checksum mismatch); make it again ('vggfeat whiten fit', or 'vggfeat index' for an index's)"
    for args, damaged in ((fit, whitening), (["index", features, tmp_path / "j.h5", "--whiten", whitening], whitening),
                          (["retrieval-eval", features, "--whiten", whitening], whitening),
                          (["search", index, "--queries", features], f"{index}/whitening")):
        code, _, err = run_main(args)
        assert code == 2 and error_line(err) == f"Error: {damaged} {remedy}", (args, err)
    with h5py.File(whitening, "r+") as f:
        del f.attrs["checksum"]  # as written before it was added
    assert run_main(["retrieval-eval", features, "--whiten", whitening])[0] == 0


def test_a_vggfeat_file_given_where_another_kind_belongs_is_named(tmp_path):
    """Arguments swapped, the wrong file picked, or one cut short: the error says what the file given is."""
    X, labels, paths, classes = blobs(dim=16)
    features = write_features(tmp_path / "features.h5", X, paths, labels, classes)
    posteriors = write_features(tmp_path / "posteriors.h5", X, paths, labels, classes)
    set_attr(posteriors, "dense", True)
    model, index, whitening = tmp_path / "model.h5", tmp_path / "index.h5", tmp_path / "whitening.h5"
    for args in (["train-svm", features, model, "--C", "1"], ["index", features, index], ["whiten", "fit", features, whitening]):
        assert run_main([*args, "-q"])[0] == 0
    (tmp_path / "notes.csv").write_text("path,label\n")
    cut_short = tmp_path / "cut.h5"
    cut_short.write_bytes(features.read_bytes()[:2000])
    integers, flat = tmp_path / "integers.h5", tmp_path / "flat.h5"  # another program's, whose readers would fail
    for path, values in ((integers, X.astype(np.int32)), (flat, X[:, 0])):
        shutil.copy(features, path)
        with h5py.File(path, "r+") as f:
            del f["features"]
            f["features"] = values
    for args, error in [
        (["index", integers, "i.h5"], f"{integers} is damaged: /features holds int32, not floating-point numbers"),
        (["train-svm", flat, "m.h5"], f"{flat} is damaged: /features has the shape ({len(X)},), not (rows, dimension)"),
        (["predict", features, model, "p.csv"], f"{features} is not a vggfeat SVM model file: it is a descriptor file "
                                                "(made by 'vggfeat extract')"),
        (["predict", posteriors, model, "p.csv"], f"{posteriors} is not a vggfeat SVM model file: it is a posteriors "
                                                  "file (made by 'vggfeat classify')"),
        (["train-svm", model, "m.h5"], f"{model} is not a vggfeat features file: it is an SVM model (made by 'vggfeat "
                                       "train-svm')"),
        (["whiten", "fit", index, "w.h5"], f"{index} is not a vggfeat features file: it is an index (made by 'vggfeat "
                                           "index')"),
        (["index", features, "i.h5", "--whiten", model], f"{model} is not a vggfeat whitening (made by 'vggfeat whiten "
                                                         "fit'): it is an SVM model (made by 'vggfeat train-svm')"),
        (["info", tmp_path / "notes.csv"], f"{tmp_path / 'notes.csv'} records no vggfeat command that wrote it (vggfeat's "
                                           "CSV, JSON and export files keep it in an extended attribute, which a copy or "
                                           "another program may drop, as do changes since)"),
        *(([command, cut_short, *rest], f"{cut_short} is a damaged HDF5 file (cut short, or still being written or copied?)")
          for command, *rest in (["info"], ["train-svm", "m.h5"], ["evaluate", features], ["search", "q.jpg"])),
    ]:
        code, _, err = run_main([str(arg) for arg in args])
        assert code == 2 and error_line(err) == f"Error: {error}", err


def test_a_file_whose_hdf5_structures_are_damaged_is_named_not_a_traceback(tmp_path, monkeypatch):
    """A flipped bit in HDF5's own structures (a bad disk, a bad copy): h5py raises RuntimeError
    or KeyError, which ended these commands in a traceback."""
    X, labels, paths, classes = blobs(dim=4)
    features = write_features(tmp_path / "features.h5", X, paths, labels, classes)
    data = bytearray(features.read_bytes())
    name = data.index(b"config\0")  # the name in the attribute's message, 8 bytes after its version
    assert data[name - 8] == 1, "an HDF5 attribute message of another layout: find its version byte anew"
    data[name - 8] = 0x7F
    damaged = tmp_path / "damaged.h5"
    damaged.write_bytes(bytes(data))
    for args, error in [(["info", damaged], f"Error: {damaged} is not a readable vggfeat features file ("),
                        (["train-svm", damaged, tmp_path / "m.h5"], f"Error: {damaged} is a damaged HDF5 file (")]:
        # A process of its own: HDF5 may crash on damage it does not check for.
        result = subprocess.run([sys.executable, "-c", "from vggfeat.cli import main; main()", *map(str, args)],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and error_line(result.stderr).startswith(error), result.stderr
        assert "bad version number for attribute message" in result.stderr
    set_attr(features, "config", "{damaged")  # the configuration's JSON: info shows it, every reader takes it
    code, _, err = run_main(["info", features])
    assert code == 2 and error_line(err).startswith(f"Error: {features} is not a readable vggfeat features file (Expecting")
    code, _, err = run_main(["whiten", "fit", features, tmp_path / "w.h5"])  # a traceback, found by tests/fuzz_inputs.py
    assert code == 2 and error_line(err).startswith(f"Error: {features} is a damaged HDF5 file (Expecting")
    set_attr(features, "config", json.dumps({"model": "vgg16"}))

    def failed(self):  # a part of the file read later, damaged: h5py's KeyError
        return self._file["failed/no such dataset"]

    monkeypatch.setattr("vggfeat.features.FeatureFile.failed", failed)
    code, _, err = run_main(["train-svm", features, tmp_path / "m.h5", "--C", "1"])
    assert code == 2 and error_line(err).startswith(f"Error: {features} is damaged: HDF5 cannot read its /failed/no such "
                                                    "dataset (Unable to ")
    with h5py.File(features) as f, pytest.raises(KeyError) as raised:  # read by other code than FeatureFile's
        f["failed/no such dataset"]
    message, code = vggfeat.cli._failure(raised.value)
    assert code == 1 and message.startswith("HDF5 cannot read a file given (Unable to synchronously open object")
    monkeypatch.undo()
    with h5py.File(features, "r+") as f:  # in chunks, as vggfeat writes them
        descriptors = f["features"][:]
        del f["features"]
        f.create_dataset("features", data=descriptors, chunks=(2, 4))
    misplace_a_chunk(features, "features")  # h5py's OSError of no errno: it ended in its words alone, naming no file
    code, _, err = run_main(["train-svm", features, tmp_path / "m.h5", "--C", "1"])
    assert code == 2 and error_line(err).startswith(f"Error: {features} is damaged: HDF5 cannot read its /features (Can't "
                                                    "synchronously read data")
    with pytest.raises(VggfeatError, match="is damaged: HDF5 cannot read its /features"), FeatureFile(features) as f:
        f.read()
    code, _, err = run_main(["whiten", "fit", features, tmp_path / "w.h5"])  # other code than FeatureFile's
    assert code == 2 and error_line(err).startswith(f"Error: {features} is damaged: HDF5 cannot read its /features (Can't "
                                                    "synchronously read data")
    with pytest.raises(ZeroDivisionError), FeatureFile(features) as f:  # what is not HDF5's failure to read passes
        f.rows / 0


def test_a_damaged_whitening_scores_or_index_file_is_named_not_a_traceback(tmp_path):
    """JSON in their attributes damaged (a flipped bit): 'index --whiten', and 'info' of a whitening,
    a scores file or an index, ended in a JSONDecodeError traceback (found by tests/fuzz_inputs.py)."""
    X, labels, paths, classes = blobs(dim=4)
    features = write_features(tmp_path / "features.h5", X, paths, labels, classes)
    made = {"whitening": ["whiten", "fit", features], "index": ["index", features], "SVM model": ["train-svm", features],
            "scores": ["predict", tmp_path / "SVM model.h5", features]}
    for kind, args in made.items():
        code, _, err = run_main([*args, tmp_path / f"{kind}.h5", *(["--C", "1"] if kind == "SVM model" else [])])
        assert code == 0, err
    for kind, attribute in [("whitening", "config"), ("scores", "features"), ("index", "params")]:
        set_attr(tmp_path / f"{kind}.h5", attribute, '{"damaged')
    whitening = tmp_path / "whitening.h5"
    for args, error in [(["index", features, tmp_path / "i.h5", "--whiten", whitening], f"{whitening} is a damaged whitening file ("),
                        *((["info", tmp_path / f"{kind}.h5"], f"{tmp_path / f'{kind}.h5'} is a damaged {kind} file (")
                          for kind in ("whitening", "scores", "index"))]:
        code, _, err = run_main(args)
        assert code == 2 and error_line(err).startswith(f"Error: {error}Unterminated string"), err
    assert not (tmp_path / "i.h5").exists()


@pytest.mark.parametrize("args, error", [
    (["train-svm", "{features}", "model.pkl"], "output model.pkl names a .pkl file, but SVM models are HDF5: name it model.h5"),
    (["index", "{features}", "index.json"], "output index.json names a .json file, but indexes are HDF5: name it index.h5"),
    (["whiten", "fit", "{features}", "w.npz"], "output w.npz names a .npz file, but whitenings are HDF5: name it w.h5"),
])
def test_an_hdf5_output_named_as_another_format_is_refused(tmp_path, monkeypatch, args, error):
    X, labels, paths, classes = blobs(dim=4)
    features = write_features(tmp_path / "features.h5", X, paths, labels, classes)
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main([arg.format(features=features) for arg in args])
    assert code == 2 and error_line(err) == f"Error: {error}"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["features.h5"]


def test_attributes_edited_into_arrays_are_compared_as_values_not_tracebacks(tmp_path):
    """h5py gives an array for an attribute written as one: compared with a command's options,
    it has no truth value (extract's rerun on its output ended in a ValueError's traceback, and
    info on a file whose format was one in a TypeError's)."""
    X, labels, paths, classes = blobs(dim=4)
    features = write_features(tmp_path / "features.h5", X, paths, labels, classes)
    with h5py.File(features, "r+") as f:
        f.attrs["format"] = np.array([3, 4])
    code, _, err = run_main(["info", features])
    assert code == 0, err
    with h5py.File(features, "r+") as f:
        f.attrs["config"] = np.array([1, 2])
        f.attrs["complete"] = np.array([True, True])
    with pytest.raises(VggfeatError, match="already exists"):
        vggfeat.job.check_existing_output(features, False, {"model": "vgg16"}, "float32")
    assert not vggfeat.job.holds_job(vggfeat.files.file_attributes(features), {}, "float32", "ab")
