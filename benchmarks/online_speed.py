"""Online (streaming) latency per frame, batch 1: the uni-directional MobileNetV2-TSM of the official online
demo, as our Keras model, streaming SavedModel, TFLite and ONNX Runtime paths, next to the demo's own
PyTorch model, measured in the same run with the same weights.

    python benchmarks/online_speed.py [--rounds 5] [--iters 50] [--warmup 10] [--threads 2] [--image_size 224]
                                      [--num_classes 27] [--backends keras_function,tflite_float32,...]
                                      [--cache data_cache/online_speed]

Prints one JSON object: milliseconds per frame per backend (median over rounds of each round's median
over --iters frames, the fastest round, and the spread of round medians), process CPU milliseconds per
frame, each of our paths' speed-up over the PyTorch online model (torch ms / ours ms: above 1, ours is
faster), the fastest path, the targets (fastest float32 path <= 10 ms per frame; >= 1.5x the PyTorch
online model) on the median and on the fastest round, how far each path's scores are from the PyTorch
model's on the same frames, the machine (`tsm_keras.runtime.machine_info()`), library versions and
the load average before and after.

The model: `build_tsm(num_classes, backbone="mobilenetv2", shift="unidirectional", image_size=...)` and its
streaming form (`tsm_keras.to_streaming`): ten shift buffers, [1, h, w, c/8] each, carried from frame
to frame. `--num_classes` defaults to 27, the official online demo's (Jester gestures). Weights: random,
BatchNorm statistics included, written once in the official PyTorch key layout (`features.*`,
`classifier.*`, what the demo's `state_dict` holds) and loaded by each path: the PyTorch model with
`load_state_dict(strict=True)`, ours through `tsm_keras.convert` (the official MobileNetV2 converter)
and the exports made from that Keras model. So `agreement` checks the converter, the streaming
conversion and every export against an independent implementation.

Every backend runs in its own process (one runtime's thread pools must not slow another's), started
once and kept; the driver asks them for a round each in turn, so that drift in machine load hits all of
them. Each round: --warmup frames, then --iters frames timed one by one, the states of each frame fed
to the next (the stream never restarts). Frames are the same random uint8 224x224 picture in each
backend's input form (normalized for the Keras model and PyTorch, as they take it; raw 0-255 for the
exports, which normalize inside). The 2 cores may be shared: when the load average is above the core
count, the medians mostly measure the other jobs; compare the fastest round and the ratios, and
rerun on a quiet machine.

Backends (ours unless named):
  keras_eager        `stream({"frame": frame, **states})` called directly: the module docstring's usage,
                     Keras' per-call overhead (input dict checks, eager op dispatch) included
  keras_function     `stream.step_function(1)`: the same model in a `tf.function` with a fixed input
                     signature (traced once)
  keras_folded_function  the same on the inference form the exports stream (`inference_form`: BatchNorm
                     folded into the convs), normalized frames in as keras_function
  keras_xla          `stream.step_function(1, jit_compile=True)` (XLA)
  keras_offline_clip the offline uni-directional model on an 8-frame clip in a `tf.function`, divided by
                     8: what one frame costs when the clip is classified at once (not an online path)
  saved_model        `export_streaming_saved_model` (BatchNorm folded, scale_size = image_size so the
                     frame needs no resize), `tf.saved_model.load(...).signatures["call"]` on uint8 frames,
                     states carried as the signature's named tensors
  saved_model_onednn_off  the same in a process with TF_ENABLE_ONEDNN_OPTS=0 (Eigen kernels)
  tflite_float32     `export_streaming_tflite`, `TFLiteStreamingRunner(threads=--threads)`: the signature
                     runner, XNNPACK (TFLite's default delegate; `xnnpack` reports whether its start-up
                     line was seen)
  tflite_float32_no_xnnpack  the same file with TFLite's built-in kernels only (no default delegates)
  tflite_dynamic_int8  dynamic-range int8 weights (not float32: listed, not counted as fastest float32)
  onnxruntime        `export_streaming_onnx` on onnxruntime's CPUExecutionProvider, intra-op --threads
  torch_online       peer: the official online demo's `online_demo/mobilenet_v2_tsm.py` re-implemented
                     below (same modules, shapes and state_dict keys, its shift buffers passed in and
                     returned each call), eval mode, torch.inference_mode, torch.set_num_threads(--threads),
                     NCHW float32 as the demo runs it
  torch_online_channels_last  peer: the same, model and frame in torch.channels_last
  torch_online_1thread  peer, diagnostic: torch_online with torch.set_num_threads(1). On shared cores
                     torch's OpenMP threads spin at every barrier and the --threads row can be many times
                     slower than one thread; this row says how much of torch_online is that
"""

import argparse
import importlib.metadata
import json
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
NUM_SEGMENTS = 8  # the offline clip model's, and the shift fold's (1/8 of the channels, the demo's c // 8)
DEMO_NUM_CLASSES = 27  # online_demo/main.py builds MobileNetV2(n_class=27): Jester
AGREEMENT_FRAMES = 4
FLOAT32_OURS = ("keras_eager", "keras_function", "keras_folded_function", "keras_xla", "saved_model", "saved_model_onednn_off",
                "tflite_float32", "tflite_float32_no_xnnpack", "onnxruntime")
OURS = FLOAT32_OURS + ("tflite_dynamic_int8",)
PEER = "torch_online"
PEERS = (PEER, "torch_online_channels_last", "torch_online_1thread")
OFFLINE = "keras_offline_clip"
ALL_BACKENDS = ("keras_eager", "keras_function", "keras_folded_function", "keras_xla", OFFLINE, "saved_model", "saved_model_onednn_off",
                "tflite_float32", "tflite_float32_no_xnnpack", "tflite_dynamic_int8", "onnxruntime") + PEERS
DEFAULT_BACKENDS = ("keras_eager", "keras_function", "keras_folded_function", "keras_xla", OFFLINE, "saved_model",
                    "tflite_float32", "tflite_dynamic_int8", "onnxruntime", PEER, "torch_online_1thread")
TARGET_MS = 10.0
TARGET_SPEEDUP = 1.5
MARK = "@@online_speed "  # prefixes the worker's protocol lines on stdout (libraries may print too)
XNNPACK_LINE = "XNNPACK delegate"


# ------------------------------------------------------------------------------------------ weights
def official_state(num_classes, seed=0):
    """Random MobileNetV2-TSM weights in the official PyTorch key layout, as numpy arrays.

    He-normal (fan-in) convs, so the signal neither vanishes nor explodes through 52 layers; BatchNorm
    statistics and affine parameters of trained scale; a classifier of trained scale. Enough for the
    scores of two implementations to be compared meaningfully."""
    import numpy as np

    sys.path.insert(0, ROOT)
    from tsm_keras.models.mobilenetv2 import STEM_CHANNELS, TOP_CHANNELS, inverted_residual_blocks

    rng = np.random.default_rng(seed)
    state = {}

    def conv(key, out_channels, in_channels, kernel):
        fan_in = in_channels * kernel * kernel
        state[key] = rng.normal(0, np.sqrt(2.0 / fan_in), (out_channels, in_channels, kernel, kernel))

    def bn(key, channels):
        state[f"{key}.weight"] = rng.uniform(0.5, 1.5, channels)
        state[f"{key}.bias"] = rng.normal(0, 0.1, channels)
        state[f"{key}.running_mean"] = rng.normal(0, 0.1, channels)
        state[f"{key}.running_var"] = rng.uniform(0.5, 2.0, channels)
        state[f"{key}.num_batches_tracked"] = np.zeros((), np.int64)

    conv("features.0.0.weight", STEM_CHANNELS, 3, 3)
    bn("features.0.1", STEM_CHANNELS)
    for index, cin, cout, _, expansion in inverted_residual_blocks():
        hidden, prefix = cin * expansion, f"features.{index}.conv"
        parts = [] if expansion == 1 else [("pw", cin, hidden)]
        parts += [("dw", hidden, hidden), ("pw", hidden, cout)]
        for position, (kind, inp, out) in enumerate(parts):
            if kind == "dw":
                conv(f"{prefix}.{3 * position}.weight", out, 1, 3)
            else:
                conv(f"{prefix}.{3 * position}.weight", out, inp, 1)
            bn(f"{prefix}.{3 * position + 1}", out)
    top = len(inverted_residual_blocks()) + 1
    conv(f"features.{top}.0.weight", TOP_CHANNELS, inverted_residual_blocks()[-1][2], 1)
    bn(f"features.{top}.1", TOP_CHANNELS)
    state["classifier.weight"] = rng.normal(0, 0.05, (num_classes, TOP_CHANNELS))
    state["classifier.bias"] = rng.normal(0, 0.05, num_classes)
    return {key: value if value.dtype == np.int64 else value.astype(np.float32) for key, value in state.items()}


def artefact_paths(cache):
    return dict(weights=os.path.join(cache, "official_state.npz"),
                saved_model=os.path.join(cache, "streaming_saved_model"),
                onnx=os.path.join(cache, "streaming.onnx"),
                tflite_float32=os.path.join(cache, "streaming_float32.tflite"),
                tflite_dynamic_int8=os.path.join(cache, "streaming_dynamic_int8.tflite"))


def keras_offline_model(cache, num_classes, image_size):
    """Our offline uni-directional MobileNetV2-TSM (normalized frames in) with the cached weights."""
    import numpy as np

    import tsm_keras
    from tsm_keras.convert.converted import assign_converted
    from tsm_keras.convert.mobilenetv2 import convert_torch_mobilenetv2

    model = tsm_keras.build_tsm(num_classes, num_segments=NUM_SEGMENTS, backbone="mobilenetv2",
                                shift="unidirectional", image_size=image_size)
    with np.load(artefact_paths(cache)["weights"]) as archive:
        state = {key: archive[key] for key in archive.files}
    assign_converted(model, convert_torch_mobilenetv2(state, source="online_speed random weights"))
    return model


def prepare(cache, backends, num_classes, image_size):
    """Write the missing artefacts: the weights, then the exports of the Keras model holding them."""
    import numpy as np

    os.makedirs(cache, exist_ok=True)
    paths = artefact_paths(cache)
    if not os.path.exists(paths["weights"]):
        np.savez(paths["weights"] + ".tmp.npz", **official_state(num_classes))
        os.replace(paths["weights"] + ".tmp.npz", paths["weights"])
    wanted = {"saved_model": any(b.startswith("saved_model") for b in backends), "onnx": "onnxruntime" in backends,
              "tflite_float32": any(b.startswith("tflite_float32") for b in backends),
              "tflite_dynamic_int8": "tflite_dynamic_int8" in backends}
    if not any(want and not os.path.exists(paths[key]) for key, want in wanted.items()):
        return
    sys.path.insert(0, ROOT)
    import tsm_keras  # noqa: F401  (first: turns oneDNN on before TensorFlow loads)
    from tsm_keras.export import streaming

    model = keras_offline_model(cache, num_classes, image_size)
    if wanted["saved_model"] and not os.path.exists(paths["saved_model"]):
        # scale_size = image_size: an image_size frame goes through the signature without a resize.
        streaming.export_streaming_saved_model(model, paths["saved_model"] + ".tmp", scale_size=image_size,
                                               image_size=image_size)
        os.replace(paths["saved_model"] + ".tmp", paths["saved_model"])
    if wanted["onnx"] and not os.path.exists(paths["onnx"]):
        streaming.export_streaming_onnx(model, paths["onnx"] + ".tmp", image_size=image_size)
        os.replace(paths["onnx"] + ".tmp", paths["onnx"])
    for quantization in ("float32", "dynamic_int8"):
        key = f"tflite_{quantization}"
        if wanted[key] and not os.path.exists(paths[key]):
            streaming.export_streaming_tflite(model, paths[key] + ".tmp", quantization, image_size=image_size)
            os.replace(paths[key] + ".tmp", paths[key])


# ------------------------------------------------------------------------------- the PyTorch demo model
def torch_online_mobilenetv2(num_classes):
    """The official online demo's MobileNetV2-TSM (online_demo/mobilenet_v2_tsm.py), in our words.

    `model(x, *buffers)` -> `(logits, *new_buffers)`: x `[1, 3, H, W]` normalized, one buffer per shifted
    block, `[1, c // 8, h, w]`, zeros at the start. A shifted block replaces the first c // 8 channels
    of its residual branch's input by the buffer and returns the block input's first c // 8 channels as
    the next frame's buffer. Same modules and state_dict keys as the demo's, so its checkpoints load."""
    import torch
    from torch import nn

    sys.path.insert(0, ROOT)
    from tsm_keras.models.mobilenetv2 import STEM_CHANNELS, TOP_CHANNELS, inverted_residual_blocks

    shifted_blocks = (2, 4, 5, 7, 8, 9, 11, 12, 14, 15)  # the demo's shift_block_idx, counted from block 1 as 0

    def conv_bn_relu6(cin, cout, kernel, stride=1, groups=1, relu=True):
        layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        return layers + [nn.ReLU6(inplace=True)] if relu else layers

    class Block(nn.Module):
        def __init__(self, cin, cout, stride, expansion, shift):
            super().__init__()
            hidden = cin * expansion
            layers = [] if expansion == 1 else conv_bn_relu6(cin, hidden, 1)
            layers += conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden)
            layers += conv_bn_relu6(hidden, cout, 1, relu=False)
            self.conv = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout
            self.shift = shift
            if shift and not self.residual:
                raise ValueError("the demo shifts residual blocks only")

        def forward(self, x, buffer=None):
            if self.shift:
                fold = x.shape[1] // 8
                return x + self.conv(torch.cat((buffer, x[:, fold:]), dim=1)), x[:, :fold]
            return x + self.conv(x) if self.residual else self.conv(x)

    class MobileNetV2TSMOnline(nn.Module):
        def __init__(self):
            super().__init__()
            blocks = inverted_residual_blocks()
            features = [nn.Sequential(*conv_bn_relu6(3, STEM_CHANNELS, 3, 2))]
            features += [Block(cin, cout, stride, expansion, shift=number in shifted_blocks)
                         for number, (_, cin, cout, stride, expansion) in enumerate(blocks)]
            features.append(nn.Sequential(*conv_bn_relu6(blocks[-1][2], TOP_CHANNELS, 1)))
            self.features = nn.ModuleList(features)
            self.classifier = nn.Linear(TOP_CHANNELS, num_classes)

        def forward(self, x, *buffers):
            new_buffers, buffers = [], iter(buffers)
            for feature in self.features:
                if isinstance(feature, Block) and feature.shift:
                    x, buffer = feature(x, next(buffers))
                    new_buffers.append(buffer)
                else:
                    x = feature(x)
            return (self.classifier(x.mean(3).mean(2)), *new_buffers)

        def init_buffers(self, height, width):
            """Zeros for every buffer: `[1, c // 8, h, w]` at each shifted block's input."""
            buffers, height, width = [], (height + 1) // 2, (width + 1) // 2  # after the stride-2 stem
            for (_, cin, _, stride, _), feature in zip(inverted_residual_blocks(), self.features[1:-1]):
                if feature.shift:
                    buffers.append(torch.zeros(1, cin // 8, height, width))
                if stride == 2:
                    height, width = (height + 1) // 2, (width + 1) // 2
            return buffers

    return MobileNetV2TSMOnline()


# -------------------------------------------------------------------------------------------- workers
def frames_uint8(image_size, count, seed):
    import numpy as np

    return np.random.default_rng(seed).integers(0, 256, (count, image_size, image_size, 3), dtype=np.uint8)


def normalized(frames):
    """uint8 `[n, H, W, 3]` -> float32 ImageNet-normalized, as the Keras model (normalize_input=False) and
    the demo take frames (the demo's transform: /255, then mean/std)."""
    import numpy as np

    sys.path.insert(0, ROOT)
    from tsm_keras.layers import IMAGENET_MEAN, IMAGENET_STD

    return ((frames.astype(np.float32) - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)).astype(np.float32)


def make_backend(backend, cache, threads, num_classes, image_size):
    """`(step, reset, version, notes)`: `step(frame_index)` runs one frame (index into the agreement frames,
    or -1 for the timed frame) carrying the states and returns its logits; `reset()` restarts the stream."""
    import numpy as np

    paths = artefact_paths(cache)
    agree = frames_uint8(image_size, AGREEMENT_FRAMES, seed=1)
    timed = frames_uint8(image_size, 1, seed=2)
    raw = np.concatenate([agree, timed])  # index -1: the timed frame
    notes = {}
    if backend in PEERS:
        import torch

        torch.set_num_threads(1 if backend == "torch_online_1thread" else threads)
        model = torch_online_mobilenetv2(num_classes).eval()
        with np.load(paths["weights"]) as archive:
            model.load_state_dict({key: torch.from_numpy(archive[key]) for key in archive.files}, strict=True)
        inputs = torch.from_numpy(normalized(raw).transpose(0, 3, 1, 2).copy())
        layout = "NCHW"
        if backend == "torch_online_channels_last":
            model = model.to(memory_format=torch.channels_last)
            layout = "channels_last"
        frames = [inputs[i:i + 1] for i in range(len(inputs))]
        if layout == "channels_last":
            frames = [f.contiguous(memory_format=torch.channels_last) for f in frames]
        state = {}

        def reset():
            state["buffers"] = model.init_buffers(image_size, image_size)

        def step(index):
            with torch.inference_mode():
                logits, *state["buffers"] = model(frames[index], *state["buffers"])
            return logits.numpy()

        reset()
        return step, reset, f"torch {torch.__version__} ({layout}, {torch.get_num_threads()} threads)", notes

    sys.path.insert(0, ROOT)
    import tsm_keras  # noqa: F401  (first: turns oneDNN on before TensorFlow loads)
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    version = f"tensorflow {tf.__version__}"
    notes["onednn"] = sys.modules["tsm_keras.runtime"].onednn_state()
    if backend.startswith("keras"):
        import keras

        version += f", keras {keras.__version__}"
        model = keras_offline_model(cache, num_classes, image_size)
        frames = tf.constant(normalized(raw))
        if backend == OFFLINE:
            clip = tf.constant(np.repeat(normalized(raw[-1:])[None], NUM_SEGMENTS, axis=1))

            @tf.function(input_signature=[tf.TensorSpec(clip.shape, tf.float32)])
            def clip_logits(x):
                return model(x, training=False)

            clip_logits(clip)  # trace before timing
            # Per frame: one clip of NUM_SEGMENTS frames, its time divided by NUM_SEGMENTS (see worker()).
            notes["frames_per_call"] = NUM_SEGMENTS
            return (lambda index: clip_logits(clip).numpy()), (lambda: None), version, notes
        if backend == "keras_folded_function":
            from tsm_keras.models.inference import inference_form

            model = inference_form(model, fold_batchnorm=True)
        stream = tsm_keras.to_streaming(model)
        names = list(stream.state_names)
        if backend == "keras_eager":
            call = stream
        else:
            step_fn = stream.step_function(1, jit_compile=backend == "keras_xla")

            def call(inputs):
                return step_fn(inputs["frame"], {name: inputs[name] for name in names})
        state = {}

        def reset():
            state["states"] = stream.init_states(1)

        def step(index):
            logits, state["states"] = call({"frame": frames[index:index + 1] if index >= 0 else frames[-1:],
                                            **state["states"]})
            return logits.numpy()

        reset()
        return step, reset, version, notes
    if backend.startswith("saved_model"):
        loaded = tf.saved_model.load(_latest_version(paths["saved_model"]))
        signature = loaded.signatures["call"]
        init = loaded.signatures["init_states"]
        frames = tf.constant(raw)
        state = {}

        def reset():
            state["states"] = init(batch_size=tf.constant(1, tf.int32))

        def step(index):
            outputs = signature(frame=frames[index:index + 1] if index >= 0 else frames[-1:], **state["states"])
            state["states"] = {name: outputs[name] for name in state["states"]}
            return outputs["logits"].numpy()

        reset()
        return step, reset, version, notes
    if backend.startswith("tflite"):
        from tsm_keras.export.streaming import TFLiteStreamingRunner

        path = paths["tflite_dynamic_int8" if backend == "tflite_dynamic_int8" else "tflite_float32"]
        runner = TFLiteStreamingRunner(path, threads=threads)
        if backend == "tflite_float32_no_xnnpack":
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                runner.interpreter = tf.lite.Interpreter(
                    model_path=path, num_threads=threads,
                    experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
            runner.runner = runner.interpreter.get_signature_runner("call")
        frames = raw.astype(np.float32)
        state = {}

        def reset():
            state["states"] = runner.init_states()

        def step(index):
            outputs, state["states"] = runner(frames[index:index + 1] if index >= 0 else frames[-1:], state["states"])
            return outputs["logits"]

        reset()
        return step, reset, version + " (tf.lite signature runner)", notes
    if backend == "onnxruntime":
        import onnxruntime as ort

        from tsm_keras.export.streaming import ONNX_NEW_STATE_PREFIX

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(paths["onnx"], options, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs() if i.name != "frame"]
        shapes = {i.name: i.shape for i in session.get_inputs()}
        outputs = ["logits"] + [ONNX_NEW_STATE_PREFIX + name for name in names]
        frames = raw.astype(np.float32)
        state = {}

        def reset():
            state["states"] = {name: np.zeros(shapes[name], np.float32) for name in names}

        def step(index):
            logits, *new = session.run(outputs, {"frame": frames[index:index + 1] if index >= 0 else frames[-1:],
                                                 **state["states"]})
            state["states"] = dict(zip(names, new))
            return logits

        reset()
        return step, reset, f"onnxruntime {ort.__version__} (CPUExecutionProvider)", notes
    raise ValueError(f"unknown backend {backend!r}; known: {ALL_BACKENDS}")


def _latest_version(export_dir):
    versions = sorted(int(v) for v in os.listdir(export_dir) if v.isdigit())
    return os.path.join(export_dir, str(versions[-1]))


def say(message):
    sys.stdout.write(MARK + json.dumps(message) + "\n")
    sys.stdout.flush()


def worker(backend, cache, threads, num_classes, image_size):
    """Set up `backend`, report the agreement frames' scores, then time one round per "round" line on stdin."""
    import numpy as np

    try:
        step, reset, version, notes = make_backend(backend, cache, threads, num_classes, image_size)
        scores = [np.asarray(step(i), np.float64).ravel().tolist() for i in range(AGREEMENT_FRAMES)]
    except Exception as error:  # reported as this backend's error; the others go on
        say({"error": f"{type(error).__name__}: {error}"})
        return
    say({"ready": True, "version": version, "notes": notes, "scores": scores})
    frames_per_call = notes.get("frames_per_call", 1)
    for line in sys.stdin:
        command = json.loads(line)
        if command.get("quit"):
            return
        reset()
        for _ in range(command["warmup"]):
            step(-1)
        times, cpu_times = [], []
        for _ in range(command["iters"]):
            start, cpu_start = time.perf_counter(), time.process_time()
            step(-1)
            times.append((time.perf_counter() - start) * 1000 / frames_per_call)
            cpu_times.append((time.process_time() - cpu_start) * 1000 / frames_per_call)
        say({"times_ms": times, "cpu_times_ms": cpu_times})


# ------------------------------------------------------------------------------------------- driver
class Worker:
    def __init__(self, backend, args):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "1"),
                   OMP_NUM_THREADS=str(args.threads), PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        if backend == "saved_model_onednn_off":
            env["TF_ENABLE_ONEDNN_OPTS"] = "0"
        self.backend = backend
        self.stderr = tempfile.TemporaryFile(mode="w+")
        command = [sys.executable, os.path.abspath(__file__), "--worker", backend, "--cache", args.cache,
                   "--threads", str(args.threads), "--num_classes", str(args.num_classes),
                   "--image_size", str(args.image_size)]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                                        text=True, env=env)

    def read(self, timeout=1800):
        deadline = time.time() + timeout
        while time.time() < deadline:
            ready, _, _ = select.select([self.process.stdout], [], [], max(0.0, deadline - time.time()))
            if not ready:
                break
            line = self.process.stdout.readline()
            if not line:
                break
            if line.startswith(MARK):
                return json.loads(line[len(MARK):])
        return {"error": "worker ended or timed out: " + self.stderr_tail()}

    def ask(self, command):
        try:
            self.process.stdin.write(json.dumps(command) + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            return {"error": "worker ended: " + self.stderr_tail()}
        return self.read()

    def stderr_text(self):
        self.stderr.flush()
        self.stderr.seek(0)
        return self.stderr.read()

    def stderr_tail(self):
        return self.stderr_text()[-1500:]

    def close(self):
        if self.process.poll() is None:
            try:
                self.process.stdin.write(json.dumps({"quit": True}) + "\n")
                self.process.stdin.flush()
                self.process.wait(timeout=60)
            except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
                self.process.kill()


def agreement(scores, reference):
    """Each backend's max |logit difference| to `reference`'s over the agreement frames, relative to the
    reference's largest |logit| (at least 1), and whether the top-1 class matches on every frame."""
    import numpy as np

    if reference not in scores:
        return {}
    ref = np.asarray(scores[reference])
    out = {}
    for backend, values in scores.items():
        if backend == reference or backend == OFFLINE:
            continue
        values = np.asarray(values)
        diff = float(np.max(np.abs(values - ref)))
        out[backend] = {"max_abs_logit_diff": float(f"{diff:.3g}"),
                        "relative": float(f"{diff / max(1.0, float(np.max(np.abs(ref)))):.3g}"),
                        "same_top1_every_frame": bool(np.all(np.argmax(values, -1) == np.argmax(ref, -1)))}
    return out


def machine(runtime):
    """`runtime.machine_info()`, with TensorFlow/Keras versions from package metadata (TF is not loaded here)."""
    info = runtime.machine_info()
    for package in ("tensorflow", "keras", "onnxruntime", "torch", "numpy"):
        if package not in info:
            try:
                info[package] = importlib.metadata.version(package)
            except importlib.metadata.PackageNotFoundError:
                pass
    return info


def ratios_and_targets(table):
    """Speed-ups over the PyTorch online model, the fastest path, and the targets, on one table of ms/frame."""
    out = {}
    if PEER in table:
        out["speedup_over_torch_online"] = {b: round(table[PEER] / t, 2) for b, t in table.items() if b != PEER}
    ours = {b: table[b] for b in FLOAT32_OURS if b in table}
    if not ours:
        return out
    best = min(ours, key=ours.get)
    fastest_any = min((b for b in table if b in OURS), key=table.get)
    out["fastest_float32_ours"] = {"backend": best, "ms_per_frame": table[best]}
    if fastest_any != best:
        out["fastest_ours_any_precision"] = {"backend": fastest_any, "ms_per_frame": table[fastest_any]}
    targets = {f"fastest_float32_ours_at_most_{TARGET_MS:g}ms": table[best] <= TARGET_MS}
    if PEER in table:
        targets[f"torch_online_over_fastest_float32_ours_at_least_{TARGET_SPEEDUP:g}"] = (
            table[PEER] / table[best] >= TARGET_SPEEDUP)
    out["targets"] = targets
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=50, help="frames timed per round")
    parser.add_argument("--warmup", type=int, default=10, help="frames run before each round's timing")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--num_classes", type=int, default=DEMO_NUM_CLASSES,
                        help="default 27: the official online demo's (Jester)")
    parser.add_argument("--cache", default=os.path.join(ROOT, "data_cache", "online_speed"))
    parser.add_argument("--backends", default=",".join(DEFAULT_BACKENDS),
                        help=f"comma-separated, from {','.join(ALL_BACKENDS)}")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:  # given the driver's artefact folder
        return worker(args.worker, args.cache, args.threads, args.num_classes, args.image_size)
    # One set of artefacts per model shape, so changing a flag never reuses the wrong files.
    args.cache = os.path.join(args.cache, f"classes{args.num_classes}_size{args.image_size}")

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, ROOT)
    from tsm_keras import runtime  # no TensorFlow in the driver: the workers own the cores

    backends = [b for b in args.backends.split(",") if b]
    unknown = [b for b in backends if b not in ALL_BACKENDS]
    if unknown:
        parser.error(f"unknown backends {unknown}; known: {','.join(ALL_BACKENDS)}")
    started = time.time()
    subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {HERE!r}); import online_speed; "
                    f"online_speed.prepare({args.cache!r}, {backends!r}, {args.num_classes}, {args.image_size})"],
                   check=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    prepare_seconds = time.time() - started

    workers, errors, versions, notes, scores = {}, {}, {}, {}, {}
    for backend in backends:  # one at a time: set-up (tracing, XLA) must not slow another's
        w = Worker(backend, args)
        hello = w.read()
        if "error" in hello:
            errors[backend] = hello["error"]
            w.close()
            continue
        workers[backend] = w
        versions[backend] = hello["version"]
        notes[backend] = hello["notes"]
        scores[backend] = hello["scores"]
    load_before = os.getloadavg()
    per_round = {b: [] for b in workers}
    cpu_per_round = {b: [] for b in workers}
    for _ in range(args.rounds):
        for backend, w in workers.items():
            if backend in errors:
                continue
            out = w.ask({"warmup": args.warmup, "iters": args.iters})
            if "error" in out:
                errors[backend] = out["error"]
                continue
            per_round[backend].append(statistics.median(out["times_ms"]))
            cpu_per_round[backend].append(statistics.median(out["cpu_times_ms"]))
    load_after = os.getloadavg()
    for backend, w in workers.items():
        w.close()
        if backend.startswith("tflite"):
            text = w.stderr_text()
            notes[backend]["xnnpack"] = XNNPACK_LINE in text
            if backend == "tflite_float32_no_xnnpack" and XNNPACK_LINE in text:
                notes[backend]["xnnpack_note"] = "an XNNPACK line was seen: the no-delegate resolver did not hold"

    median = {b: round(statistics.median(v), 3) for b, v in per_round.items() if v}
    fastest = {b: round(min(v), 3) for b, v in per_round.items() if v}
    result = {
        "benchmark": (f"online latency per frame, batch 1, uni-directional MobileNetV2-TSM streaming, "
                      f"{args.image_size}x{args.image_size}, {args.num_classes} classes, {args.threads} threads, "
                      "float32 unless named"),
        "ms_per_frame": median,
        "fastest_round_ms_per_frame": fastest,
        "round_medians_min_max_ms": {b: [round(min(v), 3), round(max(v), 3)] for b, v in per_round.items() if v},
        "cpu_ms_per_frame": {b: round(statistics.median(v), 3) for b, v in cpu_per_round.items() if v},
        "median": ratios_and_targets(median),
        "fastest_round": ratios_and_targets(fastest),
        "targets_note": (f"fastest float32 path of ours <= {TARGET_MS:g} ms per frame; PyTorch online model's ms "
                         f"over it >= {TARGET_SPEEDUP:g}. keras_offline_clip is a clip model's cost per frame, not "
                         "an online path: not counted. tflite_dynamic_int8 is not float32: not counted as fastest "
                         "float32."),
        "agreement_to_torch_online": agreement(scores, PEER),
        "agreement_to_keras_function": agreement(scores, "keras_function"),
        "agreement_note": (f"logits of {AGREEMENT_FRAMES} frames streamed from zero states, same weights; relative: "
                           "max |diff| / max(1, max |reference logit|)"),
        "notes": notes,
        "errors": errors,
        "machine": machine(runtime),
        "load_average_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "versions": versions,
        "settings": {"rounds": args.rounds, "iters": args.iters, "warmup": args.warmup, "threads": args.threads,
                     "image_size": args.image_size, "num_classes": args.num_classes, "backends": backends,
                     "prepare_seconds": round(prepare_seconds, 1), "wall_seconds": round(time.time() - started, 1)},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
