"""--mode=prepare: lists from Kinetics/UCF-101 layouts, parallel resumable frame extraction, true counts."""

import os

import pytest

from conftest import write_video
from tsm_keras.config import Config
from tsm_keras.data import lists
from tsm_keras.data.prepare import extract_list, prepare


def test_kinetics_layout_lists_and_frames(tmp_path):
    root = tmp_path / "k"
    write_video(str(root / "train" / "walk dog" / "v1.mp4"), 5, "mp4v")
    write_video(str(root / "train" / "abseiling" / "v2.avi"), 7)
    write_video(str(root / "val" / "abseiling" / "v3.avi"), 6)
    (root / "train" / "walk dog" / "notes.txt").write_text("not a video")
    frames_dir = tmp_path / "frames"
    outputs = prepare(Config(prepare_videos_dir=str(root), frames_dir=str(frames_dir), data_workers=2,
                                         short_side=24))
    train = lists.read_list(str(root / "train_videos.txt"), "videos", str(root))
    assert [(os.path.relpath(r.path, root), r.label) for r in train] == [
        ("train/abseiling/v2.avi", 0), ("train/walk dog/v1.mp4", 1)]
    assert lists.read_label_map(str(root / "classes.txt")) == ["abseiling", "walk dog"]
    frames = lists.read_list(str(frames_dir / "train_frames.txt"), "frames", str(frames_dir))
    assert [(os.path.relpath(r.path, frames_dir), r.num_frames, r.label) for r in frames] == [
        ("train/abseiling/v2", 7, 0), ("train/walk dog/v1", 5, 1)]
    val = lists.read_list(str(frames_dir / "val_frames.txt"), "frames", str(frames_dir))
    assert [(r.num_frames, r.label) for r in val] == [(6, 0)]
    import cv2
    assert cv2.imread(os.path.join(frames[0].path, "img_00001.jpg")).shape == (24, 32, 3)
    assert outputs["train_skipped"] == 0


def test_kinetics_folders_map_to_the_kinetics400_indices(tmp_path):
    root = tmp_path / "k"
    write_video(str(root / "air drumming" / "v.avi"), 3)
    write_video(str(root / "zumba" / "v.avi"), 3)
    prepare(Config(prepare_videos_dir=str(root), label_map="kinetics400",
                               train_list=str(tmp_path / "lists" / "train.txt")))
    records = lists.read_list(str(tmp_path / "lists" / "train.txt"), "videos", str(root))
    assert [r.label for r in records] == [1, 399]
    write_video(str(root / "not_a_kinetics_class" / "v.avi"), 3)
    with pytest.raises(lists.ListFileError, match="not_a_kinetics_class"):
        prepare(Config(prepare_videos_dir=str(root), label_map="kinetics400"))


def test_ucf101_lists_are_zero_based(tmp_path):
    videos, notes = tmp_path / "UCF-101", tmp_path / "ucfTrainTestlist"
    notes.mkdir()
    (notes / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 Archery\n")
    (notes / "trainlist01.txt").write_text("ApplyEyeMakeup/v_a_g08_c01.avi 1\nArchery/v_b_g08_c01.avi 2\n")
    (notes / "testlist01.txt").write_text("Archery/v_b_g01_c01.avi\nArchery/v_missing.avi\n")
    for name in ("ApplyEyeMakeup/v_a_g08_c01.avi", "Archery/v_b_g08_c01.avi", "Archery/v_b_g01_c01.avi"):
        write_video(str(videos / name), 4)
    prepare(Config(prepare_videos_dir=str(videos), ucf101_annotations=str(notes), ucf101_split=1))
    train = lists.read_list(str(videos / "train_videos.txt"), "videos", str(videos))
    val = lists.read_list(str(videos / "val_videos.txt"), "videos", str(videos))
    assert [r.label for r in train] == [0, 1] and [(os.path.basename(r.path), r.label) for r in val] == [
        ("v_b_g01_c01.avi", 1)]
    (notes / "trainlist01.txt").write_text("ApplyEyeMakeup/v_a_g08_c01.avi 2\n")
    with pytest.raises(lists.ListFileError, match=r"trainlist01.txt:1: label 2 does not match class ApplyEyeMakeup"):
        prepare(Config(prepare_videos_dir=str(videos), ucf101_annotations=str(notes)))


def test_extraction_resumes_and_skips_bad_videos(tmp_path, media):
    (media / "videos" / "broken.mp4").write_bytes(b"junk" * 64)
    list_path = media / "videos.txt"
    list_path.write_text("videos/a.avi 0\nvideos/broken.mp4 1\nvideos/b.mp4 2\n")
    out = tmp_path / "frames"
    written, skipped = extract_list(str(list_path), str(media), str(out), str(out / "train.txt"))
    assert (written, skipped) == (2, 1)
    first = out / "videos" / "a" / "img_00001.jpg"
    os.utime(first, (1, 1))
    os.remove(out / "videos" / "b" / "img_00024.jpg")  # a finished folder is trusted, and counted again
    written, skipped = extract_list(str(list_path), str(media), str(out), str(out / "train.txt"), workers=2)
    assert os.path.getmtime(first) == 1
    assert [(r.num_frames, r.label) for r in lists.read_list(str(out / "train.txt"), "frames")] == [(24, 0), (23, 2)]
    assert not [d for d in os.listdir(out / "videos") if ".tmp" in d]
    from tsm_keras.data.decode import BadSampleError
    with pytest.raises(BadSampleError, match="broken.mp4"):
        extract_list(str(list_path), str(media), str(out), str(out / "t.txt"), on_bad_sample="fail")


def test_nothing_to_prepare_says_what_to_pass():
    with pytest.raises(ValueError, match="--prepare_videos_dir"):
        prepare(Config())


def test_app_prepare_mode(tmp_path):
    import subprocess
    import sys

    root = tmp_path / "k"
    write_video(str(root / "train" / "a" / "v.avi"), 4)
    write_video(str(root / "val" / "a" / "w.avi"), 5)
    app = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "app.py")
    run = subprocess.run([sys.executable, app, "--mode=prepare", f"--prepare_videos_dir={root}",
                          f"--frames_dir={tmp_path / 'frames'}"], capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "next: python app.py --mode=train --data_format=frames" in run.stdout
    assert (tmp_path / "frames" / "val_frames.txt").read_text() == "val/a/w 5 0\n"


STHV2_LABELS = {"Moving something up": "0", "Pushing something from left to right": "1",
                "Putting something on a surface": "2"}


def _sthv2_miniature(root, long_names=False):
    """Something-Something V2's layout: `<id>.webm` (VP9, as the real files) and the JSON annotations."""
    import cv2
    import json

    videos, notes = root / "20bn-something-something-v2", root / "annotations"
    notes.mkdir(parents=True)
    # OpenCV's FFmpeg writes VP9 into .webm (it warns about the tag and falls back to the codec's own).
    for video_id, frames in (("11", 4), ("12", 6), ("13", 5), ("21", 7)):
        write_video(str(videos / f"{video_id}.webm"), frames, "VP90")
    assert cv2.VideoCapture(str(videos / "11.webm")).isOpened()
    prefix = "something-something-v2-" if long_names else ""
    entry = lambda i, template, label: {"id": i, "label": label, "template": template, "placeholders": ["x"]}
    (notes / f"{prefix}labels.json").write_text(json.dumps(STHV2_LABELS))
    (notes / f"{prefix}train.json").write_text(json.dumps([
        entry("11", "Putting [something] on a surface", "putting a cup on a table"),
        entry("12", "Moving [something] up", "moving a pen up"),
        entry("13", "Pushing [something] from left to right", "pushing a box from left to right"),
        entry("99", "Moving [something] up", "not downloaded")]))
    (notes / f"{prefix}validation.json").write_text(json.dumps([
        entry("21", "Pushing [something] from left to right", "pushing a phone from left to right")]))
    (notes / f"{prefix}test.json").write_text(json.dumps([{"id": "31"}]))
    return videos, notes


@pytest.mark.parametrize("long_names", [False, True])
def test_sthv2_lists_and_frames(tmp_path, long_names, caplog):
    videos, notes = _sthv2_miniature(tmp_path, long_names)
    frames_dir = tmp_path / "frames"
    outputs = prepare(Config(prepare_videos_dir=str(videos), sthv2_annotations=str(notes),
                             frames_dir=str(frames_dir), data_workers=1))
    train = lists.read_list(str(videos / "train_videos.txt"), "videos", str(videos))
    # Labels are labels.json's indices of the template without brackets (tools/gen_label_sthv2.py).
    assert [(os.path.basename(r.path), r.label) for r in train] == [("11.webm", 2), ("12.webm", 0), ("13.webm", 1)]
    assert "1 of 4 videos not found" in caplog.text  # id 99 is counted, not silently dropped
    names = lists.read_label_map(str(videos / "classes.txt"))
    assert names == list(STHV2_LABELS) == lists.read_label_map(str(next(notes.glob("*labels.json"))))
    frames = lists.read_list(str(frames_dir / "train_frames.txt"), "frames", str(frames_dir))
    assert [(os.path.basename(r.path), r.num_frames, r.label) for r in frames] == [("11", 4, 2), ("12", 6, 0),
                                                                                    ("13", 5, 1)]
    val = lists.read_list(str(frames_dir / "val_frames.txt"), "frames", str(frames_dir))
    assert [(os.path.basename(r.path), r.num_frames, r.label) for r in val] == [("21", 7, 1)]
    assert outputs["train_skipped"] == outputs["val_skipped"] == 0


def test_sthv2_unknown_template_names_the_file_and_entry(tmp_path):
    import json

    videos, notes = _sthv2_miniature(tmp_path)
    (notes / "validation.json").write_text(json.dumps([{"id": "21", "template": "Dropping [something]"}]))
    with pytest.raises(lists.ListFileError, match=r"validation\.json: entry 0 \(id 21\).*Dropping"):
        prepare(Config(prepare_videos_dir=str(videos), sthv2_annotations=str(notes)))
    (notes / "labels.json").write_text('{"Moving something up": "0",\n "Pushing": }')
    with pytest.raises(lists.ListFileError, match=r"labels\.json:2: not valid JSON"):
        prepare(Config(prepare_videos_dir=str(videos), sthv2_annotations=str(notes)))
    (notes / "labels.json").write_text(json.dumps({"Moving something up": "0", "Pushing": "0"}))
    with pytest.raises(lists.ListFileError, match="indices must be 0..1, each once"):
        lists.read_label_map(str(notes / "labels.json"))
