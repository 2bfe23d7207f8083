"""One config object for every mode: flags -> Config -> data, model, loop, artefacts.

Defaults are PaddleVideo's TSM K400 recipe (`tsm_k400_frames.yaml`) for a global batch of 128.
The library takes a `Config`; only `app.py` knows about flags.
"""

import dataclasses
import json
import os
from typing import List, Optional

from tsm_keras import disk

# The fields that describe the trained network (what `build_tsm` takes from a Config): a run's saved
# config.json decides them at eval/export/predict, and a resume must not change them.
MODEL_FIELDS = ("backbone", "num_classes", "num_segments", "shift", "shift_div", "shift_place", "convention",
                "dropout", "stride_in_1x1", "input_convention")


@dataclasses.dataclass
class Config:
    mode: str = "train"
    model_dir: str = "runs/tsm"

    # Data (contract shared by the data, train and export issues).
    data_format: str = "synthetic"  # frames | videos | tfrecord | synthetic
    data_root: str = ""
    train_list: str = ""
    val_list: str = ""
    label_map: str = ""
    num_classes: int = 400
    num_segments: int = 8
    image_size: int = 224
    scale_size: int = 256
    frame_template: str = "img_{:05d}.jpg"
    on_bad_sample: str = "skip"  # skip | fail
    tfrecord_dir: str = "tfrecords"
    flip: bool = True
    allow_duplication: bool = True  # MultiScaleCrop: all 13 offsets, as every TSM yaml (tsm_keras.data.augment)
    # Training geometry (PP-TSM): short side -> train_scale_size, MultiScaleCrop -> multi_scale_crop_size,
    # then a random image_size crop. 0 = off: MultiScaleCrop of the decoded frames straight to image_size.
    train_scale_size: int = 0
    multi_scale_crop_size: int = 0
    test_clips: int = 1
    test_crops: int = 1
    sampling: str = "uniform"  # uniform (TSN segments) | dense (T frames dense_interval apart, one window)
    dense_interval: int = 0  # frames between dense samples; 0 = 64 // num_segments (the references' window)
    eval_batch_size: int = 0  # videos per evaluation batch; 0 = what fits EVAL_BATCH_BYTES (evaluation.evaluator)
    # Data preparation and TFRecord conversion (prepare / tfrecords modes).
    short_side: int = 0
    tfrecord_videos_per_shard: int = 64
    data_workers: int = 0
    prepare_videos_dir: str = ""
    ucf101_annotations: str = ""
    ucf101_split: int = 1
    sthv2_annotations: str = ""  # Something-Something V2: folder with labels.json, train.json, validation.json
    frames_dir: str = ""

    # Model.
    backbone: str = "resnet50"
    shift: str = "bidirectional"  # bidirectional | unidirectional | none
    shift_div: int = 8
    shift_place: str = "blockres"
    # Shift direction convention: tsm (official code) | paddle (PaddleVideo) | auto (the --pretrained /
    # --weights file's own, else tsm; training records the resolved one in config.json).
    convention: str = "auto"
    # The layout the --pretrained weights need (not flags: training takes them from the file; e.g.
    # keras.applications ResNets: the stride in the 1x1 conv, Caffe's BGR mean-subtracted input).
    stride_in_1x1: bool = False
    input_convention: str = "imagenet"
    dropout: float = 0.5
    pretrained: str = ""
    weights: str = ""

    # Convert (--mode=convert): a PaddleVideo / official PyTorch / keras.applications file -> .keras or .weights.h5.
    source: str = ""
    output: str = ""

    # Export and predict (--mode=export / --mode=predict; --output is shared: predict writes JSON lines there).
    export_dir: str = "saved_models/tsm"
    export_format: str = "saved_model"  # saved_model | onnx | tflite
    tflite_quant: str = "float32"  # float32 | float16 | dynamic_int8
    export_precision: str = "float32"  # SavedModel compute: float32 | bfloat16 (bfloat16 inference form)
    trt_precision: str = ""  # "" (no TF-TRT) | FP32 | FP16 | INT8
    streaming: bool = False  # export the per-frame step of a uni-directional TSM (states in and out)
    top_k: int = 5
    input: str = ""
    saved_model: str = ""
    # predict --online: frame by frame through a uni-directional TSM, the top-1 of the mean logits of the
    # last online_history frames (the official online demo's 12) printed every online_every frames.
    online: bool = False
    online_every: int = 1
    online_history: int = 12
    online_stride: int = 1  # stream every S-th video frame (S = training's segment spacing)

    # Optimization (PaddleVideo tsm_k400: piecewise lr by epoch for a global batch of 128).
    batch_size: int = 128
    epochs: int = 50
    lr: float = 0.02
    lr_boundaries: List[int] = dataclasses.field(default_factory=lambda: [20, 40])
    lr_values: List[float] = dataclasses.field(default_factory=lambda: [0.02, 0.002, 0.0002])
    momentum: float = 0.9
    weight_decay: float = 1e-4
    clip_norm: float = 20.0
    # lr_values are for this global batch; lr scales linearly with batch_size / lr_batch_size (0 = off).
    lr_batch_size: int = 128
    lr_schedule: str = "piecewise"  # piecewise | cosine
    warmup_epochs: float = 0.0
    fc_weight_decay: float = 1e-4  # PaddleVideo TSMHead's own L2Decay on the FC kernel
    fc_lr_mult: float = 5.0  # TSMHead ParamAttr(learning_rate=5.0) on the FC kernel
    fc_bias_lr_mult: float = 10.0  # ... and 10.0 on the FC bias
    # PP-TSM's regularizers (all off by default): the training loss over smoothed targets
    # (1 - eps) * one_hot + eps / num_classes; clip-level mixup across each replica's batch,
    # lam ~ Beta(alpha, alpha); BatchNorm statistics recomputed on precise_bn_steps training batches
    # after epochs 1, 1 + N, 1 + 2N, ... and the last (tsm_keras.training.precise_bn).
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0
    precise_bn_every: int = 0
    precise_bn_steps: int = 200
    seed: int = 0

    # Execution.
    strategy: str = "auto"  # auto | one_device | mirrored | multi_worker
    precision: str = "float32"  # float32 | mixed_float16 | mixed_bfloat16
    validate: bool = False
    validate_every: int = 1  # with validate: after epochs N, 2N, ... and the last
    steps_per_epoch: int = 0  # 0 = one pass over the training list
    checkpoint_every: int = 500  # steps; 0 = only at epoch ends
    keep_checkpoints: int = 3
    sync_bn: bool = False  # BatchNorm statistics over the global batch (all replicas and workers) in training
    deterministic: bool = False  # tf.config.experimental.enable_op_determinism (bit-exact resume)

    extra: dict = dataclasses.field(default_factory=dict)

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    def save(self, path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            f.write(self.to_json())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path):
        remedy = "the run's settings, written by training: restore the file or use another --model_dir"
        values = disk.read_json_object(path, "the run's settings", remedy)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        # Runs saved before the convention field existed were all built with the official shift.
        values.setdefault("convention", "tsm")
        config = cls(**{k: v for k, v in values.items() if k in known})
        config.extra.update({k: values[k] for k in unknown})
        return config

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def model_kwargs(self, **overrides):
        """`build_tsm(**config.model_kwargs())`: the network fields, `image_size`, and `overrides`."""
        kwargs = {name: getattr(self, name) for name in MODEL_FIELDS}
        if kwargs["convention"] == "auto":  # unresolved (no weights to take it from): the official shift
            kwargs["convention"] = "tsm"
        kwargs["image_size"] = self.image_size
        kwargs.update(overrides)
        return kwargs


def config_from_flags(flag_values, defaults: Optional[Config] = None):
    """Build a Config from absl flag values: every flag that names a Config field sets it.

    List flags arrive as strings and become the field's element type; `--amp` (PaddleVideo's name) is
    `--precision=mixed_float16`; `--lr_values` without `--lr` makes its first value the base lr.
    """
    config = defaults or Config()
    fields = {f.name: f for f in dataclasses.fields(Config)}
    changes = {}
    for name in flag_values:
        if name in fields:
            value = flag_values[name].value
            if isinstance(getattr(config, name), list) and value is not None:
                value = list(value)
            changes[name] = value
    config = config.replace(**changes)
    config = config.replace(lr_boundaries=[int(b) for b in config.lr_boundaries],
                            lr_values=[float(v) for v in config.lr_values])
    if "amp" in flag_values and flag_values["amp"].value:
        config = config.replace(precision="mixed_float16")
    if "lr_values" in flag_values and flag_values["lr_values"].present and not flag_values["lr"].present:
        config = config.replace(lr=config.lr_values[0])  # --lr rescales --lr_values only when given
    return config
