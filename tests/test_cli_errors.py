"""User errors through `python app.py`: one `error: <message>` line and status 2, no traceback; `--debug` shows
the traceback. A bug (not a UserError) keeps its traceback.

The `--debug` case is a real `python app.py` process; the others run in one helper process
(tests/run_app_cases.py: app.py's main per case, flags parsed afresh, stdout/stderr and exit status captured
per case), so TensorFlow's import is paid twice rather than once per case.
"""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APP = os.path.join(REPO, "app.py")
CASES_RUNNER = os.path.join(REPO, "tests", "run_app_cases.py")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_tsm):
    """Every case run, the `--debug` one in its own process alongside the others' batch."""
    d = tmp_path_factory.mktemp("cli")
    tiny_tsm.save(str(d / "tiny.keras"))  # 2 segments of 32 px
    (d / "afile").write_text("a file where the export folder should go")
    (d / "bad.txt").write_text("clip_a 12 0\nclip_b twelve 1\n")
    (d / "labels3.txt").write_text("x\ny\nz\n")
    (d / "weights.bin").write_bytes(b"not a checkpoint")
    (d / "nowhere.txt").write_text("clip_a 12 0\nclip_b 12 1\n")  # frame folders that are not there
    (d / "damaged").mkdir()
    (d / "damaged" / "config.json").write_text('{"backbone": "resnet10",\n "num_classes": 2,,\n}')
    (d / "damaged" / "model.weights.h5").write_bytes(b"")
    train = ["--mode=train", "--data_format=frames", f"--data_root={d}", "--num_classes=3"]
    cases = {
        "missing list": train + [f"--train_list={d}/nope.txt", f"--model_dir={d}/r1"],
        "malformed line": train + [f"--train_list={d}/bad.txt", f"--model_dir={d}/r2"],
        "class count": train + [f"--train_list={d}/bad.txt", f"--label_map={d}/labels3.txt", "--num_classes=5",
                                f"--model_dir={d}/r3"],
        "unknown format": ["--mode=convert", f"--source={d}/weights.bin", f"--output={d}/x.keras"],
        "flag combination": ["--mode=export", "--export_format=onnx", "--export_precision=bfloat16"],
        "streaming precision": ["--mode=export", "--streaming", "--export_precision=bfloat16"],
        "damaged run config": ["--mode=eval", f"--model_dir={d}/damaged"],
        "not a SavedModel": ["--mode=predict", f"--saved_model={d}/damaged", f"--input={d}/nowhere.txt"],
        "path in the way": ["--mode=export", f"--weights={d}/tiny.keras", f"--export_dir={d}/afile"],
        "clip shape of the model": ["--mode=eval", f"--weights={d}/tiny.keras", f"--val_list={d}/nowhere.txt",
                                    "--data_format=frames", "--num_classes=3"],
        # Without the streak check, the repeated training dataset dropped sample after sample and never ended.
        "nothing readable": train + [f"--train_list={d}/nowhere.txt", f"--model_dir={d}/r4", "--num_classes=2",
                                     "--backbone=resnet10", "--image_size=32", "--num_segments=2", "--batch_size=2",
                                     "--precision=float32"],
        "bad sample, fail policy": train + [f"--train_list={d}/nowhere.txt", f"--model_dir={d}/r5", "--num_classes=2",
                                            "--backbone=resnet10", "--image_size=32", "--num_segments=2",
                                            "--batch_size=2", "--precision=float32", "--on_bad_sample=fail"],
        "debug": ["--mode=convert", f"--source={d}/weights.bin", f"--output={d}/x.keras", "--debug"],
    }
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    debug = subprocess.Popen([sys.executable, APP, *cases.pop("debug")], cwd=d, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    (d / "cases.json").write_text(json.dumps(cases))
    batch = subprocess.run([sys.executable, CASES_RUNNER, str(d / "cases.json"), str(d / "results.json")], cwd=d,
                           env=env, capture_output=True, text=True, timeout=300)
    assert batch.returncode == 0, (batch.stdout + batch.stderr)[-3000:]
    results = {name: tuple(result) for name, result in json.loads((d / "results.json").read_text()).items()}
    out, err = debug.communicate(timeout=300)
    results["debug"] = (debug.returncode, out, err)
    return d, results


@pytest.mark.parametrize("case, message", [
    ("missing list", "list file {d}/nope.txt not found"),
    ("malformed line", "{d}/bad.txt:2: "),
    ("class count", "the label map has 3 classes but --num_classes=5"),
    ("unknown format", "{d}/weights.bin: unknown weights format"),
    ("flag combination", "--export_precision=bfloat16 is for --export_format=saved_model"),
    ("streaming precision", "--streaming exports float32 only"),
    ("damaged run config", "{d}/damaged/config.json:2: not valid JSON"),
    ("not a SavedModel", "{d}/damaged: no saved_model.pb there nor in a numbered version folder below it"),
    ("path in the way", "{d}/afile: File exists; check the paths given (--debug shows where it failed)"),
    ("clip shape of the model", "{d}/tiny.keras takes clips of 2 segments of 32 px, not 8 of 224 px: evaluate it "
                                "with --num_segments=2 --image_size=32 (and a --scale_size"),
    ("nothing readable", "no sample of an epoch, or 500 in a row, could be read (the last ones are named above): "
                         "check --data_root"),
    ("bad sample, fail policy", "cannot read frame (No such file or directory) (--on_bad_sample=fail"),
])
def test_user_error_is_one_line_and_status_2(runs, case, message):
    d, results = runs
    status, out, err = results[case]
    assert status == 2, (out, err)
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message.format(d=d) in errors[0], err
    assert "Traceback" not in err + out


def test_debug_shows_the_traceback(runs):
    _, results = runs
    status, out, err = results["debug"]
    assert status != 0 and "Traceback" in err and "ConversionError" in err


def test_no_lock_is_left_behind_by_a_failed_start(runs):
    d, _ = runs
    assert os.path.isdir(d / "r1") and not os.path.exists(d / "r1" / ".lock")


def test_dispatch_keeps_the_traceback_of_a_bug_and_reports_a_path_error_in_one_line(monkeypatch, capsys, tmp_path):
    from tsm_keras import modes

    def bug(config):
        raise RuntimeError("a bug")

    def in_the_way(config):
        os.makedirs(tmp_path / "afile" / "sub")

    def not_about_a_path(config):
        raise OSError(5, "Input/output error")

    (tmp_path / "afile").write_text("x")
    monkeypatch.setitem(modes.MODES, "bug", bug)
    monkeypatch.setitem(modes.MODES, "in_the_way", in_the_way)
    monkeypatch.setitem(modes.MODES, "io", not_about_a_path)
    with pytest.raises(RuntimeError, match="a bug"):
        modes.dispatch("bug", None)
    with pytest.raises(OSError, match="Input/output error"):
        modes.dispatch("io", None)
    assert modes.dispatch("in_the_way", None) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'afile' / 'sub'}: Not a directory; check the paths given " \
                                      "(--debug shows where it failed)\n"
    with pytest.raises(NotADirectoryError):
        modes.dispatch("in_the_way", None, debug=True)




def test_no_skip_warning_follows_the_error_line(monkeypatch, caplog):
    """app.py's process ends after `error: ...` while the input pipeline's threads may still read: their skip
    warnings stop first (`ending=True`); a dispatch inside a longer process keeps them."""
    from tsm_keras import modes
    from tsm_keras.data.bad_samples import BAD_SAMPLES, BadSampleError, NothingReadableError

    def unreadable(config):
        raise NothingReadableError("nothing could be read")

    monkeypatch.setitem(modes.MODES, "unreadable", unreadable)
    try:
        BAD_SAMPLES.reset()
        assert modes.dispatch("unreadable", None) == 2
        BAD_SAMPLES.record(BadSampleError("/data/before.mp4", "missing"))
        assert modes.dispatch("unreadable", None, ending=True) == 2
        BAD_SAMPLES.record(BadSampleError("/data/after.mp4", "missing"))
        BAD_SAMPLES.record_unknown(3, "dropped by tf.data")
        assert "before.mp4" in caplog.text and "after.mp4" not in caplog.text and "3 bad" not in caplog.text
        assert BAD_SAMPLES.total == 5  # still counted
    finally:
        BAD_SAMPLES.reset()
