"""Predict mode and the Python API on videos of the embedded dataset (Motion-JPEG .avi via cv2.VideoWriter).

The model is trained in the fixture on the frame folders of 8 videos (one per class; ~15 s) and
predicts from the .avi files: another decode path (OpenCV video vs JPEG files) through the
same evaluation sampling, so the right top-1 for each video checks decoding, sampling, cropping,
normalization and the label map end to end.
"""

import json
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

from tsm_keras.errors import UsageError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    import keras

    from tsm_keras.config import Config
    from tsm_keras.data import load_video_clips
    from tsm_keras.data.synthetic import ensure_synthetic_dataset
    from tsm_keras.models import build_tsm
    from tsm_keras.runs import CONFIG_FILE, LABELS_FILE, WEIGHTS_FILE

    base = tmp_path_factory.mktemp("predict")
    data = ensure_synthetic_dataset(str(base / "synthetic"), seed=0, train_per_class=1, val_per_class=1,
                                    num_frames=12, frame_size=80)
    frame_rows = [line.split() for line in open(data["val_frames_list"])]
    video_rows = [line.split() for line in open(data["val_list"])]
    config = Config(backbone="resnet10", num_classes=8, num_segments=4, image_size=64, scale_size=72, dropout=0.0,
                    data_format="videos", data_root=data["root"], val_list=data["val_list"],
                    label_map=data["label_map"], model_dir=str(base / "run"))
    clips = np.concatenate([load_video_clips(os.path.join(data["root"], row[0]), 4, scale_size=72, image_size=64)
                            for row in frame_rows])
    labels = np.array([int(row[-1]) for row in frame_rows])
    keras.utils.set_random_seed(0)
    model = build_tsm(**config.model_kwargs(normalize_input=True))
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(clips, labels, batch_size=len(labels), epochs=20, verbose=0)
    # The run folder as the training loop writes it.
    os.makedirs(config.model_dir)
    config.save(os.path.join(config.model_dir, CONFIG_FILE))
    with open(os.path.join(config.model_dir, LABELS_FILE), "w") as f:
        f.write("".join(f"{name}\n" for name in data["classes"]))
    model.save_weights(os.path.join(config.model_dir, WEIGHTS_FILE))
    videos = [(os.path.join(data["root"], row[0]), data["classes"][int(row[1])]) for row in video_rows]
    return dict(config=config, videos=videos, classes=data["classes"], base=base, data=data)


@pytest.fixture(scope="module")
def exported(trained_run):
    from tsm_keras.modes import run_export

    config = trained_run["config"].replace(mode="export", weights=trained_run["config"].model_dir,
                                           export_dir=str(trained_run["base"] / "saved_models" / "tsm"), top_k=3)
    assert run_export(config) == 0
    return config.export_dir


def write_mjpg(path, frames_rgb, fps=12):
    height, width = frames_rgb.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    assert writer.isOpened()
    for frame in frames_rgb:
        writer.write(np.ascontiguousarray(frame[..., ::-1]))
    writer.release()
    return str(path)


def read_all_rgb(path):
    capture = cv2.VideoCapture(path)
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame[..., ::-1])
    capture.release()
    return np.stack(frames)


def test_predict_mode_prints_the_right_top1_and_goes_on_after_bad_videos(trained_run, tmp_path, capsys):
    from tsm_keras.modes import run_predict

    broken = tmp_path / "not_a_video.avi"
    broken.write_text("this is not a video\n")
    corrupt = tmp_path / "corrupt_frames"
    corrupt.mkdir()
    for number in range(1, 5):
        (corrupt / f"img_{number:05d}.jpg").write_bytes(b"not a jpeg")
    first_video = trained_run["videos"][0][0]
    short = write_mjpg(tmp_path / "short.avi", read_all_rgb(first_video)[:2])  # 2 frames < 4 segments
    root = trained_run["data"]["root"]
    list_file = tmp_path / "to_predict.txt"
    lines = [f"{os.path.relpath(path, root)} 0" for path, _ in trained_run["videos"]]
    list_file.write_text("\n".join(lines[:4] + [str(broken)] + lines[4:] + [short, str(corrupt)]) + "\n")
    output = tmp_path / "preds.jsonl"
    config = trained_run["config"].replace(mode="predict", weights=trained_run["config"].model_dir,
                                           input=str(list_file), output=str(output), top_k=5)

    assert run_predict(config) == 1  # unreadable videos: reported, the others classified
    captured = capsys.readouterr()
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(records) == 11
    by_video = {r["video"]: r for r in records}
    for path, name in trained_run["videos"]:
        predictions = by_video[path]["predictions"]
        assert len(predictions) == 5 and predictions[0]["label"] == name, (path, predictions[0])
        assert f"1. {predictions[0]['probability']:.4f}  {name}" in captured.out
    assert "not a video" not in by_video[str(broken)].get("predictions", "")
    assert by_video[str(broken)]["error"].startswith(str(broken))
    assert f"error: {broken}" in captured.err and "OpenCV cannot open" in captured.err
    assert len(by_video[short]["predictions"]) == 5  # too short: frames repeated, still classified
    assert by_video[str(corrupt)]["error"].startswith(str(corrupt))
    assert "9/11 videos classified" in captured.out and "2 unreadable" in captured.out
    # The progress line (stderr, not a TTY here): its last state is printed at the end.
    assert "predict: videos 11/11 [" in captured.err and "failed 2" in captured.err


def test_a_list_none_of_whose_paths_exists_is_one_error_naming_the_list(trained_run, tmp_path):
    """A wrong or missing --data_root: one error before any video, not one per line of a long list."""
    from tsm_keras.modes import run_predict

    root = trained_run["data"]["root"]
    list_file = tmp_path / "to_predict.txt"
    list_file.write_text("".join(f"{os.path.relpath(path, root)} 0\n" for path, _ in trained_run["videos"]))
    first = os.path.relpath(trained_run["videos"][0][0], root)
    config = trained_run["config"].replace(mode="predict", weights=trained_run["config"].model_dir,
                                           input=str(list_file), data_root="")
    with pytest.raises(UsageError, match=re.escape(f"{list_file}: none of the {len(trained_run['videos'])} paths "
                                                   f"it names exists (the first: {first}); relative ones are read "
                                                   "from the current folder: pass --data_root=")):
        run_predict(config)
    one = tmp_path / "one.txt"
    one.write_text("hello\n")
    with pytest.raises(UsageError, match=re.escape(f"{one}: the path it names does not exist (hello)")):
        run_predict(config.replace(input=str(one)))
    with pytest.raises(UsageError, match="joined to --data_root=/nowhere"):
        run_predict(config.replace(data_root="/nowhere"))
    assert run_predict(config.replace(data_root=root)) == 0


def test_saved_model_and_keras_predict_the_same(trained_run, exported):
    import tsm_keras

    keras_classifier = tsm_keras.load(trained_run["config"].model_dir)
    served = tsm_keras.load(exported)
    assert type(served).__name__ == "SavedModelVideoClassifier"
    assert served.label_names == keras_classifier.label_names == trained_run["classes"]
    for path, name in trained_run["videos"][:3]:
        a, b = keras_classifier.predict_video(path), served.predict_video(path)
        np.testing.assert_allclose(a["probabilities"], b["probabilities"], atol=1e-5)
        assert a["predictions"][0]["label"] == b["predictions"][0]["label"] == name


def test_predict_frames_and_clips_match_predict_video(trained_run):
    import tsm_keras

    classifier = tsm_keras.load(trained_run["config"].model_dir)
    path, name = trained_run["videos"][5]
    frames = read_all_rgb(path)
    from_file = classifier.predict_video(path)
    from_frames = classifier.predict_frames(frames)
    np.testing.assert_allclose(from_frames["probabilities"], from_file["probabilities"], atol=1e-6)
    assert from_frames["predictions"][0]["label"] == name
    # Already-sampled clips of any size go through the serving preprocessing.
    indices = [int(12 / 4 * (i + 0.5)) for i in range(4)]  # segment centres of 12 frames
    (clip_result,) = classifier.predict_clips(frames[indices][None])
    np.testing.assert_allclose(clip_result["probabilities"], from_file["probabilities"], atol=1e-4)


def test_multi_view_testing(trained_run):
    import tsm_keras

    classifier = tsm_keras.load(trained_run["config"].model_dir, num_clips=2, num_crops=3, top_k=2)
    path, name = trained_run["videos"][2]
    result = classifier.predict_video(path)
    assert result["views"] == 6 and len(result["predictions"]) == 2
    assert result["predictions"][0]["label"] == name


def test_keras_file_and_export_formats_from_a_run(trained_run, tmp_path):
    import keras

    import tsm_keras
    from tsm_keras.loading import load_trained
    from tsm_keras.modes import run_export

    model, _, labels = load_trained(trained_run["config"], trained_run["config"].model_dir)
    model.save(tmp_path / "tsm.keras")
    path, name = trained_run["videos"][6]
    from_file = tsm_keras.load(str(tmp_path / "tsm.keras"), config=trained_run["config"]).predict_video(path)
    assert from_file["predictions"][0]["label"] == name
    config = trained_run["config"].replace(mode="export", weights=trained_run["config"].model_dir,
                                           export_dir=str(tmp_path / "exports"), export_format="tflite",
                                           tflite_quant="float16")
    assert run_export(config) == 0
    assert os.listdir(tmp_path / "exports") == [f"{model.name}_float16.tflite"]
    with pytest.raises(FileExistsError, match="never overwritten"):
        run_export(config)
    assert isinstance(keras.models.load_model(tmp_path / "tsm.keras", compile=False), tsm_keras.TSM)
    with pytest.raises(ValueError, match="export_precision=bfloat16 is for --export_format=saved_model"):
        run_export(config.replace(export_precision="bfloat16"))
    # A bfloat16 SavedModel of the trained run still names the video's class.
    bf16 = config.replace(export_format="saved_model", export_precision="bfloat16",
                          export_dir=str(tmp_path / "bf16"))
    assert run_export(bf16) == 0
    assert tsm_keras.load(bf16.export_dir).predict_video(path)["predictions"][0]["label"] == name


def test_bad_arrays_give_clear_errors(trained_run):
    import tsm_keras

    classifier = tsm_keras.load(trained_run["config"].model_dir)
    with pytest.raises(TypeError, match="uint8 RGB 0-255, got float32"):
        classifier.predict_frames(np.zeros((8, 64, 64, 3), np.float32))
    with pytest.raises(ValueError, match=r"expected \[num_frames, height, width, 3\], got shape \(64, 64, 3\)"):
        classifier.predict_frames(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="clips have 5 frames, the model takes 4"):
        classifier.predict_clips(np.zeros((1, 5, 64, 64, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match="no such SavedModel"):
        tsm_keras.load(str(trained_run["base"] / "missing"))


def test_list_inputs_reads_folders_and_lists(tmp_path):
    from tsm_keras.data import list_inputs

    (tmp_path / "videos").mkdir()
    for name in ("b.avi", "a.mp4", "notes.txt", ".hidden.avi"):
        (tmp_path / "videos" / name).write_text("")
    frames = tmp_path / "videos" / "c_frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "img_00001.jpg"), np.zeros((8, 8, 3), np.uint8))
    assert list_inputs(str(tmp_path / "videos")) == [str(tmp_path / "videos" / n) for n in ("a.mp4", "b.avi",
                                                                                              "c_frames")]
    assert list_inputs(str(frames)) == [str(frames)]  # a frame folder is one video
    # Below it too, in sorted order (videos/<class>/<video>, Kinetics' layout); a frame folder is not searched.
    for name in ("z_class/d.mp4", "m_class/sub/e.webm", "m_class/.f.mp4", ".hidden_class/g.mp4",
                 "c_frames/h.mp4"):
        (tmp_path / "videos" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "videos" / name).write_text("")
    assert list_inputs(str(tmp_path / "videos")) == [str(tmp_path / "videos" / n) for n in (
        "a.mp4", "b.avi", "c_frames", "m_class/sub/e.webm", "z_class/d.mp4")]
    listing = tmp_path / "val.txt"
    listing.write_text("x/my video.avi 3\n\ny/frames_dir 24 7\n/abs/z.mp4\n")
    assert list_inputs(str(listing), data_root="/data") == ["/data/x/my video.avi", "/data/y/frames_dir",
                                                            "/abs/z.mp4"]
    assert list_inputs("single.avi") == ["single.avi"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no video files"):
        list_inputs(str(tmp_path / "empty"))


@pytest.mark.parametrize("source", ["saved_model", "weights"])
def test_app_predict_assumes_frozen_weights_and_gives_the_in_process_scores(trained_run, exported, tmp_path, source):
    """`app.py --mode=predict` runs with oneDNN's frozen-weight caching (app.py sets it: weights never change
    there); its probabilities for every class are the ones this process (no caching) computes."""
    import tsm_keras

    path, name = trained_run["videos"][3]
    model = exported if source == "saved_model" else trained_run["config"].model_dir
    output = tmp_path / "preds.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "TF_ONEDNN_ASSUME_FROZEN_WEIGHTS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    result = subprocess.run([sys.executable, os.path.join(REPO, "app.py"), "--mode=predict", f"--{source}={model}",
                             f"--input={path}", "--top_k=8", f"--output={output}"],
                            capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (record,) = [json.loads(line) for line in output.read_text().splitlines()]
    assert record["video"] == path and len(record["predictions"]) == 8
    assert record["predictions"][0]["label"] == name
    assert f"1. {record['predictions'][0]['probability']:.4f}  {name}" in result.stdout
    if "oneDNN on" in result.stdout:  # an x86 CPU (tsm_keras turns it on): the caching was on too
        assert "frozen weights (TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1)" in result.stdout, result.stdout[-500:]
    expected = tsm_keras.load(model, top_k=8).predict_video(path)
    assert [p["label"] for p in record["predictions"]] == [p["label"] for p in expected["predictions"]]
    np.testing.assert_allclose([p["probability"] for p in record["predictions"]],
                               [p["probability"] for p in expected["predictions"]], atol=2e-5)


def test_pptsm_run_folder_predicts_what_the_model_gives(tiny_pptsm, tmp_path):
    """A run folder whose config.json says backbone=resnet50_vd, convention=paddle: load() rebuilds PP-TSM from
    it and predict_clips (short side to scale_size, centre crop) gives the model's own probabilities."""
    import tsm_keras
    from tsm_keras.config import Config
    from tsm_keras.runs import WEIGHTS_FILE, write_run_files

    config = Config(backbone="resnet50_vd", convention="paddle", num_classes=3, num_segments=2, image_size=40,
                    scale_size=48, dropout=0.0, model_dir=str(tmp_path / "run"))
    write_run_files(config.model_dir, config, ["a", "b", "c"])
    tiny_pptsm.save_weights(os.path.join(config.model_dir, WEIGHTS_FILE))
    classifier = tsm_keras.load(config.model_dir)
    clips = np.random.default_rng(5).integers(0, 256, (2, 2, 48, 48, 3), dtype=np.uint8)
    logits = tiny_pptsm(clips[:, :, 4:44, 4:44].astype(np.float32), training=False).numpy()
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    results = classifier.predict_clips(clips)
    np.testing.assert_allclose([r["probabilities"] for r in results], expected, atol=1e-5)
    assert [r["predictions"][0]["label"] for r in results] == [["a", "b", "c"][i] for i in expected.argmax(-1)]
