"""Run one measurement in its own Python process and read the JSON record it prints last.

Every benchmark here measures each side in a fresh process: frameworks that crash when loaded together (paddle
after TensorFlow), settings read once at import (`TF_ENABLE_ONEDNN_OPTS`, logical devices, thread counts) and
caches warmed by an earlier side would otherwise bias the comparison. One broken or hung side gives an error
record and the others are still measured.
"""
import json
import os
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child_env(**overrides):
    """`os.environ` with this checkout importable from the child (it may run without an install), plus `overrides`."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(overrides)
    return env


def run_json_child(command, env=None, timeout=3600):
    """The last stdout line of `command` that starts with "{", parsed; `{"error": why}` if there is none.

    `command`: the argv list. `env`: defaults to `child_env()`. A child that exits non-zero, prints no JSON record
    or runs past `timeout` seconds gives `{"error": ...}` with the tail of what it printed.
    """
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=child_env() if env is None else env,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(error=f"timed out after {timeout} s: {' '.join(command)}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        return dict(error=f"exit status {done.returncode}: " + (done.stderr or done.stdout)[-1500:])
    return json.loads(lines[-1])
