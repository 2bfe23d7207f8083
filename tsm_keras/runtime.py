"""What fits the machine: oneDNN, precision (`auto` included), the tf.distribute strategy, the run's one line.

Reading the CPU and choosing a precision need no TensorFlow, so `prefer_onednn` can run before TensorFlow
is imported (`tsm_keras/__init__.py` calls it first thing). TensorFlow reads `TF_ENABLE_ONEDNN_OPTS`
once, when it loads; by default it turns oneDNN on only on CPUs with AVX512_VNNI, AVX512_BF16 or AMX,
and elsewhere runs Eigen kernels, whose conv input gradient is pathologically slow at small spatial sizes.

- `--strategy` (`build_strategy`): `one_device` (the first GPU, else the CPU); `mirrored` (all local GPUs
  or, with no GPU, the logical CPU devices; tests split the CPU in two); `multi_worker`
  (`MultiWorkerMirroredStrategy` from `TF_CONFIG`); `auto`: `multi_worker` when `TF_CONFIG` names more than
  one worker, `mirrored` with more than one GPU, else `one_device`.
- `--precision` (`resolve_precision`, `set_precision`): float32, mixed_float16 (dynamic loss scaling, in
  the optimizer), mixed_bfloat16, or `auto` (`choose_precision`: what the hardware runs natively).
"""

import contextlib
import json
import logging
import os
import platform
import sys

from tsm_keras.errors import UsageError

log = logging.getLogger("tsm_keras")

ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"
FROZEN_WEIGHTS_VARIABLE = "TF_ONEDNN_ASSUME_FROZEN_WEIGHTS"  # see frozen_weights_assumed
CONV_GRADIENTS_VARIABLE = "TSM_KERAS_CONV_GRADIENTS"  # see conv_gradients
CONV_GRADIENTS = ("auto", "gemm", "native")
CONV_GRADIENTS = ("auto", "gemm", "native")
# The CPU flags that decide how fast this project runs (benchmarks report them).
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")

# How this process got its oneDNN setting (see prefer_onednn); None until it ran.
onednn_decision = None


# ------------------------------------------------------------------------------------------ the CPU
def read_cpuinfo(path="/proc/cpuinfo"):
    """`{"model": str, "flags": frozenset, "fields": dict}` of the first processor in `path` (empty where it
    is missing)."""
    model = platform.processor() or platform.machine()
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return {"model": model, "flags": frozenset(), "fields": {}}
    return parse_cpuinfo(text, default_model=model)


def parse_cpuinfo(text, default_model=""):
    """The model name, flag set and all `key: value` fields of the first processor in `/proc/cpuinfo`
    text (or an `lscpu` dump). Field keys keep their spelling (`cpu family`, `cpu MHz`, `vendor_id`)."""
    model, flags, fields = default_model, None, {}
    for line in text.splitlines():
        if not line.strip() and fields:
            break  # the first processor only
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key:
            fields.setdefault(key, value)
        if key.lower() == "model name" and model == default_model:
            model = value
        elif key.lower() in ("flags", "features") and flags is None:
            flags = frozenset(value.split())
    return {"model": model, "flags": flags or frozenset(), "fields": fields}


def machine_info():
    """The fields every benchmark JSON carries: CPU, cores, speed flags, oneDNN, library versions and, with
    TensorFlow loaded (it lists the GPUs), what `--precision=auto` trains in here and why."""
    cpu = read_cpuinfo()
    info = {"cpu": cpu["model"], "cores": os.cpu_count(), "arch": platform.machine(),
            "isa": {flag: flag in cpu["flags"] for flag in SPEED_FLAGS},
            "onednn": onednn_state(), "python": platform.python_version(), "platform": platform.platform()}
    if "tensorflow" in sys.modules:
        import keras
        import tensorflow as tf

        info.update(tensorflow=tf.__version__, keras=keras.__version__)
        info["precision_auto"] = dict(zip(("precision", "reason"), choose_precision(cpu, detect_gpus())))
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


# ------------------------------------------------------------------------------------------ oneDNN
def prefer_onednn(environ=None, modules=None, machine=None):
    """Turn TensorFlow's oneDNN kernels on for this process (`TF_ENABLE_ONEDNN_OPTS=1`) on x86 CPUs.

    Must run before TensorFlow is imported: TensorFlow reads the variable once, at load. Returns (and
    records in `onednn_decision`) what happened: "user" (the variable was already set: left alone),
    "set", "not-x86" (TensorFlow's own default kept), or "too-late" (TensorFlow was imported first;
    a warning says so once when that left oneDNN off).
    """
    global onednn_decision
    environ = os.environ if environ is None else environ
    modules = sys.modules if modules is None else modules
    machine = (platform.machine() if machine is None else machine).lower()
    if ONEDNN_VARIABLE in environ:
        decision = "user"
    elif machine not in ("x86_64", "amd64", "i386", "i686", "x86"):
        decision = "not-x86"
    elif "tensorflow" in modules:
        decision = "too-late"
    else:
        environ[ONEDNN_VARIABLE] = "1"
        decision = "set"
    if environ is os.environ:
        onednn_decision = decision
        if decision == "too-late" and onednn_enabled() is False:
            log.warning("tsm_keras: TensorFlow was imported before tsm_keras with oneDNN off on this CPU, and it "
                        "cannot be turned on now; training can be several times slower (Eigen kernels). Set %s=1 "
                        "before importing TensorFlow, or import tsm_keras first.", ONEDNN_VARIABLE)
    return decision


def onednn_enabled():
    """Whether TensorFlow in this process runs oneDNN kernels (None before TensorFlow is imported)."""
    if "tensorflow" not in sys.modules:
        return None
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())


def onednn_state():
    """`"on"`/`"off"`, with how it was decided: `"on (set by tsm_keras)"`, `"off (TF_ENABLE_ONEDNN_OPTS=0)"`."""
    enabled = onednn_enabled()
    value = os.environ.get(ONEDNN_VARIABLE)
    if enabled is None:
        state = "on" if value not in (None, "0", "false", "False") else "TensorFlow's default"
    else:
        state = "on" if enabled else "off"
    how = {"set": "set by tsm_keras", "user": f"{ONEDNN_VARIABLE}={value}",
           "too-late": "TensorFlow imported before tsm_keras", "not-x86": "TensorFlow's default"}
    state = f"{state} ({how[onednn_decision]})" if onednn_decision in how else state
    if state.startswith("on") and frozen_weights_assumed():
        state += f", frozen weights ({FROZEN_WEIGHTS_VARIABLE}=1)"
    return state


def frozen_weights_assumed(environ=None):
    """Whether `TF_ONEDNN_ASSUME_FROZEN_WEIGHTS` is on: oneDNN then reorders each conv filter once per kernel
    and reuses it, right only where weights never change after the first call (app.py sets it for predict)."""
    value = (os.environ if environ is None else environ).get(FROZEN_WEIGHTS_VARIABLE, "")
    return value.strip().lower() in ("1", "true")  # what TensorFlow reads as true


# ------------------------------------------------------------------------------------------ start-up lines
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}
_ABSL_PREINIT = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
_CONTINUATION = "To enable the following instructions:"  # second line of cpu_feature_guard's notice


class quiet_tensorflow_startup:
    """Make TensorFlow's start-up lines honour `TF_CPP_MIN_LOG_LEVEL` while it loads and probes devices.

    TensorFlow prints its first lines (oneDNN notice, "Could not find cuda drivers", the rebuild hint)
    before its logging is initialised, whatever `TF_CPP_MIN_LOG_LEVEL` says, and logs a failed `cuInit`
    as an error on every machine without an NVIDIA driver. Inside this context file descriptor 2 goes
    to a temporary file; on exit every line is written back to stderr except C++ log lines below
    `TF_CPP_MIN_LOG_LEVEL` (and the pre-initialisation banner that announces them), and the cuInit
    error when no NVIDIA driver is loaded (`/proc/driver/nvidia` absent). Everything else, Python
    warnings and tracebacks included, comes out as it was written. Does nothing at level 0.
    """

    def __init__(self, environ=None, nvidia_driver=None):
        environ = os.environ if environ is None else environ
        try:
            self.level = int(environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
        except ValueError:
            self.level = 0
        self.nvidia_driver = os.path.exists("/proc/driver/nvidia") if nvidia_driver is None else nvidia_driver
        self.saved = self.capture = None

    def __enter__(self):
        if self.level <= 0:
            return self
        import tempfile

        try:
            sys.stderr.flush()
            self.capture = tempfile.TemporaryFile(mode="w+b")
            self.saved = os.dup(2)
            os.dup2(self.capture.fileno(), 2)
        except (OSError, ValueError):  # no usable fd 2 (a daemon): leave stderr alone
            self.saved = None
        return self

    def __exit__(self, *exc):
        if self.saved is None:
            return False
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(self.saved, 2)
        os.close(self.saved)
        self.capture.seek(0)
        text = self.capture.read().decode("utf-8", "replace")
        self.capture.close()
        kept = self.filter(text)
        if kept:
            os.write(2, kept.encode("utf-8"))
        return False

    def filter(self, text):
        kept, dropping = [], False
        for line in text.splitlines(keepends=True):
            stripped = line.rstrip("\n")
            if stripped == _ABSL_PREINIT:
                continue
            if dropping and stripped.startswith(_CONTINUATION):
                continue
            dropping = self._drop(stripped)
            if not dropping:
                kept.append(line)
        return "".join(kept)

    def _drop(self, line):
        # C++ log lines: "<severity letter><mmdd or 0000> <time> <thread> <file>:<line>] <message>"
        if len(line) < 2 or line[0] not in _SEVERITY or not line[1].isdigit() or "] " not in line:
            return False
        if _SEVERITY[line[0]] < self.level:
            return True
        return "failed call to cuInit" in line and not self.nvidia_driver


def _warnings_and_above(record):
    return record.levelno >= logging.WARNING


@contextlib.contextmanager
def library_info_hidden(names=("absl", "tensorflow", "tf2onnx")):
    """Inside: the INFO lines of these libraries' Python loggers are dropped (their warnings and errors stay),
    unless a logger shows DEBUG (absl's `--verbosity=1`). app.py's absl logging shows INFO, where this tool's
    own notes go (its `tsm_keras.*` loggers are not among these); exporting printed TensorFlow's ("Sharding
    callback duration: 35 microseconds", "Assets written to ...", twice) and tf2onnx's stages around the one
    line that says what was written. A level (for the records of child loggers, tf2onnx's) and a filter
    (`tf.saved_model.save` resets the absl logger's level)."""
    loggers = [logging.getLogger(name) for name in names]
    loggers = [(logger, logger.level) for logger in loggers if logger.getEffectiveLevel() > logging.DEBUG]
    for logger, _ in loggers:
        logger.setLevel(logging.WARNING)
        logger.addFilter(_warnings_and_above)
    try:
        yield
    finally:
        for logger, level in loggers:
            logger.removeFilter(_warnings_and_above)
            logger.setLevel(level)


# ------------------------------------------------------------------------------------------ exit
def skip_exit_collection():
    """Spare this process the garbage collections of the interpreter's teardown, for scripts that end.

    With TensorFlow and Keras loaded, CPython's teardown spends most of its time (0.6-0.75 s of 0.65-0.8 s on a Zen 4,
    `benchmarks/exit_speed.py`) in cyclic garbage collections over their module graphs. `gc.freeze()` in an exit
    hook moves every object still alive into the permanent generation, which those collections skip; exit hooks
    still run and reference counting still frees what it can. What changes: objects that only a reference cycle
    keeps alive at exit are not finalised, nor what they hold (a file left open in the globals of a `__main__`
    whose functions sit in such a cycle stays unflushed: Python promises nothing for objects alive at exit, so
    the project's code closes what it opens, the TensorBoard writer included). Called by the project's
    command-line entry points, never on `import tsm_keras`.
    """
    import atexit
    import gc

    atexit.register(gc.freeze)


# ------------------------------------------------------------------------------------------ conv gradients
def choose_conv_gradients(cpu_flags, gpus=()):
    """`(kind, reason)`: how `tsm_keras.layers.Conv2D` differentiates its stride-1 convs while training.

    "gemm": the input gradient as a forward conv with the flipped kernel, the filter gradient as one matrix
    product of the input's patches with the output gradient. "native": TensorFlow's `Conv2DBackpropInput`
    and `Conv2DBackpropFilter`. Measured only on an AVX2-only CPU (AMD EPYC Zen 3), where oneDNN's two
    backprop kernels are 1.1-1.7x slower than that (README, "Conv gradients"), so "gemm" is chosen there
    and nowhere else: on AVX-512/AMX CPUs and GPUs the backprop kernels were not measured against it.
    """
    if gpus:
        return "native", "a GPU is visible"
    if "avx2" in cpu_flags and "avx512f" not in cpu_flags:
        return "gemm", "AVX2 CPU without AVX-512"
    return "native", "measured faster than TensorFlow's only on AVX2-only CPUs"


_conv_gradients_auto = None


def conv_gradients(environ=None):
    """`(kind, reason)` for this process: `TSM_KERAS_CONV_GRADIENTS` (gemm, native, auto) if set, else auto
    (`choose_conv_gradients` on this machine, decided once)."""
    global _conv_gradients_auto
    value = (os.environ if environ is None else environ).get(CONV_GRADIENTS_VARIABLE, "auto").strip().lower()
    if value not in CONV_GRADIENTS:
        raise UsageError(f"{CONV_GRADIENTS_VARIABLE} must be one of {CONV_GRADIENTS}, got {value!r}.")
    if value != "auto":
        return value, f"{CONV_GRADIENTS_VARIABLE}={value}"
    if _conv_gradients_auto is None:
        _conv_gradients_auto = choose_conv_gradients(read_cpuinfo()["flags"], detect_gpus())
    return _conv_gradients_auto


# ------------------------------------------------------------------------------------------ precision
def cpu_vendor(cpu):
    """"amd", "intel" or "" for a `parse_cpuinfo` description (its vendor field, else its model name)."""
    text = (cpu["fields"].get("vendor_id") or cpu["fields"].get("Vendor ID") or cpu["model"]).lower()
    return "amd" if "amd" in text else "intel" if "intel" in text else ""


def choose_precision(cpu, gpus=()):
    """`(precision, reason)` for training on this hardware: a pure function of what was detected.

    cpu: `parse_cpuinfo`'s description of the CPU (flags, vendor). gpus: `(name, (major, minor))` compute
    capabilities of the visible NVIDIA GPUs. Every replica runs one policy, so the least capable GPU decides.

    On CPUs, bfloat16 is faster than float32 where its dot products run at a higher rate than float32's
    FMAs: AMX tiles (`amx_bf16`), and AVX512_BF16 on AMD, whose Zen 4 runs float32 AVX-512 FMAs on 256-bit
    units (ResNet-50 TSM training 1.75x float32 there; Zen 5 not measured). Intel's AVX512_BF16 without
    AMX is not: on a Xeon Emerald Rapids VM without AMX a 2048^2 bfloat16 GEMM ran at 0.57x float32's rate
    and ResNet-50 TSM trained at 0.64x (README, "Speed on your CPU"), so such CPUs, like unknown vendors,
    train in float32.
    """
    if gpus:
        name, capability = min(gpus, key=lambda g: tuple(g[1]))
        text = f"{name}, compute capability {capability[0]}.{capability[1]}"
        if tuple(capability) >= (8, 0):
            return "mixed_bfloat16", f"GPU has native bfloat16: {text}"
        if tuple(capability) >= (7, 0):
            return "mixed_float16", f"GPU has float16 tensor cores but no bfloat16: {text}; dynamic loss scaling"
        return "float32", f"GPU has no fast reduced precision: {text}"
    flags = cpu["flags"]
    if "amx_bf16" in flags:
        return "mixed_bfloat16", "CPU has native bfloat16: amx_bf16"
    if "avx512_bf16" in flags:
        if cpu_vendor(cpu) == "amd":
            return "mixed_bfloat16", "CPU has native bfloat16: avx512_bf16 (AMD)"
        return "float32", ("CPU has avx512_bf16 but no amx_bf16: measured slower than float32 on Intel CPUs "
                           "without AMX")
    return "float32", "CPU has no native bfloat16: no amx_bf16/avx512_bf16"


def detect_gpus():
    """`(name, (major, minor))` of each visible GPU (physical devices: the runtime is not started)."""
    import tensorflow as tf

    gpus = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        gpus.append((details.get("device_name", device.name), tuple(details.get("compute_capability", (0, 0)))))
    return gpus


def asked_precision_reason(precision, cpu, gpus=()):
    """The reason printed for a training precision given explicitly: "as asked", plus what `auto` would pick
    on this hardware where a reduced precision was asked that `auto` would not pick (mixed_bfloat16 on a CPU
    that emulates it, say). Not for float32: `auto`'s reduced precision is faster for the ResNets, not for
    every network (MobileNetV2 trained at half float32's speed in mixed_bfloat16 on a Zen 4)."""
    auto, why = choose_precision(cpu, gpus)
    if precision == "float32" or precision == auto:
        return "as asked"
    return f"as asked; auto would pick {auto} here: {why}"


def resolve_precision(precision, training=True):
    """`(precision, reason)`: `precision` itself unless it is "auto".

    `auto` trains in what the hardware runs natively (`choose_precision`); evaluation, prediction and
    export stay float32 under `auto`, so that metrics match the reference implementations exactly. An
    explicit training precision's reason says what `auto` would pick where that matters
    (`asked_precision_reason`).
    """
    if precision != "auto":
        _check_precision(precision)
        if not training:
            return precision, "as asked"
        return precision, asked_precision_reason(precision, read_cpuinfo(), detect_gpus())
    if not training:
        return "float32", "auto: evaluation runs float32, for metrics equal to the reference code's"
    return choose_precision(read_cpuinfo(), detect_gpus())


def _check_precision(precision):
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {PRECISIONS + ('auto',)}, got {precision!r} "
                         "(--amp is the same as --precision=mixed_float16).")


def set_precision(precision):
    """Set Keras' global dtype policy (call before building the model); returns the policy name."""
    import keras

    if precision == "auto":
        precision, _ = resolve_precision(precision)
    _check_precision(precision)
    keras.config.set_dtype_policy(precision)
    return precision


def bfloat16_serving_warning(cpu, gpus=()):
    """The warning for a bfloat16 export on this hardware (`parse_cpuinfo`'s description, the GPUs), or None
    where bfloat16 runs faster than float32 (`choose_precision`'s choice)."""
    precision, reason = choose_precision(cpu, gpus)
    if precision == "mixed_bfloat16":
        return None
    return (f"warning: --export_precision=bfloat16 on a machine where bfloat16 is not faster than float32 "
            f"({reason}): served here it would be slower than the float32 export; serve it where bfloat16 "
            "is native (AMX, AVX512_BF16 on AMD, GPUs of compute capability >= 8.0).")


# ------------------------------------------------------------------------------------------ strategy
def _tf_config_workers():
    try:
        cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    except json.JSONDecodeError as error:
        raise UsageError(f"TF_CONFIG is not valid JSON: {error}") from None
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def build_strategy(name="auto"):
    import tensorflow as tf

    if name not in STRATEGIES:
        raise UsageError(f"strategy must be one of {STRATEGIES}, got {name!r}.")
    # Physical, not logical, devices: listing logical ones starts the runtime, after which
    # MultiWorkerMirroredStrategy can no longer configure its collectives.
    gpus = tf.config.list_physical_devices("GPU")
    if name == "auto":
        if _tf_config_workers() > 1:
            name = "multi_worker"
        elif len(gpus) > 1:
            name = "mirrored"
        else:
            name = "one_device"
    if name == "multi_worker":
        if _tf_config_workers() < 1:
            raise UsageError("--strategy=multi_worker needs TF_CONFIG, e.g. "
                             '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                             '"task": {"type": "worker", "index": 0}}')
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored":
        devices = ([d.name for d in tf.config.list_logical_devices("GPU")]
                   or [d.name for d in tf.config.list_logical_devices("CPU")])
        return tf.distribute.MirroredStrategy(devices)
    return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")


def is_chief(strategy):
    """True on the one worker that writes checkpoints, logs and reports."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "cluster_spec", None) or not resolver.cluster_spec().jobs:
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type == "chief" or (task_type == "worker" and task_id == 0 and
                                    "chief" not in resolver.cluster_spec().jobs)


# ------------------------------------------------------------------------------------------ the run's line
def describe(strategy, precision, reason, training=False):
    """One line for the start of a run: device(s), precision and why, oneDNN (and, training, how convs are
    differentiated: `conv_gradients`)."""
    cpu = read_cpuinfo()
    devices = sorted({d.rsplit("device:", 1)[-1] for d in _strategy_devices(strategy)})  # "CPU:0", "GPU:1"
    isa = [flag for flag in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if flag in cpu["flags"]]
    device = ", ".join(devices) or "CPU"
    return (f"device: {device} ({cpu['model']}, {os.cpu_count()} cores{', ' + ' '.join(isa) if isa else ''})"
            f"  precision: {precision} ({reason})  oneDNN: {onednn_state()}"
            + ("  conv gradients: %s (%s)" % conv_gradients() if training else ""))


def _strategy_devices(strategy):
    extended = getattr(strategy, "extended", None)
    return list(getattr(extended, "worker_devices", ()) or ())
