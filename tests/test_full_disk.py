"""A full disk for real: a small tmpfs mounted by the test (skipped, with the reason, where it cannot mount).

Every writer meets the full disk after a first complete artefact: it stops with a `DiskFullError` (an
`OSError` and a user error) naming the path and the free space, leaves no temporary behind, and the first
artefact still reads back. Exports never overwrite anything, so there the check is the error and no
leftovers.
"""

import json
import os
import subprocess
import uuid

import numpy as np
import pytest

from tsm_keras.disk import DiskFullError, free_bytes

SIZE_MB = 96


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory):
    mountpoint = tmp_path_factory.mktemp("small_disk")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE_MB}m", "tmpfs", str(mountpoint)],
                            capture_output=True, text=True)
    if result.returncode:
        pytest.skip(f"cannot mount a {SIZE_MB} MB tmpfs here ({(result.stderr or result.stdout).strip()}): "
                    "the full-disk tests need root or CAP_SYS_ADMIN")
    yield mountpoint
    subprocess.run(["umount", "-l", str(mountpoint)], check=False)


@pytest.fixture
def disk(small_disk):
    """A fresh folder on the small disk, and `fill(leave)`: take all but `leave` bytes of its free space."""
    folder = small_disk / uuid.uuid4().hex[:8]
    folder.mkdir()
    fillers = []

    def fill(leave=0):
        path = small_disk / f"filler-{len(fillers)}"
        fillers.append(path)
        with open(path, "wb") as f:
            chunk = b"\0" * (1 << 20)
            while free_bytes(str(small_disk)) > leave + len(chunk):
                f.write(chunk)
                f.flush()
            try:
                f.write(b"\0" * max(free_bytes(str(small_disk)) - leave, 0))
                f.flush()
            except OSError:
                pass
        return path

    yield folder, fill
    for path in fillers:
        path.unlink()
    subprocess.run(["rm", "-rf", str(folder)], check=False)


def _data_helpers():
    """tests/data/conftest.py's video and frame writers (a module of another name: `conftest` is taken)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("data_helpers", os.path.join(os.path.dirname(__file__), "data",
                                                                               "conftest.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _leftovers(folder):
    return [name for _, dirs, files in os.walk(folder) for name in dirs + files if "tmp" in name]


def _assert_full(raised, path):
    message = str(raised.value)
    assert isinstance(raised.value, OSError) and str(path) in message and " free there" in message, message


@pytest.fixture(scope="module")
def small_model():
    import keras

    inputs = keras.Input((256,))
    model = keras.Model(inputs, keras.layers.Dense(1024, name="fc")(inputs))  # 1 MiB of weights
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    optimizer.build(model.trainable_variables)
    return model, optimizer


def test_checkpoint(disk, small_model):
    from tsm_keras.training.checkpoints import CheckpointManager

    folder, fill = disk
    model, optimizer = small_model
    manager = CheckpointManager(str(folder / "checkpoints"), model, optimizer)
    first = manager.save(1, dict(epoch=0))
    saved = [v.numpy().copy() for v in model.weights]
    fill(leave=256 << 10)
    with pytest.raises(DiskFullError) as raised:
        manager.save(2, dict(epoch=0))
    _assert_full(raised, folder / "checkpoints" / "ckpt-000000002")
    assert manager.latest() == first and not _leftovers(folder)
    for v in model.weights:
        v.assign(np.zeros(v.shape, v.dtype))
    manager.restore()
    for v, expected in zip(model.weights, saved):
        np.testing.assert_array_equal(v.numpy(), expected)


def test_weights(disk, small_model):
    from tsm_keras.training.checkpoints import save_weights_atomic

    folder, fill = disk
    model, _ = small_model
    path = str(folder / "model.weights.h5")
    save_weights_atomic(model, path)
    before = open(path, "rb").read()
    fill(leave=128 << 10)
    with pytest.raises(DiskFullError) as raised:
        save_weights_atomic(model, path)
    _assert_full(raised, path)
    assert open(path, "rb").read() == before and not _leftovers(folder)


def test_metrics_line(disk):
    from tsm_keras.training.logging import append_metrics

    folder, fill = disk
    path = folder / "metrics.jsonl"
    append_metrics(str(path), {"epoch": 1})
    fill(leave=0)
    with pytest.raises(DiskFullError) as raised:
        append_metrics(str(path), {"epoch": 2, "note": "x" * (64 << 10)})  # more than a page's slack
    _assert_full(raised, path)
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"epoch": 1}]  # no half line


def test_tfrecord_shard_and_index(disk, tmp_path):
    write_frames = _data_helpers().write_frames
    from tsm_keras.data import lists
    from tsm_keras.data.tfrecord_format import index_path
    from tsm_keras.data.tfrecord_writer import write_shard

    folder, fill = disk
    frames = write_frames(str(tmp_path / "v1"), 6)
    (tmp_path / "list.txt").write_text(f"{frames} 6 0\n")
    records = lists.read_list(str(tmp_path / "list.txt"), "frames", "")
    first = str(folder / "train-00000-of-00002.tfrecord")
    write_shard(records, first, "frames", 0, "img_{:05d}.jpg", "skip")
    before = open(first, "rb").read()
    fill(leave=4 << 10)
    second = str(folder / "train-00001-of-00002.tfrecord")
    with pytest.raises(DiskFullError) as raised:
        write_shard(records * 20, second, "frames", 0, "img_{:05d}.jpg", "skip")
    _assert_full(raised, second)
    assert open(first, "rb").read() == before and os.path.exists(index_path(first))
    assert not os.path.exists(second) and not _leftovers(folder)


def test_prepare_frames(disk, tmp_path):
    write_video = _data_helpers().write_video
    from tsm_keras.data.prepare import extract_frames

    folder, fill = disk
    video = write_video(str(tmp_path / "v.avi"), 30)
    assert extract_frames(video, str(folder / "done")) == 30
    fill(leave=16 << 10)
    with pytest.raises(DiskFullError) as raised:
        extract_frames(video, str(folder / "next"))
    _assert_full(raised, folder / "next")
    assert len(os.listdir(folder / "done")) == 30 and not os.path.exists(folder / "next")
    assert not _leftovers(folder)


@pytest.mark.parametrize("export_format", ["saved_model", "onnx", "tflite"])
def test_exports(disk, tiny_tsm, tmp_path, export_format):
    if export_format == "onnx":
        pytest.importorskip("tf2onnx")
    from tsm_keras.config import Config
    from tsm_keras.export import export_model

    folder, fill = disk
    source = str(tmp_path / "tiny.keras")
    tiny_tsm.save(source)
    fill(leave=1 << 20)  # a ResNet-10 export is ~20 MB
    config = Config(weights=source, export_dir=str(folder / "exports"), export_format=export_format,
                    num_classes=int(tiny_tsm.output_shape[-1]), image_size=64)
    with pytest.raises(DiskFullError) as raised:
        export_model(config)
    _assert_full(raised, folder / "exports")
    assert not _leftovers(folder) and not [n for n in os.listdir(folder / "exports") if not n.startswith(".")]
