"""``extract --retry-failed``: the images a finished run recorded as failed are described again,
and the file becomes the one a run without those failures writes."""

from __future__ import annotations

import pytest

import vggfeat.update
from imagefiles import write_corrupt
from runhelpers import (
    FAST,
    crash_on_part,
    assert_same_output,
    error_line,
    flaky_storage,
    read_output,
    run_main,
    write_labelled_folder,
    write_plain_folder,
)
from vggfeat import ExtractionJob, Extractor, find_images
from vggfeat.cli import options
from vggfeat.retry import retry_failed

CHEAP = [*FAST, "--layer", "conv1_1"]



def test_images_failed_in_an_outage_are_described_once_the_storage_is_back(tmp_path, monkeypatch):
    write_labelled_folder(tmp_path / "images")  # its dogs/broken.jpg fails whatever happens
    args = ["extract", tmp_path / "images", tmp_path / "out.h5", *CHEAP]
    assert run_main(["extract", tmp_path / "images", tmp_path / "reference.h5", *CHEAP])[0] == 0
    flaky_storage(monkeypatch, {"a.png": 10**6, "turned.jpg": 10**6})  # away while these were read
    assert run_main(args)[0] == 0
    monkeypatch.undo()
    failed = read_output(tmp_path / "out.h5")
    assert (failed["failed_paths"], failed["failed_labels"]) == (["cats/a.png", "dogs/broken.jpg", "dogs/turned.jpg"], [0, 1, 1])

    code, _, err = run_main([*args, "--retry-failed"])
    assert code == 0, err
    assert "5 descriptors (64-d float32), 1 failed; 2 of the 3 images that had failed are described now" in err
    retried, reference = read_output(tmp_path / "out.h5"), read_output(tmp_path / "reference.h5")
    assert_same_output(retried, reference)
    assert retried["attrs"]["retry_command"].endswith("--retry-failed") and "failures_retried" in retried["attrs"]
    assert retried["attrs"]["command"] == reference["attrs"]["command"].replace("reference.h5", "out.h5")
    code, _, err = run_main([*args, "--retry-failed"])  # dogs/broken.jpg is still broken
    assert code == 0 and "1 of the 1 images" not in err and "0 of the 1 images that had failed" in err, err
    write_plain_folder(tmp_path / "clean", 2)
    assert run_main(["extract", tmp_path / "clean", tmp_path / "clean.h5", *CHEAP])[0] == 0
    clean = (tmp_path / "clean.h5").read_bytes()
    code, _, err = run_main(["extract", tmp_path / "clean", tmp_path / "clean.h5", *CHEAP, "--retry-failed"])
    assert code == 0 and "lists no failed image: nothing to retry" in err and (tmp_path / "clean.h5").read_bytes() == clean


def test_phone_photos_fail_saying_what_to_install_and_are_described_once_it_is(tmp_path, monkeypatch):
    """HEIC files without pillow-heif: each recorded as failed with the advice, then --retry-failed."""
    pytest.importorskip("pillow_heif")
    import numpy as np
    from PIL import Image

    from imagefiles import smooth_rgb
    from vggfeat import decode

    write_plain_folder(tmp_path / "images", 2)
    assert decode.heif_plugin()  # registered, to write them
    for name in ("phone/a.heic", "phone/b.HEIF"):
        (tmp_path / "images" / name).parent.mkdir(exist_ok=True)
        Image.fromarray(smooth_rgb(240, 320, seed=len(name))).save(tmp_path / "images" / name, format="HEIF", quality=90)
    args = ["extract", tmp_path / "images", tmp_path / "out.h5", *CHEAP]
    assert run_main([*args[:2], tmp_path / "reference.h5", *CHEAP])[0] == 0
    # Without the plugin: Pillow opens no HEIF file, and heif_plugin finds none to register.
    monkeypatch.setattr(Image, "ID", [name for name in Image.ID if name != "HEIF"])
    monkeypatch.setattr(decode, "heif_plugin", lambda: False)
    code, _, err = run_main(args)
    assert code == 0, err
    failed = read_output(tmp_path / "out.h5")
    assert failed["failed_paths"] == ["phone/a.heic", "phone/b.HEIF"]
    assert set(failed["failed_errors"]) == {"HEIC/HEIF image: decoding it needs pillow-heif (pip install pillow-heif); "
                                            "then --retry-failed"}
    assert "WARNING: 2 HEIC/HEIF image(s): decoding them needs pillow-heif (pip install pillow-heif); without it each is " \
           "recorded as failed" in err  # said before the run
    assert "2 failed" in err and "needs pillow-heif" in err
    monkeypatch.undo()  # installed
    code, _, err = run_main([*args, "--retry-failed"])
    assert code == 0 and "2 of the 2 images that had failed are described now" in err, err
    retried, reference = read_output(tmp_path / "out.h5"), read_output(tmp_path / "reference.h5")
    assert_same_output(retried, reference)
    assert len(reference["paths"]) == 4 and np.isfinite(reference["features"]).all()


@pytest.mark.parametrize("block_rows", [1, 3, 1000])  # of the old file's rows copied at a time
def test_new_rows_go_where_a_run_without_failures_puts_them(tmp_path, random_vgg16, monkeypatch, block_rows):
    files = write_plain_folder(tmp_path / "images", 9)
    write_corrupt(tmp_path / "images" / "img04x.png")  # fails again
    extractor = Extractor(random_vgg16, scales=[224], flip=False, device="cpu", layer="conv1_1")
    images = find_images(tmp_path / "images")
    ExtractionJob(extractor, images, tmp_path / "reference.h5").run()
    flaky_storage(monkeypatch, {files[i].name: 10**6 for i in (0, 3, 4, 8)})  # first, middle, around a failure, last
    ExtractionJob(extractor, images, tmp_path / "out.h5").run()
    monkeypatch.undo()
    monkeypatch.setattr(vggfeat.update, "BLOCK_BYTES", block_rows * 64 * 4)  # conv1_1: 64 float32 values a row
    result = retry_failed(extractor, images, tmp_path / "out.h5")
    assert (result.retried, result.recovered, result.rows, result.failed) == (5, 4, 9, 1)
    assert_same_output(read_output(tmp_path / "out.h5"), read_output(tmp_path / "reference.h5"))


def test_a_file_whose_every_image_had_failed(tmp_path, random_vgg16, monkeypatch):
    files = write_plain_folder(tmp_path / "images", 3)
    extractor = Extractor(random_vgg16, scales=[224], flip=False, device="cpu", layer="conv1_1")
    images = find_images(tmp_path / "images")
    ExtractionJob(extractor, images, tmp_path / "reference.h5").run()
    flaky_storage(monkeypatch, {path.name: 10**6 for path in files})
    assert ExtractionJob(extractor, images, tmp_path / "out.h5").run().rows == 0
    monkeypatch.undo()
    assert retry_failed(extractor, images, tmp_path / "out.h5").recovered == 3
    assert_same_output(read_output(tmp_path / "out.h5"), read_output(tmp_path / "reference.h5"))


def test_a_retry_with_other_options_or_images_is_refused_and_changes_nothing(tmp_path, monkeypatch):
    write_plain_folder(tmp_path / "images", 2)
    write_corrupt(tmp_path / "images" / "bad.png")
    output = tmp_path / "out.h5"
    args = ["extract", tmp_path / "images", output, *CHEAP]
    assert run_main(args)[0] == 0
    before = output.read_bytes()
    refusals = [
        (["extract", tmp_path / "images", output, *FAST, "--layer", "conv1_2", "--retry-failed"],
         "was made with other options (layer: conv1_1 then, conv1_2 now"),
        ([*args, "--retry-failed", "--dtype", "float16"], "dtype: float32 then, float16 now"),
        ([*args, "--retry-failed", "--overwrite"], "choose one"),
        (["extract", tmp_path / "images", tmp_path / "none.h5", *CHEAP, "--retry-failed"], "output file not found"),
    ]
    write_plain_folder(tmp_path / "more", 3)
    code, _, err = run_main(["extract", tmp_path / "more", output, *CHEAP, "--retry-failed"])
    assert code == 2 and "describes another set of images" in error_line(err), err
    # The other refusals come before the images are looked for.
    monkeypatch.setattr(options, "find_images", lambda *args, **kwargs: pytest.fail("the images were looked for"))
    for refused, words in refusals:
        code, _, err = run_main(refused)
        assert code == 2 and words in error_line(err), err
    (tmp_path / "out.h5.parts").mkdir()
    (tmp_path / "out.h5.parts" / "manifest.json").write_text("{}")  # an extraction's work: running or interrupted
    code, _, err = run_main([*args, "--retry-failed"])
    assert code == 2 and "run it to its end" in error_line(err)
    assert output.read_bytes() == before


def test_a_killed_retry_resumes_where_it_stopped(tmp_path, monkeypatch):
    files = write_plain_folder(tmp_path / "images", 4)
    args = ["extract", tmp_path / "images", tmp_path / "out.h5", *CHEAP, "--part-size", "1"]
    assert run_main(["extract", tmp_path / "images", tmp_path / "reference.h5", *CHEAP])[0] == 0
    flaky_storage(monkeypatch, {path.name: 10**6 for path in files[1:]})
    assert run_main(args)[0] == 0
    monkeypatch.undo()
    before = (tmp_path / "out.h5").read_bytes()
    crash_on_part(monkeypatch, 2)  # killed after describing one of the three again
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_main([*args, "--retry-failed"])
    monkeypatch.undo()
    assert (tmp_path / "out.h5").read_bytes() == before
    code, _, err = run_main([*args, "--retry-failed"])
    assert code == 0 and "resuming: 1 of 3 images were done by an interrupted run" in err, err
    assert "3 of the 3 images that had failed are described now" in err
    assert_same_output(read_output(tmp_path / "out.h5"), read_output(tmp_path / "reference.h5"))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["images", "out.h5", "reference.h5"]


def test_a_retry_killed_after_its_rewrite_leaves_nothing_the_next_retry_trusts(tmp_path, monkeypatch):
    """Killed between the file's rename and the removal of its staging file: the staging file is
    of the file replaced, whose failed image it described as it was then (a failure again). The
    image, repaired since, was not retried: "every image was described by the interrupted run"."""
    files = write_plain_folder(tmp_path / "images", 3)
    args = ["extract", tmp_path / "images", tmp_path / "out.h5", *CHEAP]
    assert run_main(["extract", tmp_path / "images", tmp_path / "reference.h5", *CHEAP])[0] == 0
    repaired = files[1].read_bytes()
    write_corrupt(files[1])
    assert run_main(args)[0] == 0
    rewrite = vggfeat.update.OutputUpdate._rewrite

    def killed_after(self):
        rewrite(self)
        raise KeyboardInterrupt  # as a kill before the staging file was removed

    monkeypatch.setattr(vggfeat.update.OutputUpdate, "_rewrite", killed_after)
    assert run_main([*args, "--retry-failed"])[0] == 130  # stopped
    monkeypatch.undo()
    assert (tmp_path / "out.h5.retried-images.h5").exists()
    files[1].write_bytes(repaired)
    code, _, err = run_main([*args, "--retry-failed"])
    assert code == 0 and "1 of the 1 images that had failed are described now" in err, err
    assert_same_output(read_output(tmp_path / "out.h5"), read_output(tmp_path / "reference.h5"))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["images", "out.h5", "reference.h5"]


def test_the_extraction_run_again_keeps_the_staging_file_of_a_retry_killed_before_its_rewrite(tmp_path, monkeypatch):
    """Killed once its images were described, before the file was written anew: OUTPUT.parts/ holds
    its lock alone, the staging file is of the file as it is. The plain command run then took it
    for a leftover, removed it, and the retry described the images again."""
    files = write_plain_folder(tmp_path / "images", 2)
    args = ["extract", tmp_path / "images", tmp_path / "out.h5", *CHEAP]
    repaired = files[1].read_bytes()
    write_corrupt(files[1])
    assert run_main(args)[0] == 0
    files[1].write_bytes(repaired)

    def killed(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(vggfeat.update.OutputUpdate, "_rewrite", killed)
    assert run_main([*args, "--retry-failed"])[0] == 130
    monkeypatch.undo()
    (tmp_path / "out.h5.parts").mkdir()  # the lock a SIGKILL leaves (an exception lets go of it)
    (tmp_path / "out.h5.parts" / "lock").touch()
    assert run_main(args)[0] == 0
    assert (tmp_path / "out.h5.retried-images.h5").exists()
    code, _, err = run_main([*args, "--retry-failed"])
    assert code == 0 and "every image was described by the interrupted run" in err, err
