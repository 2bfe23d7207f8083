"""Writes that can meet a full disk: one clear error, nothing half-written left behind.

Every writer of the project (checkpoints, weights, metrics.jsonl, TFRecord shards and their index,
SavedModel/ONNX/TFLite exports, prepare's frame folders) writes to a temporary name and renames it
into place, so a full disk can never replace a complete artefact with a partial one. `writing()`
wraps such a write: on failure it removes the temporaries, and a full disk (ENOSPC/EDQUOT, or
TensorFlow's and HDF5's wording of them) becomes a `DiskFullError` naming the path and the space
left there. This module imports nothing heavy.

Reads too: `read_json` reports a file that does not parse as one error naming the file and line.
"""

import codecs
import contextlib
import errno
import json
import os
import shutil

from tsm_keras.errors import DamagedFileError, UserError

_FULL_WORDS = ("No space left on device", "Disk quota exceeded", "ENOSPC", "errno = 28", "error 28")


class DiskFullError(UserError, OSError):
    """No space left where an artefact was being written; the previous complete artefact is intact."""

    def __str__(self):
        return self.strerror or super().__str__()


def read_text_lines(path, error=DamagedFileError):
    """`[(line number, line)]` of a UTF-8 text file (a leading byte-order mark dropped, line ends removed);
    `error` naming the file, line and byte where it is not UTF-8 (a list saved as Latin-1, a binary file).

    Missing files raise FileNotFoundError as `open` does: callers that may find none check first.
    """
    with open(path, "rb") as f:
        raw = f.read()
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    lines = []
    for number, line in enumerate(raw.splitlines(), start=1):
        try:
            lines.append((number, line.decode("utf-8")))
        except UnicodeDecodeError as failure:
            raise error(f"{path}:{number}: not UTF-8 text (byte 0x{line[failure.start]:02x} at column "
                        f"{failure.start + 1}); save the file as UTF-8") from None
    return lines


def read_json(path, remedy="", error=DamagedFileError):
    """The JSON value in `path`; `error` naming the file, line and column (then `remedy`) when it does not parse.

    Missing files raise FileNotFoundError as `open` does: callers that may find none check first.
    """
    text = "\n".join(line for _, line in read_text_lines(path, error))
    try:
        return json.loads(text)
    except json.JSONDecodeError as failure:
        raise error(f"{path}:{failure.lineno}: not valid JSON ({failure.msg}, column {failure.colno})"
                    + (f"; {remedy}" if remedy else "")) from None


def read_json_object(path, what, remedy="", error=DamagedFileError):
    """`read_json` for a file that must hold a JSON object (`what` says of what): anything else (a list, a number,
    a string ...) raises `error` naming the file and the type found."""
    value = read_json(path, remedy, error)
    if not isinstance(value, dict):
        raise error(f"{path}: expected a JSON object ({what}), got {type(value).__name__}"
                    + (f"; {remedy}" if remedy else ""))
    return value


def is_disk_full(error):
    """Whether `error` (an OSError, or TensorFlow's/h5py's wrapping of one) says the disk is full."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(word in str(error) for word in _FULL_WORDS):
            return True
        error = error.__cause__ or error.__context__
    return False


def free_bytes(path):
    """Free bytes on the filesystem holding `path` (its nearest existing parent)."""
    folder = os.path.abspath(path)
    while not os.path.exists(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    return shutil.disk_usage(folder).free


def human_bytes(count):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024


def disk_full_error(path, what):
    message = (f"no space left on the device writing {what} {path} ({human_bytes(free_bytes(path))} free "
               f"there); nothing was replaced: the previous {what}, if any, is intact. Free some space or "
               "choose another folder, then rerun.")
    return DiskFullError(errno.ENOSPC, message)


def remove(path):
    """Remove a file or a folder tree; missing is fine."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


@contextlib.contextmanager
def writing(path, what, cleanup=()):
    """Around the write of `what` (e.g. "checkpoint") at `path`: on any failure remove `cleanup` (the
    temporaries); a full disk raises `DiskFullError` naming `path` and the free space."""
    try:
        yield
    except BaseException as error:
        for leftover in cleanup:
            remove(leftover)
        if isinstance(error, Exception) and not isinstance(error, DiskFullError) and is_disk_full(error):
            raise disk_full_error(path, what) from error
        raise


def append_line(path, line, what="log"):
    """Append `line` to `path`: all of it or, on a full disk, nothing (the file is cut back)."""
    with open(path, "ab") as f:
        size = f.tell()
        try:
            f.write(line.encode())
            f.flush()
            os.fsync(f.fileno())
        except OSError as error:
            try:
                f.truncate(size)
            except OSError:
                pass
            if is_disk_full(error):
                raise disk_full_error(path, what) from error
            raise


def image_write_failed(path, artefact=None, what="frame folder"):
    """OpenCV's imwrite returns False without saying why: a full disk (under 1 MiB free), or another failure."""
    if free_bytes(path) < 1 << 20:
        return disk_full_error(artefact or path, what)
    return OSError(f"OpenCV could not write {path}")
