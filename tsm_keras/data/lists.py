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

KINETICS400_LABELS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kinetics400_labels.txt")

# One entry of a list file. `num_frames` is -1 for videos (the container is asked at decode time);
# `source` is "file:line" for messages.
VideoRecord = collections.namedtuple("VideoRecord", ["path", "num_frames", "label", "source"])


class ListFileError(ValueError):
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
    with open(list_path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
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


def read_label_map(spec):
    """Class names, index i -> name, from `kinetics400`, a `"<idx> <name>"` file or one name per line.

    A `"<idx> <name>"` file may be 0-based (Kinetics) or 1-based (UCF-101 classInd.txt): its first index
    decides, and the indices must then run without gaps.
    """
    path = KINETICS400_LABELS if spec == "kinetics400" else spec
    if not os.path.isfile(path):
        raise ListFileError(f"label map {spec} not found: pass --label_map=kinetics400, a classInd.txt "
                            "or a file with one class name per line")
    with open(path, encoding="utf-8") as f:
        lines = [(number, line.strip()) for number, line in enumerate(f, start=1) if line.strip()]
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
