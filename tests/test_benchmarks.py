"""The benchmarks' child runner: each side measured in its own process gives a record or an error, never nothing."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from child_process import REPO, child_env, run_json_child  # noqa: E402


def _python(code):
    return [sys.executable, "-c", code]


def test_the_last_json_line_is_the_record():
    record = run_json_child(_python('print("warming up"); print(\'{"round": 1}\'); print("x");'
                                    'print(\'{"round": 2}\'); print("bye")'))
    assert record == {"round": 2}


@pytest.mark.parametrize("code, expected", [
    ('import sys; print(\'{"round": 1}\'); sys.stderr.write("kernel crashed"); sys.exit(3)', "kernel crashed"),
    ('print("no record")', "no record"),
])
def test_a_failed_child_gives_an_error_with_its_output(code, expected):
    record = run_json_child(_python(code))
    assert set(record) == {"error"} and expected in record["error"]


def test_a_hung_child_gives_an_error_after_the_timeout():
    record = run_json_child(_python("import time; time.sleep(30)"), timeout=1)
    assert set(record) == {"error"} and "timed out after 1 s" in record["error"]


def test_the_child_imports_this_checkout():
    env = child_env(TSM_PROBE="1")
    assert env["TSM_PROBE"] == "1" and env["PYTHONPATH"].split(os.pathsep)[0] == REPO
    code = 'import json, os, sys; print(json.dumps(dict(path=sys.path, probe=os.environ["TSM_PROBE"])))'
    record = run_json_child(_python(code), env=env)
    assert REPO in record["path"] and record["probe"] == "1"
