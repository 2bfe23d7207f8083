"""Files the project reads back (its own records, or ones a user edited), damaged: one user error naming the file
and the line, and what to do — never a JSONDecodeError traceback."""

import os
import re

import numpy as np
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


# Each reader of a JSON file the tool reads back: (reader(path), path below tmp_path, error type, the remedy its
# message ends with, what the file holds). The JSON label map reader takes lists too, so it is not among the
# object readers.
READERS = {
    "run config": (Config.load, "run/config.json", DamagedFileError, "restore the file or use another --model_dir",
                   "the run's settings"),
    "label map": (read_json, "labels.json", ListFileError, "", None),
    "architecture": (lambda path: _read_architecture(path.replace(".architecture.json", ".weights.h5")),
                     "converted/tsm.architecture.json", ConversionError, "written by --mode=convert: convert again",
                     "a model config"),
    "tfrecord manifest": (lambda path: read_manifest(os.path.dirname(path)), "tfrecords/manifest.json",
                          DamagedFileError, "convert again into an empty --tfrecord_dir", "the conversion's manifest"),
    "export metadata": (lambda path: read_export_metadata(path[:-len(METADATA_FILE) - 1]), f"export/1/{METADATA_FILE}",
                        DamagedFileError, "export again", "export metadata"),
    "checkpoint state": (lambda path: CheckpointManager(os.path.dirname(os.path.dirname(path)), None, None).restore(
        os.path.dirname(path)), "checkpoints/ckpt-000000004/state.json", DamagedFileError,
        "delete {dir} to resume from the one before it", "the checkpoint's state"),
}


@pytest.mark.parametrize("name", sorted(READERS))
def test_each_reader_reports_its_damaged_file(tmp_path, name):
    reader, relative, error, remedy, _ = READERS[name]
    path = _write(str(tmp_path / relative), BROKEN)
    with pytest.raises(error) as caught:
        reader(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:2: not valid JSON"), message
    assert remedy.format(dir=os.path.dirname(path)) in message


@pytest.mark.parametrize("name", sorted(name for name, reader in READERS.items() if reader[4]))
@pytest.mark.parametrize("text, kind", [("[1, 2]", "list"), ("3", "int"), ('"x"', "str"), ("null", "NoneType")])
def test_valid_json_that_is_not_an_object_is_refused_naming_the_file(tmp_path, name, text, kind):
    """A file edited or overwritten by hand with valid JSON of another kind: a TypeError or KeyError deep in the
    reader before."""
    reader, relative, error, _, what = READERS[name]
    path = _write(str(tmp_path / relative), text)
    with pytest.raises(error, match=f"^{re.escape(path)}: expected a JSON object \\({re.escape(what)}\\), "
                                    f"got {kind}"):
        reader(path)


def _checkpoint(tmp_path):
    import keras

    model = keras.Sequential([keras.Input([3]), keras.layers.Dense(2)])
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    optimizer.build(model.trainable_variables)
    manager = CheckpointManager(str(tmp_path / "checkpoints"), model, optimizer)
    return manager, manager.save(4, {"epoch": 1})


def test_a_checkpoint_with_damaged_parts_is_one_error_and_leaves_the_model_as_it_was(tmp_path):
    manager, path = _checkpoint(tmp_path)
    remedy = f"the checkpoint is damaged: delete {path} to resume from the one before it"
    assert manager.restore()["epoch"] == 1
    state_file, arrays_file = os.path.join(path, "state.json"), os.path.join(path, "variables.npz")
    kernel = manager.model.layers[0].kernel
    saved = kernel.numpy()
    kernel.assign(np.zeros_like(saved))
    # Cut short (a copy interrupted), then a foreign zip without the arrays: np.load's and zipfile's errors.
    whole = open(arrays_file, "rb").read()
    for content, reason in [(whole[:len(whole) // 2], "BadZipFile"), (b"", "EOFError")]:
        with open(arrays_file, "wb") as f:
            f.write(content)
        with pytest.raises(DamagedFileError, match=f"^{re.escape(arrays_file)}: cannot be read \\({reason}: .*; "
                                                   f"{re.escape(remedy)}$"):
            manager.restore()
    np.savez(arrays_file, v00000=saved)  # the kernel alone: nothing is assigned unless all are there
    with pytest.raises(DamagedFileError, match=f"{re.escape(arrays_file)}: cannot be read \\(KeyError: "):
        manager.restore()
    assert not kernel.numpy().any()
    _write(state_file, '{"epoch": 1}')
    with pytest.raises(DamagedFileError, match=f"^{re.escape(state_file)}: no list of variable paths"):
        manager.restore()


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
