"""Text files that a user hands in are read as UTF-8, or refused naming the file, the line and the
byte; names of files that are not UTF-8 still find their files. Before, such a file ended the
command in a UnicodeDecodeError's traceback."""

from __future__ import annotations

import pytest

from vggfeat.discover import read_file_list
from vggfeat.errors import VggfeatError
from vggfeat.labels import read_labels_csv
from vggfeat.predictions import read_labels
from vggfeat.retrieval import read_ground_truth
from vggfeat.textfiles import read_text
from vggfeat.voc import read_image_set

LATIN1_NAME = "caf\xe9.jpg".encode("latin-1")  # a name as an older system wrote it: not UTF-8


def test_text_is_utf8_without_its_byte_order_mark_or_refused_naming_line_and_byte(tmp_path):
    (tmp_path / "bom.txt").write_bytes("\ufeffa.jpg,chat\n".encode("utf-8"))
    assert read_text(tmp_path / "bom.txt") == "a.jpg,chat\n"
    (tmp_path / "latin1.txt").write_bytes(b"a.jpg\nb.jpg\n" + LATIN1_NAME + b"\n")
    with pytest.raises(VggfeatError, match=r"latin1.txt, line 3: not UTF-8 text \(byte 0xe9\); save it as UTF-8"):
        read_text(tmp_path / "latin1.txt")
    assert read_text(tmp_path / "latin1.txt", names_files=True).splitlines()[2] == LATIN1_NAME.decode("utf-8", "surrogateescape")


def test_a_labels_csv_names_files_and_labels_in_any_bytes_as_a_file_list_does(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_bytes(b"path,label\n" + LATIN1_NAME + b",cat\nb.jpg,dog\n")
    # Named as a features file's /paths names that file (its bytes that are not UTF-8 written \\xNN), whose row it labels.
    assert read_labels_csv(labels) == {"caf\\xe9.jpg": ["cat"], "b.jpg": ["dog"]}
    # A spreadsheet's CSV saved in Latin-1 (it cannot be saved otherwise where it names files so): its
    # labels are the classes that 'extract --file-list' of the same lines gives (it refused them).
    labels.write_bytes(b"a.jpg,cat\nb.jpg,caf\xe9\n")
    assert read_labels_csv(labels) == {"a.jpg": ["cat"], "b.jpg": ["caf\\xe9"]}
    assert read_file_list(labels).classes == ("caf\\xe9", "cat")


def test_a_labels_csv_with_a_quote_not_closed_or_a_nul_byte_is_refused_naming_the_line(tmp_path):
    """csv's refusal (a quote not closed took the rest of the file into one field, over its limit)
    ended the command in a traceback; a NUL byte in a label failed only as the model was written."""
    labels = tmp_path / "labels.csv"
    labels.write_text('a.jpg,cat\n"b.jpg",dog\nc.jpg,"cat\n' + "d.jpg,dog\n" * 20000)
    with pytest.raises(VggfeatError, match=r"labels.csv, line 3: field larger than field limit \(131072\) \(a quote not closed\?\)"):
        read_labels_csv(labels)
    labels.write_text('a.jpg,"two\nlines"\nb.jpg\n')  # a row over two lines: the next one's line is the file's
    with pytest.raises(VggfeatError, match=r"labels.csv, line 3: expected 'path,label', got 'b.jpg'"):
        read_labels_csv(labels)
    labels.write_bytes(b"a.jpg,cat\nb.jpg,d\0g\n")
    with pytest.raises(VggfeatError, match=r"labels.csv, line 2: a NUL byte: not a text file"):
        read_labels_csv(labels)


def test_a_labels_csv_comment_begins_its_line_and_a_quoted_path_may_begin_with_a_hash(tmp_path):
    """A folder may hold '#1.jpg' (vggfeat describes it): its quoted line was dropped as a comment."""
    labels = tmp_path / "labels.csv"
    labels.write_text('# made by hand\na.jpg,cat\n#b.jpg,dog\n"#1.jpg",dog\n')
    assert read_labels_csv(labels) == {"a.jpg": ["cat"], "#1.jpg": ["dog"]}
    labels.write_text("# a comment\na.jpg,cat\nb.jpg,;\n")  # no label among ';': a traceback at training
    with pytest.raises(VggfeatError, match=r"labels.csv, line 3: expected 'path,label', got 'b.jpg,;'"):
        read_labels_csv(labels)


def test_an_imagenet_style_list_names_files_in_any_bytes(tmp_path):
    listing = tmp_path / "val.txt"
    listing.write_bytes(LATIN1_NAME + b" 3\n\xff\xfe 4\n")
    assert read_labels(listing) == {"caf\\xe9.jpg": 3, "\\xff\\xfe": 4}  # as /paths names them
    listing.write_bytes(b"a.jpg \xe9\n")
    with pytest.raises(VggfeatError, match=r"val.txt:1: expected 'filename label' .* got 'a.jpg \\\\xe9'"):
        read_labels(listing)


def test_a_voc_set_or_a_ground_truth_that_is_not_utf8_is_refused_naming_it(tmp_path):
    sets = tmp_path / "VOC2007" / "ImageSets" / "Main"
    sets.mkdir(parents=True)
    (sets / "test.txt").write_bytes(b"000001\n\xff00002\n")
    with pytest.raises(VggfeatError, match=r"test.txt, line 2: not UTF-8 text \(byte 0xff\)"):
        read_image_set(tmp_path / "VOC2007", "test")
    (tmp_path / "gt.json").write_bytes(b'[{"query": "caf\xe9.jpg", "ok": [], "junk": []}]')
    with pytest.raises(VggfeatError, match=r"gt.json, line 1: not UTF-8 text \(byte 0xe9\)"):
        read_ground_truth(tmp_path / "gt.json")
