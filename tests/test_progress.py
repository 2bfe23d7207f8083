"""Progress of the long modes, as a log (not a TTY) shows it: eval, prepare, tfrecords (predict: test_predict)."""

import io
import os
import sys

import pytest

from tsm_keras.progress import ProgressLine

HERE = os.path.dirname(os.path.abspath(__file__))


def test_line_every_interval_and_always_the_last():
    stream = io.StringIO()
    line = ProgressLine("eval: videos", 4, stream=stream, every=3600)
    for done in range(1, 5):
        line.update(done, top1=0.5)
    line.note("warning: a bad video")
    lines = stream.getvalue().splitlines()
    # The first update and the last (complete) one; nothing redrawn (no carriage return) off a TTY.
    assert [l.split(" [")[0] for l in lines[:2]] == ["eval: videos 1/4", "eval: videos 4/4"]
    assert "ETA 0:00:00" in lines[1] and "top1 0.5000" in lines[1] and "\r" not in stream.getvalue()
    assert lines[2] == "warning: a bad video"
    every = io.StringIO()
    line = ProgressLine("x", 3, stream=every, every=0)
    for done in range(1, 4):
        line.update(done)
    assert len(every.getvalue().splitlines()) == 3


def test_eval_reports_videos_views_eta_and_running_top1(tiny_tsm, capsys, monkeypatch):
    sys.path.insert(0, os.path.join(HERE, "training"))
    import fake_data

    from tsm_keras.config import Config
    from tsm_keras.evaluation import Evaluator

    monkeypatch.setenv("TSM_PROGRESS_SECONDS", "0")
    config = Config(num_classes=3, num_segments=2, image_size=32, scale_size=32, eval_batch_size=4)
    metrics = Evaluator(tiny_tsm, config, fake_data, progress=True).run()
    err = capsys.readouterr().err.splitlines()
    lines = [line for line in err if line.startswith("eval (1 view/video): videos ")]
    assert [line.split(" [")[0].rsplit(" ", 1)[1] for line in lines] == ["4/16", "8/16", "12/16", "16/16"]
    assert f"top1 {metrics['top1']:.4f}" in lines[-1] and "ETA" in lines[0]


def test_prepare_reports_bad_videos_as_they_happen(tmp_path, capsys, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("data_helpers", os.path.join(HERE, "data", "conftest.py"))
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    from tsm_keras.data.prepare import extract_list

    monkeypatch.setenv("TSM_PROGRESS_SECONDS", "0")
    names = ["a.avi", "bad.avi", "c.avi", "d.avi"]
    for name in names:
        if name == "bad.avi":
            (tmp_path / name).write_text("not a video")
        else:
            helpers.write_video(str(tmp_path / name), 5)
    (tmp_path / "videos.txt").write_text("".join(f"{name} 0\n" for name in names))
    written, skipped = extract_list(str(tmp_path / "videos.txt"), str(tmp_path), str(tmp_path / "frames"),
                                    str(tmp_path / "frames.txt"), workers=2)
    assert (written, skipped) == (3, 1)
    err = capsys.readouterr().err.splitlines()
    progress = [i for i, line in enumerate(err) if line.startswith("prepare videos.txt: videos ")]
    warning = [i for i, line in enumerate(err) if line.startswith("warning: skipping") and "bad.avi" in line]
    assert len(progress) == 4 and len(warning) == 1
    assert progress[0] < warning[0] < progress[1]  # reported when its turn came, not after the last video
    assert "bad 1" in err[progress[-1]] and "frames/s" in err[progress[-1]]


def test_tfrecords_reports_shards_and_videos(tmp_path, capsys, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("data_helpers", os.path.join(HERE, "data", "conftest.py"))
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    from tsm_keras.data.tfrecord_writer import convert_list

    monkeypatch.setenv("TSM_PROGRESS_SECONDS", "0")
    for i in range(3):
        helpers.write_frames(str(tmp_path / f"v{i}"), 4)
    (tmp_path / "frames.txt").write_text("".join(f"v{i} 4 0\n" for i in range(3)))
    convert_list(str(tmp_path / "frames.txt"), "frames", str(tmp_path), str(tmp_path / "out"), "train",
                 videos_per_shard=1)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("tfrecords train: shards ")]
    assert [line.split(" [")[0].rsplit(" ", 1)[1] for line in lines] == ["1/3", "2/3", "3/3"]
    assert "videos 3/3" in lines[-1]
