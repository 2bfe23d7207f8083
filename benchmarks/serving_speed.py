"""Serving latency, batch 1, 8x224^2 TSM-ResNet-50: our SavedModel, TFLite and ONNX Runtime paths next to
PyTorch eager and PaddleVideo's ResNetTSM, measured in the same run.

    python benchmarks/serving_speed.py [--rounds 3] [--iters 5] [--threads 2] [--cache data_cache/serving_speed]
                                       [--backends saved_model,tflite_float32,...]

Prints one JSON object: seconds per clip per backend (median over rounds of each round's median, and
the fastest round's), process CPU seconds per clip, ratios to our best float32 path and the targets
on both, the machine and library versions, and the load average before and after. The 2 cores may
be shared: when the load average is above the core count, the medians mostly measure the other
jobs (OpenMP runtimes, torch and paddle, suffer most); compare the fastest round and rerun.

Every backend runs in its own fresh process (paddle segfaults when imported after TensorFlow, and
one runtime's thread pools must not slow another's), in alternating rounds so that drift in machine
load hits all of them. Artefacts (SavedModel, .tflite, .onnx of one random-weight TSM-R50) are
written once to --cache and reused.

Backends:
  saved_model      tf.saved_model.load(...).signatures["serving_clips"] (float32 cropped clips)
  saved_model_uint8  signatures["serving_default"] on uint8 256x340 frames (resize + crop in the graph)
  saved_model_frozen_weights  saved_model in a process started with TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1:
                   oneDNN keeps each conv's reordered filter instead of reordering it on every call
                   (Intel's setting for SavedModel inference). Same graph and float32 arithmetic.
                   Only for processes whose weights never change: it is process-wide, and convs
                   run eagerly or after a variable assignment then return stale results (README).
  saved_model_bfloat16  the same random-weight model exported with --export_precision=bfloat16
                   (bfloat16 convs and activations: not float32, so listed, not in "best")
  tflite_float32   tf.lite.Interpreter, XNNPACK, --threads
  tflite_dynamic_int8  the same with dynamic-range int8 weights (not float32: listed, not in "best")
  onnxruntime      tf2onnx graph on onnxruntime CPUExecutionProvider, intra-op --threads
  torch_eager      pure-PyTorch TSM-R50 written below (official TSM shift: zeros + slice copies),
                   NCHW float32, torch.inference_mode, torch.set_num_threads(--threads)
  paddlevideo      PaddleVideo's ResNetTSM(50) from the installed ppvideo (loaded by path, relative
                   imports stubbed: tests/convert/paddle_reference.py) + avgpool/Linear head, dygraph,
                   paddle.no_grad
  fp32_gemm_ceiling  not a model: a 4096^2 float32 matmul in TensorFlow (oneDNN), --threads. Reported
                   apart as the machine's float32 ceiling: the model's multiply-accumulates (counted
                   from its graph) at that GEMM rate give a latency no float32 path can beat, which
                   says how far each target is from what the cores can do.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
NUM_SEGMENTS, IMAGE_SIZE, NUM_CLASSES = 8, 224, 400
OURS_FLOAT32 = ("saved_model", "saved_model_frozen_weights", "tflite_float32", "onnxruntime")
FROZEN_WEIGHTS_ENV = "TF_ONEDNN_ASSUME_FROZEN_WEIGHTS"
CEILING = "fp32_gemm_ceiling"
GEMM_SIZE = 4096
ALL_BACKENDS = ("saved_model", "saved_model_uint8", "saved_model_frozen_weights", "saved_model_bfloat16",
                "tflite_float32", "tflite_dynamic_int8", "onnxruntime", "torch_eager", "paddlevideo", CEILING)


# ------------------------------------------------------------------------------------------ artefacts
def artefact_paths(cache):
    return dict(saved_model=os.path.join(cache, "saved_model"),
                saved_model_bfloat16=os.path.join(cache, "saved_model_bfloat16"),
                onnx=os.path.join(cache, "tsm_r50.onnx"),
                tflite_float32=os.path.join(cache, "tsm_r50_float32.tflite"),
                tflite_dynamic_int8=os.path.join(cache, "tsm_r50_dynamic_int8.tflite"))


def prepare(cache, backends):
    """Write the missing artefacts (in this process: TensorFlow only)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, ROOT)
    paths = artefact_paths(cache)
    needed = {"saved_model": any(b.startswith("saved_model") and b != "saved_model_bfloat16" for b in backends),
              "saved_model_bfloat16": "saved_model_bfloat16" in backends,
              "onnx": "onnxruntime" in backends,
              "tflite_float32": "tflite_float32" in backends,
              "tflite_dynamic_int8": "tflite_dynamic_int8" in backends}
    if not any(needed[k] and not os.path.exists(paths[k]) for k in needed):
        return
    import keras

    import tsm_keras
    from tsm_keras.export.saved_model import export_saved_model, resolve_saved_model_dir

    keras.utils.set_random_seed(0)
    model = tsm_keras.build_tsm(NUM_CLASSES, num_segments=NUM_SEGMENTS, backbone="resnet50", image_size=IMAGE_SIZE,
                                normalize_input=True)
    os.makedirs(cache, exist_ok=True)
    for key, precision in (("saved_model", "float32"), ("saved_model_bfloat16", "bfloat16")):
        if needed[key] and not os.path.exists(paths[key]):
            export_saved_model(model, paths[key], scale_size=256, precision=precision)
            resolve_saved_model_dir(paths[key])
    if needed["onnx"] and not os.path.exists(paths["onnx"]):
        from tsm_keras.export.onnx import export_onnx

        export_onnx(model, paths["onnx"] + ".tmp")
        os.replace(paths["onnx"] + ".tmp", paths["onnx"])
    for quantization in ("float32", "dynamic_int8"):
        key = f"tflite_{quantization}"
        if needed[key] and not os.path.exists(paths[key]):
            from tsm_keras.export.tflite import export_tflite

            export_tflite(model, paths[key] + ".tmp", quantization)
            os.replace(paths[key] + ".tmp", paths[key])


# -------------------------------------------------------------------------------------------- workers
def make_runner(backend, cache, threads):
    """A no-argument function running one batch-1 clip through `backend`, and its version string."""
    import numpy as np

    rng = np.random.default_rng(0)
    paths = artefact_paths(cache)
    if backend.startswith("saved_model"):
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        sys.path.insert(0, ROOT)
        folder = paths["saved_model_bfloat16" if backend == "saved_model_bfloat16" else "saved_model"]
        loaded = tf.saved_model.load(_latest_version(folder))
        if backend in ("saved_model", "saved_model_frozen_weights", "saved_model_bfloat16"):
            signature = loaded.signatures["serving_clips"]
            clips = tf.constant(rng.uniform(0, 255, (1, NUM_SEGMENTS, IMAGE_SIZE, IMAGE_SIZE, 3)).astype("float32"))
            return (lambda: signature(clips=clips)["probabilities"].numpy()), f"tensorflow {tf.__version__}"
        signature = loaded.signatures["serving_default"]
        frames = tf.constant(rng.integers(0, 256, (1, NUM_SEGMENTS, 256, 340, 3), dtype=np.uint8))
        return (lambda: signature(frames=frames)["probabilities"].numpy()), f"tensorflow {tf.__version__}"
    if backend.startswith("tflite"):
        import tensorflow as tf

        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            interpreter = tf.lite.Interpreter(model_path=paths[backend], num_threads=threads)
        runner = interpreter.get_signature_runner("serving_default")
        clips = rng.uniform(0, 255, (1, NUM_SEGMENTS, IMAGE_SIZE, IMAGE_SIZE, 3)).astype("float32")
        return (lambda: runner(clips=clips)["probabilities"]), f"tensorflow {tf.__version__} (tf.lite, XNNPACK)"
    if backend == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(paths["onnx"], options, providers=["CPUExecutionProvider"])
        clips = rng.uniform(0, 255, (1, NUM_SEGMENTS, IMAGE_SIZE, IMAGE_SIZE, 3)).astype("float32")
        return (lambda: session.run(["probabilities"], {"clips": clips})[0]), f"onnxruntime {ort.__version__}"
    if backend == "torch_eager":
        import torch

        torch.set_num_threads(threads)
        model = torch_tsm_resnet50(NUM_CLASSES, NUM_SEGMENTS).eval()
        clips = torch.from_numpy(rng.normal(size=(NUM_SEGMENTS, 3, IMAGE_SIZE, IMAGE_SIZE)).astype("float32"))

        def run():
            with torch.inference_mode():
                return torch.softmax(model(clips), -1).numpy()

        return run, f"torch {torch.__version__}"
    if backend == "paddlevideo":
        return paddle_runner(rng)
    if backend == CEILING:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        a, b = (tf.constant(rng.normal(size=(GEMM_SIZE, GEMM_SIZE)).astype("float32")) for _ in range(2))
        matmul = tf.function(tf.matmul)
        return (lambda: matmul(a, b).numpy()), f"tensorflow {tf.__version__}"
    raise ValueError(f"unknown backend {backend!r}; known: {ALL_BACKENDS}")


def _latest_version(export_dir):
    versions = sorted(int(v) for v in os.listdir(export_dir) if v.isdigit())
    return os.path.join(export_dir, str(versions[-1]))


def paddle_runner(rng):
    import importlib.util

    import paddle

    spec = importlib.util.spec_from_file_location("paddle_reference",
                                                  os.path.join(ROOT, "tests", "convert", "paddle_reference.py"))
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    resnet_tsm = reference.load_resnet_tsm_module()
    paddle.set_device("cpu")
    backbone = resnet_tsm.ResNetTSM(depth=50, num_seg=NUM_SEGMENTS)
    fc = paddle.nn.Linear(2048, NUM_CLASSES)
    backbone.eval()
    fc.eval()
    clips = paddle.to_tensor(rng.normal(size=(NUM_SEGMENTS, 3, IMAGE_SIZE, IMAGE_SIZE)).astype("float32"))

    def run():
        with paddle.no_grad():  # PaddleVideo's recognizer2d + TSMHead at inference
            features = paddle.nn.functional.adaptive_avg_pool2d(backbone(clips), 1)
            scores = fc(paddle.reshape(features, [-1, 2048]))
            scores = paddle.mean(paddle.reshape(scores, [-1, NUM_SEGMENTS, NUM_CLASSES]), axis=1)
            return paddle.nn.functional.softmax(scores, -1).numpy()

    return run, f"paddlepaddle {paddle.__version__} (PaddleVideo ResNetTSM from ppvideo 2.3.1)"


def torch_tsm_resnet50(num_classes, num_segments):
    """The official TSM ResNet-50 in pure torch: the one `train_speed.py` measures too."""
    import torch

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from torch_tsm import TSMResNet50

    torch.manual_seed(0)
    return TSMResNet50(num_classes, num_segments)


def worker(backend, cache, threads, warmup, iters):
    run, version = make_runner(backend, cache, threads)
    for _ in range(warmup):
        run()
    times, cpu_times = [], []
    for _ in range(iters):
        start, cpu_start = time.perf_counter(), time.process_time()
        run()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    print(json.dumps({"backend": backend, "version": version, "times": times, "cpu_times": cpu_times}))


# ------------------------------------------------------------------------------------------- driver
def run_child(backend, args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", OMP_NUM_THREADS=str(args.threads),
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env[FROZEN_WEIGHTS_ENV] = "1" if backend == "saved_model_frozen_weights" else "0"
    command = [sys.executable, os.path.abspath(__file__), "--worker", backend, "--cache", args.cache,
               "--threads", str(args.threads), "--warmup", str(args.warmup), "--iters", str(args.iters)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    for line in reversed(result.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {"backend": backend, "error": (result.stderr or result.stdout)[-1500:]}


def machine():
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def model_macs(cache):
    """Multiply-accumulates of one 8x224^2 clip through TSM-R50, counted from its graph (cached)."""
    path = os.path.join(cache, "macs.json")
    if not os.path.isfile(path):
        code = ("import json, sys; import tsm_keras; from tsm_keras.models.flops import count_macs; "
                f"m = tsm_keras.build_tsm({NUM_CLASSES}, num_segments={NUM_SEGMENTS}, backbone='resnet50', "
                f"image_size={IMAGE_SIZE}); "
                f"print(json.dumps(count_macs(m, (1, {NUM_SEGMENTS}, {IMAGE_SIZE}, {IMAGE_SIZE}, 3))))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT))
        os.makedirs(cache, exist_ok=True)
        with open(path, "w") as f:
            f.write(out.stdout.strip().splitlines()[-1])
    with open(path) as f:
        return json.load(f)["macs"]


def ceiling(gemm_seconds, cache, seconds):
    """The float32 floor latency at the fastest round's GEMM rate, and what each target asks of it."""
    gflops = 2 * GEMM_SIZE ** 3 / gemm_seconds / 1e9
    macs = model_macs(cache)
    floor = 2 * macs / (gflops * 1e9)
    out = {"gemm_gflops": round(gflops, 1), "model_gmacs": round(macs / 1e9, 2),
           "seconds_per_clip_at_gemm_rate": round(floor, 4)}
    for backend, factor in (("torch_eager", 2.0), ("paddlevideo", 3.0)):
        if backend in seconds:
            target = seconds[backend] / factor
            out[f"{backend}_target_seconds"] = round(target, 4)
            out[f"{backend}_target_as_fraction_of_gemm_rate"] = round(floor / target, 2)
    ours = {b: seconds[b] for b in OURS_FLOAT32 if b in seconds}
    if ours:
        best = min(ours, key=ours.get)
        out["best_ours_as_fraction_of_gemm_rate"] = round(floor / seconds[best], 2)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--cache", default=os.path.join(ROOT, "data_cache", "serving_speed"))
    parser.add_argument("--backends", default=",".join(ALL_BACKENDS))
    parser.add_argument("--worker", default="")
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.cache, args.threads, args.warmup, args.iters)

    backends = [b for b in args.backends.split(",") if b]
    started = time.time()
    prepare_start = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {HERE!r}); import serving_speed; "
                    f"serving_speed.prepare({args.cache!r}, {backends!r})"], check=True,
                   env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    prepare_seconds = time.perf_counter() - prepare_start
    load_before = os.getloadavg()
    per_round = {b: [] for b in backends}
    cpu_per_round = {b: [] for b in backends}
    versions, errors = {}, {}
    for _ in range(args.rounds):
        for backend in backends:
            if backend in errors:
                continue
            out = run_child(backend, args)
            if "error" in out:
                errors[backend] = out["error"]
                continue
            versions[backend] = out["version"]
            per_round[backend].append(statistics.median(out["times"]))
            cpu_per_round[backend].append(statistics.median(out["cpu_times"]))
    load_after = os.getloadavg()

    gemm_seconds = per_round.pop(CEILING, None)
    cpu_per_round.pop(CEILING, None)
    seconds = {b: round(statistics.median(v), 4) for b, v in per_round.items() if v}
    fastest = {b: round(min(v), 4) for b, v in per_round.items() if v}
    cpu_seconds = {b: round(statistics.median(v), 4) for b, v in cpu_per_round.items() if v}
    spread = {b: [round(min(v), 4), round(max(v), 4)] for b, v in per_round.items() if v}
    result = {
        "benchmark": "serving latency, batch 1, TSM-ResNet-50, 8 x 224 x 224, float32 unless named",
        "seconds_per_clip": seconds,
        "fastest_round_seconds_per_clip": fastest,
        "cpu_seconds_per_clip": cpu_seconds,
        "round_medians_min_max": spread,
    }
    # Ratios and targets on the median over rounds, and on the fastest round (closest to an idle
    # machine when others share the cores).
    for label, table in (("median", seconds), ("fastest_round", fastest)):
        ours = {b: table[b] for b in OURS_FLOAT32 if b in table}
        if not ours:
            continue
        best = min(ours, key=ours.get)
        result[f"{label}_best_ours_float32"] = best
        result[f"{label}_ratios_to_best_ours"] = {b: round(t / table[best], 2) for b, t in table.items()}
        targets = {"best_ours_at_most_0.3s": table[best] <= 0.3}
        if "torch_eager" in table:
            targets["torch_eager_over_best_ours_at_least_2"] = table["torch_eager"] / table[best] >= 2.0
        if "paddlevideo" in table:
            targets["paddlevideo_over_best_ours_at_least_3"] = table["paddlevideo"] / table[best] >= 3.0
        result[f"{label}_targets"] = targets
    if gemm_seconds:
        result["fp32_ceiling"] = ceiling(min(gemm_seconds), args.cache, seconds)
    result.update({
        "errors": errors,
        "machine": machine(),
        "load_average_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "versions": versions,
        "settings": {"rounds": args.rounds, "iters": args.iters, "warmup": args.warmup, "threads": args.threads,
                     "prepare_seconds": round(prepare_seconds, 1), "wall_seconds": round(time.time() - started, 1)},
    })
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
