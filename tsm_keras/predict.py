"""Labels for videos: `--mode=predict` and the Python API `tsm_keras.load(...)`.

    import tsm_keras
    classifier = tsm_keras.load("saved_models/tsm")          # a SavedModel export, a run folder, .keras, ...
    print(classifier.predict_video("clip.mp4")["predictions"][0])   # {"label": ..., "probability": ...}

Videos are sampled and cropped exactly as evaluation does (`tsm_keras.data.load_video_clips`:
segment centres, `test_clips` x `test_crops` views, logits averaged over the views), then
softmax. A video that cannot be read is reported and the others go on.

Online (`--online`, `classifier.stream()`): a uni-directional TSM sees one frame at a time, carrying its
shift states (`tsm_keras.models.streaming`, or a `--streaming` SavedModel export); each frame gets the
top-k of its logits averaged with the previous frames' (`history`), as the official online demo smooths.

    stream = tsm_keras.load("runs/tsm_online").stream(history=12)
    for frame in frames:                                     # uint8 RGB [H, W, 3], any size
        print(stream.update(frame)["predictions"][0])
"""

import collections
import json
import os
import statistics
import sys
import time

import numpy as np

from tsm_keras import runtime
from tsm_keras.config import Config
from tsm_keras.errors import MissingInputError, UsageError
from tsm_keras.progress import ProgressLine

# Views per forward pass: bounds memory with 10 clips x 3 crops of ResNet-50.
VIEW_CHUNK = 8
# Frames whose logits are averaged online (the official online demo's 12: online_demo/main.py sums the last 12).
DEFAULT_ONLINE_HISTORY = Config.online_history


class VideoClassifier:
    """A trained TSM with its test-time preprocessing and label names (base of the two backends).

    Attributes: `num_segments`, `image_size`, `scale_size`, `num_clips`, `num_crops`,
    `label_names`, `top_k`, `frame_template`.
    """

    def __init__(self, num_segments, image_size, scale_size, label_names, num_clips=1, num_crops=1,
                 top_k=5, frame_template="img_{:05d}.jpg", source=""):
        self.num_segments = int(num_segments)
        self.image_size = int(image_size)
        self.scale_size = int(scale_size)
        self.label_names = list(label_names)
        self.num_clips = max(1, int(num_clips))
        self.num_crops = max(1, int(num_crops))
        self.top_k = int(top_k)
        self.frame_template = frame_template
        self.source = source
        if self.scale_size < self.image_size:
            raise UsageError(f"scale_size ({self.scale_size}) must be >= image_size ({self.image_size}).")

    # -- backends implement these two
    def clip_logits(self, clips):
        """float32 `[n, T, S, S, 3]` RGB 0-255 centre-cropped clips -> float32 logits `[n, classes]`."""
        raise NotImplementedError

    def frames_logits(self, frames):
        """uint8 `[batch, T, H, W, 3]` any H/W -> float32 logits `[batch, classes]` (serving preprocessing)."""
        raise NotImplementedError

    # -- public API
    def predict_video(self, path, top_k=None):
        """Top-k labels for one video file or frame folder.

        Returns `{"video": path, "views": n, "predictions": [{"label", "index", "probability"}, ...],
        "probabilities": float32 [classes]}`. Raises `BadSampleError` (a ValueError naming the file)
        when it cannot be read.
        """
        self.require_clips()
        views = self._load_views(path)
        logits = np.concatenate([self.clip_logits(views[i:i + VIEW_CHUNK].astype(np.float32))
                                 for i in range(0, len(views), VIEW_CHUNK)])
        # Evaluation averages logits over the views (PaddleVideo and the official test script).
        result = self._result(logits.mean(axis=0), top_k)
        result = {"video": path, "views": int(len(views)), **result}
        return result

    def predict_frames(self, frames, top_k=None):
        """Top-k labels for the decoded frames of one video.

        `frames`: uint8 `[num_frames, height, width, 3]` RGB (any number of frames, any size). They
        are sampled (segment centres, `num_clips`) and cropped like `predict_video`'s.
        """
        self.require_clips()
        frames = _check_frames(frames, rank=4, what="predict_frames")
        from tsm_keras.data import augment, sampling

        indices = sampling.sample_test_clips(len(frames), self.num_segments, self.num_clips).reshape(-1)
        views = augment.eval_views(frames[indices], self.num_clips, self.num_crops, self.scale_size,
                                   self.image_size).numpy()
        logits = np.concatenate([self.clip_logits(views[i:i + VIEW_CHUNK].astype(np.float32))
                                 for i in range(0, len(views), VIEW_CHUNK)])
        return {"views": int(len(views)), **self._result(logits.mean(axis=0), top_k)}

    def predict_clips(self, clips, top_k=None):
        """Top-k labels per clip for a batch of already-sampled clips, as the SavedModel's `serving_default`.

        `clips`: uint8 `[batch, T, height, width, 3]` RGB, T = `num_segments`, any height/width
        (short side resized to `scale_size`, centre crop `image_size`). Returns a list of results.
        """
        self.require_clips()
        clips = _check_frames(clips, rank=5, what="predict_clips")
        if clips.shape[1] != self.num_segments:
            raise UsageError(f"predict_clips: clips have {clips.shape[1]} frames, the model takes "
                             f"{self.num_segments}; use predict_frames for a whole video's frames.")
        logits = self.frames_logits(clips)
        return [self._result(row, top_k) for row in logits]

    def stream(self, history=DEFAULT_ONLINE_HISTORY, top_k=None):
        """A `FrameStream`: `update(frame)` per uint8 RGB `[height, width, 3]` frame -> the top-k of the
        last `history` frames' averaged logits; `reset()` starts a new video. Each call gives an
        independent stream (its own states). Raises UsageError for a model that cannot run online."""
        return FrameStream(self, self._streaming_step(), history=history, top_k=top_k)

    def require_clips(self):
        """Raise UsageError unless this classifier takes whole clips (a streaming export takes frames)."""

    def _streaming_step(self):
        """`(init_states() -> states, step(uint8 [1, H, W, 3], states) -> (float32 logits [classes], states))`."""
        raise UsageError(f"{self.source}: this classifier takes clips only and cannot run online; load the run "
                         "folder of a --shift=unidirectional model (--weights), or its --streaming export.")

    def _load_views(self, path):
        from tsm_keras.data import load_video_clips

        return load_video_clips(path, self.num_segments, num_clips=self.num_clips, crops=self.num_crops,
                                scale_size=self.scale_size, image_size=self.image_size,
                                frame_template=self.frame_template)

    def _result(self, logits, top_k):
        logits = np.asarray(logits, np.float64)
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        k = min(int(top_k or self.top_k), len(probabilities))
        order = np.argsort(-probabilities, kind="stable")[:k]
        return {"predictions": [{"label": self.label_names[i], "index": int(i),
                                 "probability": float(probabilities[i])} for i in order],
                "probabilities": probabilities.astype(np.float32)}


class KerasVideoClassifier(VideoClassifier):
    """`VideoClassifier` over a Keras TSM model."""

    def __init__(self, model, **kwargs):
        import tensorflow as tf

        from tsm_keras.data.augment import resize_and_center_crop
        from tsm_keras.models.inference import ClipClassifier, inference_form

        super().__init__(**kwargs)
        self.model = model
        # Inference only: BatchNorm folded into the convs, as in the exports.
        classifier = ClipClassifier(inference_form(model))
        self._clips = tf.function(classifier, reduce_retracing=True)
        scale_size, image_size = self.scale_size, self.image_size
        self._frames = tf.function(lambda frames: classifier(resize_and_center_crop(frames, scale_size, image_size)),
                                   reduce_retracing=True)

        self._stream_step = None

    def clip_logits(self, clips):
        return self._clips(clips).numpy()

    def frames_logits(self, frames):
        return self._frames(frames).numpy()

    def _streaming_step(self):
        if self._stream_step is None:
            self._stream_step = _keras_streaming_step(self.model, self.scale_size, self.image_size, self.source)
        return self._stream_step


class SavedModelVideoClassifier(VideoClassifier):
    """`VideoClassifier` over a SavedModel written by `tsm_keras.export.saved_model` (no Keras needed)."""

    def __init__(self, saved_model_dir, **kwargs):
        import tensorflow as tf

        from tsm_keras.saved_models import CLIPS_SIGNATURE, DEFAULT_SIGNATURE

        self.loaded = tf.saved_model.load(saved_model_dir)
        missing = [s for s in (DEFAULT_SIGNATURE, CLIPS_SIGNATURE) if s not in self.loaded.signatures]
        if missing:
            raise UsageError(f"{saved_model_dir}: SavedModel lacks signature(s) {missing}; export it with "
                             f"`python app.py --mode=export`.")
        self._clips = self.loaded.signatures[CLIPS_SIGNATURE]
        self._frames = self.loaded.signatures[DEFAULT_SIGNATURE]
        self._tf = tf
        super().__init__(**kwargs)

    def clip_logits(self, clips):
        return self._clips(clips=self._tf.constant(clips, self._tf.float32))["logits"].numpy()

    def frames_logits(self, frames):
        probabilities = self._frames(frames=self._tf.constant(frames, self._tf.uint8))["probabilities"].numpy()
        return np.log(np.maximum(probabilities, 1e-30))  # softmax(log p) == p

    def _streaming_step(self):
        raise UsageError(f"{self.source} is a clip SavedModel (T frames per call) and cannot run online: export "
                         "the --shift=unidirectional model with `python app.py --mode=export --streaming`, or "
                         "pass its run folder with --weights.")


class StreamingSavedModelVideoClassifier(VideoClassifier):
    """`VideoClassifier` over a streaming SavedModel (`--mode=export --streaming`): `stream()` only."""

    def __init__(self, saved_model_dir, **kwargs):
        import tensorflow as tf

        from tsm_keras.saved_models import INIT_STATES_SIGNATURE, STREAMING_CALL_SIGNATURE

        self.loaded = tf.saved_model.load(saved_model_dir)
        missing = [s for s in (INIT_STATES_SIGNATURE, STREAMING_CALL_SIGNATURE) if s not in self.loaded.signatures]
        if missing:
            raise UsageError(f"{saved_model_dir}: streaming SavedModel lacks signature(s) {missing}; export it with "
                             f"`python app.py --mode=export --streaming`.")
        init_states = self.loaded.signatures[INIT_STATES_SIGNATURE]
        call = self.loaded.signatures[STREAMING_CALL_SIGNATURE]
        state_names = sorted(name for name in call.structured_input_signature[1] if name != "frame")

        def initial():
            return init_states(batch_size=tf.constant(1, tf.int32))

        def step(frame, states):
            outputs = call(frame=tf.constant(frame, tf.uint8), **states)
            return outputs["logits"].numpy()[0], {name: outputs[name] for name in state_names}

        self._step = (initial, step)
        super().__init__(**kwargs)

    def require_clips(self):
        from tsm_keras import saved_models

        raise UsageError(f"{self.source} is a streaming export (signatures {saved_models.INIT_STATES_SIGNATURE}, "
                         f"{saved_models.STREAMING_CALL_SIGNATURE}: one frame and the states per call); it classifies "
                         "frame by frame: use --online (classifier.stream()), or export without --streaming.")

    def _streaming_step(self):
        return self._step


def _keras_streaming_step(model, scale_size, image_size, source):
    """The Keras streaming step (see `VideoClassifier._streaming_step`): one frame resized and cropped as
    evaluation crops each frame (`resize_and_center_crop`, the serving geometry), normalized inside the
    model, through `to_streaming` of the BatchNorm-folded network."""
    import tensorflow as tf

    from tsm_keras.data.augment import resize_and_center_crop
    from tsm_keras.models.inference import at_image_size, inference_form, with_raw_frame_input
    from tsm_keras.models.streaming import FRAME_INPUT, check_streamable, to_streaming

    check_streamable(model)  # a bi-directional model: the error says to train with --shift=unidirectional
    if model.get_config().get("shift") == "none":
        raise UsageError(f"{source}: a TSN (--shift=none) has no temporal shift: online it would classify each "
                         "frame alone and cannot tell an action from its reverse. Train an online TSM with "
                         "--shift=unidirectional.")
    stream = to_streaming(inference_form(with_raw_frame_input(at_image_size(model, image_size))))

    @tf.function(reduce_retracing=True)
    def step(frame, states):
        cropped = resize_and_center_crop(frame[:, None], scale_size, image_size)[:, 0]
        logits, new_states = stream({FRAME_INPUT: cropped, **states}, training=False)
        return tf.cast(logits, tf.float32)[0], new_states

    def run(frame, states):
        logits, new_states = step(tf.constant(frame, tf.uint8), states)
        return logits.numpy(), new_states

    return (lambda: stream.init_states(1, image_size)), run


class FrameStream:
    """Online classification, one frame per `update` (from `VideoClassifier.stream()`).

    `update(frame)`: uint8 RGB `[height, width, 3]`, any size -> `{"frame": n (1-based), "history": frames
    averaged, "predictions": [{"label", "index", "probability"}, ...], "probabilities": float32 [classes]}`:
    the softmax of the mean logits of the last `history` frames (the official online demo takes the
    argmax of the sum of its last 12; over T frames from the start the mean is the offline model's clip
    logits). `reset()`: zero states and an empty history, for the next video.
    """

    def __init__(self, classifier, step, history=DEFAULT_ONLINE_HISTORY, top_k=None):
        if int(history) < 1:
            raise UsageError(f"online history must be >= 1 frame, got {history}.")
        self.classifier = classifier
        self.history = int(history)
        self.top_k = int(top_k or classifier.top_k)
        self._init_states, self._step = step
        self.reset()

    def reset(self):
        self._states = self._init_states()
        self._logits = collections.deque(maxlen=self.history)
        self.frames = 0

    def update(self, frame, top_k=None):
        frame = _check_frames(frame, rank=3, what="stream().update")
        logits, self._states = self._step(frame[None], self._states)
        self._logits.append(np.asarray(logits, np.float64))
        self.frames += 1
        result = self.classifier._result(np.mean(self._logits, axis=0), top_k or self.top_k)
        return {"frame": self.frames, "history": len(self._logits), **result}


def _check_frames(frames, rank, what):
    array = np.asarray(frames)
    if array.dtype != np.uint8:
        raise TypeError(f"{what}: frames must be uint8 RGB 0-255, got {array.dtype}; convert 0-255 floats "
                        f"with np.clip(x, 0, 255).astype(np.uint8) (and BGR from OpenCV with x[..., ::-1]).")
    layout = {3: "[height, width, 3]", 4: "[num_frames, height, width, 3]", 5: "[batch, T, height, width, 3]"}[rank]
    if array.ndim != rank or array.shape[-1] != 3:
        raise UsageError(f"{what}: expected {layout}, got shape {tuple(array.shape)}.")
    if 0 in array.shape:
        raise UsageError(f"{what}: empty frames, shape {tuple(array.shape)}.")
    return array


# ------------------------------------------------------------------------------------------ loading
def load(path, config=None, num_clips=None, num_crops=None, top_k=None):
    """A `VideoClassifier` from a SavedModel export (or its versioned folder), a training run folder
    (`config.json` + weights), a `.keras`/`.weights.h5` file, or any checkpoint the converters read
    (`.pdparams`, `.pth`).

    `config` (a `tsm_keras.config.Config`) supplies test-time views, sizes and the label map for
    Keras sources; a run folder's saved config.json wins for the network itself.
    """
    config = config or Config()
    num_clips = config.test_clips if num_clips is None else num_clips
    num_crops = config.test_crops if num_crops is None else num_crops
    top_k = int(top_k or config.top_k)
    if not path:
        raise UsageError("nothing to load: pass a SavedModel folder (--saved_model) or trained weights (--weights).")
    if not os.path.exists(path):
        raise MissingInputError(f"{path}: no such SavedModel, run folder or weights file.")
    from tsm_keras import saved_models

    if saved_models.is_saved_model(path):
        saved_model_dir = saved_models.resolve_saved_model_dir(path)
        metadata = saved_models.read_export_metadata(saved_model_dir)
        if metadata is None:
            raise UsageError(f"{saved_model_dir}: no assets.extra/tsm_export.json; predict reads SavedModels written "
                             f"by `python app.py --mode=export` (for others call their signatures directly).")
        kind = StreamingSavedModelVideoClassifier if saved_models.is_streaming_export(metadata) else \
            SavedModelVideoClassifier
        num_segments = metadata.get("num_segments") or metadata["model_config"]["num_segments"]
        return kind(
            saved_model_dir, num_segments=num_segments, image_size=metadata["image_size"],
            scale_size=metadata["scale_size"], label_names=metadata["label_names"], num_clips=num_clips,
            num_crops=num_crops, top_k=top_k, frame_template=config.frame_template, source=saved_model_dir)
    from tsm_keras.loading import load_trained

    model, run_config, label_names = load_trained(config, path)
    model_config = model.get_config()
    image_size = model_config.get("image_size") or run_config.image_size
    if isinstance(image_size, (list, tuple)):
        image_size = image_size[0]
    return KerasVideoClassifier(
        model, num_segments=model_config["num_segments"], image_size=image_size,
        scale_size=run_config.scale_size, label_names=label_names, num_clips=num_clips, num_crops=num_crops,
        top_k=top_k, frame_template=run_config.frame_template, source=path)


# --------------------------------------------------------------------------------------------- mode
def _model_source(config):
    """`--saved_model` (it must hold a SavedModel: not read as weights), else `--weights`, else `--model_dir`."""
    if config.saved_model:
        if os.path.isdir(config.saved_model):
            from tsm_keras import saved_models

            saved_models.resolve_saved_model_dir(config.saved_model)  # names what is missing and how to export
        return config.saved_model
    return config.weights or config.model_dir


def predict_videos(config):
    """`--mode=predict`: top-k labels per video to stdout, and `--output` JSON lines (`--online`: `predict_online`).

    Returns `{"videos": n, "failed": m}`: the videos that cannot be read are reported and skipped,
    the others still classified.
    """
    from tsm_keras.data import list_inputs

    if config.online:
        return predict_online(config)
    top_k = int(config.top_k)
    classifier = load(_model_source(config), config=config, top_k=top_k)
    classifier.require_clips()  # a streaming export: one error, not one per video
    paths = list_inputs(config.input, config.data_root, classifier.frame_template)
    _check_some_exist(config.input, paths, config.data_root)
    output = config.output
    sink = None
    if output:
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        sink = open(output, "w")
    failures = 0
    # Many inputs: a progress line on stderr (results stay on stdout).
    line = ProgressLine("predict: videos", len(paths)) if len(paths) > 1 else None
    try:
        for done, path in enumerate(paths, 1):
            try:
                result = classifier.predict_video(path, top_k=top_k)
            except Exception as error:  # noqa: BLE001 - e.g. a corrupt JPEG is a tf OpError: go on
                failures += 1
                message = str(error) if path in str(error) else f"{path}: {error}"
                print(f"error: {message}", file=sys.stderr, flush=True)
                record = {"video": path, "error": message}
            else:
                print(format_result(result), flush=True)
                record = {key: value for key, value in result.items() if key != "probabilities"}
            if sink is not None:
                sink.write(json.dumps(record) + "\n")
                sink.flush()
            if line is not None:
                line.update(done, failed=failures)
    finally:
        if line is not None:
            line.close()
        if sink is not None:
            sink.close()
    done = len(paths) - failures
    print(f"predict: {done}/{len(paths)} videos classified with {classifier.source}"
          + (f", {failures} unreadable (see errors above)" if failures else "")
          + (f"; JSON lines in {output}" if output else "") + f" (oneDNN {runtime.onednn_state()})", flush=True)
    return {"videos": len(paths), "failed": failures}


def _check_some_exist(spec, paths, data_root):
    """A list file none of whose paths exists is one error (a wrong --data_root typically), not one per video.
    A single video or frame folder (`paths == [spec]`) and a folder's findings are left to the per-video report."""
    if paths == [spec] or os.path.isdir(spec) or any(os.path.exists(path) for path in paths):
        return
    where = (f"they were joined to --data_root={data_root}" if data_root else
             "relative ones are read from the current folder: pass --data_root=<the folder they are relative to>")
    named = (f"the path it names does not exist ({paths[0]})" if len(paths) == 1 else
             f"none of the {len(paths)} paths it names exists (the first: {paths[0]})")
    raise UsageError(f"{spec}: {named}; {where}")


def predict_online(config):
    """`--mode=predict --online`: stream each video frame by frame through a uni-directional TSM, printing the
    smoothed top-1 every `--online_every` streamed frames (and at the last one) with the frame's latency, then
    the video's final label and the latency summary; `--output` gets one JSON line per printed frame.
    `--online_stride=S` streams video frames 1, 1+S, 1+2S, ...: a model trained on segments S frames apart
    (TSN sampling of V-frame videos into T segments: S = V/T) sees the motion per step it learned.

    Returns `{"videos": n, "failed": m}` like `predict_videos`: an unreadable video is reported and skipped.
    """
    from tsm_keras.data import list_inputs
    from tsm_keras.data.decode import iter_rgb_frames

    every = int(config.online_every)
    if every < 1:
        raise UsageError(f"--online_every must be >= 1 (print a label every N frames), got {every}.")
    stride = int(config.online_stride)
    if stride < 1:
        raise UsageError(f"--online_stride must be >= 1 (stream every S-th video frame), got {stride}.")
    top_k = int(config.top_k)
    classifier = load(_model_source(config), config=config, top_k=top_k)
    stream = classifier.stream(history=config.online_history, top_k=top_k)
    paths = list_inputs(config.input, config.data_root, classifier.frame_template)
    _check_some_exist(config.input, paths, config.data_root)
    sink = None
    if config.output:
        os.makedirs(os.path.dirname(os.path.abspath(config.output)), exist_ok=True)
        sink = open(config.output, "w")
    failures = 0
    try:
        for path in paths:
            try:
                _stream_video(stream, path, iter_rgb_frames(path, classifier.frame_template), every, sink,
                              stride=stride)
            except Exception as error:  # noqa: BLE001 - e.g. a corrupt frame mid-stream is an OpenCV error: go on
                failures += 1
                message = str(error) if path in str(error) else f"{path}: {error}"
                print(f"error: {message}", file=sys.stderr, flush=True)
                if sink is not None:
                    sink.write(json.dumps({"video": path, "error": message}) + "\n")
    finally:
        if sink is not None:
            sink.close()
    done = len(paths) - failures
    print(f"predict --online: {done}/{len(paths)} videos streamed with {classifier.source} (history "
          f"{stream.history} frames)" + (f", {failures} unreadable (see errors above)" if failures else "")
          + (f"; JSON lines in {config.output}" if config.output else ""), flush=True)
    return {"videos": len(paths), "failed": failures}


def _stream_video(stream, path, frames, every, sink, stride=1):
    stream.reset()
    sampled = f", video frames 1, {1 + stride}, {1 + 2 * stride}, ..." if stride > 1 else ""
    print(f"{path}  (online{sampled}, label every {every} frame{'s' if every > 1 else ''}, mean logits of the "
          f"last {stream.history})", flush=True)
    latencies, result, shown, seen = [], None, 0, 0
    for seen, frame in enumerate(frames, 1):
        if (seen - 1) % stride:
            continue
        start = time.perf_counter()
        result, streamed_at = stream.update(frame), seen
        latencies.append(1000.0 * (time.perf_counter() - start))
        if result["frame"] % every == 0:
            _show_frame(path, streamed_at, result, latencies[-1], sink)
            shown = result["frame"]
    if result is None:  # iter_rgb_frames raises first; a stand-in iterator may not
        raise UsageError(f"{path}: no frames")
    if shown != result["frame"]:
        _show_frame(path, streamed_at, result, latencies[-1], sink)
    best = result["predictions"][0]
    of = f" of {seen} (stride {stride})" if stride > 1 else ""
    print(f"{path}: {best['label']} {best['probability']:.4f} after {result['frame']}{of} frames", flush=True)
    print(format_latency(latencies), flush=True)


def _show_frame(path, frame, result, latency_ms, sink):
    """One printed line / JSON line. `frame`: the video's frame number (1-based); `streamed` (`result["frame"]`):
    frames through the model so far (they differ with --online_stride); `history`: frames in the smoothing mean."""
    best = result["predictions"][0]
    print(f"  frame {frame:5d}  {best['probability']:.4f}  {best['label']}  {latency_ms:.1f} ms", flush=True)
    if sink is not None:
        sink.write(json.dumps({"video": path, "frame": frame, "streamed": result["frame"],
                               "history": result["history"], "predictions": result["predictions"],
                               "latency_ms": round(latency_ms, 3)}) + "\n")
        sink.flush()


def format_latency(latencies_ms):
    """The per-frame latency summary: the first frame (tracing, first-call allocations) is left out."""
    timed = latencies_ms[1:]
    if not timed:
        return f"latency: {latencies_ms[0]:.1f} ms for the only frame (a warm-up, not summarized)"
    return (f"latency per frame: median {statistics.median(timed):.2f} ms, mean {statistics.fmean(timed):.2f} ms "
            f"over {len(timed)} frames (frame 1, the warm-up, excluded: {latencies_ms[0]:.0f} ms; frame "
            f"preprocessing + network + smoothing, decoding not included; oneDNN {runtime.onednn_state()})")


def format_result(result):
    lines = [f"{result['video']}  ({result['views']} view{'s' if result['views'] > 1 else ''})"]
    for rank, prediction in enumerate(result["predictions"], 1):
        lines.append(f"  {rank}. {prediction['probability']:.4f}  {prediction['label']}")
    return "\n".join(lines)


def predict(config):
    """Deprecated (kept for one release): `tsm_keras.modes.run_predict(config)`, the exit code."""
    return 1 if predict_videos(config)["failed"] else 0
