"""Online predict (`--mode=predict --online`, `classifier.stream()`) on .mp4 videos of the embedded dataset.

The fixture trains a uni-directional ResNet-10 TSM (8 segments of 40 px) on one 8-frame clip per class
(~10 s, most of it the first step's tracing), so that the streamed last frame, whose mean logits over the whole video are the offline clip
logits, must name the clip's class, and a video and its time reverse (moving right / left) must part. The
smoothed scores are checked against the offline model's per-frame fc outputs (its shifts are
depthwise convolutions over the whole clip, not the streaming buffers) averaged in numpy.
"""

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRAMES, SIZE, SCALE, CROP = 8, 56, 48, 40


def write_mp4(path, frames_bgr, fps=12):
    height, width = frames_bgr.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    assert writer.isOpened()
    for frame in frames_bgr:
        writer.write(np.ascontiguousarray(frame))
    writer.release()
    return str(path)


def read_rgb(path):
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    return np.stack(frames)


def softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.fixture(scope="module")
def online_run(tmp_path_factory):
    import keras

    from tsm_keras.config import Config
    from tsm_keras.data import augment
    from tsm_keras.data.synthetic import SYNTHETIC_CLASSES, generate_video
    from tsm_keras.models import build_tsm
    from tsm_keras.runs import WEIGHTS_FILE, write_run_files

    base = tmp_path_factory.mktemp("online")
    config = Config(backbone="resnet10", shift="unidirectional", num_classes=8, num_segments=FRAMES,
                    image_size=CROP, scale_size=SCALE, dropout=0.0, model_dir=str(base / "run"))
    videos = {}
    (base / "videos").mkdir()
    clips = []
    for label, name in enumerate(SYNTHETIC_CLASSES):
        frames_bgr = generate_video(label, seed=0, split="val", index=0, num_frames=FRAMES, frame_size=SIZE)
        videos[name] = write_mp4(base / "videos" / f"{name}.mp4", frames_bgr)
        # What evaluation makes of the decoded video: all 8 frames (8 segments), short side 48, centre crop 40.
        clips.append(augment.eval_views(read_rgb(videos[name]), 1, 1, SCALE, CROP).numpy()[0])
    keras.utils.set_random_seed(0)
    model = build_tsm(**config.model_kwargs(normalize_input=True))
    model.compile(keras.optimizers.Adam(2e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(np.stack(clips).astype(np.float32), np.arange(8), batch_size=8, epochs=12, verbose=0)
    write_run_files(config.model_dir, config, SYNTHETIC_CLASSES)
    model.save_weights(os.path.join(config.model_dir, WEIGHTS_FILE))
    return dict(config=config, model=model, videos=videos, base=base)


def offline_frame_logits(model, frames):
    """The offline model's per-frame fc outputs `[T, classes]` on evaluation-cropped frames (T = its segments)."""
    import keras

    from tsm_keras.data import augment

    clip = augment.eval_views(frames, 1, 1, SCALE, CROP).numpy().astype(np.float32)
    frame_scores = keras.Model(model.input, model.get_layer("fc").output)
    return frame_scores(clip, training=False).numpy().reshape(len(frames), -1)


def test_app_online_prints_per_frame_labels_and_ends_on_the_right_class(online_run, tmp_path):
    folder = tmp_path / "two"
    folder.mkdir()
    for name in ("moving_right", "moving_left"):  # a video and its time reverse
        os.symlink(online_run["videos"][name], folder / f"{name}.mp4")
    output = tmp_path / "online.jsonl"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, os.path.join(REPO, "app.py"), "--mode=predict", "--online",
                             f"--weights={online_run['config'].model_dir}", f"--input={folder}", "--online_every=3",
                             f"--output={output}"], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in output.read_text().splitlines()]
    for name in ("moving_left", "moving_right"):
        path = str(folder / f"{name}.mp4")
        mine = [r for r in records if r["video"] == path]
        assert [r["frame"] for r in mine] == [3, 6, 8]  # every 3rd frame, and the last
        assert [r["history"] for r in mine] == [3, 6, 8]  # default history 12 > 8 frames: all so far
        assert mine[-1]["predictions"][0]["label"] == name
        printed = [line for line in result.stdout.splitlines() if line.startswith("  frame")]
        assert f"{path}: {name} {mine[-1]['predictions'][0]['probability']:.4f} after 8 frames" in result.stdout
        assert any(line.split()[1:4] == ["8", f"{mine[-1]['predictions'][0]['probability']:.4f}", name]
                   and line.endswith(" ms") for line in printed), printed
    assert result.stdout.count("frame 1, the warm-up, excluded") == 2
    assert "latency per frame: median" in result.stdout and "over 7 frames" in result.stdout
    assert "2/2 videos streamed" in result.stdout


def test_online_stride_streams_every_sth_frame_like_the_offline_model_on_those_frames(online_run, tmp_path):
    """--online_stride=2 on an 8-frame video streams frames 1, 3, 5, 7: the last smoothed scores are the
    offline model's clip scores for those 4 frames as 4 segments (same weights, T=4)."""
    from tsm_keras.models import build_tsm

    name = "moving_right"
    output = tmp_path / "stride.jsonl"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, os.path.join(REPO, "app.py"), "--mode=predict", "--online",
                             f"--weights={online_run['config'].model_dir}", f"--input={online_run['videos'][name]}",
                             "--online_stride=2", "--top_k=8", f"--output={output}"],
                            capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["frame"] for r in records] == [1, 3, 5, 7]  # the video's frame numbers
    assert [r["streamed"] for r in records] == [1, 2, 3, 4] == [r["history"] for r in records]
    assert "after 4 of 8 (stride 2) frames" in result.stdout
    config = online_run["config"]
    four = build_tsm(**{**config.model_kwargs(normalize_input=True), "num_segments": 4})
    four.set_weights(online_run["model"].get_weights())
    logits = offline_frame_logits(four, read_rgb(online_run["videos"][name])[::2])
    expected = softmax(logits.mean(0))
    got = np.zeros(8)
    for p in records[-1]["predictions"]:
        got[p["index"]] = p["probability"]
    np.testing.assert_allclose(got, expected, atol=2e-4)
    # Not the same as streaming all 8 frames: the stride changed what the shifts saw.
    every_frame = offline_frame_logits(online_run["model"], read_rgb(online_run["videos"][name])).mean(0)
    assert np.abs(np.log(softmax(every_frame)) - np.log(expected)).max() > 0.05


@pytest.mark.parametrize("history", [1, 3])
def test_stream_scores_are_the_mean_of_the_last_k_offline_frame_logits(online_run, history):
    import tsm_keras

    classifier = tsm_keras.load(online_run["config"].model_dir)
    frames = read_rgb(online_run["videos"]["growing"])
    frames = np.stack([cv2.resize(f, (84, SIZE), interpolation=cv2.INTER_AREA) for f in frames])  # any size
    logits = offline_frame_logits(online_run["model"], frames)
    stream = classifier.stream(history=history, top_k=3)
    streamed = [stream.update(frame) for frame in frames]
    for t, result in enumerate(streamed):
        expected = softmax(logits[max(0, t + 1 - history):t + 1].mean(0))
        # As log-probabilities (logits up to a constant): a trained model's top probability saturates near 1.
        np.testing.assert_allclose(np.log(result["probabilities"]), np.log(expected), atol=1e-3,
                                   err_msg=f"frame {t + 1}")
        assert result["frame"] == t + 1 and result["history"] == min(t + 1, history)
        assert len(result["predictions"]) == 3 and result["predictions"][0]["index"] == int(expected.argmax())
    # The history is what differs between the two parametrizations: K=1 is the frame alone.
    other = softmax(logits[-(4 - history):].mean(0))  # K=3 for history 1, K=1 for history 3
    assert np.abs(np.log(streamed[-1]["probabilities"]) - np.log(other)).max() > 0.1
    stream.reset()
    np.testing.assert_allclose(stream.update(frames[0])["probabilities"], streamed[0]["probabilities"], atol=1e-6)
    with pytest.raises(TypeError, match="uint8"):
        stream.update(frames[0].astype(np.float32))


def test_streaming_export_streams_like_the_run(online_run, tmp_path):
    import tsm_keras
    from tsm_keras.errors import UsageError
    from tsm_keras.modes import run_export

    config = online_run["config"]
    export = config.replace(mode="export", weights=config.model_dir, streaming=True,
                            export_dir=str(tmp_path / "online_export"))
    assert run_export(export) == 0
    served = tsm_keras.load(export.export_dir)
    assert type(served).__name__ == "StreamingSavedModelVideoClassifier"
    frames = read_rgb(online_run["videos"]["shrinking"])
    a, b = tsm_keras.load(config.model_dir).stream(history=4), served.stream(history=4)
    for frame in frames:
        keras_result, served_result = a.update(frame), b.update(frame)
        np.testing.assert_allclose(np.log(served_result["probabilities"]), np.log(keras_result["probabilities"]),
                                   atol=1e-4)
    assert served_result["predictions"][0]["label"] == "shrinking"
    with pytest.raises(UsageError, match="streaming export.*--online"):
        served.predict_video(online_run["videos"]["shrinking"])


def test_bidirectional_and_tsn_models_are_refused(online_run, tmp_path, capsys):
    import tsm_keras
    from tsm_keras.errors import UsageError
    from tsm_keras.models import build_tsm
    from tsm_keras.modes import dispatch
    from tsm_keras.runs import WEIGHTS_FILE, write_run_files

    runs = {}
    for shift in ("bidirectional", "none"):
        runs[shift] = config = online_run["config"].replace(shift=shift, model_dir=str(tmp_path / shift))
        write_run_files(config.model_dir, config, [str(i) for i in range(8)])
        build_tsm(**config.model_kwargs()).save_weights(os.path.join(config.model_dir, WEIGHTS_FILE))
    # The mode: one `error:` line (exit status 2) that says what to train instead.
    predict = runs["bidirectional"].replace(mode="predict", online=True, weights=runs["bidirectional"].model_dir,
                                            input=online_run["videos"]["growing"])
    assert dispatch("predict", predict) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bi-directional" in err and "--shift=unidirectional" in err
    with pytest.raises(UsageError, match=r"TSN \(--shift=none\).*--shift=unidirectional"):
        tsm_keras.load(runs["none"].model_dir).stream()


def test_online_reports_bad_and_missing_videos_by_name_and_goes_on(online_run, tmp_path, capsys):
    from tsm_keras.modes import run_predict

    broken = tmp_path / "broken.mp4"
    broken.write_text("not a video\n")
    missing = tmp_path / "missing.mp4"
    good = online_run["videos"]["moving_down"]
    listing = tmp_path / "list.txt"
    listing.write_text(f"{missing}\n{broken}\n{good}\n")
    config = online_run["config"].replace(mode="predict", online=True, weights=online_run["config"].model_dir,
                                          input=str(listing), online_history=8)
    assert run_predict(config) == 1
    captured = capsys.readouterr()
    assert f"error: {missing}: video file not found" in captured.err
    assert f"error: {broken}: OpenCV cannot open the video" in captured.err
    assert f"{good}: moving_down " in captured.out and "1/3 videos streamed" in captured.out
    with pytest.raises(ValueError, match="--online_every must be >= 1"):
        run_predict(config.replace(online_every=0))
    with pytest.raises(ValueError, match="--online_stride must be >= 1"):
        run_predict(config.replace(online_stride=0))
