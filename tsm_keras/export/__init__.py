"""Serving artefacts: versioned SavedModel (TF Serving), TF-TRT, ONNX and TFLite.

Kept import-light: each format's module imports TensorFlow (and tf2onnx, onnxruntime) itself.
"""
