"""The export folder (`--export_dir`): what `--mode=export` writes and TF Serving, `tsm_keras.load` and
`--mode=predict` read.

    <export_dir>/<version>/saved_model.pb      integer versions; TF Serving serves the highest
    <export_dir>/<version>/assets.extra/tsm_export.json   model config, preprocessing, label names
    signatures: serving_default (uint8 frames), serving_clips (float32 clips); a streaming export
    (`--streaming`, tsm_export.json says "streaming": true) has init_states and call (serving_default = call)

Only this module knows these names; it imports no TensorFlow (writing lives in tsm_keras.export).
"""

import os

from tsm_keras import disk
from tsm_keras.errors import MissingInputError

DEFAULT_SIGNATURE = "serving_default"
CLIPS_SIGNATURE = "serving_clips"
METADATA_FILE = os.path.join("assets.extra", "tsm_export.json")
# The streaming export's signatures (TF Model Garden MoViNet's names): zeros for a batch, then one step per frame.
INIT_STATES_SIGNATURE = "init_states"
STREAMING_CALL_SIGNATURE = "call"


def list_versions(export_dir):
    """Integer versions present in `export_dir` (complete ones: temporary folders are hidden)."""
    if not os.path.isdir(export_dir):
        return []
    return sorted(int(name) for name in os.listdir(export_dir)
                  if name.isdigit() and os.path.isdir(os.path.join(export_dir, name)))


def resolve_saved_model_dir(path):
    """A SavedModel folder itself, or the highest version under a versioned export folder."""
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    versions = list_versions(path)
    for version in reversed(versions):
        candidate = os.path.join(path, str(version))
        if os.path.isfile(os.path.join(candidate, "saved_model.pb")):
            return candidate
    raise MissingInputError(f"{path}: no saved_model.pb there nor in a numbered version folder below it; "
                            f"export one with `python app.py --mode=export --weights=... --export_dir={path}`.")


def is_saved_model(path):
    """A SavedModel folder, or a versioned export folder with one below it."""
    if not path or not os.path.isdir(path):
        return False
    try:
        resolve_saved_model_dir(path)
        return True
    except FileNotFoundError:
        return False


def is_streaming_export(metadata):
    """Whether `read_export_metadata`'s record is of a streaming export (one frame and states per call)."""
    return bool(metadata and metadata.get("streaming"))


def read_export_metadata(saved_model_dir):
    """The `tsm_export.json` written next to the SavedModel, or None for a foreign SavedModel."""
    path = os.path.join(saved_model_dir, METADATA_FILE)
    if not os.path.isfile(path):
        return None
    return disk.read_json_object(path, "export metadata",
                                 "the export's metadata, written by --mode=export: export again")
