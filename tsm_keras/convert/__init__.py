"""Bring your weights: PaddleVideo `.pdparams`, official PyTorch `.pth`/`.pth.tar`, keras.applications
ResNet `.h5`, and this project's own `.keras` / `.weights.h5`, detected by content and extension.

    model = load_model_from_source("TSM_k400.pdparams")                # a ready TSM model
    model = load_model_from_source("ucf101.pdparams", num_classes=101, num_segments=16)
    init_from_pretrained(model, "ResNet50_pretrain.pdparams")          # training: head skipped if it differs
    load_weights_into(model, "TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment8_e50.pth")

Converted models take float frames `[batch, T, H, W, 3]` of any size, normalized as
`model.input_convention` says (`"imagenet"`: RGB, (x - mean) / std on the 0-255 scale; `"caffe"`
for keras.applications weights: BGR, mean subtraction, no std); pass `normalize_input=True` to
have the model take raw 0-255 RGB frames and normalize them itself.
"""

import json
import os

from tsm_keras import disk
from tsm_keras.convert.converted import (BEHAVIOURAL_KEYS, STRUCTURAL_KEYS, ConversionError, ConvertedWeights,
                                         assign_converted, check_build, converted_from_model)
from tsm_keras.convert.detect import FORMATS, detect_format

__all__ = ["ConversionError", "ConvertedWeights", "FORMATS", "build_model_from_source", "convert_checkpoint",
           "convert_from_config", "detect_format", "init_from_pretrained", "load_model_from_source",
           "load_weights_into", "read_checkpoint", "source_build_kwargs"]

def read_checkpoint(path, fmt=None):
    """Any source except `keras-weights` -> ConvertedWeights (arrays in Keras layout, our layer names)."""
    fmt = fmt or detect_format(path)
    if fmt == "paddle":
        from tsm_keras.convert.paddle import convert_paddle_state, read_pdparams

        return convert_paddle_state(read_pdparams(path), source=path)
    if fmt == "pytorch":
        from tsm_keras.convert.pytorch import convert_torch_state, read_torch_checkpoint

        return convert_torch_state(read_torch_checkpoint(path), source=path)
    if fmt == "keras-applications":
        from tsm_keras.convert.keras_applications import convert_keras_applications, read_keras_applications_h5

        return convert_keras_applications(read_keras_applications_h5(path), source=path)
    if fmt == "keras":
        return converted_from_model(_load_keras(path), source=path)
    raise ConversionError(f"{path}: a {FORMATS.get(fmt, fmt)} cannot be read on its own; load it into a model "
                          "built with the same arguments (load_weights_into / load_model_from_source).")


def source_build_kwargs(path):
    """The build_tsm arguments a file's weights imply (e.g. `convention="paddle"`); `{}` for .weights.h5."""
    fmt = detect_format(path)
    return {} if fmt == "keras-weights" else dict(read_checkpoint(path, fmt).build)


def load_weights_into(model, path, skip_mismatched_head=False, strict_build=True):
    """Set the weights of any supported file into an existing TSM model; returns the messages.

    Raises ConversionError (missing/unknown layers listed, shape or head mismatches, a model built
    with another shift/input convention when `strict_build`).
    """
    fmt = detect_format(path)
    if fmt == "keras-weights":
        if _own_weights_classes(path) == model.num_classes:
            messages = []
            saved = _read_architecture(path)
            if saved is not None:
                keys = [k for k in STRUCTURAL_KEYS + BEHAVIOURAL_KEYS if k in saved]
                messages = check_build(model, ConvertedWeights(source=path, format="keras-weights", layers={},
                                                               build={k: saved[k] for k in keys}),
                                       strict=strict_build)
            _load_own_weights_into(model, path)
            return messages
        source = _load_own_weights(path, model.get_config())
        return assign_converted(model, converted_from_model(source, path), skip_mismatched_head, strict_build)
    return assign_converted(model, read_checkpoint(path, fmt), skip_mismatched_head, strict_build)


def init_from_pretrained(model, path, skip_mismatched_head=True):
    """`--pretrained` in training: any supported file; a head of another class count is skipped,
    and a different shift/input convention is reported rather than refused (fine-tuning adapts).
    Build the model with `**source_build_kwargs(path)` to match the weights exactly."""
    return load_weights_into(model, path, skip_mismatched_head=skip_mismatched_head, strict_build=False)


def build_model_from_source(path, num_classes=None, num_segments=None, skip_mismatched_head=False,
                            **build_kwargs):
    """A new TSM model (`image_size=None`, `normalize_input=False` unless given) with the file's weights.

    The backbone, shift convention, stride placement and input convention come from the file;
    `build_kwargs` that contradict them raise ConversionError. `num_classes` defaults to the
    file's head (required for backbone-only files); `num_segments` defaults to 8.
    """
    from tsm_keras.models import build_tsm

    fmt = detect_format(path)
    if fmt in ("keras", "keras-weights"):
        return load_model_from_source(path, num_classes, num_segments, skip_mismatched_head, **build_kwargs)
    converted = read_checkpoint(path, fmt)
    kwargs = _merge_build(converted, build_kwargs)
    num_classes = num_classes or converted.num_classes
    if not num_classes:
        raise ConversionError(f"{path} holds no classifier (backbone only): pass num_classes (--num_classes).")
    if converted.num_classes and converted.num_classes != int(num_classes) and not skip_mismatched_head:
        raise ConversionError(f"{path}: the classifier has {converted.num_classes} classes, {num_classes} were asked; "
                              f"pass num_classes={converted.num_classes} (--num_classes) to keep it, or "
                              "skip_mismatched_head=True to fine-tune.")
    model = build_tsm(int(num_classes), num_segments=int(num_segments or 8), **kwargs)
    assign_converted(model, converted, skip_mismatched_head=skip_mismatched_head)
    return model


def load_model_from_source(path, num_classes=None, num_segments=None, skip_mismatched_head=False, config=None,
                           **build_kwargs):
    """Any supported file -> a TSM model: `.keras`, `.weights.h5` (with the architecture arguments),
    `.pdparams`, `.pth`/`.pth.tar`, keras.applications `.h5`. What eval/predict/export `--weights` use.

    A `.keras` model is returned as saved unless `num_classes`, `num_segments` or `build_kwargs`
    ask for something else (e.g. another T: TSM weights do not depend on it), then it is rebuilt.

    `config` (a `tsm_keras.config.Config`) builds the model for that run's input pipeline: its
    num_classes and num_segments, its architecture flags (backbone, shift, shift_div, shift_place,
    dropout; a `.keras` file keeps its own), and `normalize_input=True` because the pipeline yields
    raw 0-255 RGB clips (the model then normalizes per its `input_convention`). Explicit arguments win.
    """
    fmt = detect_format(path)
    if config is not None:
        num_classes = num_classes or config.num_classes
        num_segments = num_segments or config.num_segments
        build_kwargs.setdefault("normalize_input", True)
        if fmt != "keras":
            for key in ("backbone", "shift", "shift_div", "shift_place", "dropout"):
                build_kwargs.setdefault(key, getattr(config, key))
    if fmt == "keras":
        saved = _load_keras(path)
        return _retarget(saved, saved.get_config(), path, num_classes, num_segments, skip_mismatched_head,
                         build_kwargs)
    if fmt == "keras-weights":
        from tsm_keras.models import TSM, build_tsm

        saved_config = _read_architecture(path)
        if saved_config is not None:
            # Written by --mode=convert: the architecture the weights need (shift convention ...).
            source = TSM.from_config(dict(saved_config, num_classes=_own_weights_classes(path)))
            _load_own_weights_into(source, path)
            return _retarget(source, source.get_config(), path, num_classes, num_segments, skip_mismatched_head,
                             build_kwargs)
        source = build_tsm(_own_weights_classes(path), num_segments=int(num_segments or 8), **build_kwargs)
        _load_own_weights_into(source, path)
        if num_classes and int(num_classes) != source.num_classes:
            return _rebuilt(source, dict(source.get_config(), num_classes=int(num_classes)), path,
                            skip_mismatched_head)
        return source
    return build_model_from_source(path, num_classes, num_segments, skip_mismatched_head, **build_kwargs)


def convert_checkpoint(config):
    """`--mode=convert --source=FILE --output=OUT.keras|OUT.weights.h5`: convert and save; prints what it did.

    The model is built from the config's architecture flags (--num_classes, --num_segments, --backbone,
    --shift, --shift_div, --shift_place, --dropout); the file decides the shift and input conventions.
    """
    if not config.source:
        raise ConversionError("--mode=convert needs --source=<weights file> (" + "; ".join(FORMATS.values()) + ").")
    if not config.output.endswith((".keras", ".weights.h5")):
        raise ConversionError(f"--output must end with .keras (whole model) or .weights.h5 (weights only), "
                              f"got {config.output!r}.")
    import logging

    from tsm_keras.convert.converted import logger

    messages = []

    class _Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    collector = _Collect()
    logger.addHandler(collector)
    previous = logger.level, logger.propagate
    logger.setLevel("INFO")
    logger.propagate = False  # printed below, once
    try:
        # The written model takes normalized float frames (normalize_input=False), any size.
        model = load_model_from_source(config.source, config=config, normalize_input=False)
    finally:
        logger.removeHandler(collector)
        logger.setLevel(previous[0])
        logger.propagate = previous[1]
    os.makedirs(os.path.dirname(os.path.abspath(config.output)), exist_ok=True)
    if config.output.endswith(".keras"):
        model.save(config.output)
    else:
        model.save_weights(config.output)
        # Weights alone do not say which shift convention they need: keep the architecture beside them.
        with open(_architecture_file(config.output), "w") as f:
            json.dump(model.get_config(), f, indent=2, sort_keys=True)
        print(f"{_architecture_file(config.output)}: the architecture; load_model_from_source({config.output!r}) "
              f"reads both, or build_tsm(**that config) then model.load_weights(...).")
    for message in messages:
        print(message)
    print(f"{config.output}: {model.name}, {model.backbone}, {model.num_classes} classes, T={model.num_segments}, "
          f"shift={model.shift} (convention={model.convention}, shift_every={model.shift_every}), input: float "
          f"frames [batch, {model.num_segments}, H, W, 3] normalized the {model.input_convention!r} way"
          + (" (raw 0-255 RGB: the model normalizes)" if model.normalize_input else "") + ".")
    if config.output.endswith(".keras"):
        print(f"load: import tsm_keras, keras; keras.saving.load_model({config.output!r})")
    return config.output


convert_from_config = convert_checkpoint  # deprecated name (kept for one release)


def _merge_build(converted, build_kwargs):
    kwargs = dict(build_kwargs)
    for key, value in converted.build.items():
        if key in kwargs and kwargs[key] != value:
            flag = f" (--{key}={value})" if key in ("backbone", "shift_place") else ""
            raise ConversionError(f"{converted.source}: the weights need {key}={value!r}, but {key}={kwargs[key]!r} "
                                  f"was asked; pass {key}={value!r}{flag}.")
        kwargs[key] = value
    return kwargs


def _load_keras(path):
    import keras

    # The layers and TSM are registered for deserialization: importing this package ran tsm_keras first.

    try:
        model = keras.saving.load_model(path)
    except Exception as error:  # noqa: BLE001
        raise ConversionError(f"{path}: keras.saving.load_model failed: {error}") from None
    return require_tsm(model, path)


def require_tsm(model, path):
    """`model`, loaded from the `.keras` file `path`, if it is a TSM of this project; else a ConversionError
    (another Keras model: a KeyError deep in the input checks, or a list of 100 unmatched layers, before)."""
    from tsm_keras.models import TSM

    if not isinstance(model, TSM):
        raise ConversionError(f"{path}: a Keras model ({type(model).__name__} {model.name!r}), not a TSM saved by "
                              "tsm-keras; pass a run folder, a .keras written by --mode=convert, or a checkpoint "
                              "format the converters read")
    return model


def _own_weights_classes(path):
    """The class count of this project's `.weights.h5` (its one Dense layer's kernel)."""
    import h5py

    with h5py.File(path, "r") as f:
        dense = [n for n in f["layers"] if n.startswith("dense")]
        if len(dense) != 1:
            raise ConversionError(f"{path}: expected one classifier in a tsm-keras .weights.h5, found {len(dense)}.")
        return int(f["layers"][dense[0]]["vars"]["0"].shape[1])


def _load_own_weights_into(model, path):
    import warnings

    try:
        # Keras warns once per layer it cannot match before it raises: a foreign file gave ~50 warnings above
        # the one error. They are shown only if the load succeeds.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.load_weights(path)
        for warning in caught:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    except Exception as error:  # noqa: BLE001
        # Keras' reason can list every layer of the model: its first line says enough.
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if reason.endswith(":") and ". " in reason:  # "25 objects could not be loaded. Example ... for <layer>:"
            reason = reason[:reason.rindex(". ") + 1]
        raise ConversionError(f"{path}: does not fit a {model.backbone} TSM built with these arguments "
                              f"({reason[:300]}); pass the flags it was trained with (--backbone ...).") from None


def _load_own_weights(path, config):
    """This project's `.weights.h5` into a model built from its architecture file (if any) or `config`,
    with the file's class count."""
    from tsm_keras.models import TSM

    config = _read_architecture(path) or config
    model = TSM.from_config(dict(config, num_classes=_own_weights_classes(path)))
    _load_own_weights_into(model, path)
    return model


def _architecture_file(weights_path):
    """`tsm.weights.h5` -> `tsm.architecture.json`: the model config --mode=convert writes beside weights."""
    return weights_path[:-len(".weights.h5")] + ".architecture.json"


def _read_architecture(weights_path):
    """The model config in the weights' architecture file, or None when there is none."""
    sidecar = _architecture_file(weights_path)
    if not os.path.exists(sidecar):
        return None
    remedy = f"it holds the architecture of {weights_path}, written by --mode=convert: convert again"
    return disk.read_json_object(sidecar, "a model config", remedy, error=ConversionError)


def _retarget(model, saved_config, path, num_classes, num_segments, skip_mismatched_head, build_kwargs):
    """`model` as is, or rebuilt when the caller asks for other classes, T or build arguments."""
    for key in STRUCTURAL_KEYS:
        if key in build_kwargs and build_kwargs[key] != saved_config[key]:
            raise ConversionError(f"{path}: the model has {key}={saved_config[key]!r}, but {key}={build_kwargs[key]!r} "
                                  f"was asked; pass {key}={saved_config[key]!r}.")
    wanted = dict(saved_config, **build_kwargs)
    if num_classes:
        wanted["num_classes"] = int(num_classes)
    if num_segments:
        wanted["num_segments"] = int(num_segments)
    if wanted == saved_config:
        return model
    return _rebuilt(model, wanted, path, skip_mismatched_head)


def _rebuilt(source_model, config, path, skip_mismatched_head):
    from tsm_keras.models import TSM

    model = TSM.from_config(config)
    assign_converted(model, converted_from_model(source_model, path), skip_mismatched_head=skip_mismatched_head,
                     strict_build=False)
    return model
