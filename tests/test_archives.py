"""Images inside tar archives (``shard.tar/a.jpg``): found in a folder or named in a list, read in
place, described as the same files unpacked; a bad member fails alone; an archive written anew
is described again by ``--update``."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from imagefiles import write_corrupt, write_rgb
from runhelpers import FAST, assert_same_output, error_line, interrupted_run, read_output, run_main
import vggfeat.archives
import vggfeat.job
import vggfeat.jpeg
from vggfeat.archives import _plain_table, _tarfile_table, given, member_tables, members, open_member
from vggfeat.decode import DEFAULT_MAX_PIXELS, decode_image, open_image_file
import vggfeat.discover
from vggfeat.discover import find_images
from vggfeat.extractor import Extractor
from vggfeat.errors import VggfeatError
from vggfeat.reading import ImageReader

CHEAP = [*FAST, "--model", "vgg11", "--layer", "conv3_1", "--quiet"]


def write_tar(archive: Path, folder: Path, names: list[str], **options) -> Path:
    """``archive`` holding the files ``names`` of ``folder``, under those names."""
    with tarfile.open(archive, "w", **options) as tar:
        for name in names:
            tar.add(folder / name, arcname=name, recursive=False)
    return archive


def write_collection(root: Path) -> None:
    """``root/unpacked``: the images, in folders named like archives; ``root/packed``: the same,
    some in archives (one in a class folder, one at the top), with a hidden image, a text file and
    a corrupt image in one."""
    unpacked, packed = root / "unpacked", root / "packed"
    for folder in (unpacked / "cats" / "batch.tar" / "x", unpacked / "top.tar", unpacked / "extra", packed / "cats"):
        folder.mkdir(parents=True)
    write_rgb(unpacked / "cats" / "a.png", 224, 240, seed=1)
    write_rgb(unpacked / "cats" / "batch.tar" / "x" / "b.png", 236, 224, seed=2)
    write_rgb(unpacked / "cats" / "batch.tar" / "c.jpg", 224, 250, seed=3)
    write_corrupt(unpacked / "cats" / "batch.tar" / "broken.jpg")
    write_rgb(unpacked / "top.tar" / "d.png", 230, 230, seed=4)
    shutil.copy(unpacked / "cats" / "a.png", packed / "cats" / "a.png")
    extra = unpacked / "extra"
    write_rgb(extra / ".hidden.png", 224, 224, seed=5)
    (extra / "notes.txt").write_text("not an image")
    with tarfile.open(packed / "cats" / "batch.tar", "w") as tar:
        for name in ("x/b.png", "c.jpg", "broken.jpg"):
            tar.add(unpacked / "cats" / "batch.tar" / name, arcname=name)
        for name in (".hidden.png", "notes.txt"):
            tar.add(extra / name, arcname=name)
    write_tar(packed / "top.tar", unpacked / "top.tar", ["d.png"])


def test_images_in_archives_are_found_and_described_as_the_files_unpacked(tmp_path):
    """Members are rows ``archive.tar/member``, labelled by the archive's folder (none at the top),
    hidden and non-image members left out; rows, descriptors, sizes and failures are those of the
    files unpacked into folders of the archives' names (a folder named like an archive is a
    folder, and a class), read by decoding threads and by decoding processes alike."""
    write_collection(tmp_path)
    images = find_images(tmp_path / "packed")
    assert list(images.paths) == ["cats/a.png", "cats/batch.tar/broken.jpg", "cats/batch.tar/c.jpg",
                                  "cats/batch.tar/x/b.png", "top.tar/d.png"]
    assert [images.classes[label] if label >= 0 else None for label in images.labels] == ["cats"] * 4 + [None]
    for args in (["packed", "packed.h5"], ["packed", "processes.h5", "--decode-in", "processes", "--workers", "2"],
                 ["unpacked", "unpacked.h5"]):
        code, _, err = run_main(["extract", *(tmp_path / arg for arg in args[:2]), *args[2:], *CHEAP])
        assert code == 0, err
    packed, processes, unpacked = (read_output(tmp_path / name) for name in ("packed.h5", "processes.h5", "unpacked.h5"))
    assert packed["paths"] == unpacked["paths"] == ["cats/a.png", "cats/batch.tar/c.jpg", "cats/batch.tar/x/b.png",
                                                    "top.tar/d.png"]
    assert packed["labels"].tolist() == [0, 0, 0, -1] and unpacked["classes"] == ["cats", "top.tar"]
    for run in (packed, processes):
        np.testing.assert_array_equal(run["features"], unpacked["features"])
        np.testing.assert_array_equal(run["sizes"], unpacked["sizes"])
        assert run["failed_paths"] == ["cats/batch.tar/broken.jpg"] and run["failed_errors"] == unpacked["failed_errors"]
    # A JPEG member goes to the batched decoder, as its file unpacked does (read into memory, it has no file size).
    assert vggfeat.jpeg.read_jpeg(tmp_path / "packed" / "cats" / "batch.tar" / "c.jpg", 10**9, 32) is not None


def test_a_list_names_members_of_archives_and_a_member_not_there_fails_alone(tmp_path):
    write_collection(tmp_path)
    listing = tmp_path / "packed" / "list.txt"
    listing.write_text("cats/batch.tar/c.jpg,cat\ncats/batch.tar/gone.jpg,cat\ntop.tar/d.png#xywh=0,0,224,224,dog\n")
    code, _, err = run_main(["extract", "--file-list", listing, tmp_path / "out.h5", *CHEAP])
    assert code == 0, err
    out = read_output(tmp_path / "out.h5")
    assert out["paths"] == ["cats/batch.tar/c.jpg", "top.tar/d.png#xywh=0,0,224,224"] and out["classes"] == ["cat", "dog"]
    assert out["failed_paths"] == ["cats/batch.tar/gone.jpg"]
    assert out["failed_errors"] == [f"not in its archive {tmp_path / 'packed' / 'cats' / 'batch.tar'}"]


def test_an_archive_written_anew_is_described_again_by_update(tmp_path):
    """Its members' time is the archive's: rewritten, every member of it is described again; the
    update's file is a fresh run's."""
    write_collection(tmp_path)
    packed = tmp_path / "packed"
    assert run_main(["extract", packed, tmp_path / "out.h5", *CHEAP])[0] == 0
    write_rgb(tmp_path / "unpacked" / "top.tar" / "d.png", 224, 260, seed=7)  # another picture, the same name
    write_tar(packed / "top.tar", tmp_path / "unpacked" / "top.tar", ["d.png"])
    later = os.stat(packed / "top.tar").st_mtime + 10  # a clock's tick past the first run's start, whatever its grain
    os.utime(packed / "top.tar", (later, later))
    code, out, err = run_main(["extract", packed, tmp_path / "out.h5", *FAST, "--model", "vgg11", "--layer", "conv3_1", "--update"])
    assert code == 0, err
    assert "1 whose file changed since it was read" in out + err, out + err
    shutil.move(tmp_path / "out.h5", tmp_path / "updated.h5")
    assert run_main(["extract", packed, tmp_path / "out.h5", *CHEAP])[0] == 0
    updated, fresh = read_output(tmp_path / "updated.h5"), read_output(tmp_path / "out.h5")
    assert updated["sizes"][-1].tolist() == [224, 260]
    assert_same_output(updated, fresh)


def test_a_compressed_archive_is_refused_as_the_images_are_found(tmp_path):
    (tmp_path / "images").mkdir()
    write_rgb(tmp_path / "a.png", 224, 224)
    write_tar(tmp_path / "plain.tar", tmp_path, ["a.png"])
    (tmp_path / "images" / "shard.tar").write_bytes(gzip.compress((tmp_path / "plain.tar").read_bytes()))
    code, _, err = run_main(["extract", tmp_path / "images", tmp_path / "out.h5", *CHEAP])
    assert code == 2 and error_line(err).startswith(f"Error: cannot read the tar archive {tmp_path / 'images' / 'shard.tar'} "
                                                    "(gzip-compressed, though named .tar)")  # was tarfile's "bad checksum"
    assert "uncompressed tar archives: unpack or repair it, or move it out of the folder" in error_line(err)
    assert not (tmp_path / "out.h5").exists()


def test_a_member_that_the_archive_cuts_short_fails_alone(tmp_path):
    """An interrupted copy: the members before the cut are read, the one it cuts fails, saying so."""
    for name, seed in (("a.png", 1), ("b.png", 2)):
        write_rgb(tmp_path / name, 224, 224, seed=seed)
    whole = write_tar(tmp_path / "whole.tar", tmp_path, ["a.png", "b.png"]).read_bytes()
    with tarfile.open(tmp_path / "whole.tar") as tar:
        cut = tar.getmember("b.png").offset_data + 100
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "cut.tar").write_bytes(whole[:cut])
    assert run_main(["extract", tmp_path / "images", tmp_path / "out.h5", *CHEAP])[0] == 0
    out = read_output(tmp_path / "out.h5")
    assert out["paths"] == ["cut.tar/a.png"] and out["failed_paths"] == ["cut.tar/b.png"]
    assert out["failed_errors"] == ["truncated: its archive ends before it does"]


def test_members_with_long_names_and_a_leading_dot_slash_are_read_in_place(tmp_path):
    """GNU and PAX archives (names over 100 characters), and ``tar -C dir -cf x.tar .``'s ``./``."""
    long_name = "a" * 60 + "/" + "b" * 60 + ".jpg"
    (tmp_path / long_name).parent.mkdir()
    (tmp_path / long_name).write_bytes(b"\xff\xd8 the bytes")
    for format in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        archive = tmp_path / f"{format}.tar"
        with tarfile.open(archive, "w", format=format) as tar:
            tar.add(tmp_path / long_name, arcname="./" + long_name)
        with open_member(str(archive), long_name) as file:
            assert file.read() == b"\xff\xd8 the bytes"


@pytest.mark.parametrize("format", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_members_are_named_as_unpacking_names_them_and_links_read_as_their_targets(tmp_path, format):
    """A member named ``/abs/f.png`` of an archive given as IMAGES was read from the disk's
    /abs/f.png (pathlib joins an absolute name so); ``a//c.png`` failed as not in its archive;
    ``a/./b.png`` and ``d/../e.png`` vanished, as hidden; a second name of a file (``tar`` stores
    a hard link) and symbolic links were left out, silently. Names that lead outside the archive,
    and links to no file in it, are left out saying so."""
    (tmp_path / "abs").mkdir()
    write_rgb(tmp_path / "abs" / "f.png", 224, 224, seed=1)  # a file of the disk's, not the archive's
    archive = tmp_path / "shard.tar"
    with tarfile.open(archive, "w", format=format) as tar:
        for number, name in enumerate(["a//c.png", "a/./b.png", "d/../e.png", f"{tmp_path}/abs/f.png", "ok.png",
                                       "../out.png"]):
            write_rgb(tmp_path / "member.png", 224, 230, seed=10 + number)
            member = tarfile.TarInfo(name)  # as named: tar.add would take the leading "/" off
            member.size = (tmp_path / "member.png").stat().st_size
            tar.addfile(member, io.BytesIO((tmp_path / "member.png").read_bytes()))
        for name, kind, target in [("hard.png", tarfile.LNKTYPE, "ok.png"), ("sub/soft.png", tarfile.SYMTYPE, "../ok.png"),
                                   ("chain.png", tarfile.SYMTYPE, "sub/soft.png"), ("nowhere.png", tarfile.SYMTYPE, "no.png"),
                                   ("passwd.png", tarfile.SYMTYPE, "/etc/passwd"), ("later.png", tarfile.SYMTYPE, "ok.png"),
                                   ("folder", tarfile.SYMTYPE, "a")]:  # (a link to a folder: nothing to say)
            link = tarfile.TarInfo(name)
            link.type, link.linkname = kind, target
            tar.addfile(link)
        later = tarfile.TarInfo("later.png")  # appended (tar -r) over the link of its name: unpacked last, so read
        later.size = (tmp_path / "member.png").stat().st_size
        tar.addfile(later, io.BytesIO((tmp_path / "member.png").read_bytes()))
    with pytest.warns(UserWarning, match=r"has 3 member\(s\) named outside it \('..'\), or links that lead to no file "
                                         r"in it \(the first: '../out.png'\): left out"):
        images = find_images(archive)
    absolute = f"{str(tmp_path).lstrip('/')}/abs/f.png"
    assert sorted(images.paths) == sorted(["a/b.png", "a/c.png", "chain.png", "e.png", "hard.png", "ok.png", "sub/soft.png",
                                           "later.png", absolute])
    files = dict(zip(images.paths, images.files()))
    with tarfile.open(archive) as tar:
        members = {name: tar.extractfile(name).read() for name in tar.getnames() if tar.getmember(name).isreg()}
    for path, name in [(absolute, f"{tmp_path}/abs/f.png"), ("a/c.png", "a//c.png"), ("hard.png", "ok.png"),
                       ("chain.png", "ok.png"), ("later.png", "later.png")]:
        with open_image_file(files[path]) as file:
            assert file.read() == members[name], path


def test_plain_headers_are_read_as_tarfile_reads_them_and_other_archives_are_left_to_it(tmp_path):
    """The fast reading of plain (ustar, v7) headers, GNU long names and PAX records gives
    tarfile's table (names split into a prefix, not ASCII, long); archives with headers of other
    kinds (a global PAX header), or cut short, are left to tarfile."""
    names = ["a.jpg", "sub/b.png", "c" * 90 + "/" + "d" * 90 + ".jpg", "é" * 80 + ".jpg"]
    for number, name in enumerate(names):
        (tmp_path / "files" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "files" / name).write_bytes(bytes([number]) * (700 * number + 1))
    os.symlink("a.jpg", tmp_path / "files" / "link.jpg")
    read = [("sub", tarfile.USTAR_FORMAT), ("sub", tarfile.GNU_FORMAT), ("sub", tarfile.PAX_FORMAT)]
    for number, (folder, format) in enumerate(read):
        archive = write_tar(tmp_path / f"{number}.tar", tmp_path / "files", [folder, *names[: 3 if number == 0 else 4],
                                                                           "link.jpg"], format=format)
        table = _plain_table(str(archive))
        assert table == _tarfile_table(str(archive)) and sorted(table) == sorted(names[: 3 if number == 0 else 4])
    with tarfile.open(archive) as tar:
        second, third = tar.getmember(names[1]), tar.getmember(names[2])
    left = []
    for length in (second.offset_data + 10, third.offset + 100):  # within a member's data; within a header
        left.append(tmp_path / f"cut-{length}.tar")
        left[-1].write_bytes(archive.read_bytes()[:length])
    left.append(tmp_path / "global.tar")
    with tarfile.open(left[-1], "w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "a global header"}) as tar:
        tar.add(tmp_path / "files" / "a.jpg", arcname="a.jpg")
    for archive in left:
        assert _plain_table(str(archive)) is None
    assert list(_tarfile_table(str(left[-1]))) == ["a.jpg"]


def test_an_archive_given_as_images_is_the_folder_of_its_images(tmp_path):
    """``extract shard.tar out.h5``: the rows are its members, labelled by their first-level folder
    in it, as a folder's; a file of another kind is refused, naming what is taken."""
    write_collection(tmp_path)
    archive = tmp_path / "packed" / "cats" / "batch.tar"
    code, _, err = run_main(["extract", archive, tmp_path / "out.h5", *CHEAP])
    assert code == 0, err
    out, unpacked = read_output(tmp_path / "out.h5"), find_images(tmp_path / "unpacked" / "cats" / "batch.tar")
    assert out["paths"] == ["c.jpg", "x/b.png"] == [path for path in unpacked.paths if "broken" not in path]
    assert out["classes"] == ["x"] and out["labels"].tolist() == [-1, 0] and out["failed_paths"] == ["broken.jpg"]
    assert out["attrs"]["input_root"] == str(archive)
    code, _, err = run_main(["extract", tmp_path / "packed" / "cats" / "a.png", tmp_path / "other.h5", *CHEAP])
    assert code == 2 and error_line(err) == (f"Error: input is not a folder, nor a tar archive: {tmp_path / 'packed' / 'cats' / 'a.png'} "
                                             "(use --file-list for a list of files)")


def test_progress_counts_each_archives_images_as_it_is_read(tmp_path):
    """A folder of thousands of archives takes a while to look into: each is counted as read."""
    write_collection(tmp_path)
    shutil.copy(tmp_path / "packed" / "top.tar", tmp_path / "packed" / "cats" / "more.tar")
    counts = []
    found = find_images(tmp_path / "packed", progress=counts.append)
    assert sum(counts) == len(found) == 6
    assert len(counts) == 5  # a call an archive (3), and one at the end of each folder (2)


def test_archives_read_at_once_where_reading_one_is_slow_give_the_same_images(tmp_path, monkeypatch):
    """Where the first archive's headers read slowly (a file server's round trips), the others are
    read by threads at once: the same images, the same counts."""
    write_collection(tmp_path)
    shutil.copy(tmp_path / "packed" / "top.tar", tmp_path / "packed" / "cats" / "more.tar")
    one_by_one, counts = find_images(tmp_path / "packed"), []
    monkeypatch.setattr(vggfeat.discover, "REMOTE_MEMBER_SECONDS", -1.0)  # any reading is slow
    threads = []
    real_pool = vggfeat.discover.ThreadPoolExecutor
    monkeypatch.setattr(vggfeat.discover, "ThreadPoolExecutor", lambda workers: threads.append(workers) or real_pool(workers))
    at_once = find_images(tmp_path / "packed", progress=counts.append)
    assert threads == [vggfeat.discover.ARCHIVE_THREADS]
    assert at_once.paths == one_by_one.paths and at_once.labels.tolist() == one_by_one.labels.tolist()
    assert sum(counts) == 6 and len(counts) == 5


def write_shard(tmp_path: Path, count: int = 3, name: str = "shard.tar") -> tuple[Path, list[str]]:
    """An archive of ``count`` small PNGs (``tmp_path/files`` holds them loose), and their paths in it."""
    folder = tmp_path / "files"
    folder.mkdir(exist_ok=True)
    names = [f"{i}.png" for i in range(count)]
    for i, member in enumerate(names):
        write_rgb(folder / member, 40 + i, 40, seed=i)
    archive = write_tar(tmp_path / name, folder, names)
    return archive, [f"{archive}/{member}" for member in names]


def test_threads_reading_one_archive_read_its_table_once(tmp_path, monkeypatch):
    """Decoding threads reach a new archive together (its files come in order): one reads its
    headers, the others wait for that table rather than each reading it."""
    archive, paths = write_shard(tmp_path)
    reads, read_table = [], vggfeat.archives.read_table

    def slow_read(path):
        reads.append(path)
        time.sleep(0.2)
        return read_table(path)

    monkeypatch.setattr(vggfeat.archives, "read_table", slow_read)
    with ThreadPoolExecutor(8) as pool:
        data = list(pool.map(lambda path: open_member(*path.rsplit("/", 1)).read(), paths * 4))
    assert reads == [str(archive)]
    assert data == [(tmp_path / "files" / path.rsplit("/", 1)[1]).read_bytes() for path in paths * 4]


def test_decoding_processes_read_members_where_the_reading_process_found_them(tmp_path):
    """Decoding processes do not each read every archive's headers (16 processes, 16 times): they
    read each member where the reading process's table says it lies. Shown with headers spoilt
    after that table was read, the archive's time and size kept: reading them now fails."""
    archive, paths = write_shard(tmp_path)
    assert set(member_tables(paths)[str(archive)][1]) == {"0.png", "1.png", "2.png"}  # read here, and kept
    status = archive.stat()
    with open(archive, "r+b") as file:
        file.seek(148)  # the first header's checksum
        file.write(b"bad sum!")
    os.utime(archive, ns=(status.st_atime_ns, status.st_mtime_ns))
    with pytest.raises(VggfeatError, match="cannot read the tar archive"):
        members(archive)
    reader = ImageReader(torch.device("cpu"), "pil", workers=2, max_pixels=DEFAULT_MAX_PIXELS, min_side=32,
                         processes=True)
    with reader.read(paths, lookahead=8) as results:
        pixels = list(results)
    for path, image in zip(paths, pixels):
        np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), decode_image(tmp_path / "files" / path.rsplit("/", 1)[1]))


def test_a_member_placed_in_an_archive_since_written_anew_is_read_from_the_new_archive(tmp_path):
    """Places given for an archive as it was are not used once it has changed: its table is read again."""
    archive, paths = write_shard(tmp_path, count=2)
    places = member_tables(paths)
    write_tar(archive, tmp_path / "files", ["1.png", "0.png", "1.png"])  # other places, another size
    with given(places):
        assert open_member(str(archive), "0.png").read() == (tmp_path / "files" / "0.png").read_bytes()


def test_webdataset_samples_take_the_class_of_their_cls_file(tmp_path):
    """A WebDataset shard's sample ``x.jpg`` with ``x.cls`` (holding ``281``) has that class, at the
    top of the folder as in a class folder (whose class it overrides), or as IMAGES itself; a
    sample without one, or with an empty one, has the class it would have otherwise."""
    files = tmp_path / "files"
    (files / "sub").mkdir(parents=True)
    for name in ("k1.jpg", "k2.seg.png", "k3.jpg", "k5.jpg", "sub/k4.jpg"):
        write_rgb(files / name, 40, 40)
    for name, text in (("k1.cls", "3\n"), ("k2.cls", "7"), ("k5.cls", ""), ("sub/k4.cls", "3")):
        (files / name).write_text(text)
    names = ["k1.jpg", "k1.cls", "k2.seg.png", "k2.cls", "k3.jpg", "k5.jpg", "k5.cls", "sub/k4.jpg", "sub/k4.cls"]
    (tmp_path / "shards" / "cats").mkdir(parents=True)
    shard = write_tar(tmp_path / "shards" / "000000.tar", files, names)
    shutil.copy(shard, tmp_path / "shards" / "cats" / "000001.tar")
    found = find_images(tmp_path / "shards")
    class_of = {path: found.classes[label] if label >= 0 else None for path, label in zip(found.paths, found.labels)}
    assert class_of == {
        "000000.tar/k1.jpg": "3", "000000.tar/k2.seg.png": "7", "000000.tar/k3.jpg": None, "000000.tar/k5.jpg": None,
        "000000.tar/sub/k4.jpg": "3",
        "cats/000001.tar/k1.jpg": "3", "cats/000001.tar/k2.seg.png": "7", "cats/000001.tar/k3.jpg": "cats",
        "cats/000001.tar/k5.jpg": "cats", "cats/000001.tar/sub/k4.jpg": "3",
    }
    alone = find_images(shard)
    assert [alone.classes[label] if label >= 0 else None for label in alone.labels] == ["3", "7", None, None, "3"]
    assert alone.paths == ("k1.jpg", "k2.seg.png", "k3.jpg", "k5.jpg", "sub/k4.jpg")
    # A class holding a NUL byte: every image was described, then the file could not be written
    # (HDF5 stores no such text), at every resume. Refused before the run, naming the member.
    (files / "k2.cls").write_bytes(b"ca\0t")
    bad = write_tar(tmp_path / "bad.tar", files, names)
    with pytest.raises(VggfeatError, match=r"bad.tar: k2.cls: its class holds a NUL byte"):
        find_images(bad)


def write_archive_of_archives(tmp_path: Path) -> tuple[Path, Path, Path]:
    """ImageNet's training set in small: ``train.tar`` holding ``n01.tar`` (two images), ``n02.tar``
    (one) and an image; ``train/`` the same archives and image in a folder; ``unpacked/`` the
    files unpacked into folders of the archives' names."""
    unpacked, folder = tmp_path / "unpacked", tmp_path / "train"
    for each in (unpacked / "n01.tar" / "sub", unpacked / "n02.tar", folder):
        each.mkdir(parents=True)
    write_rgb(unpacked / "n01.tar" / "a.jpg", 224, 240, seed=1)
    write_rgb(unpacked / "n01.tar" / "sub" / "b.png", 236, 224, seed=2)
    write_rgb(unpacked / "n02.tar" / "c.jpg", 224, 250, seed=3)
    write_rgb(unpacked / "d.png", 230, 230, seed=4)
    write_tar(folder / "n01.tar", unpacked / "n01.tar", ["a.jpg", "sub/b.png"], format=tarfile.GNU_FORMAT)
    write_tar(folder / "n02.tar", unpacked / "n02.tar", ["c.jpg"])
    shutil.copy(unpacked / "d.png", folder / "d.png")
    return write_tar(tmp_path / "train.tar", folder, ["n01.tar", "d.png", "n02.tar"]), folder, unpacked


def test_an_archive_of_archives_is_read_in_place_and_its_archives_may_be_classes(tmp_path):
    """ImageNet's training set: an archive of an archive per class. Its images are found and read
    in place, described as the files unpacked; with --archive-classes, the archives directly in
    IMAGES are classes named after them, whether IMAGES is that archive or a folder of the
    archives; without, their images have none."""
    outer, folder, unpacked = write_archive_of_archives(tmp_path)
    paths = ("d.png", "n01.tar/a.jpg", "n01.tar/sub/b.png", "n02.tar/c.jpg")
    plain = find_images(outer)
    assert plain.paths == paths and plain.labels.tolist() == [-1] * 4 and plain.classes == ()
    for root in (outer, folder):
        classed = find_images(root, archive_classes=True)
        assert classed.paths == paths and classed.classes == ("n01", "n02") and classed.labels.tolist() == [-1, 0, 0, 1]
    for args in (["train.tar", "packed.h5", "--archive-classes"],
                 ["train.tar", "processes.h5", "--archive-classes", "--decode-in", "processes", "--workers", "2"],
                 ["unpacked", "unpacked.h5"]):
        code, _, err = run_main(["extract", *(tmp_path / arg for arg in args[:2]), *args[2:], *CHEAP])
        assert code == 0, err
    packed, processes, expected = (read_output(tmp_path / name) for name in ("packed.h5", "processes.h5", "unpacked.h5"))
    for run in (packed, processes):
        assert run["paths"] == expected["paths"] == list(paths) and run["classes"] == ["n01", "n02"]
        assert run["labels"].tolist() == expected["labels"].tolist() == [-1, 0, 0, 1]
        np.testing.assert_array_equal(run["features"], expected["features"])
    code, _, err = run_main(["extract", tmp_path / "out.h5", "--file-list", tmp_path / "list.txt", "--archive-classes", *CHEAP])
    assert code == 2 and "--archive-classes: for IMAGES (a list gives its images' classes)" in err
    # A folder of no archives (folders named like them): the option would do nothing, but a file
    # recording it refused a later --update without it. A file made so before is updated as made.
    unpacked, output = tmp_path / "unpacked", tmp_path / "none.h5"
    code, _, err = run_main(["extract", unpacked, output, "--archive-classes", *CHEAP])
    assert code == 2 and (f"Error: --archive-classes: {unpacked} holds no tar archive directly, whose name would be its "
                          "images' class") in error_line(err), err
    assert not output.exists()
    extractor = Extractor("vgg11", weights="random", seed=0, scales=[224], flip=False, layer="conv3_1", device="cpu")  # CHEAP
    vggfeat.job.ExtractionJob(extractor, find_images(unpacked, archive_classes=True), output).run()
    write_rgb(unpacked / "n02.tar" / "e.png", 40, 40, seed=9)
    code, _, err = run_main(["extract", unpacked, output, "--archive-classes", "--update", *CHEAP])
    assert code == 0 and "1 image added" in err, err


def test_a_process_given_places_in_archives_inside_archives_reads_no_table(tmp_path, monkeypatch):
    """Decoding processes are given the places of members of archives inside archives too, and
    read them without reading any archive's headers."""
    outer, _, unpacked = write_archive_of_archives(tmp_path)
    names = ["n01.tar/a.jpg", "n01.tar/sub/b.png", "n02.tar/c.jpg", "d.png"]
    places = member_tables([f"{outer}/{name}" for name in names])
    assert sorted(places) == [str(outer), f"{outer}/n01.tar", f"{outer}/n02.tar"]
    for inner in ("n01.tar", "n02.tar"):  # tarfile, for headers of other kinds, reads them alike
        span = vggfeat.archives.read_table(str(outer))[inner]
        assert _tarfile_table(str(outer), *span) == _plain_table(str(outer), *span)

    def no_reading(archive):
        raise AssertionError(f"read the table of {archive}")

    monkeypatch.setattr(vggfeat.archives, "read_table", no_reading)
    monkeypatch.setattr(vggfeat.archives, "_tables", type(vggfeat.archives._tables)())  # none kept: a fresh process
    with given(places):
        for name in names:
            assert open_image_file(f"{outer}/{name}").read() == (unpacked / name).read_bytes()


def test_an_archive_of_archives_cut_short_gives_the_images_before_the_cut(tmp_path):
    """A download of ImageNet's training set cut within its last class's archive: that archive's
    member that the cut cuts fails, saying so; the rest are described."""
    outer, _, _ = write_archive_of_archives(tmp_path)
    with tarfile.open(outer) as tar:
        start = tar.getmember("n02.tar").offset_data
    with open(outer, "rb") as file:
        file.seek(start)
        with tarfile.open(fileobj=file) as inner:
            cut = inner.getmember("c.jpg").offset_data + 100  # tarfile counts from where the file was
    os.truncate(outer, cut)
    assert run_main(["extract", outer, tmp_path / "out.h5", "--archive-classes", *CHEAP])[0] == 0
    out = read_output(tmp_path / "out.h5")
    assert out["paths"] == ["d.png", "n01.tar/a.jpg", "n01.tar/sub/b.png"] and out["failed_paths"] == ["n02.tar/c.jpg"]
    assert out["failed_errors"] == ["truncated: its archive ends before it does"]


def test_an_archive_inside_an_archive_that_cannot_be_read_is_named_with_its_remedy(tmp_path):
    (tmp_path / "files").mkdir()
    write_rgb(tmp_path / "files" / "a.png", 224, 224)
    (tmp_path / "files" / "n01.tar").write_bytes(b"not an archive" * 100)
    outer = write_tar(tmp_path / "train.tar", tmp_path / "files", ["a.png", "n01.tar"])
    code, _, err = run_main(["extract", outer, tmp_path / "out.h5", *CHEAP])
    assert code == 2 and error_line(err).startswith(f"Error: cannot read the tar archive {outer}/n01.tar (")
    assert error_line(err).endswith(f"vggfeat reads images from uncompressed tar archives: repair or unpack {outer}")


def test_an_update_without_archive_classes_is_refused_where_they_made_the_file(tmp_path):
    """A file whose classes are its archives' records it: an update or a retry that forgot
    --archive-classes would take every image's class away, and is refused, saying what to give;
    with it, the classes stay."""
    outer, _, _ = write_archive_of_archives(tmp_path)
    output = tmp_path / "out.h5"
    assert run_main(["extract", outer, output, "--archive-classes", *CHEAP])[0] == 0
    for rewrite in ("--update", "--retry-failed"):
        code, _, err = run_main(["extract", outer, output, rewrite, *CHEAP])
        assert code == 2 and error_line(err) == (f"Error: {output}'s classes are the archives in its folder of images "
                                                 "(--archive-classes): give --archive-classes again, or its images would lose them")
    assert run_main(["extract", outer, output, "--update", "--archive-classes", *CHEAP])[0] == 0
    out = read_output(output)
    assert out["classes"] == ["n01", "n02"] and out["labels"].tolist() == [-1, 0, 0, 1]
    assert run_main(["extract", outer, output, "--update", *CHEAP])[0] == 2  # the updated file records it too


def test_a_run_interrupted_with_archive_classes_resumes_only_with_them(tmp_path, monkeypatch):
    outer, _, _ = write_archive_of_archives(tmp_path)
    output = tmp_path / "out.h5"
    interrupted_run(monkeypatch, ["extract", outer, output, "--archive-classes", "--part-size", "1", *CHEAP])
    code, _, err = run_main(["extract", outer, output, "--part-size", "1", *CHEAP])
    assert code == 2 and "(--archive-classes: given then, not given now)" in error_line(err)
    resumed = [arg for arg in ["extract", outer, output, "--archive-classes", "--part-size", "1", *CHEAP] if arg != "--quiet"]
    code, _, err = run_main(resumed)
    assert code == 0 and "resuming: 1 of 4 images were done" in err, err
    assert read_output(output)["classes"] == ["n01", "n02"]


def pax_archive_of_size(path: Path, size: bytes) -> Path:
    """An archive of one member, of 10,240 bytes, whose PAX record says its size is ``size`` (as
    damaged data would: the record's checksum is the header's, which does not cover it)."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("a.jpg")
        info.size, info.pax_headers = 10240, {"size": "10240"}
        tar.addfile(info, io.BytesIO(b"x" * 10240))
    data = path.read_bytes()
    at = data.index(b"size=10240")
    path.write_bytes(data[:at] + b"size=" + size.rjust(5) + data[at + 10 :])
    return path


def test_a_damaged_size_in_a_pax_record_is_refused_or_read_as_tarfile_reads_it(tmp_path):
    """The plain reader stopped with a ValueError at a size that is not a number, and went round for
    ever at a negative one, which took it back to an earlier header."""
    archive = pax_archive_of_size(tmp_path / "7x0.tar", b"7x0")
    assert _plain_table(str(archive)) is None  # left to tarfile, which takes a size that is not a number as 0:
    with pytest.warns(UserWarning, match="cannot be read past byte 1,536 of its 20,480"):  # the data is no header
        assert vggfeat.archives.read_table(str(archive)) == {"a.jpg": (1536, 0)}  # and the member fails as empty
    for size in (b"-51", b"-1536"):
        archive = pax_archive_of_size(tmp_path / f"{size.decode()}.tar", size)
        outcome = []  # read in a thread of its own, which a reader going round for ever would not hold up
        reader = threading.Thread(target=lambda: outcome.extend(_outcome(read, str(archive)) for read in
                                                                (_plain_table, vggfeat.archives.read_table)), daemon=True)
        reader.start()
        reader.join(timeout=10)
        assert len(outcome) == 2, f"reading {archive.name} did not end"
        assert outcome[0] is None  # left to tarfile, whose size is refused
        assert isinstance(outcome[1], tarfile.ReadError) and "a.jpg has a negative size" in str(outcome[1])
    (tmp_path / "images").mkdir()
    shutil.copy(tmp_path / "-1536.tar", tmp_path / "images" / "shard.tar")
    code, _, err = run_main(["extract", tmp_path / "images", tmp_path / "out.h5", *CHEAP])
    assert code == 2 and error_line(err).startswith(f"Error: cannot read the tar archive {tmp_path / 'images' / 'shard.tar'} "
                                                     "(a.jpg has a negative size (-1536): a damaged header)")


def _outcome(function, *args):
    """What ``function(*args)`` returns, or the exception it raises."""
    try:
        return function(*args)
    except Exception as error:  # noqa: BLE001 - the caller checks which
        return error


def test_a_damaged_header_that_ends_an_archive_early_is_warned_of(tmp_path):
    """tarfile ends an archive at a header it cannot read, silently: the images after it would be
    left out without a word."""
    for number in range(4):
        write_rgb(tmp_path / f"{number}.png", 64, 64, seed=number)
    (tmp_path / "images").mkdir()
    archive = write_tar(tmp_path / "images" / "shard.tar", tmp_path, [f"{number}.png" for number in range(4)])
    with tarfile.open(archive) as tar:
        third = tar.getmember("2.png").offset
    data = bytearray(archive.read_bytes())
    data[third + 10] ^= 0xFF  # its name: the checksum no longer matches
    archive.write_bytes(bytes(data))
    code, _, err = run_main(["extract", tmp_path / "images", tmp_path / "out.h5", *CHEAP])
    assert code == 0, err
    assert read_output(tmp_path / "out.h5")["paths"] == ["shard.tar/0.png", "shard.tar/1.png"]
    assert f"warning: the tar archive {archive} cannot be read past byte {third:,} of its {len(data):,}" in err


def test_a_member_whose_name_holds_a_nul_byte_is_left_out_saying_so(tmp_path):
    """A damaged PAX record's name: HDF5 cannot store it, and the run stopped with a traceback as
    it wrote its first rows."""
    write_rgb(tmp_path / "a.png", 64, 64)
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "images").mkdir()
    archive = tmp_path / "images" / "shard.tar"
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in ("aXb.png", "ok.png"):
            info = tarfile.TarInfo(name)
            info.size, info.pax_headers = len(data), {"path": name}
            tar.addfile(info, io.BytesIO(data))
    archive.write_bytes(archive.read_bytes().replace(b"path=aXb.png", b"path=a\0b.png"))
    code, _, err = run_main(["extract", tmp_path / "images", tmp_path / "out.h5", *CHEAP])
    assert code == 0, err
    assert read_output(tmp_path / "out.h5")["paths"] == ["shard.tar/ok.png"]
    assert (f"warning: the tar archive {archive} has 1 member(s) whose name holds a NUL byte (a damaged header; the "
            "first: 'a\\x00b.png'): left out") in err


def test_a_large_member_is_read_from_its_archive_as_it_is_decoded(tmp_path, monkeypatch):
    """A member is read whole into memory up to 64 MiB, larger ones from the archive as they are
    decoded: a 40 GB member (a small JPEG, then a hole) stopped the run with a MemoryError, and
    every resume with it; large members, read by every decoding thread at once, took as much."""
    write_rgb(tmp_path / "a.jpg", 64, 48, seed=1)
    archive = write_tar(tmp_path / "small.tar", tmp_path, ["a.jpg"])
    whole = decode_image(f"{archive}/a.jpg")
    monkeypatch.setattr(vggfeat.archives, "MEMBER_IN_MEMORY_BYTES", 100)  # this one is larger: read as decoded
    with open_image_file(f"{archive}/a.jpg") as file:
        assert not isinstance(file, io.BytesIO)
        assert file.read() == (tmp_path / "a.jpg").read_bytes()
        assert file.seek(0, os.SEEK_END) == (tmp_path / "a.jpg").stat().st_size
    np.testing.assert_array_equal(decode_image(f"{archive}/a.jpg")[0], whole[0])
    monkeypatch.undo()
    # The JPEG at the start of a 40 GB member; the archive a sparse file of a few KB on disk.
    data = (tmp_path / "a.jpg").read_bytes()
    info = tarfile.TarInfo("big.jpg")
    info.size = 40 * 2**30
    with open(tmp_path / "big.tar", "wb") as file:
        file.write(info.tobuf(format=tarfile.GNU_FORMAT))
        file.write(data)
        file.truncate(file.tell() - len(data) + info.size + 1024)
    pixels = decode_image(f"{tmp_path / 'big.tar'}/big.jpg")[0]
    np.testing.assert_array_equal(pixels, whole[0])
    assert vggfeat.jpeg.read_jpeg(f"{tmp_path / 'big.tar'}/big.jpg", DEFAULT_MAX_PIXELS, 1) is None  # to PIL, unread
