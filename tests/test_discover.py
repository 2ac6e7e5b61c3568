"""find_images / read_file_list: which files are found, in which order, with which labels."""

from __future__ import annotations

import csv
import io
import os
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from vggfeat.discover import NO_LABEL, ImageSet, check_listed_files, find_images, read_file_list
from vggfeat.errors import VggfeatError


def touch(root, *relative_paths):
    """Create empty files (discovery looks at names only, never at content)."""
    for relative in relative_paths:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def labels_by_path(image_set):
    return {
        path: (image_set.classes[label] if label >= 0 else None)
        for path, label in zip(image_set.paths, image_set.labels.tolist())
    }


# --------------------------------------------------------------------------- folders


def test_folder_tree_classes_and_labels(tmp_path):
    # Created out of order on purpose.
    touch(
        tmp_path,
        "zebra/z1.jpg",
        "cat/c2.png",
        "cat/c1.jpg",
        "cat/kittens/small/k1.jpeg",  # deeper: still class "cat"
        "ant/a1.bmp",
        "loose.jpg",  # in the root: no class
    )
    found = find_images(tmp_path)
    assert found.root == tmp_path
    assert found.paths == (
        "ant/a1.bmp",
        "cat/c1.jpg",
        "cat/c2.png",
        "cat/kittens/small/k1.jpeg",
        "loose.jpg",
        "zebra/z1.jpg",
    )
    assert found.classes == ("ant", "cat", "zebra")
    assert found.labels.dtype == np.int32
    assert found.labels.tolist() == [0, 1, 1, 1, NO_LABEL, 2]
    assert NO_LABEL == -1
    assert len(found) == 6
    assert found.file(3) == tmp_path / "cat" / "kittens" / "small" / "k1.jpeg"
    assert all(path.is_file() for path in found.files())


def test_extensions_any_case_and_non_images_ignored(tmp_path):
    images = ["a.JPG", "b.Jpeg", "c.PNG", "d.bmp", "e.GIF", "f.webp", "g.TIF", "h.tiff", "i.avif", "j.jp2", "k.HEIC",
              "l.heif"]
    others = ["notes.txt", "a.jpg.txt", "drawing.svg", "features.h5", "raw.cr2", "jpg", "README"]
    touch(tmp_path, *images, *others)
    assert find_images(tmp_path).paths == tuple(sorted(images))


def test_hidden_files_and_folders_are_skipped(tmp_path):
    touch(
        tmp_path,
        "dog/d1.jpg",
        "dog/._d1.jpg",  # macOS resource fork
        "dog/.thumb.jpg",
        "dog/.cache/d2.jpg",
        ".git/objects/x.jpg",
        ".trash/cat/c1.jpg",
        ".hidden.png",
    )
    found = find_images(tmp_path)
    assert found.paths == ("dog/d1.jpg",)
    assert found.classes == ("dog",)


def test_paths_are_posix_relative_and_sorted(tmp_path):
    touch(tmp_path, "b/2.jpg", "b/10.jpg", "a/x/y.jpg", "a/x.jpg", "C/1.jpg")
    found = find_images(tmp_path)
    assert list(found.paths) == sorted(found.paths)
    assert all("\\" not in path and not path.startswith("/") for path in found.paths)
    # Plain code-point order: upper case before lower case, "10" before "2".
    assert found.paths == ("C/1.jpg", "a/x.jpg", "a/x/y.jpg", "b/10.jpg", "b/2.jpg")
    assert found.classes == ("C", "a", "b")


def test_progress_counts_every_image_found(tmp_path):
    touch(tmp_path, "a/1.jpg", "a/2.png", "a/notes.txt", "b/c/3.jpg", "4.jpg")
    counts = []
    found = find_images(tmp_path, progress=counts.append)
    assert sum(counts) == len(found) == 4
    assert len(counts) == 4  # one call a folder: the root, a, b, b/c


def test_linked_class_folders_are_followed(tmp_path):
    # A collection made of links to where its classes lie: none of its images may be left out.
    touch(tmp_path / "storage", "cat/c1.jpg", "dog/d1.jpg", "dog/puppies/p1.jpg")
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "cats").symlink_to(tmp_path / "storage" / "cat")
    (tmp_path / "set" / "dogs").symlink_to(tmp_path / "storage" / "dog", target_is_directory=True)
    touch(tmp_path / "set", "birds/b1.jpg")
    found = find_images(tmp_path / "set")
    assert found.paths == ("birds/b1.jpg", "cats/c1.jpg", "dogs/d1.jpg", "dogs/puppies/p1.jpg")
    assert labels_by_path(found) == {"birds/b1.jpg": "birds", "cats/c1.jpg": "cats", "dogs/d1.jpg": "dogs",
                                     "dogs/puppies/p1.jpg": "dogs"}


def test_a_loop_of_links_is_walked_once(tmp_path):
    touch(tmp_path, "a/1.jpg", "b/2.jpg")
    (tmp_path / "a" / "up").symlink_to(tmp_path)  # a link to a folder it lies in
    (tmp_path / "b" / "to_a").symlink_to(tmp_path / "a")
    (tmp_path / "a" / "to_b").symlink_to(tmp_path / "b")  # a -> b -> a
    found = find_images(tmp_path)
    # Every file once per way to it that does not go round a loop.
    assert found.paths == ("a/1.jpg", "a/to_b/2.jpg", "b/2.jpg", "b/to_a/1.jpg")


def test_a_folder_that_cannot_be_listed_is_an_error_not_a_gap(tmp_path, monkeypatch):
    touch(tmp_path, "cat/c1.jpg", "dog/d1.jpg")
    scandir = os.scandir

    def refusing(path):  # what a folder without read permission does for a user who is not root
        if Path(path).name == "dog":
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    with pytest.raises(VggfeatError, match="cannot list 1 folder") as caught:
        find_images(tmp_path)
    assert f"{tmp_path / 'dog'}: Permission denied" in str(caught.value)
    assert "--file-list" in str(caught.value)


def test_order_does_not_depend_on_creation_order(tmp_path):
    names = [f"c{i % 3}/img{i:02d}.jpg" for i in range(12)]
    touch(tmp_path / "one", *names)
    touch(tmp_path / "two", *reversed(names))
    one, two = find_images(tmp_path / "one"), find_images(tmp_path / "two")
    assert one.paths == two.paths
    np.testing.assert_array_equal(one.labels, two.labels)
    assert one.digest() == two.digest()


def test_only_root_files_means_no_classes(tmp_path):
    touch(tmp_path, "a.jpg", "b.png")
    found = find_images(tmp_path)
    assert found.classes == ()
    assert found.labels.tolist() == [NO_LABEL, NO_LABEL]


def test_accepts_str_root(tmp_path):
    touch(tmp_path, "x/a.jpg")
    assert find_images(str(tmp_path)).paths == ("x/a.jpg",)


def test_missing_folder(tmp_path):
    with pytest.raises(VggfeatError, match="not found") as caught:
        find_images(tmp_path / "nope")
    assert "nope" in str(caught.value)


def test_file_instead_of_folder(tmp_path):
    touch(tmp_path, "a.jpg")
    with pytest.raises(VggfeatError, match="not a folder") as caught:
        find_images(tmp_path / "a.jpg")
    assert "--file-list" in str(caught.value)


@pytest.mark.parametrize("contents", [[], ["notes.txt", "sub/data.csv", ".hidden.jpg"]])
def test_folder_without_images(tmp_path, contents):
    touch(tmp_path, *contents)
    with pytest.raises(VggfeatError, match="no images found") as caught:
        find_images(tmp_path)
    assert str(tmp_path) in str(caught.value) and ".jpg" in str(caught.value)


def latin1(text: str) -> str:
    """``text`` as a Latin-1 file name reads on a UTF-8 system: its bytes as os.walk gives them."""
    return os.fsdecode(text.encode("latin-1"))


def test_names_that_are_not_utf8_are_shown_escaped_and_open_their_files(tmp_path):
    try:
        touch(tmp_path, f"{latin1('chèvre')}/{latin1('café')}.jpg", "chèvre/café.jpg")
    except (OSError, UnicodeError):
        pytest.skip("this file system refuses names that are not UTF-8")
    found = find_images(tmp_path)
    # Valid UTF-8 everywhere a name is written (HDF5, CSV, the terminal), in sorted order.
    assert found.paths == ("ch\\xe8vre/caf\\xe9.jpg", "chèvre/café.jpg")
    assert found.classes == ("ch\\xe8vre", "chèvre")
    assert found.labels.tolist() == [0, 1]
    assert found.digest()  # hashes UTF-8 text
    # Yet each opens its own file, also through a shard.
    assert found.file(0) == tmp_path / latin1("chèvre") / f"{latin1('café')}.jpg"
    assert all(path.is_file() for path in found.files())
    assert found.shard(1, 2).files()[0] == found.file(0)


def test_a_file_list_that_is_not_utf8_names_its_files(tmp_path):
    try:
        touch(tmp_path, f"{latin1('café')}.jpg")
    except (OSError, UnicodeError):
        pytest.skip("this file system refuses names that are not UTF-8")
    (tmp_path / "list.txt").write_bytes("café.jpg,bœuf\n".encode("cp1252"))
    found = read_file_list(tmp_path / "list.txt")
    assert found.paths == ("caf\\xe9.jpg",) and found.classes == ("b\\x9cuf",)
    assert found.file(0).is_file()


def test_a_name_that_is_not_utf8_and_its_escaped_text_cannot_both_be_described(tmp_path):
    try:
        touch(tmp_path, f"{latin1('café')}.jpg", "caf\\xe9.jpg")
    except (OSError, UnicodeError):
        pytest.skip("this file system refuses names that are not UTF-8")
    with pytest.raises(VggfeatError, match=r"two files are named caf\\xe9\.jpg"):
        find_images(tmp_path)


# --------------------------------------------------------------------------- file lists


def write_list(path, *lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_list_paths_labels_comments_and_blanks(tmp_path):
    listing = write_list(
        tmp_path / "list.txt",
        "# my images",
        "photos/b.jpg,dog",
        "",
        "   ",
        "photos/a.jpg , cat ",
        "  # indented comment",
        "photos/c.jpg",
    )
    found = read_file_list(listing)
    assert found.root == tmp_path
    assert found.paths == ("photos/a.jpg", "photos/b.jpg", "photos/c.jpg")  # sorted
    assert found.classes == ("cat", "dog")
    assert found.labels.dtype == np.int32
    assert found.labels.tolist() == [0, 1, NO_LABEL]


def test_a_listed_file_named_with_leading_spaces_is_that_file_where_it_is_there(tmp_path):
    """A line's surrounding spaces were always left out: ' lead.png' (a name that the folder's walk
    records as it is) was then 'not found'. They are kept where the file so named is there."""
    touch(tmp_path, " lead.png", "b.png")
    listing = write_list(tmp_path / "list.txt", " lead.png,x", "  b.png ,y", " gone.png")
    assert read_file_list(listing).paths == (" lead.png", "b.png", "gone.png")
    assert find_images(tmp_path).paths == (" lead.png", "b.png")


def test_list_relative_paths_are_from_the_list_folder(tmp_path):
    touch(tmp_path, "data/img/a.jpg")
    listing = write_list(tmp_path / "data" / "list.txt", "img/a.jpg,x")
    found = read_file_list(listing)
    assert found.root == tmp_path / "data"
    assert found.file(0) == tmp_path / "data" / "img" / "a.jpg"
    assert found.file(0).is_file()


def test_list_relative_paths_from_explicit_root(tmp_path):
    touch(tmp_path, "images/a.jpg")
    listing = write_list(tmp_path / "lists" / "train.txt", "a.jpg,x")
    found = read_file_list(listing, root=tmp_path / "images")
    assert found.root == tmp_path / "images"
    assert found.paths == ("a.jpg",)
    assert found.file(0).is_file()


def test_list_absolute_paths(tmp_path):
    touch(tmp_path, "root/a.jpg", "elsewhere/b.jpg")
    inside, outside = tmp_path / "root" / "a.jpg", tmp_path / "elsewhere" / "b.jpg"
    listing = write_list(tmp_path / "root" / "list.txt", f"{inside},x", f"{outside},y")
    found = read_file_list(listing)
    assert set(found.paths) == {"a.jpg", outside.as_posix()}  # inside root: made relative
    assert {found.file(i) for i in range(2)} == {inside, outside}


def test_list_absolute_paths_inside_a_relatively_given_root(tmp_path, monkeypatch):
    # The same list must give the same set (and digest) however its path is spelled.
    touch(tmp_path, "root/a.jpg")
    write_list(tmp_path / "root" / "list.txt", f"{tmp_path / 'root' / 'a.jpg'},x")
    monkeypatch.chdir(tmp_path)
    relative = read_file_list("root/list.txt")
    absolute = read_file_list(tmp_path / "root" / "list.txt")
    assert relative.paths == absolute.paths == ("a.jpg",)
    assert relative.digest() == absolute.digest()


class _Piped(io.TextIOWrapper):
    """Standard input from a pipe: bytes, not a terminal."""

    def isatty(self) -> bool:
        return False


def test_a_list_on_standard_input_is_read_as_a_list_file_from_the_working_folder(tmp_path, monkeypatch):
    """``find images -name '*.jpg' | vggfeat extract --file-list - out.h5``: "-" is standard input,
    its relative paths taken from the working folder (or --root), the same set as from a file; a
    terminal there is refused at once rather than waited on."""
    touch(tmp_path, "photos/a.jpg", "photos/b,1.jpg")
    listing = write_list(tmp_path / "list.txt", "photos/b,1.jpg", "photos/a.jpg,cat", "photos/a.jpg#xywh=1,2,3,4")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdin", _Piped(io.BytesIO(listing.read_bytes())))
    found = read_file_list("-")
    assert found.root == Path(".") and found.digest() == read_file_list(listing).digest()
    check_listed_files(found, "-")
    monkeypatch.setattr(sys, "stdin", _Piped(io.BytesIO(b"a.jpg\n")))
    assert read_file_list("-", root=tmp_path / "photos").file(0) == tmp_path / "photos" / "a.jpg"
    monkeypatch.setattr(sys, "stdin", _Piped(io.BytesIO(b"x.jpg\nbad.jpg#xywh=1,2\n")))
    with pytest.raises(VggfeatError, match=r"^standard input:2: bad.jpg#xywh=1,2: a region is"):
        read_file_list("-")
    monkeypatch.setattr(sys, "stdin", _Piped(io.BytesIO(b"missing/x.jpg\n")))
    with pytest.raises(VggfeatError, match=r"^none of the files of standard input is there .*\(the working folder; "
                                           r"--root names another\)"):
        check_listed_files(read_file_list("-"), "-")
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    with pytest.raises(VggfeatError, match=r"^--file-list - reads the list from standard input, here a terminal: pipe"):
        read_file_list("-")


def test_a_list_is_refused_only_where_none_of_the_files_looked_for_is_there(tmp_path):
    """16 files spread over the list are looked for, not all of them: a list of millions of files
    on a network file system starts at once. One there is enough; the others fail in the run."""
    listing = write_list(tmp_path / "list.txt", *[f"{i:04d}.jpg" for i in range(1000)])
    found = read_file_list(listing)
    with pytest.raises(VggfeatError, match=r"none of the files of .*list.txt is there \(looked for 16 of its 1,000"):
        check_listed_files(found, listing)
    touch(tmp_path, "0999.jpg")  # the last file: spread over the list, the look reaches it
    check_listed_files(found, listing)
    os.remove(tmp_path / "0999.jpg")
    touch(tmp_path, "0500.jpg")  # between the files looked for: not seen
    with pytest.raises(VggfeatError, match="none of the files"):
        check_listed_files(found, listing)
    absolute = write_list(tmp_path / "absolute.txt", "/not/mounted/a.jpg", "/not/mounted/b.jpg")
    with pytest.raises(VggfeatError, match=r"\(looked for each of its 2, e.g. /not/mounted/a.jpg\); is their storage mounted\?$"):
        check_listed_files(read_file_list(absolute), absolute)

def test_list_comma_in_file_name(tmp_path):
    listing = write_list(tmp_path / "list.txt", "a,b.jpg", "c,d.jpg,cat", "x,y/e.PNG", "f.jpg,animals/cat", "g,dog")
    found = read_file_list(listing)
    assert labels_by_path(found) == {"a,b.jpg": None, "c,d.jpg": "cat", "x,y/e.PNG": None,
                                     "f.jpg": "animals/cat", "g": "dog"}


def test_a_list_names_a_file_a_line_whatever_its_name_holds(tmp_path):
    """find writes a name with a form feed, U+2028 or U+0085 on one line: str.splitlines cut it in
    two bogus paths. A CRLF list's CRs are line ends all the same."""
    names = ["ok.jpg", "ff\fx.jpg", "ls\u2028ep.jpg", "nel\u0085x.jpg", "gs\x1dx.jpg"]
    (tmp_path / "list.txt").write_bytes("".join(f"./{name}\n" for name in names).encode())
    assert read_file_list(tmp_path / "list.txt").paths == tuple(sorted(names))
    (tmp_path / "crlf.txt").write_bytes(b"a.jpg,cat\r\nb.jpg\r\n")
    assert labels_by_path(read_file_list(tmp_path / "crlf.txt")) == {"a.jpg": "cat", "b.jpg": None}


def test_a_list_written_by_csv_writer_is_read_as_it_was_written(tmp_path):
    """Its header was an image "path" of class "label"; a quoted path kept its quotes, and a quoted
    label with a comma made a class of its last part."""
    with open(tmp_path / "list.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        writer.writerows([["b, c.jpg", "x"], ["plain.jpg", "y"], ["cat, tabby/x.jpg", "cat, tabby"], ['say "hi".jpg', ""]])
    assert labels_by_path(read_file_list(tmp_path / "list.csv")) == {
        "b, c.jpg": "x", "cat, tabby/x.jpg": "cat, tabby", "plain.jpg": "y", 'say "hi".jpg': None}
    # A name with quotes, ending in an image extension, is a path as it is; a header quoted is a header.
    (tmp_path / "names.csv").write_text('"path","label"\n"hello" world.jpg\n"a".jpg\n"b, c.jpg",x\n')
    assert labels_by_path(read_file_list(tmp_path / "names.csv")) == {'"a".jpg': None, '"hello" world.jpg': None,
                                                                       "b, c.jpg": "x"}
    (tmp_path / "bad.csv").write_text('"a.jpg",x,y\n')
    with pytest.raises(VggfeatError, match=r"bad.csv:1: expected '\"path\"' or '\"path\",label'"):
        read_file_list(tmp_path / "bad.csv")


def test_a_long_list_is_read_without_a_look_at_each_file(tmp_path, monkeypatch):
    # On a network file system, a look per file would cost a round trip per line before any work.
    listing = write_list(tmp_path / "list.txt", *[f"/data/{i}.jpg,cat" for i in range(100)], "a,b.jpg")
    looks = []
    stat = os.stat
    monkeypatch.setattr(os, "stat", lambda path, *args, **kwargs: looks.append(path) or stat(path, *args, **kwargs))
    assert len(read_file_list(listing)) == 101
    assert len(looks) <= 2, looks  # the list file itself


def test_list_duplicates(tmp_path):
    touch(tmp_path, "a.jpg", "b.jpg")
    same = write_list(tmp_path / "same.txt", "a.jpg,x", "b.jpg,y", f"{tmp_path / 'a.jpg'},x")
    assert read_file_list(same).paths == ("a.jpg", "b.jpg")  # repeated with the same label: once

    conflict = write_list(tmp_path / "conflict.txt", "a.jpg,x", "b.jpg,y", "# note", "a.jpg,y")
    with pytest.raises(VggfeatError, match="different labels") as caught:
        read_file_list(conflict)
    assert "conflict.txt:4" in str(caught.value) and "a.jpg" in str(caught.value)

    labelled_and_not = write_list(tmp_path / "mixed.txt", "a.jpg,x", "a.jpg")
    with pytest.raises(VggfeatError, match="different labels"):
        read_file_list(labelled_and_not)


def test_an_image_set_built_from_a_callers_list_refuses_a_path_twice():
    """ImageSet(...) took a path twice, and described it into two rows of one file that 'vggfeat
    index' then refused; a region of that image is a path of its own."""
    paths = ("a.jpg", "b.jpg", "a.jpg#xywh=0,0,8,8", "c.jpg", "b.jpg", "a.jpg")
    with pytest.raises(VggfeatError, match=r"each path must be given once .*, got b\.jpg twice \(positions 1 and 4\)"):
        ImageSet(Path("/collection"), paths, np.full(len(paths), NO_LABEL, dtype=np.int32), ())
    assert len(ImageSet(Path("/collection"), paths[:4], np.full(4, NO_LABEL, dtype=np.int32), ())) == 4

def test_list_windows_line_endings_and_byte_order_mark(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_bytes("\ufeffa.jpg,x\r\nb.jpg,y\r\n".encode("utf-8"))
    found = read_file_list(listing)
    assert found.paths == ("a.jpg", "b.jpg")
    assert found.classes == ("x", "y")


def test_a_list_with_a_nul_byte_is_refused_naming_its_line(tmp_path):
    """As ``find -print0`` writes one: no path holds one, and HDF5 could not store it (the run
    stopped with a traceback)."""
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"a.jpg\nb.jpg\0c.jpg\0\n")
    with pytest.raises(VggfeatError, match=r"list.txt:2: a NUL byte, which no path holds: .* \(find -print, not -print0\)"):
        read_file_list(listing)


def test_list_missing(tmp_path):
    with pytest.raises(VggfeatError, match="file list not found") as caught:
        read_file_list(tmp_path / "nope.txt")
    assert "nope.txt" in str(caught.value)


def test_list_that_is_a_folder(tmp_path):
    with pytest.raises(VggfeatError, match="is a folder, where a file list was expected"):
        read_file_list(tmp_path)


def test_list_without_entries(tmp_path):
    listing = write_list(tmp_path / "list.txt", "# only a comment", "")
    with pytest.raises(VggfeatError, match="empty") as caught:
        read_file_list(listing)
    assert "list.txt" in str(caught.value)


# --------------------------------------------------------------------------- digest


def test_digest_is_stable(tmp_path):
    touch(tmp_path, "a/1.jpg", "b/2.jpg", "3.jpg")
    first = find_images(tmp_path).digest()
    assert len(first) == 64 and int(first, 16) >= 0  # hex SHA-256
    assert find_images(tmp_path).digest() == first
    (tmp_path / "a" / "notes.txt").write_text("not an image")  # ignored files do not count
    (tmp_path / "a" / "1.jpg").write_bytes(b"changed content")  # names and labels only
    assert find_images(tmp_path).digest() == first


def test_digest_changes_when_a_file_is_added_or_removed(tmp_path):
    touch(tmp_path, "a/1.jpg", "b/2.jpg")
    before = find_images(tmp_path).digest()
    touch(tmp_path, "b/3.jpg")
    added = find_images(tmp_path).digest()
    assert added != before
    (tmp_path / "b" / "3.jpg").unlink()
    assert find_images(tmp_path).digest() == before


def test_digest_changes_when_a_file_moves_to_another_class(tmp_path):
    touch(tmp_path, "a/1.jpg", "b/2.jpg")
    before = find_images(tmp_path).digest()
    os.rename(tmp_path / "b" / "2.jpg", tmp_path / "a" / "2.jpg")
    assert find_images(tmp_path).digest() != before


def test_list_digest_follows_labels_not_line_order(tmp_path):
    base = read_file_list(write_list(tmp_path / "1.txt", "a.jpg,x", "b.jpg,y", "c.jpg"))
    shuffled = read_file_list(write_list(tmp_path / "2.txt", "c.jpg", "# comment", "b.jpg,y", "a.jpg,x"))
    relabelled = read_file_list(write_list(tmp_path / "3.txt", "a.jpg,x", "b.jpg,x", "c.jpg"))
    unlabelled = read_file_list(write_list(tmp_path / "4.txt", "a.jpg,x", "b.jpg,y", "c.jpg,z"))
    renamed_class = read_file_list(write_list(tmp_path / "5.txt", "a.jpg,x", "b.jpg,w", "c.jpg"))
    assert shuffled.digest() == base.digest()
    assert len({base.digest(), relabelled.digest(), unlabelled.digest(), renamed_class.digest()}) == 4


def test_files_are_made_as_they_are_used_not_held():
    """A collection's paths as Path objects on demand: tens of millions of them would not fit."""
    paths = tuple(f"c{i % 10}/{i:08d}.jpg" for i in range(200_000))
    images = ImageSet(Path("/collection"), paths, np.zeros(len(paths), dtype=np.int32), ("c",))
    tracemalloc.start()
    files = images.files()
    part = files[1000:3000]
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert held < 100_000  # bytes: a view, not 200,000 Path objects (about 65 MB)
    assert len(files) == 200_000 and files[5] == Path("/collection/c5/00000005.jpg")
    assert len(part) == 2000 and list(part)[0] == Path("/collection/c0/00001000.jpg") == part[0]
