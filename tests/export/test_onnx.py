"""ONNX export: onnxruntime CPU agrees with Keras within 1e-4 and the graph holds only standard ops."""

import numpy as np
import pytest

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
    # The temporal shift is a grouped Conv; no Loop/If/custom op.
    assert "Conv" in ops and not {"Loop", "If", "Scan"} & set(ops)


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
