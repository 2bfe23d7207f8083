"""List files and label maps: each format, and each malformed input failing with file:line."""

import os

import pytest

from tsm_keras.config import Config
from tsm_keras.data import lists
from tsm_keras.data.lists import load_label_names


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_frames_list(tmp_path):
    path = _write(tmp_path, "train.txt", "# comment\nclass_a/vid1 300 0\n\nclass b/vid 2 17 399\n")
    records = lists.read_list(path, "frames", "/data", num_classes=400)
    assert [(r.path, r.num_frames, r.label) for r in records] == [
        ("/data/class_a/vid1", 300, 0), ("/data/class b/vid 2", 17, 399)]
    assert records[0].source == f"{path}:2"


def test_videos_list_keeps_absolute_paths(tmp_path):
    path = _write(tmp_path, "val.txt", "a/x.mp4 3\n/abs/y.avi 1\n")
    records = lists.read_list(path, "videos", "root")
    assert [(r.path, r.num_frames, r.label) for r in records] == [
        (os.path.join("root", "a/x.mp4"), -1, 3), ("/abs/y.avi", -1, 1)]


@pytest.mark.parametrize("data_format, text, message", [
    ("videos", "a.mp4 1\nb.mp4\n", r':2: expected "<video_path> <label>", got "b.mp4"'),
    ("videos", "a.mp4 x\n", r':1: expected "<video_path> <label>"'),
    ("videos", "dir 300 1\n", r":1: .*frames list\? use --data_format=frames"),
    ("frames", "dir 1\n", r':1: expected "<frame_dir> <num_frames> <label>", got "dir 1"'),
    ("frames", "dir 10 5\n", r":1: label 5 is outside the label map \[0, 3\)"),
    ("frames", "dir 10 -1\n", r":1: label -1 is outside"),
    ("frames", "dir -3 1\n", r":1: num_frames must be >= 0"),
])
def test_malformed_lines_name_file_and_line(tmp_path, data_format, text, message):
    path = _write(tmp_path, "list.txt", text)
    with pytest.raises(lists.ListFileError, match=message) as error:
        lists.read_list(path, data_format, num_classes=3)
    assert str(error.value).startswith(path)


def test_missing_and_empty_lists(tmp_path):
    with pytest.raises(lists.ListFileError, match="not found"):
        lists.read_list(str(tmp_path / "nope.txt"), "videos")
    with pytest.raises(lists.ListFileError, match="no entries"):
        lists.read_list(_write(tmp_path, "empty.txt", "\n# only a comment\n"), "videos")
    with pytest.raises(lists.ListFileError, match="--train_list"):
        lists.read_list("", "videos")


def test_text_that_is_not_utf8_names_file_line_and_byte_and_a_bom_is_dropped(tmp_path):
    """A list saved as Latin-1 (an accented file name), or a label map that is a binary file by mistake."""
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("a/x.mp4 0\nb/vidéo.mp4 1\n".encode("latin-1"))
    with pytest.raises(lists.ListFileError, match=r"latin1\.txt:2: not UTF-8 text \(byte 0xe9 at column 6\); save"):
        lists.read_list(str(latin1), "videos")
    with pytest.raises(lists.ListFileError, match=r"latin1\.txt:2: not UTF-8 text"):
        lists.read_label_map(str(latin1))
    with pytest.raises(lists.ListFileError, match=r"latin1\.txt:2: not UTF-8 text"):
        lists.list_inputs(str(latin1))
    # Windows editors may start a UTF-8 file with a byte-order mark: not part of the first path.
    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbfa/x.mp4 0\r\nb/vid\xc3\xa9o.mp4 1\r\n")
    assert [(r.path, r.label) for r in lists.read_list(str(bom), "videos")] == [("a/x.mp4", 0), ("b/vidéo.mp4", 1)]
    assert lists.read_label_map(str(bom)) == ["a/x.mp4 0", "b/vidéo.mp4 1"]


def test_kinetics400_label_map():
    names = lists.read_label_map("kinetics400")
    assert len(names) == 400
    assert names[0] == "abseiling" and names[1] == "air_drumming" and names[-1] == "zumba"


def test_ucf_class_ind_is_one_based(tmp_path):
    path = _write(tmp_path, "classInd.txt", "1 ApplyEyeMakeup\n2 ApplyLipstick\n3 Archery\n")
    assert lists.read_label_map(path) == ["ApplyEyeMakeup", "ApplyLipstick", "Archery"]


def test_indexed_zero_based_and_plain_maps(tmp_path):
    assert lists.read_label_map(_write(tmp_path, "k.txt", "0 a b\n1 c\n")) == ["a b", "c"]
    assert lists.read_label_map(_write(tmp_path, "plain.txt", "walk\nrun fast\n\njump\n")) == [
        "walk", "run fast", "jump"]


def test_bad_label_maps(tmp_path):
    with pytest.raises(lists.ListFileError, match=r"gaps.txt:2: expected index 2"):
        lists.read_label_map(_write(tmp_path, "gaps.txt", "1 a\n3 b\n"))
    with pytest.raises(lists.ListFileError, match="first index must be 0 or 1"):
        lists.read_label_map(_write(tmp_path, "five.txt", "5 a\n6 b\n"))
    with pytest.raises(lists.ListFileError, match="not found"):
        lists.read_label_map(str(tmp_path / "missing.txt"))


def test_label_names_default_to_indices(tmp_path):
    assert load_label_names(Config(data_format="frames", num_classes=3)) == ["0", "1", "2"]
    path = _write(tmp_path, "plain.txt", "x\ny\n")
    assert load_label_names(Config(data_format="frames", label_map=path)) == ["x", "y"]
    assert load_label_names(Config(data_format="synthetic"))[:2] == ["moving_right", "moving_left"]
