"""ONNX export: onnxruntime CPU agrees with Keras within 1e-4 and the graph holds only standard ops."""

import numpy as np
import pytest
from export_fixtures import LABELS, NUM_SEGMENTS

pytest.importorskip("tf2onnx")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def onnx_path(tiny_tsm, tmp_path_factory):
    from tsm_keras.export.onnx import export_onnx

    return export_onnx(tiny_tsm, str(tmp_path_factory.mktemp("onnx") / "tsm.onnx"))


def test_onnxruntime_matches_keras(onnx_path, clips, keras_logits):
    from tsm_keras.export.onnx import onnxruntime_session

    session = onnxruntime_session(onnx_path)
    assert [i.name for i in session.get_inputs()] == ["clips"]
    logits, probabilities = session.run(["logits", "probabilities"], {"clips": clips})  # batch 2: dynamic batch
    scale = max(1.0, float(np.abs(keras_logits).max()))
    np.testing.assert_allclose(logits, keras_logits, atol=1e-4 * scale, rtol=0)
    expected = np.exp(keras_logits - keras_logits.max(1, keepdims=True))
    np.testing.assert_allclose(probabilities, expected / expected.sum(1, keepdims=True), atol=1e-5)


def test_graph_has_only_standard_ops(onnx_path):
    from tsm_keras.export.onnx import STANDARD_OPS, check_standard_ops, onnx_op_types

    ops = check_standard_ops(onnx_path)
    assert {domain for domain, _ in onnx_op_types(onnx_path)} == {"ai.onnx"}
    assert set(ops) <= STANDARD_OPS
    assert "Conv" in ops and not {"Loop", "If", "Scan"} & set(ops)


def test_shifts_are_slices_on_nchw_tensors_with_no_transposes_around_them(onnx_path):
    """tf2onnx leaves 4 Transposes around each shift (a grouped Conv in NHWC); the export rewrites them."""
    import onnx

    from tsm_keras.export.onnx import _attributes

    nodes = onnx.load(onnx_path).graph.node
    assert not [n.name for n in nodes if n.op_type == "Conv" and _attributes(n).get("group", 1) > 1]
    # One Transpose is left: the NHWC clips input to the first conv.
    assert [n.op_type for n in nodes].count("Transpose") == 1
    # ResNet-10: 4 blocks x 2 shifted groups, + the stem's pool pad (the convs' ZeroPadding2D fold into the Convs).
    assert [n.op_type for n in nodes].count("Pad") == 4 * 2 + 1


@pytest.mark.parametrize("convention,direction,channels", [("tsm", "bidirectional", 16), ("paddle", "bidirectional", 12),
                                                           ("tsm", "unidirectional", 16)])
def test_nchw_shift_rewrite_gives_the_keras_shift(convention, direction, channels, tmp_path):
    """conv -> TemporalShift -> conv through tf2onnx: the shift becomes Slice/Pad/Concat, the values stay."""
    import keras
    import onnx
    import tensorflow as tf

    import tsm_keras
    from tsm_keras.export.onnx import _attributes, _require_tf2onnx, nchw_temporal_shifts, onnxruntime_session

    t = 3
    inputs = keras.Input((5, 4, 3), batch_size=None)
    x = keras.layers.Conv2D(channels, 1, use_bias=False)(inputs)
    x = tsm_keras.TemporalShift(t, direction=direction, convention=convention)(x)
    outputs = keras.layers.Conv2D(4, 1, use_bias=False)(x)
    model = keras.Model(inputs, outputs)
    frames = np.random.default_rng(0).normal(size=(2 * t, 5, 4, 3)).astype("float32")
    expected = model(frames).numpy()
    spec = tf.TensorSpec([None, 5, 4, 3], tf.float32, name="frames")
    proto, _ = _require_tf2onnx().convert.from_function(tf.function(lambda f: {"y": model(f)}), input_signature=[spec],
                                                         opset=17)
    grouped = [n for n in proto.graph.node if n.op_type == "Conv" and _attributes(n).get("group", 1) > 1]
    assert len(grouped) == 1  # what tf2onnx makes of the shift: the test would pass untouched graphs otherwise
    assert nchw_temporal_shifts(proto, t) == 1
    assert not [n for n in proto.graph.node if n.op_type == "Conv" and _attributes(n).get("group", 1) > 1]
    onnx.checker.check_model(proto)
    onnx.save(proto, tmp_path / "shift.onnx")
    got = onnxruntime_session(tmp_path / "shift.onnx").run(["y"], {"frames": frames})[0]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_check_standard_ops_rejects_custom_domains(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from tsm_keras.export.onnx import check_standard_ops

    node = helper.make_node("FancyShift", ["x"], ["y"], domain="com.example")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    onnx.save(model, tmp_path / "custom.onnx")
    with pytest.raises(ValueError, match="com.example::FancyShift"):
        check_standard_ops(tmp_path / "custom.onnx")


def test_export_rebuilds_a_model_without_fixed_size(tiny_tsm, tmp_path, capsys):
    """`--mode=export --export_format=onnx|tflite` of a `.keras` built with image_size=None: rebuilt at
    --image_size with the same weights (the SavedModel export of the same file always worked)."""
    import keras
    import onnx

    from tsm_keras.config import Config
    from tsm_keras.export import export_model
    from tsm_keras.export.tflite import TFLiteRunner
    from tsm_keras.models import TSM

    anysize = TSM.from_config(dict(tiny_tsm.get_config(), image_size=None))
    anysize.set_weights(tiny_tsm.get_weights())
    source = str(tmp_path / "anysize.keras")
    anysize.save(source)
    clips = np.random.default_rng(3).uniform(0, 255, (1, NUM_SEGMENTS, 96, 96, 3)).astype("float32")
    expected = keras.models.load_model(source)(clips, training=False).numpy()
    config = Config(weights=source, export_dir=str(tmp_path / "out"), image_size=96, num_classes=len(LABELS))

    onnx_path = export_model(config.replace(export_format="onnx"))
    dims = [d.dim_value or d.dim_param for d in onnx.load(onnx_path).graph.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == [NUM_SEGMENTS, 96, 96, 3]
    assert "rebuilt at 96 px" in capsys.readouterr().out
    from tsm_keras.export.onnx import onnxruntime_session

    got = onnxruntime_session(onnx_path).run(["logits"], {"clips": clips})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)

    tflite_path = export_model(config.replace(export_format="tflite"))
    np.testing.assert_allclose(TFLiteRunner(tflite_path)(clips)["logits"], expected, rtol=1e-4, atol=1e-4)


def test_pptsm_onnx_and_tflite_match_keras(tiny_pptsm, tmp_path):
    """ResNet-50-vd (PP-TSM): -inf padding before the max pool, ceil-mode average pools in the shortcuts and
    leaky ReLUs survive ONNX (standard ops only) and TFLite, folded, to 1e-4."""
    from tsm_keras.export.onnx import check_standard_ops, export_onnx, onnxruntime_session
    from tsm_keras.export.tflite import TFLiteRunner, export_tflite

    clips = np.random.default_rng(4).uniform(0, 255, (1, 2, 40, 40, 3)).astype("float32")
    expected = tiny_pptsm(clips, training=False).numpy()
    onnx_path = export_onnx(tiny_pptsm, str(tmp_path / "pptsm.onnx"))
    check_standard_ops(onnx_path)
    got = onnxruntime_session(onnx_path).run(["logits"], {"clips": clips})[0]
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * scale)
    tflite = TFLiteRunner(export_tflite(tiny_pptsm, str(tmp_path / "pptsm.tflite")))(clips)["logits"]
    np.testing.assert_allclose(tflite, expected, rtol=0, atol=1e-4 * scale)


def test_mobilenetv2_onnx_matches_keras_with_standard_ops(tiny_mobilenet_tsm, clips, tmp_path):
    from tsm_keras.export.onnx import STANDARD_OPS, check_standard_ops, export_onnx, onnxruntime_session

    path = export_onnx(tiny_mobilenet_tsm, str(tmp_path / "mbv2.onnx"))
    assert set(check_standard_ops(path)) <= STANDARD_OPS
    logits = onnxruntime_session(path).run(["logits"], {"clips": clips})[0]
    expected = tiny_mobilenet_tsm(clips, training=False).numpy()
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4 * np.abs(expected).max())


class _FailingOptimizer:
    """A tf2onnx optimizer pass (what its optimizer loop calls) that raises: what `convert_function` must survive."""

    graph_been_opt = False

    def optimize(self, graph, iteration):
        raise RuntimeError("this pass always fails")


def test_optimizers_in_place_give_the_default_conversion_and_a_failing_pass_falls_back(monkeypatch, caplog):
    """`convert_function` runs tf2onnx's optimizers on the graph itself instead of on a copy each: the same
    operators and outputs as tf2onnx's default conversion. A pass that fails makes it convert again with the
    copies, which skip that pass."""
    import collections
    import logging
    import os

    import keras
    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    from tsm_keras.export.onnx import convert_function

    assert "TF2ONNX_CATCH_ERRORS" not in os.environ
    # NHWC convs with BatchNorm and ReLU between: tf2onnx's transpose and fusion passes all have work to do.
    model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(8, 3, use_bias=False),
                              keras.layers.BatchNormalization(), keras.layers.ReLU(),
                              keras.layers.Conv2D(8, 3, strides=2), keras.layers.ReLU(),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)])
    spec = tf.TensorSpec([None, 16, 16, 3], tf.float32, name="images")
    images = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)

    @tf.function(input_signature=[spec])
    def logits(x):
        return {"logits": tf.identity(model(x, training=False), name="logits")}

    def summary(proto):
        session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        return collections.Counter(node.op_type for node in proto.graph.node), session.run(None, {"images": images})[0]

    default_ops, default_logits = summary(tf2onnx.convert.from_function(logits, input_signature=[spec], opset=17)[0])
    in_place_ops, in_place_logits = summary(convert_function(logits, [spec], 17))
    assert "TF2ONNX_CATCH_ERRORS" not in os.environ  # set for the conversion only
    assert in_place_ops == default_ops and default_ops["Conv"] == 2 and "BatchNormalization" not in default_ops
    np.testing.assert_array_equal(in_place_logits, default_logits)

    monkeypatch.setitem(tf2onnx.optimizer._optimizers, "always_fails", _FailingOptimizer)
    with caplog.at_level(logging.WARNING, logger="tsm_keras.export.onnx"):
        fallback_ops, fallback_logits = summary(convert_function(logits, [spec], 17))
    assert "an optimizer failed in place (RuntimeError: this pass always fails)" in caplog.text
    assert fallback_ops == default_ops
    np.testing.assert_array_equal(fallback_logits, default_logits)
