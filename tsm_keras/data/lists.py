"""List files and label maps in PaddleVideo's formats.

frames list: `<frame_dir> <num_frames> <label>` per line (frame files 1-based, `img_00001.jpg` ...)
videos list: `<video_path> <label>` per line
Paths are relative to a data root (absolute paths are kept). Labels are 0-based class indices.

Label maps: `kinetics400` (shipped with the package), a `"<idx> <name>"` file (UCF-101 `classInd.txt`
is 1-based, the Kinetics file 0-based: the first index decides), or a plain one-name-per-line file.
"""

import collections
import os
import re

from tsm_keras import disk
from tsm_keras.errors import UsageError, UserError

KINETICS400_LABELS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kinetics400_labels.txt")
# What counts as a video file when a folder is searched (prepare, predict's --input).
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp",
                    ".ts")
# What counts as a list file for predict's --input.
LIST_EXTENSIONS = (".txt", ".list", ".lst", ".csv")

# One entry of a list file. `num_frames` is -1 for videos (the container is asked at decode time);
# `source` is "file:line" for messages.
VideoRecord = collections.namedtuple("VideoRecord", ["path", "num_frames", "label", "source"])


class ListFileError(UserError, ValueError):
    """A list file or label map that cannot be used; the message names file:line and what was expected."""


def _is_int(text):
    return re.fullmatch(r"[+-]?\d+", text) is not None


def read_list(list_path, data_format, data_root="", num_classes=None):
    """Parse a frames or videos list file into `VideoRecord`s.

    Args:
      list_path: the list file.
      data_format: "frames" or "videos".
      data_root: folder that relative paths in the list are joined to.
      num_classes: when given, every label must be in [0, num_classes).
    Raises:
      ListFileError naming `file:line` for a missing file, a malformed line or a label out of range.
    """
    if data_format not in ("frames", "videos"):
        raise ValueError(f"data_format must be 'frames' or 'videos' to read a list, got {data_format!r}")
    if not list_path:
        raise ListFileError(f"no list file given for data_format={data_format}: pass --train_list/--val_list")
    if not os.path.isfile(list_path):
        raise ListFileError(f"list file {list_path} not found (check --train_list/--val_list and --data_root)")
    expected = "<frame_dir> <num_frames> <label>" if data_format == "frames" else "<video_path> <label>"
    num_fields = 3 if data_format == "frames" else 2
    records = []
    for line_number, line in disk.read_text_lines(list_path, error=ListFileError):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        where = f"{list_path}:{line_number}"
        # rsplit keeps paths with spaces (Kinetics class folders such as "air drumming") whole.
        fields = text.rsplit(None, num_fields - 1)
        if len(fields) != num_fields or not all(_is_int(x) for x in fields[1:]):
            raise ListFileError(f'{where}: expected "{expected}", got "{text}"')
        path = fields[0]
        if data_format == "videos" and len(path.split()) > 1 and _is_int(path.split()[-1]):
            raise ListFileError(f'{where}: expected "{expected}", got 3 fields "{text}" '
                                "(a frames list? use --data_format=frames)")
        label = int(fields[-1])
        num_frames = int(fields[1]) if data_format == "frames" else -1
        if data_format == "frames" and num_frames < 0:
            raise ListFileError(f'{where}: num_frames must be >= 0, got {num_frames} in "{text}"')
        if label < 0 or (num_classes is not None and label >= num_classes):
            raise ListFileError(f"{where}: label {label} is outside the label map [0, {num_classes}) "
                                "(check --num_classes/--label_map; labels are 0-based)")
        full_path = path if os.path.isabs(path) or not data_root else os.path.join(data_root, path)
        records.append(VideoRecord(full_path, num_frames, label, where))
    if not records:
        raise ListFileError(f"list file {list_path} has no entries (expected lines \"{expected}\")")
    return records


def read_json(path):
    """A JSON file; ListFileError naming the file and line when it does not parse."""
    return disk.read_json(path, error=ListFileError)


def _json_label_map(path):
    """Something-Something's `labels.json` (`{"<name>": "<index>"}`) or a JSON list of names."""
    labels = read_json(path)
    if isinstance(labels, list) and labels and all(isinstance(name, str) for name in labels):
        return list(labels)
    if not isinstance(labels, dict) or not labels:
        raise ListFileError(f'label map {path}: expected {{"<name>": "<index>", ...}} (Something-Something\'s '
                            "labels.json) or a list of names")
    names = [None] * len(labels)
    for name, index in labels.items():
        if not _is_int(str(index)) or not 0 <= int(index) < len(labels) or names[int(index)] is not None:
            raise ListFileError(f"label map {path}: class {name!r} has index {index!r}; indices must be "
                                f"0..{len(labels) - 1}, each once")
        names[int(index)] = name
    return names


def read_label_map(spec):
    """Class names, index i -> name, from `kinetics400`, a `"<idx> <name>"` file, one name per line, or a
    `.json` file (Something-Something V2's `labels.json`).

    A `"<idx> <name>"` file may be 0-based (Kinetics) or 1-based (UCF-101 classInd.txt): its first index
    decides, and the indices must then run without gaps.
    """
    path = KINETICS400_LABELS if spec == "kinetics400" else spec
    if not os.path.isfile(path):
        raise ListFileError(f"label map {spec} not found: pass --label_map=kinetics400, a classInd.txt, "
                            "a file with one class name per line or a labels.json")
    if path.lower().endswith(".json"):
        return _json_label_map(path)
    lines = [(number, line.strip()) for number, line in disk.read_text_lines(path, error=ListFileError)
             if line.strip()]
    if not lines:
        raise ListFileError(f"label map {path} is empty")
    indexed = all(len(text.split(None, 1)) == 2 and _is_int(text.split(None, 1)[0]) for _, text in lines)
    if not indexed:
        return [text for _, text in lines]
    base = int(lines[0][1].split(None, 1)[0])
    if base not in (0, 1):
        raise ListFileError(f"{path}:{lines[0][0]}: first index must be 0 or 1 (\"<idx> <name>\"), got {base}")
    names = []
    for position, (number, text) in enumerate(lines):
        index, name = text.split(None, 1)
        if int(index) != base + position:
            raise ListFileError(f"{path}:{number}: expected index {base + position} (\"<idx> <name>\", "
                                f"indices without gaps), got {index}")
        names.append(name.strip())
    return names


def write_list(path, rows):
    """Write list rows (tuples) atomically: `<field> <field> ...` per line."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(" ".join(str(x) for x in row) + "\n")
    os.replace(tmp, path)


def load_label_names(config):
    """Class names of a data config, index i -> name: the label map, the synthetic classes, the names a
    TFRecord conversion recorded, or "0".."num_classes-1"."""
    if config.label_map:
        return read_label_map(config.label_map)
    if config.data_format == "synthetic":
        from tsm_keras.data.synthetic import SYNTHETIC_CLASSES

        return list(SYNTHETIC_CLASSES)
    if config.data_format == "tfrecord":
        from tsm_keras.data.tfrecord_format import read_manifest

        # The conversion recorded the names it was given (index names when it had no label map).
        names = (read_manifest(config.tfrecord_dir) or {}).get("label_names")
        if names and not all(name == str(i) for i, name in enumerate(names)):
            return list(names)
    return [str(i) for i in range(int(config.num_classes))]


def split_list(config, split):
    """The list file of `split` ("train" or "val"/"test"); ListFileError naming the flag when unset."""
    path = config.train_list if split == "train" else config.val_list
    if not path:
        flag = "--train_list" if split == "train" else "--val_list"
        raise ListFileError(f"no list file for split {split!r}: pass {flag}=<list file>")
    return path


def resolve_lists(config):
    """(config with data_format frames|videos and lists filled in, label names) for any data_format.

    The synthetic format is generated here (once; reused when complete) and read as a videos list.
    """
    if config.data_format == "synthetic":
        from tsm_keras.data.synthetic import default_synthetic_root, ensure_synthetic_dataset

        root = config.data_root or default_synthetic_root()
        paths = ensure_synthetic_dataset(root, reuse_existing=True)
        config = config.replace(data_format="videos", data_root=root, train_list=paths["train_list"],
                                val_list=paths["val_list"], label_map="")
        return config, list(paths["classes"])
    return config, load_label_names(config)


def list_inputs(spec, data_root="", frame_template="img_{:05d}.jpg"):
    """Videos named by `--input`: a video file, a frame folder, a folder with videos or frame folders in it or
    below it (sorted paths), or a list file (one path per line; PaddleVideo's `path [num_frames] label` lines
    work, the numbers are dropped; relative paths are joined to `data_root`)."""
    from tsm_keras.data.decode import count_frame_files  # OpenCV: only when a folder is searched

    if not spec:
        raise UsageError("--input is empty: pass a video file, a folder of videos, or a list file.")
    if os.path.isdir(spec):
        if count_frame_files(spec, frame_template) > 0:
            return [spec]
        found = []
        # The whole tree, in sorted order: a class-per-folder layout (videos/<class>/<video>) is the common one.
        for folder, subfolders, files in os.walk(spec):
            subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
            for name in list(subfolders):
                path = os.path.join(folder, name)
                if count_frame_files(path, frame_template) > 0:  # a frame folder is one video: not searched
                    found.append(path)
                    subfolders.remove(name)
            found.extend(os.path.join(folder, name) for name in files
                         if not name.startswith(".") and name.lower().endswith(VIDEO_EXTENSIONS))
        if not found:
            raise UsageError(f"{spec}: no video files ({', '.join(VIDEO_EXTENSIONS)}) or frame folders "
                             f"({frame_template.format(1)}, ...) in it or below it.")
        return sorted(found)
    if os.path.isfile(spec) and spec.lower().endswith(LIST_EXTENSIONS):
        paths = []
        for _, line in disk.read_text_lines(spec, error=ListFileError):
            fields = line.strip().split()
            while len(fields) > 1 and fields[-1].lstrip("-").isdigit():
                fields.pop()
            if not fields:
                continue
            path = " ".join(fields)
            paths.append(os.path.join(data_root, path) if data_root and not os.path.isabs(path) else path)
        if not paths:
            raise UsageError(f"{spec}: the list file names no video.")
        return paths
    return [spec]
