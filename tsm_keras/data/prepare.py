"""`--mode=prepare`: list files from raw videos, and frame folders from a videos list.

1. Lists (when --prepare_videos_dir is given):
   - Kinetics layout: `<dir>/train/<class>/<video>` and `<dir>/val/<class>/<video>` (or a single
     class-per-folder tree, listed as train). Class indices follow --label_map (e.g. kinetics400,
     names compared case-insensitively with spaces as underscores) or the sorted folder names,
     written to `classes.txt`.
   - UCF-101 (with --ucf101_annotations=<ucfTrainTestlist>): `classInd.txt` (1-based) and
     `trainlist0N.txt`/`testlist0N.txt` of --ucf101_split N; labels become 0-based.
   - Something-Something V2 (with --sthv2_annotations=<folder>): `labels.json` (`{template: "index"}`),
     `train.json` and `validation.json` (`[{"id", "template", ...}]`; also under their
     `something-something-v2-*.json` names), videos `<id>.webm` in --prepare_videos_dir. A video's
     class is its template with the `[ ]` around `something` removed, as the official
     `tools/gen_label_sthv2.py` does; `test.json` has no labels and is not listed.
   Writes `<path> <label>` lists (paths relative to --prepare_videos_dir) to --train_list/--val_list,
   or `train_videos.txt`/`val_videos.txt` in --prepare_videos_dir.
2. Frames (when --frames_dir is given): every video of the train/val videos lists is decoded into
   `<frames_dir>/<path without extension>/img_00001.jpg ...` (optionally --short_side), in parallel
   (--data_workers), resumably (a finished folder is renamed into place and skipped next time), and
   `train_frames.txt`/`val_frames.txt` are written in --frames_dir with the true frame counts.
"""

import contextlib
import logging
import multiprocessing
import os
import shutil
import time

import cv2

from tsm_keras import disk
from tsm_keras.data import decode, lists
from tsm_keras.errors import MissingInputError, UsageError
from tsm_keras.progress import ProgressLine

log = logging.getLogger(__name__)
JPEG_QUALITY = 95


def _normalize(name):
    return name.strip().lower().replace(" ", "_")


def _videos_in(folder):
    found = []
    for current, _, files in os.walk(folder):
        found.extend(os.path.join(current, f) for f in files if f.lower().endswith(lists.VIDEO_EXTENSIONS))
    return sorted(found)


def kinetics_lists(videos_dir, label_names=None):
    """{split: [(relative path, label)]}, class names from a class-per-folder tree (train/ and val/ inside)."""
    split_dirs = {}
    for split, candidates in (("train", ("train",)), ("val", ("val", "validation", "valid", "test"))):
        for candidate in candidates:
            if os.path.isdir(os.path.join(videos_dir, candidate)):
                split_dirs[split] = os.path.join(videos_dir, candidate)
                break
    if not split_dirs:
        split_dirs = {"train": videos_dir}
    class_dirs = {split: sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
                  for split, folder in split_dirs.items()}
    if label_names is None:
        label_names = sorted(set().union(*class_dirs.values()))
    index = {_normalize(name): i for i, name in enumerate(label_names)}
    rows = {}
    for split, folder in split_dirs.items():
        rows[split] = []
        for class_dir in class_dirs[split]:
            if _normalize(class_dir) not in index:
                raise lists.ListFileError(f"{os.path.join(folder, class_dir)}: class folder {class_dir!r} is not in "
                                          "the label map (check --label_map, or leave it empty to use the folders)")
            label = index[_normalize(class_dir)]
            for path in _videos_in(os.path.join(folder, class_dir)):
                rows[split].append((os.path.relpath(path, videos_dir), label))
        if not rows[split]:
            raise lists.ListFileError(f"{folder}: no videos ({', '.join(lists.VIDEO_EXTENSIONS)}) in class folders")
    return rows, label_names


def ucf101_lists(videos_dir, annotations_dir, split_number=1):
    """{"train": [...], "val": [...]} and class names from UCF-101's classInd.txt and train/test lists."""
    class_file = os.path.join(annotations_dir, "classInd.txt")
    label_names = lists.read_label_map(class_file)
    index = {name: i for i, name in enumerate(label_names)}
    rows = {}
    for split, name in (("train", f"trainlist{split_number:02d}.txt"), ("val", f"testlist{split_number:02d}.txt")):
        list_path = os.path.join(annotations_dir, name)
        if not os.path.isfile(list_path):
            raise lists.ListFileError(f"{list_path} not found (--ucf101_annotations should hold classInd.txt, "
                                      f"trainlist0N.txt and testlist0N.txt; --ucf101_split={split_number})")
        rows[split] = []
        missing = 0
        for line_number, line in disk.read_text_lines(list_path, error=lists.ListFileError):
            fields = line.split()
            if not fields:
                continue
            where = f"{list_path}:{line_number}"
            relative = fields[0]
            class_name = relative.replace("\\", "/").split("/")[0]
            if len(fields) > 2 or class_name not in index:
                raise lists.ListFileError(f'{where}: expected "<class>/<video> [<1-based label>]" with a class '
                                          f"of {class_file}, got {line.strip()!r}")
            label = index[class_name]
            if len(fields) == 2 and (not lists._is_int(fields[1]) or int(fields[1]) - 1 != label):
                raise lists.ListFileError(f"{where}: label {fields[1]} does not match class {class_name} "
                                          f"(index {label + 1} in {class_file})")
            if not os.path.isfile(os.path.join(videos_dir, relative)):
                missing += 1
                continue
            rows[split].append((relative, label))
        if missing:
            log.warning("%s: %d videos listed but not found under %s; left out", list_path, missing, videos_dir)
    return rows, label_names


STHV2_FILES = {"labels": "labels.json", "train": "train.json", "val": "validation.json"}


def _sthv2_file(annotations_dir, kind):
    """`labels.json` or the download's own `something-something-v2-labels.json` (same for train/validation)."""
    short = STHV2_FILES[kind]
    for name in (short, f"something-something-v2-{short}"):
        path = os.path.join(annotations_dir, name)
        if os.path.isfile(path):
            return path
    raise lists.ListFileError(f"{os.path.join(annotations_dir, short)} not found (--sthv2_annotations should hold "
                              f"labels.json, train.json and validation.json, or something-something-v2-{short})")


def _video_for(videos_dir, video_id):
    for extension in (".webm",) + tuple(e for e in lists.VIDEO_EXTENSIONS if e != ".webm"):
        path = os.path.join(videos_dir, f"{video_id}{extension}")
        if os.path.isfile(path):
            return os.path.basename(path)
    return None


def sthv2_lists(videos_dir, annotations_dir):
    """{"train": [...], "val": [...]} and class names from Something-Something V2's JSON files."""
    labels_path = _sthv2_file(annotations_dir, "labels")
    label_names = lists.read_label_map(labels_path)
    index = {name: i for i, name in enumerate(label_names)}
    rows = {}
    for split in ("train", "val"):
        path = _sthv2_file(annotations_dir, split)
        entries = lists.read_json(path)
        if not isinstance(entries, list):
            raise lists.ListFileError(f'{path}: expected a list of {{"id": ..., "template": ...}} entries')
        rows[split], missing = [], 0
        for position, entry in enumerate(entries):
            where = f"{path}: entry {position}"
            if not isinstance(entry, dict) or "id" not in entry or "template" not in entry:
                raise lists.ListFileError(f'{where}: expected {{"id": ..., "template": ...}}, got {entry!r:.200}')
            name = entry["template"].replace("[", "").replace("]", "")
            if name not in index:
                raise lists.ListFileError(f"{where} (id {entry['id']}): template {entry['template']!r} is not a "
                                          f"class of {labels_path}")
            video = _video_for(videos_dir, entry["id"])
            if video is None:
                missing += 1
                continue
            rows[split].append((video, index[name]))
        if missing:
            log.warning("%s: %d of %d videos not found under %s; left out", path, missing, len(entries), videos_dir)
    return rows, label_names


def extract_frames(video_path, out_dir, short_side=0, frame_template="img_{:05d}.jpg"):
    """Decode a video into `out_dir` (written aside, renamed when complete); returns the true frame count.

    An existing `out_dir` counts as done. Raises BadSampleError when no frame decodes.
    """
    if os.path.isdir(out_dir):
        return decode.count_frame_files(out_dir, frame_template)
    frames = decode.iter_frames(video_path, short_side)
    tmp = f"{out_dir}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    count = 0
    with disk.writing(out_dir, "frame folder", cleanup=[tmp]):
        for count, frame in enumerate(frames, 1):
            path = os.path.join(tmp, frame_template.format(count))
            if not cv2.imwrite(path, frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
                raise disk.image_write_failed(path, out_dir)
    if count == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise decode.BadSampleError(video_path, "no frame decodes (empty or corrupt video)")
    os.rename(tmp, out_dir)
    return count


def _extract_one(args):
    video_path, out_dir, short_side, frame_template = args
    try:
        return extract_frames(video_path, out_dir, short_side, frame_template), None
    except decode.BadSampleError as error:
        return 0, str(error)


def extract_list(list_path, data_root, frames_dir, out_list, *, short_side=0, frame_template="img_{:05d}.jpg",
                 workers=1, on_bad_sample="skip"):
    """Frame folders for every video of a videos list, and the frames list; returns (written, skipped)."""
    records = lists.read_list(list_path, "videos", data_root)
    jobs = []
    for record in records:
        relative = os.path.relpath(record.path, data_root) if data_root else record.path
        relative = os.path.splitext(relative)[0] if not os.path.isabs(relative) else os.path.splitext(
            os.path.basename(relative))[0]
        jobs.append((record, relative, (record.path, os.path.join(frames_dir, relative), short_side, frame_template)))
    workers = max(1, int(workers))
    line = ProgressLine(f"prepare {os.path.basename(list_path)}: videos", len(jobs))
    rows, skipped, frames = [], 0, 0
    with contextlib.ExitStack() as stack:
        if workers == 1:
            results = map(_extract_one, [job[2] for job in jobs])
        else:
            # fork is enough: the workers only run OpenCV. imap: results in order, as they come.
            pool = stack.enter_context(multiprocessing.get_context("fork").Pool(workers))
            results = pool.imap(_extract_one, [job[2] for job in jobs], chunksize=1)
        for done, ((record, relative, _), (count, error)) in enumerate(zip(jobs, results), 1):
            if error is not None:
                if on_bad_sample == "fail":
                    raise decode.BadSampleError(record.path, f"{error} ({record.source}; --on_bad_sample=fail)")
                line.note(f"warning: skipping {error} ({record.source})")  # as it happens, not at the end
                skipped += 1
            else:
                rows.append((relative, count, record.label))
                frames += count
            line.update(done, **{"frames/s": f"{frames / max(time.time() - line.began, 1e-9):.0f}", "bad": skipped})
    line.close()
    if skipped:
        log.warning("%s: %d of %d videos skipped as unreadable (listed above)", list_path, skipped, len(jobs))
    lists.write_list(out_list, rows)
    return len(rows), skipped


def prepare(config):
    """Build videos lists and/or extract frames; prints what to pass to training; returns {output: ...}."""
    outputs = {}
    train_list, val_list, data_root = config.train_list, config.val_list, config.data_root
    if config.prepare_videos_dir:
        videos_dir = config.prepare_videos_dir
        if not os.path.isdir(videos_dir):
            raise MissingInputError(f"--prepare_videos_dir={videos_dir} is not a folder")
        if config.ucf101_annotations and config.sthv2_annotations:
            raise UsageError("pass one of --ucf101_annotations and --sthv2_annotations")
        if config.ucf101_annotations:
            rows, names = ucf101_lists(videos_dir, config.ucf101_annotations, config.ucf101_split)
        elif config.sthv2_annotations:
            rows, names = sthv2_lists(videos_dir, config.sthv2_annotations)
        else:
            given = lists.read_label_map(config.label_map) if config.label_map else None
            rows, names = kinetics_lists(videos_dir, given)
        train_list = train_list or os.path.join(videos_dir, "train_videos.txt")
        val_list = val_list or os.path.join(videos_dir, "val_videos.txt")
        for split, path in (("train", train_list), ("val", val_list)):
            if split in rows:
                lists.write_list(path, rows[split])
                outputs[f"{split}_videos"] = (path, len(rows[split]))
            elif split == "val":
                val_list = ""
        classes_path = os.path.join(os.path.dirname(os.path.abspath(train_list)), "classes.txt")
        with open(classes_path, "w") as f:
            f.write("\n".join(names) + "\n")
        outputs["classes"] = (classes_path, len(names))
        data_root = videos_dir
    if config.frames_dir:
        workers = config.data_workers or os.cpu_count() or 1
        for split, path in (("train", train_list), ("val", val_list)):
            if not path:
                continue
            out_list = os.path.join(config.frames_dir, f"{split}_frames.txt")
            written, skipped = extract_list(path, data_root, config.frames_dir, out_list, short_side=config.short_side,
                                            frame_template=config.frame_template, workers=workers,
                                            on_bad_sample=config.on_bad_sample)
            outputs[f"{split}_frames"] = (out_list, written)
            outputs[f"{split}_skipped"] = skipped
    if not outputs:
        raise UsageError("nothing to prepare: pass --prepare_videos_dir (build lists) and/or --frames_dir "
                         "(extract frames from --train_list/--val_list)")
    for key, value in outputs.items():
        print(f"{key}: {value}")
    if config.frames_dir:
        print(f"next: python app.py --mode=train --data_format=frames --data_root={config.frames_dir} "
              f"--train_list={os.path.join(config.frames_dir, 'train_frames.txt')} "
              f"--val_list={os.path.join(config.frames_dir, 'val_frames.txt')} ...")
    else:
        print(f"next: python app.py --mode=train --data_format=videos --data_root={data_root} "
              f"--train_list={train_list} --val_list={val_list} ...")
    return outputs
