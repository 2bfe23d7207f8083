"""Serving latency, batch 1, 8x224^2 TSM-ResNet-50: our SavedModel, TFLite and ONNX Runtime paths next to
PyTorch eager (NCHW and channels_last), OpenVINO and PaddleVideo's ResNetTSM, measured in the same run.

    python benchmarks/serving_speed.py [--rounds 3] [--iters 5] [--threads 2] [--cache data_cache/serving_speed]
                                       [--backends saved_model,tflite_float32,...]

Prints one JSON object: seconds per clip per backend (median over rounds of each round's median, and
the fastest round's), process CPU seconds per clip, ratios to our best float32 path and the targets
on both, a summary (below), how far each output is from a reference backend's on the same input,
the machine (`tsm_keras.runtime.machine_info()`) and library versions, and the load average before
and after. The 2 cores may
be shared: when the load average is above the core count, the medians mostly measure the other
jobs (OpenMP runtimes, torch and paddle, suffer most); compare the fastest round and rerun.

Every backend runs in its own fresh process (paddle segfaults when imported after TensorFlow, and
one runtime's thread pools must not slow another's), in alternating rounds so that drift in machine
load hits all of them. Artefacts (SavedModel, .tflite, .onnx of one random-weight TSM-R50) are
written once to --cache and reused.

Summary: `best_float32_ours` (fastest of our float32 paths: the SavedModel ones, TFLite float32, ONNX
Runtime on our export), `best_float32_peer` (fastest of PyTorch NCHW, PyTorch channels_last, and ONNX
Runtime and OpenVINO each on the PyTorch model's ONNX export and OpenVINO on ours), `peer/ours` (their
seconds per clip divided: above 1, ours is faster), on the median and on the fastest round;
`peer/ours_counting_onnxruntime_on_our_export` is the same ratio with ONNX Runtime on our own export
also counted as a peer (it is a path of ours, so that ratio cannot exceed 1 when it is the fastest); and
what fraction of the machine's float32 rate our best path reaches, model FLOPs (2 x multiply-
accumulates) per second over the measured 4096^2 GEMM rate (when fp32_gemm_ceiling ran) and over
`fma_peak_gflops`: vector bits / 32 x 2 FLOP per FMA x 2 FMA units x cores used x the nominal clock
of /proc/cpuinfo (AMD Zen 4 runs 512-bit ops as two 256-bit halves: counted as 256 bits there). Where the
GEMM beats that peak (boost clocks: a Zen 4 at a nominal 2.6 GHz ran it at 219 GFLOP/s against 166), the
fraction is over the peak at the clock the GEMM implies (`fma_peak_gflops_at_running_clock`).

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
  onnxruntime      tf2onnx graph on onnxruntime CPUExecutionProvider, intra-op --threads (ours: our export)
  onnxruntime_torch  peer: the PyTorch model of torch_eager exported by torch.onnx.export (TorchScript
                   exporter, opset 17, softmax in the graph, input [T, 3, 224, 224] normalized NCHW),
                   what a PyTorch user deploys on ONNX Runtime; same session options. Its shift is
                   exported as a concat of zero-padded slices (torch_tsm.temporal_shift_concat, checked
                   equal to the model's own before export): the in-place shift exports its zeros as a
                   folded constant per block (277 MB of .onnx) and its assignments as scatters
  torch_eager      pure-PyTorch TSM-R50 of benchmarks/torch_tsm.py (official TSM shift: zeros + slice
                   copies), NCHW float32, torch.inference_mode, torch.set_num_threads(--threads)
  torch_channels_last  the same model and input, both `.to(memory_format=torch.channels_last)`
  openvino         OpenVINO CPU plugin on the onnxruntime backend's ONNX file, LATENCY hint,
                   INFERENCE_NUM_THREADS=--threads, inference precision f32 set explicitly (on CPUs
                   with AVX512_BF16 or AMX its default is bf16)
  openvino_torch   peer: the same OpenVINO settings on onnxruntime_torch's ONNX file
  paddlevideo      PaddleVideo's ResNetTSM(50) from the installed ppvideo (loaded by path, relative
                   imports stubbed: tests/convert/paddle_reference.py) + avgpool/Linear head, dygraph,
                   paddle.no_grad
  fp32_gemm_ceiling  not a model: a 4096^2 float32 matmul in TensorFlow (oneDNN), --threads. Reported
                   apart as the machine's float32 ceiling: the model's multiply-accumulates (counted
                   from its graph) at that GEMM rate give a latency no float32 path can beat, which
                   says how far each target is from what the cores can do.
"""

import argparse
import importlib.metadata
import json
import os
import statistics
import subprocess
import sys
import time

from child_process import child_env, run_json_child

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
NUM_SEGMENTS, IMAGE_SIZE, NUM_CLASSES = 8, 224, 400
OURS_FLOAT32 = ("saved_model", "saved_model_frozen_weights", "tflite_float32", "onnxruntime")
PEERS_FLOAT32 = ("torch_eager", "torch_channels_last", "onnxruntime_torch", "openvino", "openvino_torch")
# Backends that run the same weights on the same input, each group's outputs compared with its first
# measured member's: our export (float32 cropped clips) and the PyTorch model.
SAME_OUTPUT_GROUPS = (("saved_model", "onnxruntime", "saved_model_frozen_weights", "tflite_float32", "openvino",
                       "saved_model_bfloat16", "tflite_dynamic_int8"),
                      ("torch_eager", "torch_channels_last", "onnxruntime_torch", "openvino_torch"))
FMA_UNITS = 2  # per core, assumed (two FMA pipes: Intel server cores with AVX-512, AMD Zen 4)
FROZEN_WEIGHTS_ENV = "TF_ONEDNN_ASSUME_FROZEN_WEIGHTS"
CEILING = "fp32_gemm_ceiling"
GEMM_SIZE = 4096
ALL_BACKENDS = ("saved_model", "saved_model_uint8", "saved_model_frozen_weights", "saved_model_bfloat16",
                "tflite_float32", "tflite_dynamic_int8", "onnxruntime", "torch_eager", "torch_channels_last",
                "onnxruntime_torch", "openvino", "openvino_torch", "paddlevideo", CEILING)
TORCH_ONNX = ("onnxruntime_torch", "openvino_torch")


# ------------------------------------------------------------------------------------------ artefacts
def artefact_paths(cache):
    return dict(saved_model=os.path.join(cache, "saved_model"),
                saved_model_bfloat16=os.path.join(cache, "saved_model_bfloat16"),
                onnx=os.path.join(cache, "tsm_r50.onnx"),
                torch_onnx=os.path.join(cache, "torch_tsm_r50.onnx"),
                tflite_float32=os.path.join(cache, "tsm_r50_float32.tflite"),
                tflite_dynamic_int8=os.path.join(cache, "tsm_r50_dynamic_int8.tflite"))


def prepare(cache, backends):
    """Write the missing artefacts (in this process: TensorFlow only)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, ROOT)
    paths = artefact_paths(cache)
    needed = {"saved_model": any(b.startswith("saved_model") and b != "saved_model_bfloat16" for b in backends),
              "saved_model_bfloat16": "saved_model_bfloat16" in backends,
              "onnx": "onnxruntime" in backends or "openvino" in backends,
              "tflite_float32": "tflite_float32" in backends,
              "tflite_dynamic_int8": "tflite_dynamic_int8" in backends}
    if not any(needed[k] and not os.path.exists(paths[k]) for k in needed):
        return
    import tsm_keras  # first: turns oneDNN on before TensorFlow loads

    import keras
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


def prepare_torch(cache):
    """The PyTorch model's ONNX file for the ONNX Runtime / OpenVINO peers (in this process: torch only)."""
    import numpy as np
    import torch

    path = artefact_paths(cache)["torch_onnx"]
    if os.path.exists(path):
        return
    from torch_tsm import Bottleneck, temporal_shift_concat

    model = torch.nn.Sequential(torch_tsm_resnet50(NUM_CLASSES, NUM_SEGMENTS), torch.nn.Softmax(-1)).eval()
    clips = torch.from_numpy(torch_clips(np.random.default_rng(0)))
    with torch.no_grad():
        expected = model(clips)
        for block in model.modules():  # the export-friendly shift: same values, no scatters or folded zeros
            if isinstance(block, Bottleneck):
                block.shift = temporal_shift_concat
        if not torch.allclose(model(clips), expected, rtol=1e-5, atol=1e-7):
            raise AssertionError("temporal_shift_concat changed the PyTorch model's outputs")
        os.makedirs(cache, exist_ok=True)
        torch.onnx.export(model, (clips,), path + ".tmp", dynamo=False, opset_version=17, input_names=["clips"],
                          output_names=["probabilities"], do_constant_folding=True)
    os.replace(path + ".tmp", path)


# -------------------------------------------------------------------------------------------- workers
def make_runner(backend, cache, threads):
    """A no-argument function running one batch-1 clip through `backend`, and its version string."""
    import numpy as np

    rng = np.random.default_rng(0)
    paths = artefact_paths(cache)
    if backend.startswith("saved_model") or backend.startswith("tflite") or backend == CEILING:
        sys.path.insert(0, ROOT)
        import tsm_keras  # noqa: F401  (before TensorFlow: turns oneDNN on)
    if backend.startswith("saved_model"):
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
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
        clips = rng.uniform(0, 255, (1, NUM_SEGMENTS, IMAGE_SIZE, IMAGE_SIZE, 3)).astype("float32")
        return onnxruntime_runner(paths["onnx"], threads, clips, "")
    if backend == "onnxruntime_torch":
        return onnxruntime_runner(paths["torch_onnx"], threads, torch_clips(rng),
                                  " (the PyTorch model's torch.onnx.export)")
    if backend == "openvino":
        return openvino_runner(paths["onnx"], threads, rng)
    if backend == "openvino_torch":
        return openvino_runner(paths["torch_onnx"], threads, rng, clips=torch_clips(rng),
                               source="the PyTorch model's torch.onnx.export")
    if backend in ("torch_eager", "torch_channels_last"):
        import torch

        torch.set_num_threads(threads)
        model = torch_tsm_resnet50(NUM_CLASSES, NUM_SEGMENTS).eval()
        clips = torch.from_numpy(torch_clips(rng))
        layout = "NCHW"
        if backend == "torch_channels_last":
            model = model.to(memory_format=torch.channels_last)
            clips = clips.to(memory_format=torch.channels_last)
            layout = "channels_last"

        def run():
            with torch.inference_mode():
                return torch.softmax(model(clips), -1).numpy()

        return run, f"torch {torch.__version__} ({layout})"
    if backend == "paddlevideo":
        return paddle_runner(rng)
    if backend == CEILING:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        a, b = (tf.constant(rng.normal(size=(GEMM_SIZE, GEMM_SIZE)).astype("float32")) for _ in range(2))
        matmul = tf.function(tf.matmul)
        return (lambda: matmul(a, b).numpy()), f"tensorflow {tf.__version__}"
    raise ValueError(f"unknown backend {backend!r}; known: {ALL_BACKENDS}")


def onnxruntime_runner(onnx_path, threads, clips, source):
    """ONNX Runtime's CPU provider on an ONNX file, intra-op `threads` (not tsm_keras.export.onnx's
    session helper: importing that module loads TensorFlow into this worker)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
    return (lambda: session.run(["probabilities"], {"clips": clips})[0]), f"onnxruntime {ort.__version__}{source}"


def torch_clips(rng):
    """The PyTorch model's input: one clip of normalized frames `[T, 3, H, W]` float32 (NCHW)."""
    return rng.normal(size=(NUM_SEGMENTS, 3, IMAGE_SIZE, IMAGE_SIZE)).astype("float32")


def openvino_runner(onnx_path, threads, rng, clips=None, source="our export"):
    """OpenVINO's CPU plugin on an ONNX file (ours, or the PyTorch model's), float32 precision set explicitly."""
    import openvino as ov
    import openvino.properties as props
    import openvino.properties.hint as hints

    core = ov.Core()
    compiled = core.compile_model(onnx_path, "CPU", {props.inference_num_threads: threads,
                                                     hints.performance_mode: hints.PerformanceMode.LATENCY,
                                                     hints.inference_precision: ov.Type.f32})
    precision = compiled.get_property(hints.inference_precision)
    if precision != ov.Type.f32:
        raise RuntimeError(f"OpenVINO compiled the model with inference precision {precision}, not f32")
    request = compiled.create_infer_request()
    output = compiled.output("probabilities")
    if clips is None:
        clips = rng.uniform(0, 255, (1, NUM_SEGMENTS, IMAGE_SIZE, IMAGE_SIZE, 3)).astype("float32")
    return (lambda: request.infer({"clips": clips})[output]), (
        f"openvino {ov.__version__} ({source}; CPU plugin, inference precision {precision.get_type_name()}, "
        f"{compiled.get_property(props.inference_num_threads)} threads, "
        f"{compiled.get_property(hints.performance_mode)} hint)")


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
    import numpy as np

    run, version = make_runner(backend, cache, threads)
    for _ in range(warmup):
        run()
    times, cpu_times = [], []
    for _ in range(iters):
        start, cpu_start = time.perf_counter(), time.process_time()
        output = run()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    out = {"backend": backend, "version": version, "times": times, "cpu_times": cpu_times}
    if any(backend in group for group in SAME_OUTPUT_GROUPS):
        out["output"] = np.asarray(output, dtype="float64").ravel().tolist()
    if "tensorflow" in sys.modules and "tsm_keras.runtime" in sys.modules:
        out["onednn"] = sys.modules["tsm_keras.runtime"].onednn_state()
    print(json.dumps(out))


# ------------------------------------------------------------------------------------------- driver
def run_child(backend, args):
    env = child_env(TF_CPP_MIN_LOG_LEVEL="3", OMP_NUM_THREADS=str(args.threads))
    env[FROZEN_WEIGHTS_ENV] = "1" if backend == "saved_model_frozen_weights" else "0"
    command = [sys.executable, os.path.abspath(__file__), "--worker", backend, "--cache", args.cache,
               "--threads", str(args.threads), "--warmup", str(args.warmup), "--iters", str(args.iters)]
    return dict(dict(backend=backend), **run_json_child(command, env=env, timeout=1800))


def machine(runtime):
    """`runtime.machine_info()`, with TensorFlow/Keras versions from package metadata if TF is not loaded."""
    info = runtime.machine_info()
    for package in ("tensorflow", "keras"):
        if package not in info:
            try:
                info[package] = importlib.metadata.version(package)
            except importlib.metadata.PackageNotFoundError:
                pass
    return info


def fma_peak(cores, path="/proc/cpuinfo"):
    """The float32 FMA peak of `cores` cores in GFLOP/s from the ISA and the nominal clock, with its inputs."""
    from tsm_keras import runtime

    fields = runtime.read_cpuinfo(path)["fields"]
    flags = set(fields.get("flags", "").split())
    notes = []
    if "avx512f" in flags:
        width = 512
    elif "avx2" in flags or "avx" in flags:
        width = 256
    else:
        width = 128
    if "fma" not in flags:
        notes.append("no FMA flag: a multiply and an add unit counted as one FMA unit each")
    try:
        family = int(fields.get("cpu family", "-1"))
    except ValueError:
        family = -1
    if width == 512 and fields.get("vendor_id") == "AuthenticAMD" and family == 25:
        width = 256
        notes.append("AMD family 25 with AVX-512 is Zen 4, which runs each 512-bit op as two 256-bit halves on "
                     "its 256-bit FMA units: counted as 256 bits")
    try:
        mhz = float(fields["cpu MHz"])
    except (KeyError, ValueError):
        return {"fma_peak_gflops": None, "fma_peak_assumption": "no 'cpu MHz' in /proc/cpuinfo"}
    flop_per_cycle = width // 32 * 2 * FMA_UNITS
    gflops = flop_per_cycle * cores * mhz / 1000
    assumption = (f"{width}-bit vectors / 32 bits x 2 FLOP per FMA x {FMA_UNITS} FMA units per core (assumed) = "
                  f"{flop_per_cycle} FLOP/cycle/core, x {cores} cores used (min of --threads and cpu_count), "
                  f"x {mhz} MHz: the nominal 'cpu MHz' reading of /proc/cpuinfo (first processor); the "
                  f"clock under load (turbo, AVX-512 licence) differs")
    return {"fma_peak_gflops": round(gflops, 1),
            "fma_peak_assumption": "; ".join([assumption] + notes),
            "fma_peak_inputs": {"vector_width_bits": width, "fma_units": FMA_UNITS,
                                "flop_per_cycle_per_core": flop_per_cycle, "cores": cores, "cpu_mhz": mhz}}


def output_agreement(outputs):
    """Per group of SAME_OUTPUT_GROUPS: each backend's max |probability difference| to the group's first."""
    import numpy as np

    out = {}
    for group in SAME_OUTPUT_GROUPS:
        measured = [b for b in group if b in outputs]
        if len(measured) < 2:
            continue
        reference = np.asarray(outputs[measured[0]])
        for backend in measured[1:]:
            diff = float(np.max(np.abs(np.asarray(outputs[backend]) - reference)))
            out[backend] = {"reference": measured[0], "max_abs_diff": float(f"{diff:.3g}"),
                            "reference_max_probability": float(f"{reference.max():.3g}"),
                            "same_top1": bool(np.argmax(outputs[backend]) == np.argmax(reference))}
    return out


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


def ceiling(gemm_seconds, cache, seconds, peak_gflops=None, peak_inputs=None):
    """The float32 floor latency at the fastest round's GEMM rate, and what each target asks of it."""
    gflops = 2 * GEMM_SIZE ** 3 / gemm_seconds / 1e9
    macs = model_macs(cache)
    floor = 2 * macs / (gflops * 1e9)
    out = {"gemm_gflops": round(gflops, 1), "model_gmacs": round(macs / 1e9, 2),
           "seconds_per_clip_at_gemm_rate": round(floor, 4)}
    if peak_gflops:
        out["gemm_as_fraction_of_fma_peak"] = round(gflops / peak_gflops, 3)
    if peak_inputs:  # above 1, the cores ran faster than cpuinfo's nominal clock (turbo): the clock that explains it
        per_cycle = peak_inputs["flop_per_cycle_per_core"] * peak_inputs["cores"]
        out["clock_mhz_the_gemm_rate_implies"] = round(gflops * 1e3 / per_cycle)
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


def best_of(table, names):
    measured = {b: table[b] for b in names if b in table}
    if not measured:
        return None
    best = min(measured, key=measured.get)
    return {"backend": best, "seconds_per_clip": measured[best]}


def summary(seconds, fastest, gemm_gflops, peak, macs):
    """Best float32 ours vs peers, and our best path's share of the GEMM rate and of the FMA peak."""
    out = {}
    peak_gflops = peak_at_running_clock(peak.get("fma_peak_gflops"), gemm_gflops)
    for label, table in (("median", seconds), ("fastest_round", fastest)):
        entry = {"best_float32_ours": best_of(table, OURS_FLOAT32),
                 "best_float32_peer": best_of(table, PEERS_FLOAT32)}
        ours, peer = entry["best_float32_ours"], entry["best_float32_peer"]
        if ours and peer:
            entry["peer/ours"] = round(peer["seconds_per_clip"] / ours["seconds_per_clip"], 3)
        with_ours = best_of(table, PEERS_FLOAT32 + ("onnxruntime",))
        if ours and with_ours:
            entry["peer/ours_counting_onnxruntime_on_our_export"] = round(
                with_ours["seconds_per_clip"] / ours["seconds_per_clip"], 3)
        if ours and macs:
            flops = 2 * macs / ours["seconds_per_clip"]
            entry["best_ours_gflops"] = round(flops / 1e9, 1)
            if gemm_gflops:
                entry["fraction_of_gemm_rate"] = round(flops / (gemm_gflops * 1e9), 3)
            if peak_gflops:
                entry["fraction_of_fma_peak"] = round(flops / (peak_gflops * 1e9), 3)
        if label == "median":
            out.update(entry)
        else:
            out[label] = entry
    out["note"] = ("peer/ours: the best peer's seconds per clip over our best's (above 1: ours is faster); "
                   "peers: PyTorch eager (NCHW, channels_last), ONNX Runtime and OpenVINO on the PyTorch model's ONNX export, "
                   "OpenVINO on ours; ONNX Runtime on our export is ours (the _counting_ ratio also counts it as a peer). "
                   "fractions: model FLOPs (2 x "
                   "multiply-accumulates) per second of our best float32 path over the fastest round's "
                   "4096^2 GEMM rate (fp32_ceiling) and over fma_peak_gflops")
    out.update(peak)
    if peak_gflops and peak_gflops != peak.get("fma_peak_gflops"):
        out["fma_peak_gflops_at_running_clock"] = round(peak_gflops, 1)
        out["fma_peak_clock_note"] = (
            f"the 4096^2 GEMM ran at {gemm_gflops:.0f} GFLOP/s, above the {peak['fma_peak_gflops']} GFLOP/s peak at "
            "cpuinfo's nominal clock: the cores run faster than it (boost), so fraction_of_fma_peak is taken over the "
            "peak at the clock the GEMM implies (a lower bound of the real clock; fp32_ceiling.clock_mhz_the_gemm_rate_"
            "implies), where it equals fraction_of_gemm_rate")
    return out


def peak_at_running_clock(nominal_peak_gflops, gemm_gflops):
    """The FMA peak to divide by: the nominal-clock peak, unless a measured GEMM beat it (the cores then run above
    the nominal clock, and a kernel cannot exceed the peak: the GEMM's rate is the lowest peak consistent with it)."""
    if not nominal_peak_gflops:
        return None
    return max(nominal_peak_gflops, gemm_gflops or 0.0)


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

    # tsm_keras before anything loads TensorFlow (it turns oneDNN on; children inherit the setting).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, ROOT)
    from tsm_keras import runtime

    backends = [b for b in args.backends.split(",") if b]
    unknown = [b for b in backends if b not in ALL_BACKENDS]
    if unknown:
        parser.error(f"unknown backends {unknown}; known: {','.join(ALL_BACKENDS)}")
    started = time.time()
    prepare_start = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {HERE!r}); import serving_speed; "
                    f"serving_speed.prepare({args.cache!r}, {backends!r})"], check=True,
                   env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    if any(b in TORCH_ONNX for b in backends):  # torch in a process of its own, as every backend
        subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {HERE!r}); import serving_speed; "
                        f"serving_speed.prepare_torch({args.cache!r})"], check=True)
    prepare_seconds = time.perf_counter() - prepare_start
    load_before = os.getloadavg()
    per_round = {b: [] for b in backends}
    cpu_per_round = {b: [] for b in backends}
    versions, errors, outputs, onednn = {}, {}, {}, {}
    for _ in range(args.rounds):
        for backend in backends:
            if backend in errors:
                continue
            out = run_child(backend, args)
            if "error" in out:
                errors[backend] = out["error"]
                continue
            versions[backend] = out["version"]
            if "output" in out:
                outputs[backend] = out["output"]
            if "onednn" in out:
                onednn[backend] = out["onednn"]
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
        peer = best_of(table, PEERS_FLOAT32)
        if peer:
            targets["best_peer_over_best_ours_at_least_1.3"] = peer["seconds_per_clip"] / table[best] >= 1.3
        if "paddlevideo" in table:
            targets["paddlevideo_over_best_ours_at_least_3"] = table["paddlevideo"] / table[best] >= 3.0
        result[f"{label}_targets"] = targets
    peak = fma_peak(min(args.threads, os.cpu_count() or 1))
    gemm_gflops = 2 * GEMM_SIZE ** 3 / min(gemm_seconds) / 1e9 if gemm_seconds else None
    macs = model_macs(args.cache) if any(b in seconds for b in OURS_FLOAT32) else None
    result["summary"] = summary(seconds, fastest, gemm_gflops, peak, macs)
    if gemm_seconds:
        result["fp32_ceiling"] = ceiling(min(gemm_seconds), args.cache, seconds, peak.get("fma_peak_gflops"),
                                         peak.get("fma_peak_inputs"))
    result.update({
        "output_agreement": output_agreement(outputs),
        "errors": errors,
        "machine": machine(runtime),
        "onednn_in_workers": onednn,
        "load_average_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "versions": versions,
        "settings": {"rounds": args.rounds, "iters": args.iters, "warmup": args.warmup, "threads": args.threads,
                     "prepare_seconds": round(prepare_seconds, 1), "wall_seconds": round(time.time() - started, 1)},
    })
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
