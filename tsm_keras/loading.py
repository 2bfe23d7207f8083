"""The one loader of trained models: any weights source -> (model, run config, label names).

    model, run_config, label_names = load_trained(config)            # --weights / --model_dir
    model, run_config, label_names = load_trained(config, "TSM_k400.pdparams")

Sources: a training run folder (its `config.json` decides the network, `labels.txt` the names), a
run's `.weights.h5`, a `.keras` file, and every checkpoint the converters read (`.pdparams`,
`.pth`, keras.applications `.h5`, a `.weights.h5` written by `--mode=convert`). Whatever the source,
the model returned takes raw 0-255 RGB frames, as the data pipeline yields them. Used by eval,
export and predict alike, so they read the same sources the same way.
"""

import contextlib
import os
import zipfile

from tsm_keras import runs
from tsm_keras.errors import UsageError


def load_trained(config, source=None):
    """`(model, run_config, label_names)` for `source` (default `config.weights`, else `config.model_dir`).

    `run_config` is the run's saved config where there is one, with the data and evaluation fields
    given in `config` on top; its `weights` and `model_dir` say what was loaded from where.
    """
    import keras

    from tsm_keras.convert import require_tsm
    from tsm_keras.models import build_tsm, with_raw_frame_input

    if source is not None:
        config = config.replace(weights=source)
    run_config, weights, model_dir = runs.resolve_run(config)
    if weights.endswith(".keras"):
        # The pipeline yields raw 0-255 frames; a converted .keras expects normalized ones.
        with _container_errors(weights):
            zipfile.ZipFile(weights).close()  # one cut short: Keras would say "File not found"
            model = with_raw_frame_input(require_tsm(keras.models.load_model(weights, compile=False), weights))
    elif weights.endswith(".weights.h5") and runs.is_run_folder(model_dir):
        model = build_tsm(**run_config.model_kwargs(normalize_input=True))
        with _container_errors(weights):
            model.load_weights(weights)
    else:  # converter sources, and .weights.h5 written by --mode=convert (its architecture.json beside it)
        from tsm_keras.convert import load_model_from_source

        model = load_model_from_source(weights, config=run_config)
    num_classes = int(model.output_shape[-1])
    return model, run_config, label_names_for(run_config.replace(num_classes=num_classes), model_dir)


@contextlib.contextmanager
def _container_errors(path):
    """A `.keras` (zip) or `.weights.h5` (HDF5) that does not open becomes one user error naming it."""
    from tsm_keras.convert.detect import damaged_weights_error

    try:
        yield
    except (OSError, zipfile.BadZipFile) as error:
        raise damaged_weights_error(path, error) from None


def label_names_for(config, model_dir=None):
    """Class names of a `config.num_classes`-class model: the run's labels.txt, else the data's label
    map, else "0".."N-1". A `--label_map` of another size is an error; a guessed one (e.g. the
    synthetic dataset's 8 classes for a K400 checkpoint) gives index names, with a note."""
    num_classes = int(config.num_classes)
    names = runs.read_labels(model_dir)
    if names is None:
        import tsm_keras.data as data

        try:
            names = list(data.load_label_names(config))
        except (OSError, ValueError):
            names = []
    if len(names) == num_classes:
        return names
    if config.label_map:
        raise UsageError(f"--label_map={config.label_map} has {len(names)} names for a model with "
                         f"{num_classes} classes: pass the label map the model was trained with.")
    if names:
        print(f"note: no label map for this {num_classes}-class model (--label_map): classes are named "
              f"\"0\"..\"{num_classes - 1}\"", flush=True)
    return [str(i) for i in range(num_classes)]


# What a file's weights need of the network beyond the flags (training builds it that way).
LAYOUT_FIELDS = ("convention", "stride_in_1x1", "input_convention")


def weights_layout(path):
    """`{field: value}` of LAYOUT_FIELDS that the weights at `path` were trained with (a field the
    file does not determine is left out: a backbone without shifts carries no convention). A run folder
    or a run's weights -> its config.json; `.pdparams` -> the paddle convention; `.pth` -> tsm;
    keras.applications -> the Caffe layout; this project's `.keras` / converted `.weights.h5` -> theirs."""
    from tsm_keras.config import Config

    model_dir = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    if runs.is_run_folder(model_dir) and (os.path.isdir(path) or path.endswith(".weights.h5")):
        saved = Config.load(os.path.join(model_dir, runs.CONFIG_FILE))
        return {field: getattr(saved, field) for field in LAYOUT_FIELDS}
    from tsm_keras.convert import source_build_kwargs

    build = source_build_kwargs(path)
    return {field: build[field] for field in LAYOUT_FIELDS if field in build}


def resolve_layout(config, source=None):
    """`(config with the LAYOUT_FIELDS the network is built with, reason)` for training: the shift
    convention as `--convention` says or, under auto, the weights' (`source`, default `--pretrained`),
    else "tsm"; the stride placement and input convention the weights need."""
    source = source or config.pretrained
    layout = weights_layout(source) if source else {}
    if config.convention != "auto":
        convention, why = config.convention, "--convention"
    elif layout.get("convention") in ("tsm", "paddle"):
        convention, why = layout["convention"], f"the convention of {source}"
    else:
        convention, why = "tsm", (f"the official code's; {source} carries none" if source
                                  else "the official code's; no --pretrained weights to take one from")
    changes = dict(convention=convention, stride_in_1x1=bool(layout.get("stride_in_1x1", config.stride_in_1x1)),
                   input_convention=layout.get("input_convention", config.input_convention))
    if changes["stride_in_1x1"] or changes["input_convention"] != "imagenet":
        why += (f"; layout of {source}: stride_in_1x1={changes['stride_in_1x1']}, "
                f"input_convention={changes['input_convention']}")
    return config.replace(**changes), why


def resolve_convention(config, source=None):
    """`(convention, reason)`: `resolve_layout`'s shift convention."""
    resolved, why = resolve_layout(config, source)
    return resolved.convention, why
