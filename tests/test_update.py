"""``extract --update``: a finished file brought up to date with a collection that grew and lost
files, describing only the images it did not hold; the file becomes the one a fresh run writes."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import vggfeat.decode
import vggfeat.files
import vggfeat.job
import vggfeat.jpeg
import vggfeat.store
import vggfeat.update
from imagefiles import write_corrupt, write_rgb
from runhelpers import (
    FAST,
    assert_same_output,
    crash_on_part,
    error_line,
    interrupted_run,
    read_output,
    run_main,
    write_labelled_folder,
    write_plain_folder,
)
from svmhelpers import misplace_a_chunk
from vggfeat import ExtractionJob, Extractor, ImageSet, VggfeatError, find_images
from vggfeat.cli import options
from vggfeat.update import OutputUpdate, changed_files

CHEAP = [*FAST, "--layer", "conv1_1"]



def decoded_files(monkeypatch) -> list[str]:
    """folder/name of the image files opened from now on (some twice: a PNG is looked at as a JPEG first)."""
    real, names = vggfeat.decode.open_image_file, []

    def open_image_file(path):
        names.append("/".join(Path(path).parts[-2:]))
        return real(path)

    for module in (vggfeat.decode, vggfeat.jpeg):
        monkeypatch.setattr(module, "open_image_file", open_image_file)
    return names


def grow_and_prune(root) -> None:
    """A new class, new images in an old class (one of them corrupt), an image gone, one more failing."""
    (root / "birds").mkdir()
    write_rgb(root / "birds" / "e.png", 224, 236, seed=7)
    write_rgb(root / "cats" / "new.jpg", 230, 224, seed=8)
    write_corrupt(root / "cats" / "torn.jpg")
    (root / "dogs" / "c.png").unlink()


def test_an_update_describes_only_the_new_images_and_writes_what_a_fresh_run_writes(tmp_path, monkeypatch):
    root, output = tmp_path / "images", tmp_path / "out.h5"
    write_labelled_folder(root)
    args = ["extract", root, output, *CHEAP]
    assert run_main(args)[0] == 0
    grow_and_prune(root)
    assert run_main(["extract", root, tmp_path / "reference.h5", *CHEAP])[0] == 0

    read = decoded_files(monkeypatch)
    code, _, err = run_main([*args, "--update"])
    assert code == 0, err
    assert sorted(set(read)) == ["birds/e.png", "cats/new.jpg", "cats/torn.jpg"], "only the images the file did not hold"
    assert "3 images that" in err and "1 that it holds no longer found" in err
    assert "updated" in err and "6 descriptors (64-d float32), 2 failed; 3 images added, 1 left out" in err
    # Labels follow the classes as they are now: birds came first, so cats and dogs moved up one.
    updated, reference = read_output(output), read_output(tmp_path / "reference.h5")
    assert_same_output(updated, reference)
    assert updated["attrs"]["images_sha256"] == reference["attrs"]["images_sha256"]
    assert updated["attrs"]["update_command"].endswith("--update") and "updated" in updated["attrs"]
    made_with = json.loads(updated["attrs"]["updated_with"])
    assert made_with["torch_version"] == torch.__version__ and made_with["device"] == "cpu"
    assert not list(tmp_path.glob("out.h5.*")) and not list(tmp_path.glob(".out.h5*")), "no staging file left"
    code, out, _ = run_main(["info", output])
    line = next(line for line in out.splitlines() if line.startswith("  updated "))
    assert code == 0 and line.startswith(f"  updated      {updated['attrs']['updated']} by vggfeat extract ")
    assert line.endswith(" --update")

    before = output.read_bytes()
    code, _, err = run_main([*args, "--update"])
    assert code == 0 and "is up to date: it holds every one of the 8 images" in err, err
    assert output.read_bytes() == before



def test_an_update_describes_again_the_images_whose_file_changed_since_it_was_read(tmp_path, monkeypatch):
    """A photo edited or replaced after the run that described it: its file's modification time is
    after that run began, which the file keeps for each row (/read_after)."""
    root, output = tmp_path / "images", tmp_path / "out.h5"
    write_labelled_folder(root)
    args = ["extract", root, output, *CHEAP]
    began = time.time()
    assert run_main(args)[0] == 0
    first = read_output(output)["read_after"]
    assert len(set(first)) == 1 and began <= first[0] <= time.time()  # the run's start, before any image was read
    write_rgb(root / "cats" / "a.png", 224, 240, seed=99)  # another picture under the same name
    write_rgb(root / "dogs" / "broken.jpg", 230, 230, seed=97)  # a failed file, repaired
    read = decoded_files(monkeypatch)
    code, _, err = run_main([*args, "--update"])
    assert code == 0, err
    assert sorted(set(read)) == ["cats/a.png", "dogs/broken.jpg"], "only the changed files"
    assert "0 images that" in err and "does not hold, 2 whose file changed since it was read, 0 that" in err
    assert "0 images added, 2 described again, 0 left out" in err
    updated = read_output(output)
    assert updated["failed_paths"] == [] and "dogs/broken.jpg" in updated["paths"]
    assert run_main(["extract", root, tmp_path / "reference.h5", *CHEAP])[0] == 0
    assert_same_output(updated, read_output(tmp_path / "reference.h5"))
    again = updated["read_after"][updated["paths"].index("cats/a.png")]
    assert again > first[0] and sorted(set(updated["read_after"])) == [first[0], again]  # the others' rows kept
    assert updated["read_after"][updated["paths"].index("dogs/broken.jpg")] == again
    read.clear()
    code, _, err = run_main([*args, "--update"])
    assert code == 0 and "is up to date" in err and not read, err  # nothing changed since
    # A file written before vggfeat kept /read_after: a change cannot be seen there.
    with h5py.File(output, "r+") as f:
        del f["read_after"], f["failed/read_after"]
    write_rgb(root / "dogs" / "c.png", 224, 224, seed=98)
    code, _, err = run_main([*args, "--update"])
    assert code == 0 and "is up to date" in err and not read, err


@pytest.mark.parametrize("remote", [False, True], ids=["local", "remote"])
def test_changed_files_are_those_modified_since_their_row_was_read(tmp_path, monkeypatch, remote):
    """Looked at one by one, or by threads where a look takes as long as a file server's round trip."""
    monkeypatch.setattr(vggfeat.update, "STAT_BLOCK", 2)  # several blocks of files
    monkeypatch.setattr(vggfeat.update, "REMOTE_STAT_SECONDS", 0.0 if remote else 1.0)
    names = [f"{i}.jpg" for i in range(7)]
    for name in names:
        (tmp_path / name).write_bytes(b"old")
    images = ImageSet(tmp_path, tuple(names), np.full(7, -1, dtype=np.int32), ())
    read = time.time()  # the run began: every file was written before
    for name in ("1.jpg", "4.jpg", "5.jpg", "6.jpg"):
        (tmp_path / name).write_bytes(b"new")
    (tmp_path / "2.jpg").unlink()  # cannot be looked at: its row is kept
    rows = np.array([0, 1, 2, -1, 3, 4, 5])  # 3.jpg: not held (new to the file), so not changed
    read_after = np.array([read, read, read, read, np.nan, read])  # 5.jpg's row: when it was read is not known
    assert changed_files(images, rows, read_after).tolist() == [1, 4, 6]  # not 0 (as it was), 2, 3 nor 5
    assert changed_files(images, np.full(7, -1), read_after).tolist() == []

def test_an_update_warns_when_the_disk_cannot_hold_the_file_written_anew(tmp_path, monkeypatch):
    """The images it describes, and the whole file written anew beside the old one."""
    root, output = tmp_path / "images", tmp_path / "out.h5"
    write_plain_folder(root, 3)
    args = ["extract", root, output, *CHEAP, "--update"]
    assert run_main(args[:-1])[0] == 0
    row, usage = 64 * 4 + vggfeat.job._ROW_EXTRAS, shutil.disk_usage(tmp_path)  # conv1_1, float32
    for images, free, warned in ((4, 5 * row, False), (5, 6 * row - 1, True)):  # 1 row described, all written anew
        write_rgb(root / f"new{images}.png", 224, 240, seed=images)
        monkeypatch.setattr(shutil, "disk_usage", lambda path, free=free: usage._replace(free=free))
        code, _, err = run_main(args)
        assert code == 0, err
        assert ("WARNING: this run needs up to" in err) == warned, err


def test_a_killed_update_resumes_and_the_file_is_untouched_until_it_is_done(tmp_path, monkeypatch):
    root, output = tmp_path / "images", tmp_path / "out.h5"
    write_plain_folder(root, 3)
    args = ["extract", root, output, *CHEAP, "--part-size", "1"]
    assert run_main(args)[0] == 0
    write_plain_folder(root / "more", 3, start_seed=10)
    assert run_main(["extract", root, tmp_path / "reference.h5", *CHEAP])[0] == 0
    before = output.read_bytes()

    crash_on_part(monkeypatch, 2)  # killed after describing one of the three new images
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_main([*args, "--update"])
    monkeypatch.undo()
    assert output.read_bytes() == before
    code, out, _ = run_main(["info", output])
    assert code == 0 and "under way    --update, running or interrupted: 1 of 3 images described" in out
    read = decoded_files(monkeypatch)
    code, _, err = run_main([*args, "--update"])
    assert code == 0 and "resuming: 1 of 3 images were done by an interrupted run" in err, err
    assert sorted(set(read)) == ["more/img01.png", "more/img02.png"]
    assert_same_output(read_output(output), read_output(tmp_path / "reference.h5"))
    assert not (tmp_path / "out.h5.new-images.h5").exists()
    assert not (tmp_path / "out.h5.new-images.h5.parts").exists()


def grown_by_two(tmp_path) -> tuple[Path, Path, list]:
    """(images, out.h5, its extract command): out.h5 of two images, two more added since, and
    reference.h5 of all four."""
    root, output = tmp_path / "images", tmp_path / "out.h5"
    write_plain_folder(root, 2)
    args = ["extract", root, output, *CHEAP]
    assert run_main(args)[0] == 0
    write_plain_folder(root / "more", 2, start_seed=10)
    assert run_main(["extract", root, tmp_path / "reference.h5", *CHEAP])[0] == 0
    return root, output, args


def test_an_update_stopped_after_describing_the_new_images_does_not_describe_them_again(tmp_path, monkeypatch):
    root, output, args = grown_by_two(tmp_path)

    def disk_full(self):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(OutputUpdate, "_rewrite", disk_full)
        code, _, err = run_main([*args, "--update"])
    staging = tmp_path / "out.h5.new-images.h5"
    assert code == 1 and error_line(err) == (
        f"Error: [Errno 28] No space left on device; finished parts are kept in {staging}.parts, then the images "
        f"described in {staging}: run the same command to resume"), err
    assert staging.exists()
    read = decoded_files(monkeypatch)
    code, _, err = run_main([*args, "--update"])
    assert code == 0 and "every image was described by the interrupted run" in err, err
    assert read == []
    assert_same_output(read_output(output), read_output(tmp_path / "reference.h5"))
    assert not (tmp_path / "out.h5.new-images.h5").exists()


def test_an_update_killed_as_its_job_removed_its_work_does_not_describe_the_images_again(tmp_path, monkeypatch,
                                                                                          random_vgg16):
    root, output, args = grown_by_two(tmp_path)

    def killed(self):
        raise KeyboardInterrupt  # as a kill after the staging file was renamed into place

    with monkeypatch.context() as patch:
        patch.setattr(vggfeat.job.ExtractionJob, "_remove_work", killed)
        with pytest.raises(KeyboardInterrupt):
            extractor = Extractor(random_vgg16, scales=[224], flip=False, device="cpu", layer="conv1_1")
            OutputUpdate(extractor, find_images(root), output).run()
    staging = tmp_path / "out.h5.new-images.h5"
    assert staging.exists() and (tmp_path / "out.h5.new-images.h5.parts").exists()
    read = decoded_files(monkeypatch)
    code, _, err = run_main([*args, "--update"])
    assert code == 0 and read == [], err
    assert_same_output(read_output(output), read_output(tmp_path / "reference.h5"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "out.h5", "reference.h5"]


def test_a_file_written_anew_takes_what_killed_writers_of_the_old_one_left(tmp_path, monkeypatch):
    """An update killed as it wrote the file anew, then extract --overwrite: the update's hidden
    temporary file (as large as the file) and its staging file stayed beside the new file for
    good, unless a later update came."""
    root, output = tmp_path / "images", tmp_path / "out.h5"
    write_plain_folder(root, 2)
    args = ["extract", root, output, *CHEAP]
    assert run_main(args)[0] == 0
    write_plain_folder(root / "more", 1, start_seed=10)

    def killed(self):
        raise KeyboardInterrupt  # as a kill as the file was written anew

    with monkeypatch.context() as patch:
        patch.setattr(OutputUpdate, "_rewrite", killed)
        assert run_main([*args, "--update"])[0] == 130
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a process id of this machine that no process has now
    left = tmp_path / f".out.h5.{vggfeat.files._writer()}-{dead.pid}-0123abcd.tmp"
    left.write_bytes(b"half of a large file")
    assert (tmp_path / "out.h5.new-images.h5").exists()
    assert run_main([*args, "--overwrite"])[0] == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["images", "out.h5"]


@pytest.mark.parametrize("block_rows", [1, 2, 1000])
def test_rows_of_files_gone_in_runs_are_left_out_a_block_at_a_time(tmp_path, random_vgg16, monkeypatch, block_rows):
    root = tmp_path / "images"
    files = write_plain_folder(root, 12)
    extractor = Extractor(random_vgg16, scales=[224], flip=False, device="cpu", layer="conv1_1")
    ExtractionJob(extractor, find_images(root), tmp_path / "out.h5").run()
    for gone in (*files[1:7], files[11]):  # a long run of rows gone (read around, not over), and the last
        gone.unlink()
    write_rgb(root / "img05b.png", 224, 240, seed=20)  # one new, among the gone
    images = find_images(root)
    ExtractionJob(extractor, images, tmp_path / "reference.h5").run()
    monkeypatch.setattr(vggfeat.update, "BLOCK_BYTES", block_rows * 64 * 4)  # conv1_1: 64 float32 values a row
    monkeypatch.setattr(vggfeat.update, "PATH_BLOCK", max(1, block_rows))
    result = OutputUpdate(extractor, images, tmp_path / "out.h5").run()
    assert (result.rows, result.failed, result.described, result.dropped, result.computed) == (6, 0, 1, 7, 1)
    assert_same_output(read_output(tmp_path / "out.h5"), read_output(tmp_path / "reference.h5"))


def test_no_other_run_writes_the_file_while_an_update_holds_it(tmp_path, random_vgg16):
    """Two rewrites of one file at once: the second copied rows by the row numbers of the file that
    the first replaced (another image's descriptors under a name). From reading the file's rows to
    replacing it, an update holds the lock of the file's work folder, which every run writing the
    file takes: an update with removals alone too."""
    root, output = tmp_path / "images", tmp_path / "out.h5"
    files = write_plain_folder(root, 4)
    write_corrupt(root / "torn.png")
    args = ["extract", root, output, *CHEAP]
    assert run_main(args)[0] == 0
    files[0].unlink()
    assert run_main(["extract", root, tmp_path / "reference.h5", *CHEAP])[0] == 0
    extractor = Extractor(random_vgg16, scales=[224], flip=False, device="cpu", layer="conv1_1")
    images = find_images(root)
    update = OutputUpdate(extractor, images, output)
    assert (update.job, update.dropped) == (None, 1)
    before = output.read_bytes()
    for other in ([*args, "--update"], [*args, "--retry-failed"], [*args, "--overwrite"],
                  [*args, "--overwrite", "--device", "cpu,cpu"]):
        code, _, err = run_main(other)
        assert code == 2 and error_line(err) == (f"Error: another vggfeat run is writing {output} (lock held on "
                                                 f"{tmp_path / 'out.h5.parts'}/lock)"), (other, err)
    with pytest.raises(VggfeatError, match="another vggfeat run is writing"):
        OutputUpdate(extractor, images, output, describe="failed")
    assert output.read_bytes() == before
    # Another program (no lock) replaces the file as the update runs: its row numbers are of the
    # file it read, so it stops rather than copy other images' rows, and can run again.
    shutil.copy(tmp_path / "reference.h5", tmp_path / "other.h5")
    (tmp_path / "other.h5").replace(output)
    with pytest.raises(VggfeatError, match="out.h5 was replaced while this update ran: run it again"):
        update.run()
    output.write_bytes(before)
    update = OutputUpdate(extractor, images, output)
    assert update.run().rows == 3
    assert_same_output(read_output(output), read_output(tmp_path / "reference.h5"))
    assert not (tmp_path / "out.h5.parts").exists()

    # A kill leaves the lock: the next run takes it, and removes it.
    (tmp_path / "out.h5.parts").mkdir()
    (tmp_path / "out.h5.parts" / "lock").touch()
    code, _, err = run_main([*args, "--retry-failed"])
    assert code == 0 and "0 of the 1 images that had failed are described now" in err, err
    assert not (tmp_path / "out.h5.parts").exists()
    OutputUpdate(extractor, images, output).close()  # made, not run: lets go all the same
    assert not (tmp_path / "out.h5.parts").exists()


def test_a_collection_that_moved_is_updated_in_its_new_folder(tmp_path):
    root, output = tmp_path / "images", tmp_path / "out.h5"
    write_plain_folder(root, 2)
    assert run_main(["extract", root, output, *CHEAP])[0] == 0
    write_plain_folder(root / "more", 1, start_seed=10)
    root.rename(tmp_path / "moved")  # its images under the same names
    code, out, err = run_main(["extract", tmp_path / "moved", output, *CHEAP, "--update"])
    assert code == 0 and "1 image that" in err and "1 image added, 0 left out" in out + err, err
    assert read_output(output)["attrs"]["input_root"] == str(tmp_path / "moved")
    # Moved again, nothing added: the file records its new folder all the same (it kept the old one,
    # and a plain 'extract' of the new folder then said the file was made from another).
    (tmp_path / "moved").rename(tmp_path / "again")
    code, out, err = run_main(["extract", tmp_path / "again", output, *CHEAP, "--update"])
    assert code == 0 and (f"{output} was made from the images in {tmp_path / 'moved'}: it records "
                          f"{tmp_path / 'again'} from now on") in err and "0 images added, 0 left out" in err, err
    assert read_output(output)["attrs"]["input_root"] == str(tmp_path / "again")
    code, _, err = run_main(["extract", tmp_path / "again", output, *CHEAP])
    assert code == 0 and "already holds this extraction" in err, err


def test_an_update_that_cannot_be_done_is_refused_and_changes_nothing(tmp_path, monkeypatch):
    root, output = tmp_path / "images", tmp_path / "out.h5"
    write_plain_folder(root, 2)
    args = ["extract", root, output, *CHEAP]
    assert run_main(args)[0] == 0
    assert run_main(["extract", root, tmp_path / "shard.h5", *CHEAP, "--shard", "1/2"])[0] == 0
    write_plain_folder(root / "more", 1, start_seed=10)
    staging = tmp_path / "out.h5.new-images.h5"
    staging.write_text("someone's file")
    code, _, err = run_main([*args, "--update"])
    assert code == 2 and "out.h5.new-images.h5 exists and is not an update of" in error_line(err), err
    assert staging.read_text() == "someone's file"
    staging.unlink()
    code, _, err = run_main(["extract", root, tmp_path / "shard.h5", *CHEAP, "--update"])
    assert code == 2 and "is shard 1/2 of an extraction" in error_line(err), err
    before = output.read_bytes()  # a subfolder given by a slip: every row was left out, silently
    code, _, err = run_main(["extract", root / "more", output, *CHEAP, "--update"])
    assert code == 2 and error_line(err) == (f"Error: {output} was made from the images in {root}; {root / 'more'} holds 1 "
                                             "of its 2 images, and --update would leave out the others: give the folder "
                                             "it was made from (or --overwrite to describe these images alone)")
    assert output.read_bytes() == before

    before = output.read_bytes()
    refusals = [
        ([*args, "--update", "--overwrite"], "it takes no --overwrite"),
        ([*args, "--update", "--retry-failed"], "it takes no --retry-failed"),
        ([*args, "--update", "--shard", "1/2"], "it takes no --shard"),
        (["extract", root, output, *FAST, "--layer", "conv1_2", "--update"],
         "made with other options (layer: conv1_1 then, conv1_2 now); give --update the options that made it"),
        (["extract", root, tmp_path / "none.h5", *CHEAP, "--update"],
         f"output file not found: {tmp_path / 'none.h5'} (the same command without --update makes it)"),
    ]
    # Refused before the images are looked for.
    monkeypatch.setattr(options, "find_images", lambda *args, **kwargs: pytest.fail("the images were looked for"))
    for refused, words in refusals:
        code, _, err = run_main(refused)
        assert code == 2 and words in error_line(err), err
    (tmp_path / "out.h5.parts").mkdir()
    (tmp_path / "out.h5.parts" / "manifest.json").write_text("{}")  # an extraction's work: running or interrupted
    code, _, err = run_main([*args, "--update"])
    assert code == 2 and "the same command without --update) first" in error_line(err)
    assert output.read_bytes() == before
    with h5py.File(output) as f:
        assert "updated" not in f.attrs
    monkeypatch.undo()
    shutil.rmtree(tmp_path / "out.h5.parts")
    misplace_a_chunk(output, "features")  # a flipped bit in HDF5's index of its rows: found as they are copied
    before = output.read_bytes()
    code, _, err = run_main([*args, "--update"])
    assert code == 2 and error_line(err).startswith(f"Error: {output} is damaged: HDF5 cannot read its /features (Can't "
                                                    "synchronously read data"), err
    assert output.read_bytes() == before


@pytest.mark.parametrize(("rewrite", "dtype", "value"),
                         [("--update", "float32", np.nan), ("--retry-failed", "float16", np.inf)])
def test_a_descriptor_file_holding_nan_is_refused_before_it_is_rewritten(tmp_path, monkeypatch, rewrite, dtype, value):
    """A descriptor file a row of which holds NaN or an infinity (extraction never writes one: an
    edit, a bad disk): --update and --retry-failed, which copy its rows into the file written anew,
    refuse it before any image is found, naming the row, its image and the remedy; --overwrite
    describes the images again."""
    root, output = tmp_path / "images", tmp_path / "out.h5"
    write_labelled_folder(root)
    args = ["extract", root, output, *CHEAP, "--dtype", dtype]
    assert run_main([*args, "-q"])[0] == 0
    with h5py.File(output, "r+") as f:
        row = f["features"][2]
        row[5] = value
        f["features"][2] = row
        image = f["paths"][2].decode()
    write_rgb(root / "cats" / "new.jpg", 230, 224, seed=8)  # one to add
    write_rgb(root / "dogs" / "broken.jpg", 224, 224, seed=9)  # repaired: one to retry
    before = sorted(tmp_path.iterdir()), output.read_bytes()
    monkeypatch.setattr(options, "find_images", lambda *args, **kwargs: pytest.fail("the images were looked for"))
    code, _, err = run_main([*args, rewrite])
    assert code == 2 and error_line(err) == (
        f"Error: {output} is damaged: the descriptor of row 2 ({image}) holds NaN or infinite values, which extraction "
        "never writes (it records such an image as failed); describe the images again (extract --overwrite)"), err
    assert (sorted(tmp_path.iterdir()), output.read_bytes()) == before
    monkeypatch.undo()
    code, _, err = run_main([*args, "--overwrite", "-q"])
    assert code == 0, err
    with h5py.File(output, "r") as f:
        assert np.isfinite(f["features"][:]).all() and len(f["paths"]) == 7 and len(f["failed/paths"]) == 0


def without_center_crop(config_text: str) -> str:
    """A configuration as versions before ``--center-crop`` (3ad16a9) recorded it: without the key."""
    config = json.loads(config_text)
    del config["center_crop"]
    return json.dumps(config, sort_keys=True)


def test_files_of_versions_before_a_key_of_the_configuration_existed_are_run_again_updated_and_retried(tmp_path):
    root, output = tmp_path / "images", tmp_path / "out.h5"
    write_plain_folder(root, 2)
    write_corrupt(root / "torn.jpg")
    args = ["extract", root, output, *CHEAP]
    assert run_main(args)[0] == 0
    with h5py.File(output, "a") as f:
        f.attrs["config"] = without_center_crop(f.attrs["config"])
    code, _, err = run_main(args)
    assert code == 0 and "already holds this extraction" in err, err
    write_plain_folder(root / "more", 1, start_seed=10)
    code, _, err = run_main([*args, "--update"])
    assert code == 0 and "1 image added" in err, err
    code, _, err = run_main([*args, "--retry-failed"])
    assert code == 0 and "0 of the 1 images that had failed" in err, err
    code, _, err = run_main([*args, "--center-crop"])  # what it was not made with is still told
    assert code == 2 and "center_crop: false then, true now" in err, err


def test_a_run_of_a_version_before_a_key_of_the_configuration_existed_resumes(tmp_path, monkeypatch):
    root, output = tmp_path / "images", tmp_path / "out.h5"
    write_plain_folder(root, 3)
    args = ["extract", root, output, *CHEAP, "--part-size", "1"]
    interrupted_run(monkeypatch, args)
    manifest_file = vggfeat.store.work_folder(output) / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["config"] = json.loads(without_center_crop(json.dumps(manifest["config"])))
    manifest_file.write_text(json.dumps(manifest))
    code, _, err = run_main(args)
    assert code == 0 and "resuming: 1 of 3 images" in err, err
