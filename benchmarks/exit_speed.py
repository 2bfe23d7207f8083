"""How long a process that has used TensorFlow takes to end, with CPython's teardown and with `skip_exit_collection`.

    python benchmarks/exit_speed.py [--backbone=resnet10 --rounds=5]

Each child imports tsm_keras, builds a TSM (4 segments of 32 px, 2 classes) and runs it once on zeros, as a
short command (`app.py --mode=summary`, a predict) does, prints the wall-clock time at which its work is done,
and ends: `teardown` leaves CPython's interpreter teardown as it is; `frozen` calls
`tsm_keras.runtime.skip_exit_collection()` first (what `app.py` does). The parent times, per child, from that
line to the process's end ("exit seconds") and from start to end, in rounds `teardown, frozen` so load drift
hits both. Prints one JSON object: machine, the runs, medians and the ratios frozen/teardown.
"""

import argparse
import json
import os
import statistics
import sys
import time

from child_process import run_json_child

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def run_child(args):
    import tsm_keras
    import tensorflow as tf

    model = tsm_keras.build_tsm(2, num_segments=4, backbone=args.backbone, image_size=32)
    model(tf.zeros([1, 4, 32, 32, 3]))
    if args.child == "frozen":
        tsm_keras.runtime.skip_exit_collection()
    print(json.dumps(dict(done=time.time())), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", default="", choices=["", "teardown", "frozen"])
    parser.add_argument("--backbone", default="resnet10")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, REPO)
    if args.child:
        return run_child(args)
    from tsm_keras import runtime

    runs = {"teardown": [], "frozen": []}
    for _ in range(args.rounds):
        for name in runs:
            command = [sys.executable, os.path.abspath(__file__), f"--child={name}", f"--backbone={args.backbone}"]
            start = time.time()
            record = run_json_child(command, timeout=600)
            end = time.time()
            runs[name].append(record if "error" in record else
                              dict(exit_seconds=round(end - record["done"], 3), process_seconds=round(end - start, 3)))
            print(json.dumps({name: runs[name][-1]}), file=sys.stderr, flush=True)
    medians = {}
    for name, results in runs.items():
        for key in ("exit_seconds", "process_seconds"):
            values = [r[key] for r in results if key in r]
            if values:
                medians.setdefault(key, {})[name] = round(statistics.median(values), 3)
    ratios = {f"{key} frozen/teardown": round(m["frozen"] / m["teardown"], 3)
              for key, m in medians.items() if len(m) == 2}
    print(json.dumps(dict(benchmark="exit_speed", backbone=args.backbone, rounds=args.rounds,
                          machine=runtime.machine_info(), medians=medians, ratios=ratios, runs=runs), indent=2))


if __name__ == "__main__":
    main()
