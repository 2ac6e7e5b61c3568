"""The ``vggfeat`` command: extract (bad input, progress, refusals, --file-list) and info; what a
run survives (kills, full disks, ...) is in test_interruptions.py.

Most commands run in this process through ``vggfeat.cli.main`` with the session's random VGG16 (a
real process costs seconds of torch import and network initialisation); a real process is used
for one exit-code check. Tests that only need bookkeeping use ``--layer conv1_1``, ~50 times
cheaper than fc7.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import h5py
import numpy as np
import pytest

from imagefiles import BAD_FILES, write_bad_files, write_odd_files, write_rgb
from runhelpers import (
    FAST,
    assert_same_output,
    command,
    error_line,
    interrupted_run,
    read_output,
    run_main,
    run_process,
    write_plain_folder,
)
from vggfeat.cli import common, options
from vggfeat.cli.info import _failed_classes
from vggfeat.fileinfo import failures_by_reason, reason_kind
from vggfeat import Extractor
from vggfeat import settings
from vggfeat.reading import ImageReader

CHEAP = [*FAST, "--layer", "conv1_1"]
NO_SCALES = [option for option in FAST if option not in ("--scales", "224")]



def folder_state(folder) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- good, bad and odd files


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A folder of good images (one with a non-ASCII name), every bad file and every odd-but-valid
    image, extracted by the CLI."""
    root = tmp_path_factory.mktemp("mixed")
    images = root / "images"
    (images / "good").mkdir(parents=True)
    good = {
        "good/g1.png": write_rgb(images / "good" / "g1.png", 224, 240, seed=1).shape[:2],
        "good/café ü.jpg": write_rgb(images / "good" / "café ü.jpg", 230, 224, seed=2).shape[:2],
    }
    odd = {f"odd/{name}": image.expected.shape[:2] for name, image in write_odd_files(images / "odd").items()}
    bad = {f"bad/{name}": BAD_FILES[name][1] for name in write_bad_files(images / "bad")}
    output = root / "out.h5"
    code, out, err = run_main(["extract", images, output, *CHEAP])
    return {"images": images, "output": output, "code": code, "stderr": err,
            "sizes": {**good, **odd}, "bad": bad}


def test_bad_files_fail_odd_files_are_described(mixed):
    assert mixed["code"] == 0, mixed["stderr"]
    data = read_output(mixed["output"])
    expected_rows = sorted(mixed["sizes"])
    assert len(expected_rows) == 18
    assert data["paths"] == expected_rows  # exactly the good and odd files, sorted
    assert [tuple(s) for s in data["sizes"].tolist()] == [tuple(mixed["sizes"][p]) for p in expected_rows]
    assert tuple(data["sizes"][data["paths"].index("odd/exif6.jpg")]) == (96, 64)  # stored 64x96, rotated
    assert data["classes"] == ["bad", "good", "odd"]
    assert data["labels"].tolist() == [1 if p.startswith("good/") else 2 for p in expected_rows]
    assert data["features"].shape == (18, 64) and np.isfinite(data["features"]).all()

    assert data["failed_paths"] == sorted(mixed["bad"])
    for path, reason in zip(data["failed_paths"], data["failed_errors"]):
        assert mixed["bad"][path] in reason.lower(), (path, reason)
        assert "\n" not in reason
    with h5py.File(mixed["output"], "r") as f:  # UTF-8 strings, readable as such by anyone
        assert f["paths"].dtype == h5py.string_dtype("utf-8")
        assert "good/café ü.jpg" in [p.decode("utf-8") for p in f["paths"][:]]


def test_a_run_that_describes_no_image_exits_1_saying_so(tmp_path):
    """Every image failed: the run said 'wrote', exit 0, and a script went on to fail later."""
    write_bad_files(tmp_path / "bad")
    for _ in range(2):  # and so the same command again, which has nothing to do
        code, _, err = run_main(["extract", tmp_path / "bad", tmp_path / "out.h5", *CHEAP])
        assert code == 1 and error_line(err) == (f"Error: no image could be described: {len(BAD_FILES)} failed, which "
                                                 f"{tmp_path / 'out.h5'} records ('vggfeat info {tmp_path / 'out.h5'}'); "
                                                 "--retry-failed describes them again once they are repaired"), err
    assert read_output(tmp_path / "out.h5")["failed_paths"] == sorted(BAD_FILES)
    for rewrite in ("--retry-failed", "--update"):  # and so a retry or an update that leaves it so
        code, _, err = run_main(["extract", tmp_path / "bad", tmp_path / "out.h5", *CHEAP, rewrite])
        assert code == 1 and error_line(err).startswith("Error: no image could be described"), err


def test_exit_message_counts_failures(mixed):
    assert re.search(rf"wrote .*out\.h5: 18 descriptors \(64-d float32\), {len(BAD_FILES)} failed", mixed["stderr"]), mixed["stderr"]
    assert "WARNING: random weights" in mixed["stderr"]
    assert "Traceback" not in mixed["stderr"]
    # What they were, counted by reason, most first.
    by_reason = mixed["stderr"].split("failures by reason (listed in /failed of the file; 'vggfeat info ")[1].splitlines()[1:]
    assert by_reason[0] == "    2  not an image, or a format Pillow cannot read"
    assert sum(int(line.split()[0]) for line in by_reason) == len(BAD_FILES)
    # What the auto settings chose is said before the work starts.
    assert re.search(r"on cpu: precision fp32, batches of up to 16 inputs \(0\.8 Mpx\), \d+ (pil|torchvision) decoding threads?",
                     mixed["stderr"]), mixed["stderr"]


def test_cli_writes_what_the_api_returns(mixed, random_vgg16):
    data = read_output(mixed["output"])
    extractor = Extractor(random_vgg16, scales=[224], flip=False, device="cpu", layer="conv1_1")
    api = extractor.extract([mixed["images"] / p for p in data["paths"]])
    np.testing.assert_allclose(data["features"], api, rtol=0, atol=1e-6)
    config = json.loads(data["attrs"]["config"])
    assert config == {**json.loads(json.dumps(extractor.config())), "dtype": "float32"}
    a = data["attrs"]
    assert (a["model"], a["weights"], a["layer"], list(a["scales"]), bool(a["flip"])) == ("vgg16", "random", "conv1_1", [224], False)
    assert a["random_weights"] == True and a["complete"] == True  # noqa: E712


def test_dtype_float16(tmp_path, mixed):
    output = tmp_path / "half.h5"
    images = tmp_path / "images"
    (images / "good").mkdir(parents=True)
    write_rgb(images / "good" / "g1.png", 224, 240, seed=1)  # the same picture as mixed's good/g1.png
    code, _, err = run_main(["extract", images, output, *CHEAP, "--dtype", "float16"])
    assert code == 0, err
    assert "1 image, 1 class\n" in err and ": 1 descriptor (64-d float16), 0 failed; 1 image in " in err  # in the singular
    with h5py.File(output, "r") as f:
        assert f["features"].dtype == np.float16 and f["features"].chunks == (1, 64)
        assert f.attrs["dtype"] == "float16"
        half = f["features"][0].astype(np.float32)
    reference = read_output(mixed["output"])
    full = reference["features"][reference["paths"].index("good/g1.png")]
    np.testing.assert_allclose(half, full, rtol=2e-3, atol=1e-4)


def test_progress_in_a_log_file_is_a_line_now_and_then(tmp_path, monkeypatch):
    write_plain_folder(tmp_path / "images", 3)
    monkeypatch.setattr(common, "LOG_EVERY", 0.0)  # a line at every update (a minute apart in a real log)
    code, _, err = run_main(["extract", tmp_path / "images", tmp_path / "out.h5", *CHEAP, "--part-size", "1",
                             "--batch-size", "1"])
    assert code == 0, err
    assert "\r" not in err  # stderr is a file here: no bar redrawn over itself
    lines = re.findall(r"^vgg16 conv1_1 Q=224: (\d) of 3 images \((\d+\.\d)%\), [\d.,]+ images/s, about \d+ (?:s|min) left$",
                       err, flags=re.MULTILINE)
    assert lines and lines[-1] == ("3", "100.0"), err
    assert "finding images in" in err


def test_a_slow_rate_is_said_in_two_significant_digits_not_as_zero():
    """A CPU's 14 images in 304.6 s were '0.0 images/s', and a log's line '0.0 images/s'."""
    assert [common.per_second(rate) for rate in (0.046, 0.0, 0.5, 1.0, 4812.34)] == ["0.046", "0.0", "0.5", "1.0", "4,812.3"]
    lines = common.ProgressLines(total=14, initial=0, unit="images", desc="vgg16 fc7")
    lines.started -= 304.6
    lines.n = 14
    assert lines.line(lines.started + 304.6) == "vgg16 fc7: 14 of 14 images (100.0%), 0.046 images/s, about 0 s left"


def test_a_terminal_that_says_it_has_no_columns_or_rows_gets_lines_rather_than_an_invisible_bar(monkeypatch):
    """tqdm draws nothing at 0 columns, or 0 rows, which some containers' and CI runners' terminals
    report (`script` without `stty rows`)."""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    for columns, rows in ((0, 40), (100, 0)):
        monkeypatch.setattr(common, "_terminal_size", lambda: (columns, rows))
        assert isinstance(common.progress_bar(False, total=3, unit="images"), common.ProgressLines)
    monkeypatch.setattr(common, "_terminal_size", lambda: (100, 40))
    bar = common.progress_bar(False, total=3, unit="images")
    assert not isinstance(bar, common.ProgressLines)
    bar.close()


# --------------------------------------------------------------------------- refusals


def test_the_same_command_after_images_were_added_points_to_update(tmp_path):
    write_plain_folder(tmp_path / "images", 2)
    output = tmp_path / "out.h5"
    assert run_main(["extract", tmp_path / "images", output, *CHEAP, "-q"])[0] == 0
    before = output.read_bytes()
    write_plain_folder(tmp_path / "images", 3)
    code, _, err = run_main(["extract", tmp_path / "images", output, *CHEAP])  # -q or not
    assert code == 2 and output.read_bytes() == before
    assert (f"{output} already exists, made with these options over other images of {tmp_path / 'images'} (2 then, 3 "
            "now): --update describes those added or changed") in error_line(err)
    code, _, err = run_main(["extract", tmp_path / "images", output, *CHEAP, "--update"])
    assert code == 0 and "1 image added" in err, err


def test_an_existing_output_whose_attributes_are_damaged_is_refused_in_one_line(tmp_path):
    """h5py raises TypeError for an attribute whose string type is damaged (found by fuzz_inputs.py hdf5)."""
    write_plain_folder(tmp_path / "images", 2)
    output = tmp_path / "out.h5"
    assert run_main(["extract", tmp_path / "images", output, *CHEAP, "-q"])[0] == 0
    with h5py.File(output, "r+") as f:
        f.attrs["note"] = np.bytes_(b"x" * 37)  # a fixed-length ASCII string: its type's bytes are found below
    data = bytearray(output.read_bytes())
    where = data.find(b"\x13\x01\x00\x00" + (37).to_bytes(4, "little"))
    data[where + 1] = 0x71  # character set 7: none
    output.write_bytes(bytes(data))
    code, _, err = run_main(["extract", tmp_path / "images", output, *CHEAP])
    assert code == 2 and error_line(err).endswith("out.h5 already exists; pass --overwrite to replace it")
    assert output.read_bytes() == bytes(data)


def test_existing_output_is_kept_unless_overwrite(tmp_path, monkeypatch):
    write_plain_folder(tmp_path / "images", 2)
    output = tmp_path / "out.h5"
    assert run_main(["extract", tmp_path / "images", output, *CHEAP])[0] == 0
    before = output.read_bytes()

    code, _, err = run_main(["extract", tmp_path / "images", output, *CHEAP, "--layer", "conv1_2"])
    assert code == 2
    assert error_line(err).endswith("out.h5 already exists, made with other options (layer: conv1_1 then, conv1_2 now); "
                                    "pass --overwrite to replace it")
    assert "2 images" not in err  # refused before the images are found
    # The same command again (a script run twice, a run killed once its file was whole): nothing to do.
    code, _, err = run_main(["extract", tmp_path / "images", output, *CHEAP])
    assert code == 0 and f"{output} already holds this extraction" in err and "nothing to do" in err
    assert output.read_bytes() == before
    assert output.read_bytes() == before

    # An --overwrite run that dies leaves the old file as it was...
    interrupted_run(monkeypatch, ["extract", tmp_path / "images", output, *CHEAP, "--dtype", "float16",
                                  "--overwrite", "--part-size", "1"])
    assert output.read_bytes() == before
    # ... and the next one replaces it with a complete file.
    code, _, err = run_main(["extract", tmp_path / "images", output, *CHEAP, "--dtype", "float16",
                             "--overwrite", "--part-size", "1"])
    assert code == 0, err
    assert "resuming: 1 of 2" in err
    data = read_output(output)
    assert data["features"].dtype == np.float16 and data["attrs"]["complete"] and len(data["paths"]) == 2
    assert not (tmp_path / "out.h5.parts").exists()


def test_resume_with_another_configuration_is_refused(tmp_path, monkeypatch):
    write_plain_folder(tmp_path / "images", 3)
    output, work = tmp_path / "out.h5", tmp_path / "out.h5.parts"
    base = ["extract", tmp_path / "images", output, *FAST, "--part-size", "1"]
    interrupted_run(monkeypatch, [*base, "--layer", "conv1_1"])
    kept = folder_state(work)
    assert [name for name in kept if name.startswith("part-")] == ["part-000000000000-000000000001.h5"]

    code, _, err = run_main([*base, "--layer", "conv1_2"])
    assert code == 2
    line = error_line(err)
    assert "interrupted run with a different configuration" in line and "layer: conv1_1 then, conv1_2 now" in line
    assert "--overwrite" in line
    code, _, err = run_main([*base, "--layer", "conv1_1", "--scales", "256"])
    assert code == 2 and "scales: [224] then, [256] now" in error_line(err)
    assert folder_state(work) == kept and not output.exists()

    decoded = []
    real = ImageReader._decode
    monkeypatch.setattr(ImageReader, "_decode", lambda self, path, *args: decoded.append(path.name) or real(self, path, *args))
    code, _, err = run_main([*base, "--layer", "conv1_2", "--overwrite"])
    assert code == 0, err
    assert "resuming" not in err and len(decoded) == 3  # started over
    assert read_output(output)["attrs"]["layer"] == "conv1_2"
    assert not work.exists()


def test_foreign_parts_folder_is_refused_and_untouched(tmp_path):
    write_plain_folder(tmp_path / "images", 1)
    foreign = tmp_path / "out.h5.parts"
    (foreign / "deep").mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")
    (foreign / "deep" / "part-000000000000-000000000001.h5").write_bytes(b"not a part")
    before = folder_state(foreign)
    for extra in ([], ["--overwrite"]):
        code, _, err = run_main(["extract", tmp_path / "images", tmp_path / "out.h5", *CHEAP, *extra])
        assert code == 2
        assert "is not a vggfeat work folder" in error_line(err)
        assert folder_state(foreign) == before and sorted(p.name for p in foreign.iterdir()) == ["deep", "notes.txt"]
    assert not (tmp_path / "out.h5").exists()


@pytest.fixture
def one_image(tmp_path):
    write_plain_folder(tmp_path / "images", 1)
    (tmp_path / "empty").mkdir()
    return tmp_path


@pytest.mark.parametrize(
    "args, message",
    [
        (["extract", "{images}", "{out}", *FAST, "--model", "vgg99"], "Invalid value for '--model'"),
        (["extract", "{images}", "{out}", *FAST, "--layer", "fc9"], "unknown layer 'fc9'"),
        (["extract", "{images}", "{out}", *NO_SCALES, "--scales", "200"], "scale 200 is below 224"),
        (["extract", "{images}", "{out}", *NO_SCALES, "--scales", "2x4"], "expected comma-separated integers"),
        (["extract", "{images}", "{out}", *FAST, "--dtype", "float64"], "Invalid value for '--dtype'"),
        (["extract", "{images}", "{out}", *FAST, "--batch-size", "0"], "expected 'auto' or a positive integer, got '0'"),
        (["extract", "{empty}", "{out}", *FAST], "no images found"),
        (["extract", "{tmp}/nowhere", "{out}", *FAST], "input folder not found"),
        (["extract", "--file-list", "{tmp}/list.txt", "{out}", *FAST], "file list not found"),
        (["extract", "--file-list", "{tmp}/list.txt", "{images}", "{out}", *FAST], "got 2 path(s)"),
        (["extract", "{out}", *FAST], "expected IMAGES and OUTPUT, got 1 path(s)"),
        (["extract", "{images}", "{images}", "{out}", *FAST], "expected IMAGES and OUTPUT, got 3 path(s)"),
        (["extract", "{images}", "{tmp}/no/such/folder/out.h5", *FAST], "folder of the output does not exist"),
        (["extract", "{images}", "{images}", *FAST], "is a folder"),
        (["extract", "{images}", "{tmp}/out.csv", *FAST], "out.csv names a .csv file, but descriptor files are "
                                                          "HDF5: name it out.h5"),
        (["classify", "{images}", "{tmp}/out.hdf5", *FAST], "OUTPUT out.hdf5: name it .csv (each image's top classes) "
                                                             "or .h5 (every posterior)"),
        (["extract", "{images}", "{out}", *FAST, "--cudnn-autotune", "always"], "Invalid value for '--cudnn-autotune'"),
        (["extract", "{images}", "{out}", *FAST, "--compile", "yes"], "Invalid value for '--compile'"),
        # torch.manual_seed took -1 (recorded as "no seed", search rebuilt the network with seed 0),
        # raised an OverflowError's ValueError past 2**64; scikit-learn takes 0 to 2**32 - 1.
        (["extract", "{images}", "{out}", *FAST, "--seed", "-1"], "-1 is not in the range 0<=x<=4294967295"),
        (["extract", "{images}", "{out}", *FAST, "--seed", "99999999999999999999"], "not in the range 0<=x<=4294967295"),
        (["train-svm", "{images}/a.png", "{out}", "--seed", "4294967296"], "not in the range 0<=x<=4294967295"),
    ],
    ids=["model", "layer", "small-scale", "bad-scales", "dtype", "batch-size", "empty-folder", "missing-input",
         "missing-file-list", "file-list-and-folder", "one-path", "three-paths", "no-output-folder", "output-is-folder",
         "output-is-csv", "classify-output-is-hdf5", "autotune", "compile", "negative-seed", "huge-seed", "svm-seed"],
)
def test_user_errors_exit_2_with_one_line(one_image, args, message):
    tmp = one_image
    args = [a.format(images=tmp / "images", out=tmp / "out.h5", empty=tmp / "empty", tmp=tmp) for a in args]
    code, out, err = run_main(args)
    assert code == 2, err
    assert message in error_line(err)
    assert [path.name for path in tmp.iterdir() if path.name.startswith("out")] == []


@pytest.mark.parametrize("command", ["extract", "classify"])
def test_scales_and_device_are_checked_before_the_images_are_looked_for(tmp_path, command):
    """Finding millions of images takes minutes on a network file system: a typo must not wait for it."""
    for option, message in ((["--scales", "200"], "scale 200 is below 224"),
                            (["--scales", "16"], "scale 16 is below 32"),
                            (["--scales", "256,"], "expected comma-separated integers"),  # as --model vgg16, is
                            (["--device", "cuda:99"], "device cuda:99 asked for")):
        code, _, err = run_main([command, tmp_path / "nowhere", tmp_path / "out.file", *option])
        assert code == 2 and message in error_line(err)


def test_the_images_folder_is_recorded_whole_however_it_was_named(one_image, monkeypatch):
    """A relative IMAGES is recorded as the folder it names (input_root), so that search's montage and
    retrieval-eval --crop-queries find the images from any working folder."""
    monkeypatch.chdir(one_image)
    assert run_main(["extract", "images", "out.h5", *CHEAP, "-q"])[0] == 0
    assert read_output(one_image / "out.h5")["attrs"]["input_root"] == str(one_image / "images")


def test_a_file_made_with_max_pooling_of_a_center_crop_is_updated_as_it_was_made(one_image):
    """A new file of it is refused (the map is one position), not the update of one made so before."""
    from vggfeat import ExtractionJob, find_images

    crop = ["--center-crop", "--pooling", "max", "--layer", "fc6"]
    output = one_image / "out.h5"
    extractor = Extractor("vgg16", weights="random", seed=0, scales=[224], flip=False, device="cpu", center_crop=True,
                          pooling="max", layer="fc6")
    ExtractionJob(extractor, find_images(one_image / "images"), output).run()
    write_plain_folder(one_image / "images" / "more", 1, start_seed=5)
    code, _, err = run_main(["extract", one_image / "images", output, *FAST, *crop, "--update"])
    assert code == 0 and "1 image added" in err, err


def test_a_conv_layer_takes_a_scale_below_224(one_image):
    output = one_image / "out.h5"
    code, _, err = run_main(["extract", one_image / "images", output, *NO_SCALES, "--layer", "conv1_1", "--scales", "48"])
    assert code == 0, err
    data = read_output(output)
    assert data["features"].shape == (1, 64) and np.isfinite(data["features"]).all()
    assert data["attrs"]["scales"].tolist() == [48]


@pytest.mark.parametrize("command, option, message", [
    ("extract", ["--layer", "fc6", "--resize-side", "long"], "(--resize-side long) works with conv and pool layers"),
    ("extract", ["--pooling", "gem", "--layer", "fc8"], "gem pooling/aggregation needs non-negative"),
    ("extract", ["--decoder", "nvjpeg", "--device", "cpu"], "(--decoder nvjpeg) decodes on a CUDA device"),
    ("classify", ["--precision", "fp16", "--device", "cpu"], "(--precision fp16) needs a CUDA device"),
    ("classify", ["--no-dense"], "nothing to evaluate"),
    ("extract", [], "exists; pass --overwrite"),
    ("classify", [], "exists; pass --overwrite"),
    # Options that would do nothing (the file recording them all the same, for some).
    ("extract", ["--center-crop", "--pooling", "mac"], "--pooling mac: a center crop's fc7 map is one position"),
    ("extract", ["--gem-p", "4"], "--gem-p goes with --pooling gem or --aggregate gem, not given"),
    ("extract", ["--weights", "imagenet"], "--seed goes with --weights random, not given"),
    ("classify", ["--cudnn-autotune", "on"], "--cudnn-autotune on tunes cuDNN's convolutions, on a CUDA device"),
    ("classify", ["--topk", "3"], "--topk goes with an OUTPUT .csv (an .h5 holds every posterior), not given"),
], ids=["resize-long-fc6", "gem-fc8", "nvjpeg-cpu", "fp16-cpu", "nothing-to-evaluate", "extract-output", "classify-output",
        "center-crop-max", "gem-p", "seed-imagenet", "autotune-cpu", "topk-h5"])
def test_options_and_existing_outputs_are_refused_before_the_images_are_looked_for(one_image, monkeypatch, command,
                                                                                   option, message):
    """Combinations of options, and an output there already, are refused without finding the images first."""
    def looked_for(*args, **kwargs):
        raise AssertionError("the images were looked for")

    monkeypatch.setattr(options, "find_images", looked_for)
    output = one_image / ("out.h5" if command == "extract" or "--topk" in option else "out.csv")
    if not option:
        output.write_text("a user's file")
    code, _, err = run_main([command, one_image / "images", output, *FAST, *option])
    assert code == 2 and message in error_line(err), err
    assert output.read_text() == "a user's file" if not option else not output.exists()


def test_autotune_compile_and_decode_in_reach_the_extractor(one_image, monkeypatch):
    seen, real = [], Extractor.__init__

    def recorded(self, *args, **kwargs):
        seen.append((kwargs["autotune"], kwargs["compile"], kwargs["decode_in"]))
        real(self, *args, **kwargs)

    monkeypatch.setattr(Extractor, "__init__", recorded)
    for given in (["--cudnn-autotune", "off", "--compile", "off", "--decode-in", "threads"], []):
        code, _, err = run_main(["extract", one_image / "images", one_image / "out.h5", *FAST, *given, "--overwrite"])
        assert code == 0, err
    assert seen == [("off", "off", "threads"), ("auto", "auto", "auto")]


@pytest.mark.parametrize("speed, given, said", [
    ("amx", [], "note: this CPU computes bf16 in hardware (AMX): --precision bf16 runs the network 3-4x faster"),
    ("avx512_bf16", [], "note: this CPU computes bf16 in hardware (AVX512-BF16): --precision bf16 runs the network about "
                        "2x faster"),
    ("amx", ["--precision", "fp32"], None),
    ("amx", ["--precision", "bf16"], None),
    ("avx512_bf16", ["--precision", "bf16"], None),  # it was warned of as slower: it runs 2x fp32's speed (AMD EPYC)
    ("converted", [], None),
    ("converted", ["--precision", "bf16"], "WARNING: this CPU has neither AMX nor AVX512-BF16, so bf16 is converted"),
    ("unknown", ["--precision", "bf16"], None),
])
def test_the_cpu_run_says_which_way_bf16_goes(one_image, monkeypatch, speed, given, said):
    """fp32 stays the CPU's default (the issue's). Where AMX or AVX512-BF16 makes bf16 faster the
    run says so, unless a precision was asked for by name; where bf16 was asked for on an x86 CPU
    with neither, several times slower than fp32 there, it warns."""
    monkeypatch.setattr(settings, "cpu_bf16", lambda: speed)
    for name, output, run_options in (("extract", "out.h5", CHEAP), ("classify", "out.csv", FAST)):
        code, _, err = run_main([name, one_image / "images", one_image / output, *run_options, *given, "--overwrite"])
        assert code == 0, err
        advice = [line for line in err.splitlines() if "this CPU" in line]
        assert len(advice) == (1 if said else 0) and (said is None or said in advice[0]), err


def test_a_folder_given_for_a_file_is_said_to_be_a_folder_and_a_missing_devkit_not_found(one_image):
    """They were "not found", as if the folder were not there."""
    images = one_image / "images"
    for args, said in [(["extract", "--file-list", images, one_image / "o.h5"], "file list"),
                       (["train-svm", images, one_image / "m.h5"], "features file"),
                       (["export", images, "--to", "npy"], "features file")]:
        code, _, err = run_main(args)
        assert code == 2 and error_line(err) == f"Error: {images} is a folder, where a {said} was expected", err
    code, _, err = run_main(["protocol", "voc-persons", one_image / "nowhere", one_image / "p.txt"])
    assert code == 2 and error_line(err) == f"Error: VOC devkit folder not found: {one_image / 'nowhere'}", err


def test_quiet_hides_the_progress_and_says_what_was_written_and_what_failed(one_image):
    """A batch job (the README's shard loop runs with -q) learnt nothing of the images that failed:
    -q hid the run's summary with its progress."""
    (one_image / "images" / "broken.jpg").write_bytes(b"\xff\xd8 not a JPEG")
    code, out, err = run_main(["extract", one_image / "images", one_image / "out.h5", *CHEAP, "--center-crop", "-q"])
    assert code == 0, err
    said = [line for line in err.splitlines() if "WARNING: random weights" not in line]
    assert said[0].startswith(f"wrote {one_image / 'out.h5'}: 1 descriptor") and "1 failed" in said[0], err
    assert said[1].startswith("failures by reason") and len(said) == 3 and out == "", err
    # info says the crop, which its lines showed as a dense file's.
    code, out, err = run_main(["info", one_image / "out.h5"])
    assert code == 0 and "  resize       short side = Q; its central 224 x 224 (--center-crop); per-view" in out, err


@pytest.mark.parametrize("flags, speed", [("fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8", "amx"),
                                           ("fpu sse avx2 avx512f avx512_bf16", "avx512_bf16"),
                                           ("fpu sse avx2 avx512f", "converted"), (None, "unknown")])
def test_which_way_bf16_goes_comes_from_the_cpus_flags(tmp_path, monkeypatch, flags, speed):
    """From the flags Linux lists (an x86 CPU); where there are none, from torch's own check, or
    unknown without one."""
    cpuinfo = tmp_path / "cpuinfo"
    if flags:
        cpuinfo.write_text(f"processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: {flags}\nbugs\t\t: spectre_v1\n")
    monkeypatch.setattr(settings.platform, "machine", lambda: "x86_64")
    read_flags = settings.cpu_flags
    monkeypatch.setattr(settings, "cpu_flags", lambda: read_flags(cpuinfo))
    monkeypatch.delattr(settings.torch.cpu, "_is_amx_tile_supported", raising=False)
    assert settings.cpu_bf16() == speed


def test_real_process_exit_code_and_one_line_error(tmp_path):
    result = run_process(["extract", tmp_path / "nowhere", tmp_path / "out.h5", *FAST])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"Error: input folder not found: {tmp_path / 'nowhere'}"]
    assert result.stdout == ""


def test_a_collection_named_in_latin1_is_described(tmp_path):
    # Folder and file names from a system that wrote them in Latin-1: not UTF-8, as HDF5 needs.
    images = tmp_path / os.fsdecode("fotos-été".encode("latin-1"))
    try:
        (images / os.fsdecode("chèvre".encode("latin-1"))).mkdir(parents=True)
    except (OSError, UnicodeError):
        pytest.skip("this file system refuses names that are not UTF-8")
    (images / "chèvre").mkdir()
    write_rgb(images / os.fsdecode("chèvre".encode("latin-1")) / "1.png", 224, 230, seed=1)
    write_rgb(images / "chèvre" / "2.png", 224, 224, seed=2)
    output = tmp_path / "out.h5"
    code, _, err = run_main(["extract", images, output, *CHEAP])
    assert code == 0, err
    data = read_output(output)
    assert data["paths"] == ["ch\\xe8vre/1.png", "chèvre/2.png"]
    assert data["classes"] == ["ch\\xe8vre", "chèvre"]
    assert data["attrs"]["input_root"] == str(tmp_path / "fotos-\\xe9t\\xe9")
    assert [tuple(s) for s in data["sizes"].tolist()] == [(224, 230), (224, 224)]


# --------------------------------------------------------------------------- --file-list


def test_file_list_paths_and_labels(tmp_path):
    data_dir = tmp_path / "data"
    (data_dir / "imgs" / "sub").mkdir(parents=True)
    write_rgb(data_dir / "imgs" / "x.png", 224, 230, seed=1)
    write_rgb(data_dir / "imgs" / "sub" / "y.png", 224, 224, seed=2)
    write_rgb(data_dir / "imgs" / "z.png", 240, 224, seed=3)
    (data_dir / "list.txt").write_text(
        "# path[,label]\n"
        "imgs/x.png,cat\n"
        "imgs/sub/y.png\n"
        "\n"
        f"{data_dir / 'imgs' / 'z.png'},cat\n"  # absolute, inside the list's folder
        "imgs/missing.png,dog\n"
    )
    output = tmp_path / "out.h5"
    code, _, err = run_main(["extract", "--file-list", data_dir / "list.txt", output, *CHEAP])
    assert code == 0, err
    assert "3 descriptors" in err and "1 failed" in err
    data = read_output(output)
    assert data["paths"] == ["imgs/sub/y.png", "imgs/x.png", "imgs/z.png"]
    assert data["classes"] == ["cat", "dog"]
    assert data["labels"].tolist() == [-1, 0, 0]
    assert [tuple(s) for s in data["sizes"].tolist()] == [(224, 224), (224, 230), (240, 224)]
    assert data["failed_paths"] == ["imgs/missing.png"] and data["failed_errors"] == ["file not found"]


def test_a_file_list_piped_to_standard_input_gives_the_rows_of_the_list_file(tmp_path):
    """``find ... | vggfeat extract --file-list - out.h5``, in a real process with a real pipe: the
    paths relative to the working folder, the rows those of the same list given as a file."""
    write_plain_folder(tmp_path / "images", 3)
    listing = "".join(f"images/{path.name},{'ab'[k % 2]}\n" for k, path in enumerate(sorted((tmp_path / "images").iterdir())))
    (tmp_path / "list.txt").write_text(listing)
    args = ["extract", "--file-list", "-", tmp_path / "piped.h5", *CHEAP, "--model", "vgg11"]
    piped = subprocess.run(command(args), input=listing, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert piped.returncode == 0, piped.stderr
    assert "3 images, 2 classes" in piped.stderr
    as_file = ["extract", "--file-list", tmp_path / "list.txt", tmp_path / "listed.h5", *CHEAP, "--model", "vgg11"]
    assert run_main(as_file)[0] == 0  # here: the rows are compared, not the processes
    assert_same_output(read_output(tmp_path / "piped.h5"), read_output(tmp_path / "listed.h5"))


def test_file_list_with_root(tmp_path):
    (tmp_path / "pictures").mkdir()
    (tmp_path / "lists").mkdir()
    write_rgb(tmp_path / "pictures" / "b.png", 224, 224, seed=1)
    write_rgb(tmp_path / "pictures" / "a.png", 224, 240, seed=2)
    (tmp_path / "lists" / "train.txt").write_text("b.png,zebra\na.png,ant\n")
    output = tmp_path / "out.h5"
    code, _, err = run_main(["extract", "--file-list", tmp_path / "lists" / "train.txt",
                             "--root", tmp_path / "pictures", output, *CHEAP])
    assert code == 0, err
    data = read_output(output)
    assert data["paths"] == ["a.png", "b.png"] and data["classes"] == ["ant", "zebra"]
    assert data["labels"].tolist() == [0, 1] and data["failed_paths"] == []
    before = output.read_bytes()
    code, _, err = run_main(["extract", "--file-list", tmp_path / "lists" / "train.txt",  # again: nothing to do
                             "--root", tmp_path / "pictures", output, *CHEAP, "-q"])
    assert code == 0 and output.read_bytes() == before
    code, _, err = run_main(["extract", "--file-list", tmp_path / "lists" / "train.txt", output, *CHEAP])
    assert code == 2 and error_line(err).endswith("out.h5 already exists; pass --overwrite to replace it")
    assert "loading" not in err  # another root: refused before the network loads



def test_a_file_list_none_of_whose_files_is_there_is_refused_before_the_run(tmp_path):
    """Paths relative to another folder than the list's (no --root), or a storage not mounted: one
    line naming where they were looked for, not a run that records every image as failed."""
    (tmp_path / "pictures").mkdir()
    write_rgb(tmp_path / "pictures" / "039.png", 224, 224, seed=1)
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "train.txt").write_text("".join(f"pictures/{i:03d}.png,c{i % 2}\n" for i in range(40)))
    output = tmp_path / "out.h5"
    code, _, err = run_main(["extract", "--file-list", tmp_path / "lists" / "train.txt", output, *CHEAP])
    assert code == 2 and not output.exists() and not (tmp_path / "out.h5.parts").exists()
    assert (f"none of the files of {tmp_path / 'lists' / 'train.txt'} is there (looked for 16 of its 40, spread over it, "
            f"e.g. {tmp_path / 'lists' / 'pictures' / '000.png'}); its relative paths are taken from "
            f"{tmp_path / 'lists'} (the list's folder; --root names another)") in err
    # With the root they are relative to, the one file there is described and the others recorded as failed.
    code, _, err = run_main(["extract", "--file-list", tmp_path / "lists" / "train.txt", "--root", tmp_path, output, *CHEAP])
    assert code == 0, err
    assert "1 descriptor" in err and "39 failed" in err

# --------------------------------------------------------------------------- info


def test_info_text(mixed):
    code, out, err = run_main(["info", mixed["output"]])
    assert code == 0, err
    assert re.search(r": complete$", out.splitlines()[0])
    assert re.search(rf"rows\s+18 \(18 labelled\) of {18 + len(BAD_FILES)} images found", out)
    assert re.search(r"descriptor\s+64-d float32", out)
    assert re.search(r"classes\s+3: bad, good, odd", out)
    assert re.search(rf"failed\s+{len(BAD_FILES)} \({len(BAD_FILES)} labelled: bad {len(BAD_FILES)}\)$", out, flags=re.MULTILINE)
    assert re.search(r"model\s+vgg16\s+weights random", out)
    assert re.search(r"layer\s+conv1_1, avg-pooled; scales 224 \(mean\); flip off", out)
    # One run: its start, after which --update sees a file as changed.
    assert re.search(r"^  read after   \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00; --update describes again files modified "
                     r"since$", out, flags=re.MULTILINE), out
    assert "WARNING: made with random weights" in out
    shown = re.findall(r"^  failed: (.+?): (.+)$", out, flags=re.MULTILINE)
    failed = sorted(mixed["bad"])
    assert [path for path, _ in shown] == failed[:5]
    for path, reason in shown:
        assert mixed["bad"][path] in reason.lower()
    assert f"… and {len(BAD_FILES) - 5} more in /failed" in out
    # All of them, by reason, most first: the first five in path order may not show what most failed of.
    by_reason = out.split("  failures by reason:\n")[1].splitlines()
    assert by_reason[0] == "    2  not an image, or a format Pillow cannot read"  # corrupt.jpg and notes.png
    assert by_reason[-1] == "    1  for 1 other reason ('vggfeat info --json' lists it)"
    assert sum(int(line.split()[0]) for line in by_reason) == len(BAD_FILES)


def test_info_counts_the_failures_of_each_class_the_most_first():
    by_class = {"dogs": 3, "ants": 2, "cats": 2, "eels": 1}
    assert _failed_classes(by_class) == " (8 labelled: dogs 3, ants 2, cats 2, … 1 more class)"
    assert _failed_classes({"cats": 1}) == " (1 labelled: cats 1)" and _failed_classes({}) == ""


def test_failures_are_counted_by_their_kind_of_reason(tmp_path):
    """What is particular to a file (its name in an OS error, its size) is left out of the kind; a
    kind whose reasons are all the same is shown as that reason."""
    assert reason_kind("image is 10x12; the smallest side must be at least 32 px") == \
        "image is NxN; the smallest side must be at least N px"
    assert reason_kind("PermissionError: [Errno 13] Permission denied: '/data/a b.jpg'") == \
        "PermissionError: [Errno N] Permission denied: '…'"
    reasons = ["empty file (0 bytes)", "image is 10x12; the smallest side must be at least 32 px",
               "PermissionError: [Errno 13] Permission denied: '/a.jpg'", "empty file (0 bytes)",
               "image is 20x8; the smallest side must be at least 32 px", "PermissionError: [Errno 13] Permission denied: '/b.jpg'",
               "PermissionError: [Errno 13] Permission denied: '/c.jpg'"]
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f.create_dataset("errors", data=reasons, dtype=h5py.string_dtype())
        by_reason = failures_by_reason(f["errors"], step=2)  # blocks of 2: counted across them
    assert by_reason == [
        {"reason": "PermissionError: [Errno N] Permission denied: '…'", "failures": 3,
         "example": "PermissionError: [Errno 13] Permission denied: '/a.jpg'"},
        {"reason": "empty file (0 bytes)", "failures": 2, "example": "empty file (0 bytes)"},
        {"reason": "image is NxN; the smallest side must be at least N px", "failures": 2,
         "example": "image is 10x12; the smallest side must be at least 32 px"},
    ]


def test_info_json(mixed):
    code, out, err = run_main(["info", "--json", mixed["output"]])
    assert code == 0, err
    summary = json.loads(out)
    assert summary["complete"] is True
    assert (summary["rows"], summary["dim"], summary["dtype"], summary["failed"]) == (18, 64, "float32", len(BAD_FILES))
    assert summary["classes"] == ["bad", "good", "odd"] and summary["labelled"] == 18
    assert summary["failed_by_class"] == {"bad": len(BAD_FILES)}
    assert [path for path, _ in summary["first_failures"]] == sorted(mixed["bad"])[:5]
    assert all(reason for _, reason in summary["first_failures"])
    assert summary["failures_by_reason"][0] == {"reason": "not an image, or a format Pillow cannot read", "failures": 2,
                                                "example": "not an image, or a format Pillow cannot read"}
    assert sum(entry["failures"] for entry in summary["failures_by_reason"]) == len(BAD_FILES)
    earliest, latest = summary["read_after"]
    assert earliest == latest and earliest <= summary["attrs"]["created"]  # one run, begun before it wrote the file
    a = summary["attrs"]
    assert (a["model"], a["weights"], a["layer"], a["scales"]) == ("vgg16", "random", "conv1_1", [224])
    assert a["random_weights"] is True and a["complete"] is True and len(a["weights_sha256"]) == 64


def test_info_of_a_file_without_read_after_says_update_cannot_see_changed_files(mixed, tmp_path):
    old = tmp_path / "old.h5"
    old.write_bytes(mixed["output"].read_bytes())
    with h5py.File(old, "r+") as f:  # as vggfeat wrote files before it kept when they were read
        del f["read_after"], f["failed/read_after"]
    code, out, err = run_main(["info", old])
    assert code == 0, err
    assert "  read after   not recorded (a file of an earlier vggfeat): --update cannot see files changed since" in out


def test_info_on_an_interrupted_run(tmp_path, monkeypatch):
    write_plain_folder(tmp_path / "images", 2)
    output = tmp_path / "out.h5"
    args = ["extract", tmp_path / "images", output, *CHEAP, "--part-size", "1"]
    interrupted_run(monkeypatch, args)
    code, out, err = run_main(["info", output])
    assert code == 2
    line = error_line(err)
    assert "is not written yet" in line and str(tmp_path / "out.h5.parts") in line
    assert "has done 1 of 2 images" in line and "run the same extract command to finish it" in line
    # Doing so finishes it.
    code, _, err = run_main(args)
    assert code == 0 and "resuming: 1 of 2" in err
    assert run_main(["info", output])[0] == 0


def test_info_on_missing_and_foreign_files(tmp_path):
    code, _, err = run_main(["info", tmp_path / "missing.h5"])
    assert code == 2 and "file not found" in error_line(err)
    (tmp_path / "text.h5").write_text("not HDF5")
    code, _, err = run_main(["info", tmp_path / "text.h5"])
    assert code == 2 and error_line(err) == f"Error: {tmp_path / 'text.h5'} is not an HDF5 file"
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["something"] = np.zeros(3)
        f.attrs["creator"] = "keras"  # as most programs' files have attributes of their own
    code, _, err = run_main(["info", tmp_path / "other.h5"])  # not h5py's "object 'features' doesn't exist"
    assert code == 2 and error_line(err) == (f"Error: {tmp_path / 'other.h5'} is not a vggfeat file: an HDF5 file "
                                             "holding something, with no /features dataset")
    code, _, err = run_main(["info", tmp_path])
    assert code == 2 and error_line(err) == f"Error: {tmp_path} is a folder: give a file that vggfeat wrote"
    (tmp_path / "out.h5.parts").mkdir()
    code, _, err = run_main(["info", tmp_path / "out.h5.parts"])
    assert code == 2 and f"'vggfeat info {tmp_path / 'out.h5'}' says how far it got" in error_line(err)
