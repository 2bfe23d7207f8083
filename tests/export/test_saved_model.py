"""SavedModel export: fresh-process loading without tsm_keras, signatures, saved_model_cli, versioning."""

import json
import os
import subprocess
import sys
import textwrap
import time

import cv2
import numpy as np
import pytest

from export_fixtures import IMAGE_SIZE, LABELS, NUM_SEGMENTS, SCALE_SIZE

SAVED_MODEL_CLI = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")


def softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.fixture(scope="module")
def exported(tiny_tsm, tmp_path_factory):
    from tsm_keras.export.saved_model import export_saved_model

    export_dir = tmp_path_factory.mktemp("saved_models") / "tsm"
    path = export_saved_model(tiny_tsm, str(export_dir), label_names=LABELS, scale_size=SCALE_SIZE, top_k=3)
    return path


# Runs in a fresh interpreter with `-I` (no cwd, no PYTHONPATH on sys.path) and tsm_keras blocked outright.
FRESH_PROCESS = textwrap.dedent("""
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "tsm_keras":
                raise ImportError("tsm_keras must not be imported here")
    sys.meta_path.insert(0, Block())
    import numpy as np, tensorflow as tf
    saved_model_dir, inputs_path, outputs_path = sys.argv[1:4]
    inputs = np.load(inputs_path)
    loaded = tf.saved_model.load(saved_model_dir)
    default = loaded.signatures["serving_default"](frames=tf.constant(inputs["frames"]))
    clips = loaded.signatures["serving_clips"](clips=tf.constant(inputs["clips"]))
    np.savez(outputs_path, **{f"default_{k}": v.numpy() for k, v in default.items()},
             **{f"clips_{k}": v.numpy() for k, v in clips.items()})
    assert not any(m.startswith("tsm_keras") for m in sys.modules)
""")


def run_fresh(saved_model_dir, tmp_path, **inputs):
    np.savez(tmp_path / "inputs.npz", **inputs)
    script = tmp_path / "fresh.py"
    script.write_text(FRESH_PROCESS)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    result = subprocess.run([sys.executable, "-I", str(script), saved_model_dir, str(tmp_path / "inputs.npz"),
                             str(tmp_path / "outputs.npz")], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(np.load(tmp_path / "outputs.npz", allow_pickle=True))


def test_fresh_process_without_tsm_keras_matches_keras(exported, tiny_tsm, clips, keras_logits, tmp_path):
    # Frames whose short side already is scale_size: the serving preprocessing is then a pure centre
    # crop, so the reference is a numpy slice fed to the Keras model.
    rng = np.random.default_rng(2)
    frames = rng.integers(0, 256, (2, NUM_SEGMENTS, SCALE_SIZE, 96, 3), dtype=np.uint8)
    top, left = (SCALE_SIZE - IMAGE_SIZE) // 2, (96 - IMAGE_SIZE) // 2
    cropped = frames[:, :, top:top + IMAGE_SIZE, left:left + IMAGE_SIZE].astype(np.float32)
    expected_frames = softmax(tiny_tsm(cropped, training=False).numpy())

    out = run_fresh(exported, tmp_path, frames=frames, clips=clips)

    scale = max(1.0, np.abs(keras_logits).max())
    np.testing.assert_allclose(out["clips_logits"], keras_logits, atol=1e-5 * scale, rtol=0)
    np.testing.assert_allclose(out["clips_probabilities"], softmax(keras_logits), atol=1e-6)
    np.testing.assert_allclose(out["default_probabilities"], expected_frames, atol=1e-6)
    top3 = np.argsort(-expected_frames, axis=1)[:, :3]
    np.testing.assert_array_equal(out["default_top_k_indices"], top3)
    assert out["default_top_k_labels"].tolist() == [[LABELS[i].encode() for i in row] for row in top3]


def test_serving_default_resizes_any_size_like_opencv(exported, tiny_tsm):
    import tensorflow as tf

    rng = np.random.default_rng(3)
    # Smooth content: bilinear kernels then agree to the uint8 rounding.
    base = cv2.resize(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), (160, 120), interpolation=cv2.INTER_CUBIC)
    frames = np.stack([np.roll(base, 3 * t, axis=1) for t in range(NUM_SEGMENTS)])[None]  # [1, T, 120, 160, 3]
    # Independent reference: OpenCV's bilinear resize (short side 120 -> 72, long 160 -> 96), numpy crop.
    resized = np.stack([cv2.resize(f, (96, SCALE_SIZE), interpolation=cv2.INTER_LINEAR) for f in frames[0]])
    crop = resized[:, 4:4 + IMAGE_SIZE, 16:16 + IMAGE_SIZE].astype(np.float32)[None]
    expected = softmax(tiny_tsm(crop, training=False).numpy())

    loaded = tf.saved_model.load(exported)
    out = loaded.signatures["serving_default"](frames=tf.constant(frames))
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=2e-3)
    assert out["top_k_indices"].numpy()[0, 0] == expected.argmax()


def test_index_names_without_label_map_and_metadata(tiny_tsm, tmp_path):
    import tensorflow as tf

    from tsm_keras.export.saved_model import export_saved_model, read_export_metadata

    path = export_saved_model(tiny_tsm, str(tmp_path / "m"), scale_size=SCALE_SIZE, top_k=10)
    loaded = tf.saved_model.load(path)
    frames = np.zeros((1, NUM_SEGMENTS, SCALE_SIZE, SCALE_SIZE, 3), np.uint8)
    out = loaded.signatures["serving_default"](frames=tf.constant(frames))
    labels = [b.decode() for b in out["top_k_labels"].numpy()[0]]
    assert labels == [str(i) for i in out["top_k_indices"].numpy()[0]]
    assert len(labels) == len(LABELS)  # top_k capped at the class count
    metadata = read_export_metadata(path)
    assert metadata["label_names"] == ["0", "1", "2", "3", "4"]
    assert (metadata["num_segments"], metadata["image_size"], metadata["scale_size"]) == (4, 64, SCALE_SIZE)


def test_normalization_in_graph_for_a_model_that_does_not_normalize(tiny_tsm, clips, keras_logits, tmp_path):
    """A `normalize_input=False` model gets ImageNet normalization added in the serving graph."""
    import tensorflow as tf

    from tsm_keras import build_tsm
    from tsm_keras.export.saved_model import export_saved_model

    bare = build_tsm(len(LABELS), num_segments=NUM_SEGMENTS, backbone="resnet10", image_size=IMAGE_SIZE,
                     dropout=0.0, normalize_input=False)
    bare.set_weights(tiny_tsm.get_weights())
    path = export_saved_model(bare, str(tmp_path / "bare"), label_names=LABELS, scale_size=SCALE_SIZE)
    out = tf.saved_model.load(path).signatures["serving_clips"](clips=tf.constant(clips))
    np.testing.assert_allclose(out["logits"].numpy(), keras_logits, atol=1e-5 * np.abs(keras_logits).max())


def test_wrong_dtype_and_rank_are_rejected_by_the_signatures(exported):
    import tensorflow as tf

    loaded = tf.saved_model.load(exported)
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError), match="uint8"):
        loaded.signatures["serving_default"](frames=tf.zeros((1, NUM_SEGMENTS, 72, 72, 3), tf.float32))
    message = r"Shape of tensor frames .* is not compatible with expected shape \[\?,4,\?,\?,3\]"
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        loaded.signatures["serving_default"](frames=tf.zeros((NUM_SEGMENTS, 72, 72, 3), tf.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        loaded.signatures["serving_default"](frames=tf.zeros((1, NUM_SEGMENTS + 1, 72, 72, 3), tf.uint8))
    clips_message = r"tensor clips \[1,4,72,72,3\] .* expected shape \[\?,4,64,64,3\]"
    with pytest.raises(tf.errors.InvalidArgumentError, match=clips_message):
        loaded.signatures["serving_clips"](clips=tf.zeros((1, NUM_SEGMENTS, 72, 72, 3), tf.float32))
    # The restored endpoint functions check the declared spec before running.
    with pytest.raises((TypeError, ValueError)):
        loaded.serving_default(tf.zeros((NUM_SEGMENTS, 72, 72, 3), tf.uint8))


def test_saved_model_cli_show_and_run(exported, clips, keras_logits, tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    show = subprocess.run([SAVED_MODEL_CLI, "show", "--dir", exported, "--all"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert show.returncode == 0, show.stderr[-2000:]
    for needle in ("signature_def['serving_default']", "signature_def['serving_clips']", "inputs['frames']",
                   "DT_UINT8", "(-1, 4, -1, -1, 3)", "outputs['top_k_labels']", "DT_STRING",
                   "outputs['probabilities']", "inputs['clips']", "(-1, 4, 64, 64, 3)"):
        assert needle in show.stdout, needle
    np.save(tmp_path / "clips.npy", clips)
    outdir = tmp_path / "out"
    run = subprocess.run([SAVED_MODEL_CLI, "run", "--dir", exported, "--tag_set", "serve", "--signature_def",
                          "serving_clips", "--inputs", f"clips={tmp_path / 'clips.npy'}", "--outdir", str(outdir)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    np.testing.assert_allclose(np.load(outdir / "logits.npy"), keras_logits, atol=1e-5 * np.abs(keras_logits).max())
    labels = np.load(outdir / "top_k_labels.npy", allow_pickle=True)
    assert [x.decode() if isinstance(x, bytes) else x for x in labels[0]] == \
        [LABELS[i] for i in np.argsort(-keras_logits[0])[:3]]


def _archive_class():
    import keras

    return type(keras.export.ExportArchive())  # the backend's class (the facade's __new__ returns it)


def fake_write_out(self, filepath, *args, **kwargs):
    """Stands in for the (seconds-long) real write: these tests are about folders, not graphs."""
    os.makedirs(filepath)
    with open(os.path.join(filepath, "saved_model.pb"), "w") as f:
        f.write(str(time.time()))


def test_versions_increment_and_are_never_overwritten(tiny_tsm, tmp_path, monkeypatch):
    from tsm_keras.export.saved_model import export_saved_model, list_versions, resolve_saved_model_dir

    monkeypatch.setattr(_archive_class(), "write_out", fake_write_out)
    export_dir = tmp_path / "tsm"
    first = export_saved_model(tiny_tsm, str(export_dir), label_names=LABELS, scale_size=SCALE_SIZE)
    content = (export_dir / "1" / "saved_model.pb").read_text()
    second = export_saved_model(tiny_tsm, str(export_dir), label_names=LABELS, scale_size=SCALE_SIZE)
    assert (os.path.basename(first), os.path.basename(second)) == ("1", "2")
    assert list_versions(str(export_dir)) == [1, 2]
    assert resolve_saved_model_dir(str(export_dir)) == second  # the one TF Serving would serve
    with pytest.raises(FileExistsError, match="never overwritten"):
        export_saved_model(tiny_tsm, str(export_dir), label_names=LABELS, scale_size=SCALE_SIZE, version=1)
    assert (export_dir / "1" / "saved_model.pb").read_text() == content
    assert os.path.basename(export_saved_model(tiny_tsm, str(export_dir), scale_size=SCALE_SIZE, version=7)) == "7"
    assert sorted(os.listdir(export_dir)) == ["1", "2", "7"]  # no temporary folder left behind
    assert json.loads((export_dir / "7" / "assets.extra" / "tsm_export.json").read_text())["num_classes"] == 5


def test_written_aside_then_renamed_and_cleaned_up_on_failure(tiny_tsm, tmp_path, monkeypatch):
    from tsm_keras.export.saved_model import export_saved_model

    export_dir = tmp_path / "tsm"
    seen = {}

    def watching_write_out(self, filepath, *args, **kwargs):
        seen["tmp"] = os.path.basename(filepath)
        seen["visible_during_write"] = sorted(n for n in os.listdir(export_dir) if n.isdigit())
        fake_write_out(self, filepath)
        os.makedirs(export_dir / "1")  # another exporter took version 1 meanwhile (still writing)
        (export_dir / "1" / "busy").write_text("")

    monkeypatch.setattr(_archive_class(), "write_out", watching_write_out)
    path = export_saved_model(tiny_tsm, str(export_dir), label_names=LABELS, scale_size=SCALE_SIZE)
    assert seen["tmp"].startswith(".tmp-") and seen["visible_during_write"] == []
    assert os.path.basename(path) == "2" and os.listdir(export_dir / "1") == ["busy"]

    def failing_write_out(self, filepath, *args, **kwargs):
        os.makedirs(filepath)
        raise RuntimeError("disk full")

    monkeypatch.setattr(_archive_class(), "write_out", failing_write_out)
    with pytest.raises(RuntimeError, match="disk full"):
        export_saved_model(tiny_tsm, str(export_dir), label_names=LABELS, scale_size=SCALE_SIZE)
    assert sorted(os.listdir(export_dir)) == ["1", "2"]


def test_label_count_must_match_classes(tiny_tsm, tmp_path):
    from tsm_keras.export.saved_model import export_saved_model

    with pytest.raises(ValueError, match="5 classes"):
        export_saved_model(tiny_tsm, str(tmp_path / "x"), label_names=LABELS[:3], scale_size=SCALE_SIZE)
    with pytest.raises(ValueError, match="scale_size"):
        export_saved_model(tiny_tsm, str(tmp_path / "x"), scale_size=IMAGE_SIZE - 1)


def test_bfloat16_export_runs_bfloat16_convs_and_keeps_the_predictions(tiny_tsm, clips, keras_logits, tmp_path):
    """`precision="bfloat16"`: every conv of the exported graph is bfloat16; outputs stay float32 and
    close to the float32 model's (bfloat16 keeps 8 bits of mantissa: ~0.4 % per rounding)."""
    from tensorflow.core.framework import types_pb2
    from tensorflow.core.protobuf import saved_model_pb2

    from tsm_keras.export.saved_model import export_saved_model, read_export_metadata

    path = export_saved_model(tiny_tsm, str(tmp_path / "bf16"), label_names=LABELS, scale_size=SCALE_SIZE,
                              precision="bfloat16")
    assert read_export_metadata(path)["precision"] == "bfloat16"
    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    conv_types = {node.attr["T"].type for function in saved.meta_graphs[0].graph_def.library.function
                  for node in function.node_def if node.op in ("Conv2D", "DepthwiseConv2dNative")}
    assert conv_types == {types_pb2.DT_BFLOAT16}
    frames = np.zeros((1, NUM_SEGMENTS, SCALE_SIZE, SCALE_SIZE, 3), np.uint8)
    out = run_fresh(path, tmp_path, frames=frames, clips=clips)
    assert out["clips_logits"].dtype == np.float32 and out["clips_probabilities"].dtype == np.float32
    np.testing.assert_allclose(out["clips_logits"], keras_logits, rtol=0, atol=0.05 * np.abs(keras_logits).max())
    np.testing.assert_allclose(out["clips_probabilities"], softmax(keras_logits), atol=0.02)
    assert (out["clips_top_k_indices"][:, 0] == keras_logits.argmax(-1)).all()


def test_bfloat16_export_needs_a_tsm(tmp_path):
    import keras

    from tsm_keras.models.inference import inference_form

    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="not a TSM"):
        inference_form(other, precision="bfloat16")
    with pytest.raises(ValueError, match="precision must be one of"):
        inference_form(other, precision="float16")


def test_pptsm_resnet50_vd_exports_and_serves_without_tsm_keras(tiny_pptsm, tmp_path):
    """PP-TSM's graph (-inf padding before the stem max pool, ceil-mode shortcut pools, LeakyReLU) exports, folded,
    and a fresh process without tsm_keras serves the same logits as the Keras model."""
    from tsm_keras.export.saved_model import export_saved_model

    labels = ["a", "b", "c"]
    path = export_saved_model(tiny_pptsm, str(tmp_path / "pptsm"), label_names=labels, scale_size=48, top_k=2)
    rng = np.random.default_rng(4)
    clips = rng.uniform(0, 255, (2, 2, 40, 40, 3)).astype(np.float32)
    frames = rng.integers(0, 256, (1, 2, 48, 48, 3), dtype=np.uint8)  # short side = scale_size: a pure centre crop
    expected = tiny_pptsm(clips, training=False).numpy()
    expected_frames = softmax(tiny_pptsm(frames[:, :, 4:44, 4:44].astype(np.float32), training=False).numpy())

    out = run_fresh(path, tmp_path, frames=frames, clips=clips)

    np.testing.assert_allclose(out["clips_logits"], expected, atol=1e-5 * max(1.0, np.abs(expected).max()), rtol=0)
    np.testing.assert_allclose(out["default_probabilities"], expected_frames, atol=1e-6)


def test_mobilenetv2_exports_with_its_depthwise_batchnorm_folded(tiny_mobilenet_tsm, clips, tmp_path):
    import tensorflow as tf

    from tsm_keras.export.saved_model import export_saved_model

    path = export_saved_model(tiny_mobilenet_tsm, str(tmp_path / "mbv2"), label_names=LABELS, scale_size=SCALE_SIZE)
    logits = tf.saved_model.load(path).signatures["serving_clips"](clips=tf.constant(clips))["logits"].numpy()
    expected = tiny_mobilenet_tsm(clips, training=False).numpy()
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4 * np.abs(expected).max())
