"""Input pipeline speed, clips/s on one core: tsm-keras (frames, videos, TFRecords) vs PaddleVideo's own pipeline.

    python benchmarks/input_speed.py [--videos 6] [--seconds 8] [--cache data_cache/input_speed]

Generates its own 10 s 340x256 30 fps clips (mp4v .mp4, their JPEG frame folders, TFRecords), then
times, each in a fresh process pinned to one CPU, the TSM training transform at 8 segments and 224
crops: tsm-keras `build_dataset(split="train")` (uint8 clips: normalization is in the model) and
PaddleVideo's `tsm_k400_{frames,videos}.yaml` train pipeline (Sampler select_left, Scale 256,
MultiScaleCrop 256, RandomCrop 224, RandomFlip, Image2Array, Normalization; VideoDecoder decord),
its `loader/pipelines` modules loaded by file path. Prints one JSON object, with the machine
(`tsm_keras.runtime.machine_info()`, read in this parent process; the children only time).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

from child_process import run_json_child

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
NUM_SEGMENTS, IMAGE_SIZE, SCALE_SIZE = 8, 224, 256
WIDTH, HEIGHT, FPS, SECONDS = 340, 256, 30, 10


def generate(cache, num_videos):
    """mp4 videos, frame folders and lists in `cache` (kept between runs)."""
    import cv2
    import numpy as np

    os.makedirs(cache, exist_ok=True)
    video_rows, frame_rows = [], []
    for v in range(num_videos):
        video = os.path.join(cache, "videos", f"clip{v}.mp4")
        frames_dir = os.path.join(cache, "frames", f"clip{v}")
        video_rows.append(f"videos/clip{v}.mp4 {v % 4}")
        frame_rows.append(f"frames/clip{v} {FPS * SECONDS} {v % 4}")
        if os.path.isfile(video) and os.path.isdir(frames_dir):
            continue
        rng = np.random.default_rng(v)
        os.makedirs(os.path.dirname(video), exist_ok=True)
        os.makedirs(frames_dir, exist_ok=True)
        writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"mp4v"), FPS, (WIDTH, HEIGHT))
        yy, xx = np.mgrid[:HEIGHT, :WIDTH].astype(np.float32)
        base = np.stack([xx / WIDTH * 200, yy / HEIGHT * 200, (xx + yy) / (WIDTH + HEIGHT) * 255], -1)
        shapes = [(rng.uniform(0, WIDTH), rng.uniform(0, HEIGHT), rng.uniform(-4, 4), rng.uniform(-4, 4),
                   int(rng.uniform(10, 50)), tuple(int(c) for c in rng.integers(0, 255, 3))) for _ in range(6)]
        for i in range(FPS * SECONDS):
            image = base.copy()
            for x, y, dx, dy, r, color in shapes:
                cv2.circle(image, (int(x + dx * i) % WIDTH, int(y + dy * i) % HEIGHT), r, color, -1)
            image = np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)
            writer.write(image)
            cv2.imwrite(os.path.join(frames_dir, f"img_{i + 1:05d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        writer.release()
    with open(os.path.join(cache, "videos.txt"), "w") as f:
        f.write("\n".join(video_rows) + "\n")
    with open(os.path.join(cache, "frames.txt"), "w") as f:
        f.write("\n".join(frame_rows) + "\n")


def _pin_to_one_core():
    cpu = sorted(os.sched_getaffinity(0))[0]
    os.sched_setaffinity(0, {cpu})
    return cpu


def _rate(step, seconds):
    """(clips per CPU second of this process, clips per wall second) over `seconds` of wall time.

    CPU time counts every thread of the process, so on a shared machine clips per CPU second is the
    per-core rate that other processes' load does not distort; wall time is reported beside it.
    """
    count, wall, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - wall < seconds:
        step(count)
        count += 1
    return count / (time.process_time() - cpu), count / (time.perf_counter() - wall)


def time_tsm_keras(cache, data_format, seconds):
    """Child process: clips/s of build_dataset(train) on one core."""
    _pin_to_one_core()
    sys.path.insert(0, ROOT)
    import tsm_keras  # noqa: F401  (before TensorFlow: turns oneDNN on)
    import tensorflow as tf

    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    from tsm_keras.config import Config
    from tsm_keras.data import build_dataset

    list_name = "frames.txt" if data_format == "frames" else "videos.txt"
    config = Config(data_format=data_format, data_root=cache, train_list=os.path.join(cache, list_name),
                    tfrecord_dir=os.path.join(cache, "tfrecords"), num_segments=NUM_SEGMENTS, image_size=IMAGE_SIZE,
                    scale_size=SCALE_SIZE, num_classes=4)
    dataset = build_dataset(config, "train", batch_size=0, repeat=True)
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    iterator = iter(dataset.with_options(options))
    for _ in range(3):
        clip, _ = next(iterator)
    assert clip.shape == (NUM_SEGMENTS, IMAGE_SIZE, IMAGE_SIZE, 3), clip.shape
    return _rate(lambda i: next(iterator), seconds)


def time_paddlevideo(cache, data_format, seconds):
    """Child process: clips/s of PaddleVideo's TSM K400 train pipeline on one core."""
    _pin_to_one_core()
    sys.path.insert(0, HERE)
    from paddlevideo_pipelines import load_paddlevideo_pipelines

    sample, augmentations, decode = load_paddlevideo_pipelines()
    if data_format == "frames":
        decoder = decode.FrameDecoder()
    else:
        decoder = decode.VideoDecoder(backend="decord")
    steps = [decoder, sample.Sampler(NUM_SEGMENTS, 1, valid_mode=False, select_left=True),
             augmentations.Scale(SCALE_SIZE, fixed_ratio=False), augmentations.MultiScaleCrop(SCALE_SIZE),
             augmentations.RandomCrop(IMAGE_SIZE), augmentations.RandomFlip(), augmentations.Image2Array(),
             augmentations.Normalization(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])]
    with open(os.path.join(cache, f"{data_format}.txt")) as f:
        rows = [line.split() for line in f if line.strip()]

    def one(row):
        if data_format == "frames":
            results = dict(frame_dir=os.path.join(cache, row[0]), frames_len=int(row[1]), labels=int(row[2]),
                           suffix="img_{:05}.jpg")
        else:
            results = dict(filename=os.path.join(cache, row[0]), labels=int(row[1]))
        for step in steps:
            results = step(results)
        return results["imgs"]

    clip = one(rows[0])
    assert clip.shape == (NUM_SEGMENTS, 3, IMAGE_SIZE, IMAGE_SIZE), clip.shape
    return _rate(lambda i: one(rows[i % len(rows)]), seconds)


def _child(kind, cache, data_format, seconds):
    # A child stalled once in ~20 runs (7 s of CPU in 10 min, cause not found): never wait forever.
    record = run_json_child([sys.executable, os.path.abspath(__file__), "--child", kind, "--format", data_format,
                             "--cache", cache, "--seconds", str(seconds)], timeout=10 * seconds + 300)
    return (None, record["error"]) if "error" in record else (record, None)


def _versions():
    """Installed versions, read from package metadata: importing paddle after TensorFlow crashes."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for name in ("tensorflow", "keras", "opencv-python-headless", "numpy", "paddlepaddle", "ppvideo", "decord",
                 "pillow"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "unavailable"
    return versions


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cache", default=os.path.join(ROOT, "data_cache", "input_speed"))
    parser.add_argument("--child", choices=["tsm_keras", "paddlevideo"])
    parser.add_argument("--format", default="frames")
    args = parser.parse_args()
    if args.child:
        timer = time_tsm_keras if args.child == "tsm_keras" else time_paddlevideo
        per_cpu_second, per_wall_second = timer(args.cache, args.format, args.seconds)
        print(json.dumps({"per_cpu_second": per_cpu_second, "per_wall_second": per_wall_second}))
        return

    # The parent reads the machine through tsm_keras (which loads TensorFlow: never in the paddle child).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, ROOT)
    from tsm_keras import runtime

    generate(args.cache, args.videos)
    if not os.path.isfile(os.path.join(args.cache, "tfrecords", "manifest.json")):
        subprocess.run([sys.executable, os.path.join(ROOT, "app.py"), "--mode=tfrecords", "--data_format=frames",
                        f"--data_root={args.cache}", f"--train_list={os.path.join(args.cache, 'frames.txt')}",
                        f"--tfrecord_dir={os.path.join(args.cache, 'tfrecords')}", "--tfrecord_videos_per_shard=2",
                        "--data_workers=1", "--num_classes=4"], check=True, capture_output=True)
    # Rounds alternate the two pipelines; each keeps its best round (the least disturbed by other load).
    runs = [("tsm_keras", f) for f in ("frames", "videos", "tfrecord")] + [("paddlevideo", f) for f in ("frames", "videos")]
    best, errors = {}, {}
    for _ in range(args.rounds):
        for kind, data_format in runs:
            measured, error = _child(kind, args.cache, data_format, args.seconds)
            if error:
                errors[f"{kind}/{data_format}"] = error
                continue
            previous = best.get((kind, data_format))
            if previous is None or measured["per_cpu_second"] > previous["per_cpu_second"]:
                best[(kind, data_format)] = measured
    results = {}
    for data_format in ("frames", "videos", "tfrecord"):
        entry = {}
        for kind in ("tsm_keras", "paddlevideo"):
            if (kind, data_format) in best:
                entry[kind] = round(best[(kind, data_format)]["per_cpu_second"], 2)
                entry[f"{kind}_wall"] = round(best[(kind, data_format)]["per_wall_second"], 2)
        if entry.get("tsm_keras") and entry.get("paddlevideo"):
            entry["ratio"] = round(entry["tsm_keras"] / entry["paddlevideo"], 2)
        results[data_format] = entry
    if results["tfrecord"].get("tsm_keras") and results["frames"].get("tsm_keras"):
        results["tfrecord"]["ratio_to_frames"] = round(results["tfrecord"]["tsm_keras"] / results["frames"]["tsm_keras"], 2)
    report = dict(benchmark="input_speed", unit="clips per CPU second, one core (_wall: per wall second)",
                  rounds=args.rounds, clip=dict(
        seconds=SECONDS, fps=FPS, width=WIDTH, height=HEIGHT, num_segments=NUM_SEGMENTS, crop=IMAGE_SIZE,
        transform="train: segment sampling, MultiScaleCrop, flip"), videos=args.videos,
        machine=runtime.machine_info(), versions=_versions(), results=results)
    if errors:
        report["errors"] = errors
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
