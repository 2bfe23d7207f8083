"""tsm_keras.runs: the run folder's files, which run a folder holds, and the refusal to mix runs."""

import os

import pytest

from tsm_keras import runs
from tsm_keras.config import MODEL_FIELDS, Config


def test_run_files_round_trip(tmp_path):
    config = Config(model_dir=str(tmp_path / "run"), num_classes=3, backbone="resnet18")
    runs.write_run_files(config.model_dir, config, ["a b", "c", "d"])
    assert runs.read_labels(config.model_dir) == ["a b", "c", "d"]
    assert Config.load(os.path.join(config.model_dir, runs.CONFIG_FILE)) == config
    assert runs.read_labels(str(tmp_path / "none")) is None
    assert not [name for name in os.listdir(config.model_dir) if ".tmp" in name]


def test_resolve_run_prefers_final_weights_and_keeps_the_saved_network(tmp_path):
    run = str(tmp_path / "run")
    saved = Config(model_dir=run, num_classes=3, backbone="resnet18", scale_size=64, image_size=56)
    runs.write_run_files(run, saved, ["a", "b", "c"])
    with pytest.raises(FileNotFoundError, match="--weights"):
        runs.resolve_run(Config(weights=run))
    open(os.path.join(run, runs.BEST_WEIGHTS_FILE), "w").close()
    assert runs.resolve_run(Config(weights=run))[1].endswith(runs.BEST_WEIGHTS_FILE)
    open(os.path.join(run, runs.WEIGHTS_FILE), "w").close()
    run_config, weights, model_dir = runs.resolve_run(Config(model_dir=run, backbone="resnet50", scale_size=72))
    assert weights == os.path.join(run, runs.WEIGHTS_FILE) and model_dir == run
    assert run_config.backbone == "resnet18"  # a network field: the run's
    assert run_config.scale_size == 72  # a data field given on the command line: the command line's
    assert run_config.image_size == 56  # a data field left at its default: the run's


def test_model_kwargs_are_the_model_fields():
    config = Config(backbone="resnet34", shift="none", image_size=64)
    kwargs = config.model_kwargs(normalize_input=True)
    assert set(kwargs) == set(MODEL_FIELDS) | {"image_size", "normalize_input"}
    assert (kwargs["backbone"], kwargs["shift"], kwargs["image_size"]) == ("resnet34", "none", 64)


def test_same_run_check_names_the_differences(tmp_path):
    run = str(tmp_path / "run")
    config = Config(model_dir=run, backbone="resnet18")
    runs.write_run_files(run, config, ["a"])
    runs.check_same_run(config.replace(shift="none"), run)  # no checkpoints yet: a new run may start
    os.makedirs(os.path.join(run, runs.CHECKPOINTS_DIR, "ckpt-000000001"))
    runs.check_same_run(config, run)
    with pytest.raises(ValueError, match="shift='bidirectional' there, 'none' here"):
        runs.check_same_run(config.replace(shift="none"), run)
