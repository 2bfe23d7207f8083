"""Versioned SavedModel for TF Serving: preprocessing, normalization and top-k labels inside the graph.

Layout (what TF Serving scans): `<export_dir>/<version>/saved_model.pb`, versions are integers and
TF Serving serves the highest. A version is written to a hidden temporary folder next to it and
renamed when complete, so a server polling the folder never sees half a model, and an existing
version is never overwritten.

Signatures:
    serving_default  frames  uint8   [batch, T, height, width, 3], any height/width (RGB)
                     -> probabilities float32 [batch, classes], top_k_indices int32 [batch, k],
                        top_k_labels string [batch, k]
    serving_clips    clips   float32 [batch, T, image_size, image_size, 3], RGB on the 0-255 scale,
                     already sampled, resized and centre-cropped (what `tsm_keras.data.load_video_clips`
                     returns, cast to float32); normalization stays in the graph
                     -> the same outputs plus logits float32 [batch, classes]

`assets.extra/tsm_export.json` (ignored by TF Serving) records the model config, preprocessing and
label names, so `tsm_keras.load` can feed the model exactly as evaluation does.
"""

import json
import os
import uuid

import numpy as np
import tensorflow as tf

import keras

from tsm_keras.data.augment import resize_and_center_crop
from tsm_keras import disk
from tsm_keras.errors import ExistingOutputError, UsageError
from tsm_keras.models.inference import ClipClassifier, inference_form, model_input_spec
# The export folder's contract (versions, signature names, tsm_export.json) is shared with its readers.
from tsm_keras.saved_models import (CLIPS_SIGNATURE, DEFAULT_SIGNATURE, METADATA_FILE, is_streaming_export,
                                    list_versions, read_export_metadata, resolve_saved_model_dir)

__all__ = ["CLIPS_SIGNATURE", "DEFAULT_SIGNATURE", "METADATA_FILE", "ClipClassifier", "build_export_archive",
           "check_input_shape", "export_saved_model", "inference_form", "list_versions", "model_input_spec",
           "read_export_metadata", "resize_and_center_crop", "resolve_saved_model_dir", "serving_example"]

def check_input_shape(tensor, dims, what):
    """Fail with a readable message unless `tensor` has rank `len(dims)` and the non-None `dims`.

    A loaded signature checks dtypes at call time but not shapes, so without this a wrong input
    fails deep in the graph ("Index out of range using input dim 3"). `EnsureShape` checks at run
    time and names the expected and actual shapes.
    """
    return tf.ensure_shape(tensor, dims, name=what)


def index_label_names(num_classes):
    """Label names when there is no label map: "0", "1", ..."""
    return [str(i) for i in range(num_classes)]


def _check_labels(label_names, num_classes):
    if label_names is None:
        return index_label_names(num_classes)
    label_names = [str(name) for name in label_names]
    if len(label_names) != num_classes:
        raise UsageError(f"{len(label_names)} label names for a model with {num_classes} classes: pass the "
                         f"label map the model was trained with (--label_map), or none for index names.")
    return label_names


def build_export_archive(model, label_names=None, scale_size=256, image_size=None, top_k=5, fold_batchnorm=True,
                         precision="float32"):
    """A `keras.export.ExportArchive` holding the model and the two serving signatures.

    `fold_batchnorm`: export the inference form (`tsm_keras.models.fold_batchnorm`); `precision`:
    see `inference_form`."""
    model = inference_form(model, fold_batchnorm, precision)
    num_segments, model_image_size = model_input_spec(model)
    image_size = int(image_size or model_image_size or 224)
    if model_image_size is not None and int(model_image_size) != image_size:
        raise UsageError(f"image_size={image_size} but the model was built for {model_image_size}.")
    if scale_size < image_size:
        raise UsageError(f"scale_size ({scale_size}) must be >= image_size ({image_size}): the short side is "
                         f"resized to scale_size, then an image_size centre crop is taken.")
    num_classes = int(model.output_shape[-1])
    label_names = _check_labels(label_names, num_classes)
    k = max(1, min(int(top_k), num_classes))
    classifier = ClipClassifier(model)
    labels = tf.constant(label_names, dtype=tf.string)

    def outputs(logits):
        probabilities = tf.nn.softmax(logits, axis=-1)
        top = tf.math.top_k(probabilities, k=k)
        return {"probabilities": probabilities, "top_k_indices": top.indices,
                "top_k_labels": tf.gather(labels, top.indices)}

    def serve_frames(frames):
        frames = check_input_shape(frames, [None, num_segments, None, None, 3], "frames")
        clips = resize_and_center_crop(frames, scale_size, image_size)
        return outputs(classifier(clips))

    def serve_clips(clips):
        clips = check_input_shape(clips, [None, num_segments, image_size, image_size, 3], "clips")
        logits = classifier(clips)
        return dict(outputs(logits), logits=logits)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(DEFAULT_SIGNATURE, serve_frames, input_signature=[
        tf.TensorSpec([None, num_segments, None, None, 3], tf.uint8, name="frames")])
    archive.add_endpoint(CLIPS_SIGNATURE, serve_clips, input_signature=[
        tf.TensorSpec([None, num_segments, image_size, image_size, 3], tf.float32, name="clips")])
    metadata = {
        "format": "tsm_keras.saved_model/1",
        "model_config": _jsonable(model.get_config()),
        "num_segments": num_segments,
        "image_size": image_size,
        "scale_size": int(scale_size),
        "num_classes": num_classes,
        "top_k": k,
        "precision": precision,
        "label_names": label_names,
        "signatures": {
            DEFAULT_SIGNATURE: {"inputs": {"frames": f"uint8 [batch, {num_segments}, height, width, 3] RGB"},
                                "outputs": ["probabilities", "top_k_indices", "top_k_labels"]},
            CLIPS_SIGNATURE: {"inputs": {"clips": f"float32 [batch, {num_segments}, {image_size}, {image_size}, 3]"
                                                  " RGB 0-255, centre-cropped"},
                              "outputs": ["logits", "probabilities", "top_k_indices", "top_k_labels"]},
        },
    }
    return archive, metadata


def _jsonable(value):
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


def export_saved_model(model, export_dir, label_names=None, scale_size=256, image_size=None, top_k=5,
                       version=None, verbose=False, fold_batchnorm=True, precision="float32"):
    """Write `model` as `<export_dir>/<version>/`; return that path.

    `version=None` takes the next integer after the highest present (1 in an empty folder). An
    explicit version that already exists is an error: versions are immutable once served.
    """
    archive, metadata = build_export_archive(model, label_names, scale_size, image_size, top_k, fold_batchnorm,
                                             precision)
    return write_archive(archive, metadata, export_dir, version, streaming=False, verbose=verbose)


def write_archive(archive, metadata, export_dir, version=None, streaming=False, verbose=False):
    """Write an ExportArchive and its `tsm_export.json` as the next (or the given, new) version of
    `export_dir`, atomically; return the version folder. Shared by the clip and the streaming exports."""
    version = _check_new_version(export_dir, version, streaming=streaming)
    # Hidden (TF Serving only loads integer names) and on the same file system, so the final
    # rename is atomic.
    tmp = os.path.join(export_dir, f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    what = "streaming SavedModel export" if streaming else "SavedModel export"
    with disk.writing(export_dir, what, cleanup=[tmp]):
        archive.write_out(tmp, verbose=verbose)
        metadata_path = os.path.join(tmp, METADATA_FILE)
        os.makedirs(os.path.dirname(metadata_path), exist_ok=True)
        with open(metadata_path, "w") as f:
            json.dump(metadata, f, indent=2)
        return _rename_to_version(tmp, export_dir, version)


def _check_new_version(export_dir, version, streaming):
    """Create `export_dir`; an explicit `version` must be a new non-negative integer. Returns it (or None).

    A folder holds one kind of export: TF Serving serves its highest version, and a streaming model
    (one frame and states per call) cannot answer clip requests, nor the other way round."""
    versions = list_versions(export_dir)
    if versions:
        previous = read_export_metadata(os.path.join(export_dir, str(versions[-1])))
        if previous is not None and is_streaming_export(previous) != streaming:
            kinds = ("clip", "streaming") if streaming else ("streaming", "clip")
            raise UsageError(f"{export_dir} holds {kinds[0]} exports (version {versions[-1]}); a {kinds[1]} export "
                             "there would replace them in TF Serving: choose another --export_dir.")
    os.makedirs(export_dir, exist_ok=True)
    if version is None:
        return None
    version = int(version)
    if version < 0:
        raise UsageError(f"version must be a non-negative integer, got {version}.")
    if os.path.exists(os.path.join(export_dir, str(version))):
        raise ExistingOutputError(f"{os.path.join(export_dir, str(version))} exists; versions are never "
                                  f"overwritten: pick another version or leave it unset for the next one.")
    return version


def _rename_to_version(tmp, export_dir, version):
    explicit = version is not None
    for _ in range(100):
        if version is None:
            versions = list_versions(export_dir)
            version = versions[-1] + 1 if versions else 1
        final = os.path.join(export_dir, str(version))
        if not os.path.exists(final):
            try:
                os.rename(tmp, final)  # fails on a non-empty target: nothing is overwritten
                return final
            except OSError:
                if not os.path.exists(final):
                    raise
        if explicit:
            raise ExistingOutputError(f"{final} appeared while exporting; versions are never overwritten.")
        version = None  # another exporter took it: take the next one
    raise RuntimeError(f"could not allocate a version folder in {export_dir}")


def serving_example(num_segments, image_size=224, batch=1, seed=0):
    """Random uint8 frames `[batch, T, H, W, 3]` for smoke tests and warm-up."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(batch, num_segments, image_size, image_size, 3), dtype=np.uint8)
