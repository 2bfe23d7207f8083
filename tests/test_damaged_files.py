"""Files the project reads back (its own records, or ones a user edited), damaged: one user error naming the file
and the line, and what to do — never a JSONDecodeError traceback."""

import os
import re

import pytest

from tsm_keras import disk
from tsm_keras.config import Config
from tsm_keras.convert import ConversionError, _read_architecture
from tsm_keras.data.lists import ListFileError, read_json
from tsm_keras.data.tfrecord_format import read_manifest
from tsm_keras.errors import DamagedFileError, UserError
from tsm_keras.saved_models import METADATA_FILE, read_export_metadata
from tsm_keras.training.checkpoints import CheckpointManager

BROKEN = '{"backbone": "resnet10",\n "num_classes": 2,,\n}'  # line 2: a second comma


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return path


def test_read_json_names_the_file_line_and_column_and_says_what_to_do(tmp_path):
    path = _write(str(tmp_path / "a.json"), BROKEN)
    with pytest.raises(DamagedFileError) as caught:
        disk.read_json(path, "write it again")
    assert str(caught.value) == (f"{path}:2: not valid JSON (Expecting property name enclosed in double quotes, "
                                 "column 19); write it again")
    assert isinstance(caught.value, UserError) and isinstance(caught.value, ValueError)
    assert disk.read_json(_write(str(tmp_path / "b.json"), '{"x": [1, 2]}')) == {"x": [1, 2]}
    with pytest.raises(FileNotFoundError):
        disk.read_json(str(tmp_path / "missing.json"))


@pytest.mark.parametrize("reader, relative, error, remedy", [
    (Config.load, "run/config.json", DamagedFileError, "restore the file or use another --model_dir"),
    (read_json, "labels.json", ListFileError, ""),
    (lambda path: _read_architecture(path.replace(".architecture.json", ".weights.h5")),
     "converted/tsm.architecture.json", ConversionError, "written by --mode=convert: convert again"),
    (lambda path: read_manifest(os.path.dirname(path)), "tfrecords/manifest.json", DamagedFileError,
     "convert again into an empty --tfrecord_dir"),
    (lambda path: read_export_metadata(path[:-len(METADATA_FILE) - 1]), f"export/1/{METADATA_FILE}",
     DamagedFileError, "export again"),
    (lambda path: CheckpointManager(os.path.dirname(os.path.dirname(path)), None, None).restore(os.path.dirname(path)),
     "checkpoints/ckpt-000000004/state.json", DamagedFileError, "delete {dir} to resume from the one before it"),
])
def test_each_reader_reports_its_damaged_file(tmp_path, reader, relative, error, remedy):
    path = _write(str(tmp_path / relative), BROKEN)
    with pytest.raises(error) as caught:
        reader(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:2: not valid JSON"), message
    assert remedy.format(dir=os.path.dirname(path)) in message


def test_a_run_config_that_is_not_an_object_is_refused(tmp_path):
    path = _write(str(tmp_path / "config.json"), "[1, 2]")
    with pytest.raises(DamagedFileError, match="expected a JSON object of settings, got list"):
        Config.load(path)


def _cut_in_half(source, target):
    with open(source, "rb") as f:
        data = f.read()
    with open(target, "wb") as f:
        f.write(data[:len(data) // 2])
    return str(target)


@pytest.mark.parametrize("kind", ["run folder", "convert source", "keras file"])
def test_weights_cut_short_are_one_error_naming_the_file(tmp_path, kind, tiny_tsm):
    """A copy or download cut short: h5py's "truncated file" OSError, or Keras' "File not found" for a .keras zip
    without its end, becomes a ConversionError (a UserError) naming the file."""
    from tsm_keras.loading import load_trained

    config = Config(model_dir=str(tmp_path / "run"), backbone="resnet10", num_classes=3, num_segments=2,
                    image_size=32)
    model = tiny_tsm
    if kind == "keras file":
        model.save(str(tmp_path / "whole.keras"))
        path = _cut_in_half(tmp_path / "whole.keras", tmp_path / "cut.keras")
        config = config.replace(weights=path)
    else:
        model.save_weights(str(tmp_path / "whole.weights.h5"))
        os.makedirs(config.model_dir)
        if kind == "run folder":
            config.save(os.path.join(config.model_dir, "config.json"))
            path = _cut_in_half(tmp_path / "whole.weights.h5", tmp_path / "run" / "model.weights.h5")
        else:  # a lone .weights.h5: read by the converters' format detection
            path = _cut_in_half(tmp_path / "whole.weights.h5", tmp_path / "cut.weights.h5")
            config = config.replace(weights=path)
    with pytest.raises(ConversionError, match=f"^{re.escape(path)}: the file is damaged or incomplete"):
        load_trained(config)
