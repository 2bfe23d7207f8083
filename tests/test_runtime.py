"""What fits the machine: the precision decision, oneDNN before TensorFlow loads, TensorFlow's start-up lines.

The CPU descriptions are real: `tests/cpuinfo/` holds the flag lines of the two CPU kinds this project
runs on (an AMD EPYC 7763, Zen 3, with AVX2 + FMA only; an Intel Xeon with AVX-512 and AMX), of the
Zen 4 EPYC with AVX512_BF16 but no AMX, and of an Intel Xeon Emerald Rapids VM with AVX512_BF16 but no AMX.
"""

import os
import subprocess
import sys

import pytest

from tsm_keras import runtime
from tsm_keras.errors import UsageError

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def _cpu(name):
    with open(os.path.join(HERE, "cpuinfo", name)) as f:
        return runtime.parse_cpuinfo(f.read())


def test_cpuinfo_lines_parse_to_model_and_flags():
    zen3, intel, zen4, emr = (_cpu(n) for n in ("amd_epyc_7763_zen3.txt", "intel_xeon_8573c_amx.txt",
                                                 "amd_epyc_zen4.txt", "intel_xeon_emr_no_amx.txt"))
    assert zen3["model"] == "AMD EPYC 7763 64-Core Processor"
    assert {"avx2", "fma"} <= zen3["flags"] and not {"avx512f", "avx512_bf16", "amx_bf16"} & zen3["flags"]
    assert intel["model"] == "INTEL(R) XEON(R) PLATINUM 8573C"
    assert {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"} <= intel["flags"]
    assert zen4["model"] == "AMD EPYC" and "avx512_bf16" in zen4["flags"] and "amx_bf16" not in zen4["flags"]
    assert emr["model"] == "Intel(R) Xeon(R) Processor" and emr["fields"]["model"] == "207"
    assert "avx512_bf16" in emr["flags"] and not {"amx_bf16", "amx_tile"} & emr["flags"]
    # The fields benchmarks/serving_speed.py's FMA peak reads, of the first processor only.
    assert zen4["fields"]["vendor_id"] == "AuthenticAMD" and zen4["fields"]["cpu family"] == "25"
    assert float(zen4["fields"]["cpu MHz"]) > 1000
    two = runtime.parse_cpuinfo("processor : 0\ncpu MHz : 2000\n\nprocessor : 1\ncpu MHz : 3000\n")
    assert two["fields"] == {"processor": "0", "cpu MHz": "2000"}


@pytest.mark.parametrize("name, expected, reason", [
    ("amd_epyc_7763_zen3.txt", "float32", "CPU has no native bfloat16: no amx_bf16/avx512_bf16"),
    ("intel_xeon_8573c_amx.txt", "mixed_bfloat16", "CPU has native bfloat16: amx_bf16"),
    ("amd_epyc_zen4.txt", "mixed_bfloat16", "CPU has native bfloat16: avx512_bf16 (AMD)"),
    # AVX512_BF16 without AMX on Intel: bfloat16 measured slower than float32 there (0.64x training R50).
    ("intel_xeon_emr_no_amx.txt", "float32",
     "CPU has avx512_bf16 but no amx_bf16: measured slower than float32 on Intel CPUs without AMX"),
])
def test_auto_precision_on_real_cpus(name, expected, reason):
    assert runtime.choose_precision(_cpu(name), gpus=()) == (expected, reason)


@pytest.mark.parametrize("name, warns", [
    ("amd_epyc_7763_zen3.txt", "no native bfloat16"),  # emulated
    ("intel_xeon_emr_no_amx.txt", "avx512_bf16 but no amx_bf16"),  # native, slower: 0.449 vs 0.269 s/clip
    ("intel_xeon_8573c_amx.txt", None),
    ("amd_epyc_zen4.txt", None),
])
def test_bfloat16_export_warns_where_bfloat16_is_not_faster(name, warns):
    warning = runtime.bfloat16_serving_warning(_cpu(name), gpus=())
    if warns is None:
        assert warning is None
    else:
        assert warning.startswith("warning: --export_precision=bfloat16") and warns in warning
    # The GPU serves, whatever the CPU: an A100 runs bfloat16 natively, a T4 does not.
    assert runtime.bfloat16_serving_warning(_cpu(name), [("NVIDIA A100-SXM4-40GB", (8, 0))]) is None
    assert "compute capability 7.5" in runtime.bfloat16_serving_warning(_cpu(name), [("Tesla T4", (7, 5))])


def test_cpu_vendor_from_the_vendor_field_or_the_model_name():
    assert runtime.cpu_vendor(_cpu("intel_xeon_emr_no_amx.txt")) == "intel"  # vendor_id GenuineIntel
    assert runtime.cpu_vendor(_cpu("amd_epyc_zen4.txt")) == "amd"  # vendor_id AuthenticAMD, model "AMD EPYC"
    assert runtime.cpu_vendor(_cpu("amd_epyc_7763_zen3.txt")) == "amd"  # lscpu without a vendor line
    assert runtime.cpu_vendor(_cpu("intel_xeon_8573c_amx.txt")) == "intel"
    unknown = runtime.parse_cpuinfo("model name : Some CPU\nflags : avx2 avx512f avx512_bf16\n")
    assert runtime.cpu_vendor(unknown) == ""
    # Only AMX, or AVX512_BF16 on AMD, was measured faster than float32: an unknown vendor trains in float32.
    assert runtime.choose_precision(unknown)[0] == "float32"


@pytest.mark.parametrize("gpus, expected", [
    ([("NVIDIA A100-SXM4-40GB", (8, 0))], "mixed_bfloat16"),
    ([("NVIDIA H100 80GB HBM3", (9, 0))], "mixed_bfloat16"),
    ([("NVIDIA GeForce RTX 3090", (8, 6))], "mixed_bfloat16"),
    ([("Tesla V100-SXM2-16GB", (7, 0))], "mixed_float16"),
    ([("Tesla T4", (7, 5))], "mixed_float16"),
    ([("Tesla P100-PCIE-16GB", (6, 0))], "float32"),
    # Every replica runs one policy: the least capable GPU decides.
    ([("NVIDIA A100-SXM4-40GB", (8, 0)), ("Tesla T4", (7, 5))], "mixed_float16"),
])
def test_auto_precision_on_gpus(gpus, expected):
    # A GPU decides whatever the CPU has: the model runs there.
    for cpu in ("amd_epyc_7763_zen3.txt", "intel_xeon_8573c_amx.txt"):
        precision, reason = runtime.choose_precision(_cpu(cpu), gpus)
        assert precision == expected
        assert "compute capability" in reason
    if expected == "mixed_float16":
        assert "loss scaling" in reason


@pytest.mark.parametrize("name, expected", [
    ("amd_epyc_7763_zen3.txt", "gemm"),       # AVX2 + FMA only: where the GEMM gradients were measured faster
    ("intel_xeon_8573c_amx.txt", "native"),
    ("amd_epyc_zen4.txt", "native"),
])
def test_conv_gradients_on_real_cpus_and_gpus(name, expected):
    flags = _cpu(name)["flags"]
    assert runtime.choose_conv_gradients(flags)[0] == expected
    assert runtime.choose_conv_gradients(flags, gpus=[("Tesla T4", (7, 5))]) == ("native", "a GPU is visible")


def test_conv_gradients_variable_overrides_auto():
    variable = runtime.CONV_GRADIENTS_VARIABLE
    assert runtime.conv_gradients({variable: "native"}) == ("native", f"{variable}=native")
    assert runtime.conv_gradients({variable: " GEMM "}) == ("gemm", f"{variable}=gemm")
    assert runtime.conv_gradients({variable: "auto"}) == runtime.conv_gradients({})
    assert runtime.conv_gradients({})[0] in ("gemm", "native")
    with pytest.raises(UsageError, match=f"{variable} must be one of"):
        runtime.conv_gradients({variable: "fast"})


def test_an_explicit_reduced_precision_says_what_auto_would_pick_where_it_differs():
    emr, zen3, zen4 = (_cpu(n) for n in ("intel_xeon_emr_no_amx.txt", "amd_epyc_7763_zen3.txt", "amd_epyc_zen4.txt"))
    assert runtime.asked_precision_reason("float32", emr) == "as asked"
    assert runtime.asked_precision_reason("mixed_bfloat16", zen4) == "as asked"
    assert runtime.asked_precision_reason("mixed_bfloat16", emr) == (
        "as asked; auto would pick float32 here: CPU has avx512_bf16 but no amx_bf16: measured slower than "
        "float32 on Intel CPUs without AMX")
    assert runtime.asked_precision_reason("mixed_bfloat16", zen3).endswith(
        "auto would pick float32 here: CPU has no native bfloat16: no amx_bf16/avx512_bf16")
    assert runtime.asked_precision_reason("float32", zen4) == "as asked"  # not a hint: not faster for every network
    t4 = [("Tesla T4", (7, 5))]
    assert runtime.asked_precision_reason("mixed_bfloat16", zen4, t4).startswith(
        "as asked; auto would pick mixed_float16 here: GPU has float16 tensor cores but no bfloat16: Tesla T4")


def test_machine_info_names_the_machine_and_what_auto_trains_in():
    """The record every benchmark JSON carries (issue: figures name the CPU they came from)."""
    import keras
    import tensorflow as tf

    info = runtime.machine_info()
    cpu = runtime.read_cpuinfo()
    assert info["cpu"] == cpu["model"] and info["cores"] == os.cpu_count()
    assert info["isa"] == {flag: flag in cpu["flags"] for flag in runtime.SPEED_FLAGS}
    assert (info["tensorflow"], info["keras"]) == (tf.__version__, keras.__version__)
    assert info["onednn"] == runtime.onednn_state()
    assert info["precision_auto"] == dict(zip(("precision", "reason"),
                                              runtime.choose_precision(cpu, runtime.detect_gpus())))


def test_explicit_precision_wins_and_evaluation_stays_float32():
    for precision in runtime.PRECISIONS:
        assert runtime.resolve_precision(precision, training=True)[0] == precision
        assert runtime.resolve_precision(precision, training=False)[0] == precision
    assert runtime.resolve_precision("auto", training=False)[0] == "float32"
    with pytest.raises(ValueError, match="precision must be one of"):
        runtime.resolve_precision("float16")


def test_prefer_onednn_sets_the_variable_only_when_the_user_has_not():
    environ = {}
    assert runtime.prefer_onednn(environ, modules={}, machine="x86_64") == "set"
    assert environ == {"TF_ENABLE_ONEDNN_OPTS": "1"}
    for value in ("0", "1"):
        environ = {"TF_ENABLE_ONEDNN_OPTS": value}
        assert runtime.prefer_onednn(environ, modules={}, machine="x86_64") == "user"
        assert environ == {"TF_ENABLE_ONEDNN_OPTS": value}
    environ = {}
    assert runtime.prefer_onednn(environ, modules={"tensorflow": object()}, machine="x86_64") == "too-late"
    assert runtime.prefer_onednn(environ, modules={}, machine="aarch64") == "not-x86"
    assert environ == {}


def _app_child(env_changes, *args):
    """`app.py --mode=summary` in a fresh process; prints TF_ENABLE_ONEDNN_OPTS and TensorFlow's own state."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_ENABLE_ONEDNN_OPTS", "TF_CPP_MIN_LOG_LEVEL", "TF_ONEDNN_ASSUME_FROZEN_WEIGHTS")}
    env.update(env_changes)
    probe = ("import atexit, gc, os, runpy, sys\n"
             "def report():\n"
             "    from tsm_keras import runtime\n"
             "    print('EXIT_COLLECTION_SKIPPED', gc.get_freeze_count() > 0, flush=True)\n"
             "    print('ONEDNN', os.environ.get('TF_ENABLE_ONEDNN_OPTS'), runtime.onednn_enabled(), flush=True)\n"
             "    print('FROZEN', os.environ.get('TF_ONEDNN_ASSUME_FROZEN_WEIGHTS'), flush=True)\n"
             "    print('STATE', runtime.onednn_state(), flush=True)\n"
             "atexit.register(report)\n"
             f"sys.argv = [{os.path.join(REPO, 'app.py')!r}, '--mode=summary', '--backbone=resnet10',"
             " '--num_segments=2', '--image_size=32', '--num_classes=4', *sys.argv[1:]]\n"
             "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    return subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300)


@pytest.fixture(scope="module")
def default_child():
    """`_app_child({})`: what a user who set none of the variables gets (shared by three tests)."""
    return _app_child({})


def test_app_turns_onednn_on_and_hides_tensorflow_startup_lines(default_child):
    run = default_child
    assert run.returncode == 0, run.stderr
    assert "ONEDNN 1 True" in run.stdout
    # TensorFlow's INFO start-up lines, its pre-logging banner and (with no NVIDIA driver) the cuInit error.
    for noise in ("cpu_feature_guard", "cudart_stub", "oneDNN custom operations", "absl::InitializeLog"):
        assert noise not in run.stderr, run.stderr
    if not os.path.exists("/proc/driver/nvidia"):
        assert "cuInit" not in run.stderr, run.stderr


def test_app_skips_the_exit_collection(default_child):
    # app.py freezes the objects alive at exit (gc.freeze, after the probe's exit hook was registered, so
    # before it runs): the teardown skips its garbage collections (benchmarks/exit_speed.py).
    run = default_child
    assert run.returncode == 0, run.stderr
    assert "EXIT_COLLECTION_SKIPPED True" in run.stdout


def test_app_assumes_frozen_weights_for_predict_only_and_keeps_the_users_choice(default_child):
    run = default_child  # --mode=summary
    assert "FROZEN None" in run.stdout and "frozen" not in run.stdout.split("STATE", 1)[1]
    run = _app_child({}, "--mode=predict")  # no run folder: an error, after TensorFlow loaded with the variable
    assert run.returncode == 2 and "no such SavedModel, run folder" in run.stderr, run.stderr[-2000:]
    assert "FROZEN 1" in run.stdout
    if "ONEDNN 1 True" in run.stdout:
        assert "STATE on (set by tsm_keras), frozen weights (TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1)" in run.stdout
    run = _app_child({"TF_ONEDNN_ASSUME_FROZEN_WEIGHTS": "0"}, "--mode=predict")
    assert "FROZEN 0" in run.stdout and "frozen" not in run.stdout.split("STATE", 1)[1]


def test_requested_mode_is_what_absl_parses(tmp_path):
    """app.py reads --mode from argv before TensorFlow (and absl's parsing) loads: flagfiles expanded in
    place, nested, the last --mode winning. absl's own parse of the same argv is the reference."""
    from absl import flags

    sys.path.insert(0, REPO)
    import app

    inner = tmp_path / "inner.flags"
    inner.write_text("# a comment\n--mode=predict\n")
    outer = tmp_path / "outer.flags"
    outer.write_text(f"--mode=train\n--flagfile={inner}\n--batch_size=4\n")
    cases = [["--mode=predict"], ["--mode", "eval"], [f"--flagfile={outer}"], [f"--flagfile={outer}", "--mode=export"],
             ["--mode=predict", f"--flagfile={outer}"], ["--mode=export", "--flagfile", str(inner)],
             ["--batch_size=4"], ["-mode=predict"]]
    for argv in cases:
        reference = flags.FlagValues()
        flags.DEFINE_enum("mode", None, sorted(app.MODES), "", flag_values=reference)
        flags.DEFINE_integer("batch_size", 0, "", flag_values=reference)
        reference(["app.py", *argv])
        assert app.requested_mode(["app.py", *argv]) == reference.mode, argv
    assert app.requested_mode(["app.py"]) == "train"  # the quickstart
    assert app.requested_mode(["app.py", f"--flagfile={tmp_path / 'missing.flags'}"]) is None

    environ = {}
    assert app.assume_frozen_weights(["app.py", f"--flagfile={outer}"], environ) and environ == {
        runtime.FROZEN_WEIGHTS_VARIABLE: "1"} and app.FROZEN_WEIGHTS_VARIABLE == runtime.FROZEN_WEIGHTS_VARIABLE
    for argv in (["app.py"], ["app.py", "--mode=train"], ["app.py", "--mode=eval"], ["app.py", "--mode=export"]):
        environ = {}
        assert not app.assume_frozen_weights(argv, environ) and environ == {}, argv  # weights that may change
    environ = {"TF_ONEDNN_ASSUME_FROZEN_WEIGHTS": "0"}
    assert not app.assume_frozen_weights(["app.py", "--mode=predict"], environ) and environ[
        "TF_ONEDNN_ASSUME_FROZEN_WEIGHTS"] == "0"
    assert runtime.frozen_weights_assumed({"TF_ONEDNN_ASSUME_FROZEN_WEIGHTS": "True"})
    assert not runtime.frozen_weights_assumed({"TF_ONEDNN_ASSUME_FROZEN_WEIGHTS": "0"})


def test_app_keeps_the_users_onednn_and_log_level():
    run = _app_child({"TF_ENABLE_ONEDNN_OPTS": "0", "TF_CPP_MIN_LOG_LEVEL": "0"})
    assert run.returncode == 0, run.stderr
    assert "ONEDNN 0 False" in run.stdout
    assert "oneDNN custom operations" not in run.stderr  # TensorFlow's own notice: oneDNN really is off
    run = _app_child({"TF_CPP_MIN_LOG_LEVEL": "0"})
    assert "oneDNN custom operations are on" in run.stderr  # level 0: TensorFlow's lines all come through


def test_startup_filter_drops_only_lines_below_the_level(capfd):
    lines = ["WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
             "I0000 00:00:1796191656.329255    2433 port.cc:153] oneDNN custom operations are on.",
             "I0000 00:00:1796191656.407561    2433 cpu_feature_guard.cc:227] This TensorFlow binary is optimized.",
             "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow.",
             "W0000 00:00:1796191743.747252    2522 dataset.cc:997] a real warning",
             "E0000 00:00:1796191725.814250    2522 cuda_platform.cc:52] failed call to cuInit: UNKNOWN ERROR (303)",
             "E0000 00:00:1796191725.814250    2522 some_kernel.cc:10] a real error",
             "Traceback (most recent call last):",
             "To enable the following instructions: a line of the user's own, not a continuation"]
    text = "".join(line + "\n" for line in lines)
    kept = runtime.quiet_tensorflow_startup({"TF_CPP_MIN_LOG_LEVEL": "1"}, nvidia_driver=False).filter(text)
    assert kept.splitlines() == lines[4:5] + lines[6:]
    # With an NVIDIA driver loaded a failed cuInit is a real error.
    kept = runtime.quiet_tensorflow_startup({"TF_CPP_MIN_LOG_LEVEL": "1"}, nvidia_driver=True).filter(text)
    assert lines[5] in kept.splitlines()
    kept = runtime.quiet_tensorflow_startup({"TF_CPP_MIN_LOG_LEVEL": "2"}, nvidia_driver=True).filter(text)
    assert lines[4] not in kept and lines[6] in kept

    # Through file descriptor 2, as TensorFlow's C++ code writes.
    with runtime.quiet_tensorflow_startup({"TF_CPP_MIN_LOG_LEVEL": "1"}, nvidia_driver=False):
        os.write(2, text.encode())
    err = capfd.readouterr().err
    assert err.splitlines() == lines[4:5] + lines[6:]


def test_importing_tensorflow_first_with_onednn_off_warns_once():
    # TensorFlow loads with oneDNN off (as it does by default on CPUs without AVX512_VNNI/BF16/AMX), then
    # the variable is gone by the time tsm_keras is imported: it cannot turn oneDNN on any more.
    probe = ("import os\n"
             "import tensorflow\n"
             "del os.environ['TF_ENABLE_ONEDNN_OPTS']\n"
             "import tsm_keras\n"
             "from tsm_keras import runtime\n"
             "print('DECISION', runtime.onednn_decision, runtime.onednn_enabled(), flush=True)\n")
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="0", TF_CPP_MIN_LOG_LEVEL="2")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "DECISION too-late False" in run.stdout
    assert run.stderr.count("TensorFlow was imported before tsm_keras with oneDNN off") == 1


def test_library_info_is_hidden_inside_and_back_after():
    """Export's TensorFlow/tf2onnx INFO lines: dropped inside, warnings kept, this tool's INFO kept; an absl logger
    level reset inside (tf.saved_model.save does it) still drops them; a DEBUG logger (--verbosity=1) keeps all."""
    import logging

    from absl import logging as absl_logging

    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append((record.name, record.levelname, record.getMessage()))

    handler, root = Keep(), logging.getLogger()
    root.addHandler(handler)
    previous = root.level
    root.setLevel(logging.INFO)  # as absl's app.run leaves it
    absl_logger, child = logging.getLogger("absl"), logging.getLogger("tf2onnx.tfonnx")
    levels = [(logger, logger.level) for logger in (absl_logger, logging.getLogger("tf2onnx"), child)]
    for logger, _ in levels:  # what other tests in this process left
        logger.setLevel(logging.NOTSET)
    try:
        with runtime.library_info_hidden():
            absl_logging.info("tf info")
            absl_logger.setLevel(logging.NOTSET)
            absl_logging.info("tf info after a reset")
            absl_logging.warning("tf warning")
            child.info("tf2onnx info")
            logging.getLogger("tsm_keras.convert").info("our info")
        absl_logging.info("tf info after")
        child.info("tf2onnx info after")
        absl_logger.setLevel(logging.DEBUG)
        with runtime.library_info_hidden():
            absl_logging.info("asked for")
    finally:
        for logger, level in levels:
            logger.setLevel(level)
        root.removeHandler(handler)
        root.setLevel(previous)
    assert [message for _, _, message in seen] == ["tf warning", "our info", "tf info after", "tf2onnx info after",
                                                   "asked for"]
