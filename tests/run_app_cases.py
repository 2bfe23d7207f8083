"""Run `python app.py ARGV...` once per case, all in this one process (TensorFlow is imported once).

usage: python run_app_cases.py CASES_JSON RESULTS_JSON
  CASES_JSON: {"case name": [argv...], ...}; RESULTS_JSON gets {"case name": [status, stdout, stderr], ...}.

Each case runs as app.py's `__main__` does (`absl.app.run(main)`), its flags parsed afresh from the defaults,
its stdout and stderr captured at the file-descriptor level (C++ logging included). The status is the one the
interpreter would exit with: the `SystemExit` code, or 1 with the traceback printed by `sys.excepthook` for an
uncaught exception.
"""

import json
import os
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APP = os.path.join(REPO, "app.py")
sys.path.insert(0, REPO)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _run_case(app, argv):
    from absl import app as absl_app

    app.F.unparse_flags()
    try:
        absl_app.run(app.main, argv=[APP, *argv])
        return 0
    except SystemExit as done:
        code = done.code
        return 0 if code is None else code if isinstance(code, int) else 1
    except BaseException:  # noqa: BLE001  (what the interpreter does with an uncaught exception)
        sys.excepthook(*sys.exc_info())
        return 1


def _captured(app, argv):
    """(status, stdout, stderr) of one case, fds 1 and 2 redirected to temporary files meanwhile."""
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        sys.stdout.flush(), sys.stderr.flush()
        os.dup2(out.fileno(), 1), os.dup2(err.fileno(), 2)
        try:
            status = _run_case(app, argv)
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])
        out.seek(0), err.seek(0)
        return status, out.read(), err.read()


def main():
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    import app

    app.skip_exit_collection()  # as app.py's __main__ does
    results = {name: _captured(app, argv) for name, argv in cases.items()}
    with open(sys.argv[2], "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
