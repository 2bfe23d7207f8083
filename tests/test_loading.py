"""tsm_keras.loading: every source gives a model that takes the pipeline's raw 0-255 frames, with its labels."""

import os
import re

import numpy as np
import pytest


def test_load_trained_feeds_a_converted_keras_file_raw_frames(tmp_path):
    """A converted `.keras` (normalize_input=False) must still be evaluated on the pipeline's raw frames."""
    import keras

    import tsm_keras
    from tsm_keras.config import Config
    from tsm_keras.loading import load_trained
    from tsm_keras.layers import IMAGENET_MEAN, IMAGENET_STD

    converted = tsm_keras.build_tsm(3, num_segments=2, backbone="resnet18", convention="paddle")
    path = str(tmp_path / "converted.keras")
    converted.save(path)
    model, _, _ = load_trained(Config(weights=path, num_classes=3, num_segments=2, backbone="resnet18"))
    assert model.normalize_input and model.convention == "paddle"
    frames = np.random.default_rng(0).integers(0, 256, size=(1, 2, 32, 32, 3)).astype(np.uint8)
    normalized = (frames.astype(np.float32) - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(frames)), converted(normalized).numpy(),
                               rtol=1e-4, atol=1e-5)


def test_a_run_folder_gives_its_network_its_labels_and_cli_data_fields(tmp_path):
    """The network comes from the run's config.json whatever the command line says; data fields given on
    the command line win; labels.txt names the classes."""
    import tsm_keras
    from tsm_keras import runs
    from tsm_keras.config import Config
    from tsm_keras.loading import load_trained

    run = Config(model_dir=str(tmp_path / "run"), num_classes=2, num_segments=2, backbone="resnet18",
                 shift_div=4, image_size=32, test_clips=1)
    runs.write_run_files(run.model_dir, run, ["left", "right"])
    model = tsm_keras.build_tsm(**run.model_kwargs(normalize_input=True))
    model.save_weights(os.path.join(run.model_dir, runs.WEIGHTS_FILE))
    loaded, run_config, labels = load_trained(Config(backbone="resnet50", num_classes=400, test_clips=3),
                                              run.model_dir)
    assert labels == ["left", "right"]
    assert (loaded.backbone, loaded.num_classes, loaded.num_segments, loaded.shift_div) == ("resnet18", 2, 2, 4)
    assert run_config.test_clips == 3 and run_config.model_dir == run.model_dir
    clips = np.random.default_rng(0).integers(0, 256, (1, 2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(loaded(clips).numpy(), model(clips).numpy())


def test_a_label_map_of_another_size_is_an_error(tmp_path):
    from tsm_keras.config import Config
    from tsm_keras.loading import label_names_for

    names = tmp_path / "names.txt"
    names.write_text("a\nb\nc\n")
    with pytest.raises(ValueError, match="3 names for a model with 5 classes"):
        label_names_for(Config(num_classes=5, label_map=str(names), data_format="frames"))
    assert label_names_for(Config(num_classes=3, label_map=str(names), data_format="frames")) == ["a", "b", "c"]


def test_a_foreign_keras_model_or_weights_file_is_one_error_naming_it(tmp_path):
    """Another Keras model's files: a KeyError ('num_segments') deep in eval/predict/export, a list of every
    unmatched layer from convert, and one Keras warning per layer above the error, before."""
    import warnings

    import keras

    from tsm_keras.config import Config
    from tsm_keras.convert import ConversionError, load_model_from_source
    from tsm_keras.loading import load_trained

    other = keras.Sequential([keras.Input([4]), keras.layers.Dense(2)], name="other")
    other.save(str(tmp_path / "other.keras"))
    other.save_weights(str(tmp_path / "other.weights.h5"))
    config = Config(num_classes=2, num_segments=2, backbone="resnet10", image_size=32, scale_size=32)
    message = f"{tmp_path / 'other.keras'}: a Keras model (Sequential 'other'), not a TSM saved by tsm-keras"
    with pytest.raises(ConversionError, match=f"^{re.escape(message)}"):
        load_trained(config.replace(weights=str(tmp_path / "other.keras")))
    with pytest.raises(ConversionError, match=f"^{re.escape(message)}"):
        load_model_from_source(str(tmp_path / "other.keras"), config=config)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ConversionError) as raised:
            load_model_from_source(str(tmp_path / "other.weights.h5"), config=config)
    assert str(raised.value).startswith(f"{tmp_path / 'other.weights.h5'}: does not fit a resnet10 TSM built with "
                                        "these arguments (A total of ")
    assert "\n" not in str(raised.value) and len(str(raised.value)) < 400
    assert not [w for w in caught if "Skipping" in str(w.message)]
