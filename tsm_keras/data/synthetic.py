"""The embedded dataset: short videos whose class depends on the order of frames, generated from a seed.

Classes come in pairs that are time-reverses of each other (right/left, down/up, growing/shrinking,
light on/off): a video of the second class of a pair is a video of the first class played backwards,
drawn from the same random shapes, colours, speeds, positions and background noise. Every single
frame is therefore equally likely in both classes of a pair: a frame-averaging model (TSN) stays at
chance within each pair, a temporal model (TSM) separates them.

Videos are Motion-JPEG `.avi` (every frame intra-coded, so no codec motion trail gives the direction
away), written with OpenCV's VideoWriter; the same frames are also written as frame folders
(`img_00001.jpg` ...), and list files in PaddleVideo's formats point at both.

Layout under `root`:
  videos/{train,val}/<class>/<name>.avi       train_videos.txt, val_videos.txt  (`<path> <label>`)
  frames/{train,val}/<class>/<name>/img_*.jpg  train_frames.txt, val_frames.txt  (`<dir> <n> <label>`)
  classes.txt (one name per line), manifest.json (parameters; a matching one means "already there").
"""

import concurrent.futures
import json
import os
import shutil
import time

import cv2
import numpy as np

from tsm_keras import disk
from tsm_keras.errors import ExistingOutputError

SYNTHETIC_CLASSES = ["moving_right", "moving_left", "moving_down", "moving_up",
                     "growing", "shrinking", "light_turning_on", "light_turning_off"]
VERSION = 1
DEFAULTS = dict(train_per_class=48, val_per_class=12, num_frames=24, frame_size=128, fps=12)
# Every manifest this module has written holds these (VERSION 1 on).
_MANIFEST_KEYS = {"version", "seed", "classes", *DEFAULTS}
_SPLIT_IDS = {"train": 0, "val": 1}
_SHAPES = ("circle", "square", "triangle", "diamond")


def default_synthetic_root():
    """`data_cache/synthetic` under the working directory (git-ignored)."""
    return os.path.join(os.getcwd(), "data_cache", "synthetic")


def _draw_shape(image, shape, center, radius, color):
    x, y = center
    r = max(1.0, radius)
    if shape == "circle":
        cv2.circle(image, (int(round(x)), int(round(y))), int(round(r)), color, -1, cv2.LINE_AA)
        return
    if shape == "square":
        points = [(x - r, y - r), (x + r, y - r), (x + r, y + r), (x - r, y + r)]
    elif shape == "triangle":
        points = [(x, y - r), (x + r, y + r), (x - r, y + r)]
    else:
        points = [(x, y - r), (x + r, y), (x, y + r), (x - r, y)]
    cv2.fillPoly(image, [np.round(np.array(points) * 16).astype(np.int32)], color, cv2.LINE_AA, shift=4)


def _background(rng, size):
    """A smooth random two-colour gradient, float32 [size, size, 3]."""
    a, b = rng.uniform(20, 200, 3), rng.uniform(20, 200, 3)
    angle = rng.uniform(0, 2 * np.pi)
    grid = np.linspace(0.0, 1.0, size, dtype=np.float32)
    ramp = (np.cos(angle) * grid[None, :] + np.sin(angle) * grid[:, None])
    ramp = (ramp - ramp.min()) / max(1e-6, float(ramp.max() - ramp.min()))
    return (a[None, None, :] * (1 - ramp[..., None]) + b[None, None, :] * ramp[..., None]).astype(np.float32)


def _forward_video(pair, rng, num_frames, size):
    """Frames [T, size, size, 3] uint8 BGR of the first class of `pair` (0 moves right... see classes)."""
    background = _background(rng, size)
    shape = _SHAPES[rng.integers(len(_SHAPES))]
    color = tuple(float(c) for c in rng.uniform(0, 255, 3))
    # Keep the object visible against the background: push the colour away from the background mean.
    if np.abs(np.array(color) - background.mean((0, 1))).sum() < 150:
        color = tuple(255.0 - c for c in color)
    t = np.linspace(0.0, 1.0, num_frames)
    radius = np.full(num_frames, rng.uniform(0.08, 0.14) * size)
    brightness = np.ones(num_frames)
    if pair in (0, 1):  # moving right (reversed: left) / moving down, y grows downwards (reversed: up)
        travel = rng.uniform(0.4, 0.65) * size
        start = rng.uniform(radius[0], size - radius[0] - travel)
        along = start + travel * t
        across = np.full(num_frames, rng.uniform(radius[0], size - radius[0]))
        xs, ys = (along, across) if pair == 0 else (across, along)
    elif pair == 2:  # growing (reversed: shrinking)
        radius = rng.uniform(0.04, 0.08) * size + rng.uniform(0.2, 0.3) * size * t
        xs = np.full(num_frames, rng.uniform(0.35, 0.65) * size)
        ys = np.full(num_frames, rng.uniform(0.35, 0.65) * size)
    else:  # light turning on (reversed: off): a smooth step in brightness at a random moment
        xs = np.full(num_frames, rng.uniform(0.25, 0.75) * size)
        ys = np.full(num_frames, rng.uniform(0.25, 0.75) * size)
        onset, width = rng.uniform(0.3, 0.7), rng.uniform(0.04, 0.12)
        low = rng.uniform(0.15, 0.4)
        brightness = low + (1.0 - low) / (1.0 + np.exp(-(t - onset) / width))
    frames = []
    for i in range(num_frames):
        image = background.copy()
        _draw_shape(image, shape, (xs[i], ys[i]), radius[i], color)
        image = image * brightness[i] + 5.0 * rng.standard_normal(image.shape, dtype=np.float32)
        frames.append(np.clip(image, 0, 255).astype(np.uint8))
    return np.stack(frames)


def generate_video(label, seed, split, index, num_frames=DEFAULTS["num_frames"], frame_size=DEFAULTS["frame_size"]):
    """Frames [T, H, W, 3] uint8 BGR of one video; class 2k+1 is class 2k played backwards."""
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], label, index])
    frames = _forward_video(label // 2, rng, num_frames, frame_size)
    return frames[::-1].copy() if label % 2 else frames


def _write_video(root, split, label, index, params, seed):
    """Write one video (.avi and frame folder); return its (videos list row, frames list row)."""
    name = SYNTHETIC_CLASSES[label]
    frames = generate_video(label, seed, split, index, params["num_frames"], params["frame_size"])
    stem = f"{name}_{split}_{index:03d}"
    video_rel = os.path.join("videos", split, name, f"{stem}.avi")
    frame_rel = os.path.join("frames", split, name, stem)
    os.makedirs(os.path.join(root, os.path.dirname(video_rel)), exist_ok=True)
    os.makedirs(os.path.join(root, frame_rel), exist_ok=True)
    size = (frames.shape[2], frames.shape[1])
    writer = cv2.VideoWriter(os.path.join(root, video_rel), cv2.VideoWriter_fourcc(*"MJPG"), params["fps"], size)
    if not writer.isOpened():
        raise RuntimeError("OpenCV cannot write Motion-JPEG .avi files (is opencv-python-headless installed?)")
    for number, frame in enumerate(frames, start=1):
        writer.write(frame)
        cv2.imwrite(os.path.join(root, frame_rel, f"img_{number:05d}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
    writer.release()
    return f"{video_rel} {label}", f"{frame_rel} {len(frames)} {label}"


def _write_split(root, split, per_class, params, seed):
    # One thread a core: NumPy's drawing arithmetic and OpenCV's encoders release the GIL (2 threads: 9 -> 5 s
    # for the default dataset on a 2-core Intel Xeon). Every video has its own seed, so the files do not
    # depend on the order; map keeps the list rows in class, index order.
    jobs = [(label, index) for label in range(len(SYNTHETIC_CLASSES)) for index in range(per_class)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(len(jobs), os.cpu_count() or 1))) as pool:
        rows = list(pool.map(lambda job: _write_video(root, split, job[0], job[1], params, seed), jobs))
    video_rows = [video for video, _ in rows]
    frame_rows = [frame for _, frame in rows]
    for kind, rows in (("videos", video_rows), ("frames", frame_rows)):
        with open(os.path.join(root, f"{split}_{kind}.txt"), "w") as f:
            f.write("\n".join(rows) + "\n")


def _paths(root):
    return dict(root=root, train_list=os.path.join(root, "train_videos.txt"),
                val_list=os.path.join(root, "val_videos.txt"),
                train_frames_list=os.path.join(root, "train_frames.txt"),
                val_frames_list=os.path.join(root, "val_frames.txt"),
                label_map=os.path.join(root, "classes.txt"), classes=list(SYNTHETIC_CLASSES))


def ensure_synthetic_dataset(root, seed=0, reuse_existing=False, **sizes):
    """Generate the embedded dataset into `root` unless an identical one is there; return its paths.

    Args:
      root: output folder (created atomically: generated aside, then renamed).
      seed: same seed and sizes -> the same videos, frames and lists.
      reuse_existing: accept a synthetic dataset already in `root` whatever its seed and sizes
        (the pipeline does this, so a dataset generated with custom sizes is read as it is).
      sizes: train_per_class, val_per_class, num_frames, frame_size, fps (defaults in DEFAULTS).
    Returns:
      dict with root, train_list/val_list (videos lists), train_frames_list/val_frames_list,
      label_map (classes.txt) and classes (the class names, SYNTHETIC_CLASSES).
    """
    unknown = set(sizes) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown synthetic dataset sizes {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    params = dict(DEFAULTS, **sizes)
    manifest = dict(version=VERSION, seed=int(seed), classes=SYNTHETIC_CLASSES, **params)
    root = os.path.abspath(root)
    manifest_path = os.path.join(root, "manifest.json")
    if os.path.isfile(manifest_path):
        not_ours = (f"{root} is not a synthetic dataset this tool generated: if it is one, delete it; otherwise pass "
                    "an empty or new --data_root (nothing in it was changed)")
        existing = disk.read_json(manifest_path, not_ours, error=ExistingOutputError)
        # Only a folder whose manifest this module wrote is ever reused or deleted: another tool's manifest.json
        # (a TFRecord conversion's, a dataset's own) means the user pointed --data_root at their data.
        if not isinstance(existing, dict) or not _MANIFEST_KEYS <= set(existing):
            raise ExistingOutputError(f"{manifest_path} is not the manifest of a synthetic dataset; {not_ours}")
        if existing == manifest or (reuse_existing and existing.get("version") == VERSION):
            return _paths(root)
        # Ours but with other parameters: regenerate it.
        shutil.rmtree(root)
    elif os.path.exists(root) and os.listdir(root):
        raise ExistingOutputError(f"{root} exists and is not a synthetic dataset (no manifest.json): "
                                  "pass an empty or new --data_root")
    tmp = f"{root}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    started = time.time()
    n = len(SYNTHETIC_CLASSES)
    print(f"synthetic dataset: generating {n} classes x ({params['train_per_class']} train + "
          f"{params['val_per_class']} val) videos of {params['num_frames']} frames, {params['frame_size']}x"
          f"{params['frame_size']} px (Motion-JPEG .avi and frame folders) into {root} ...", flush=True)
    _write_split(tmp, "train", params["train_per_class"], params, seed)
    _write_split(tmp, "val", params["val_per_class"], params, seed)
    with open(os.path.join(tmp, "classes.txt"), "w") as f:
        f.write("\n".join(SYNTHETIC_CLASSES) + "\n")
    with open(os.path.join(tmp, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    if os.path.isdir(root) and not os.listdir(root):
        os.rmdir(root)
    os.makedirs(os.path.dirname(root), exist_ok=True)
    try:
        os.rename(tmp, root)
    except OSError:
        # Another process finished first; its copy is identical.
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"synthetic dataset: done in {time.time() - started:.0f} s", flush=True)
    return _paths(root)
