"""tsm-keras command line: `python app.py --mode=... [--flagfile=flags/<recipe>.flags] [--flag=value ...]`.

Parses flags into a `tsm_keras.config.Config` and runs `tsm_keras.modes.MODES[mode](config)`.
With no arguments it runs `flags/quickstart.flags` (the embedded synthetic dataset).
"""

import os
import sys

# Before TensorFlow loads (importing tsm_keras loads it): hide TensorFlow's C++ INFO lines unless the
# user chose a level; warnings and errors still show. tsm_keras turns oneDNN on at import, unless
# TF_ENABLE_ONEDNN_OPTS is set (tsm_keras.runtime.prefer_onednn).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

# Modes whose process never changes a weight after loading it: there oneDNN may keep each conv's reordered
# filter between calls (TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1) instead of re-laying it out on every call. That
# made batch-1 streaming 2.5-3x faster on an AVX2-only AMD EPYC (see README, "Speed"). Never in a process
# that trains, and never for eager calls: there it returns stale or other layers' filters.
FROZEN_WEIGHTS_VARIABLE = "TF_ONEDNN_ASSUME_FROZEN_WEIGHTS"
FROZEN_WEIGHTS_MODES = ("predict",)


def requested_mode(argv):
    """The `--mode` that absl will parse from `argv` (`--flagfile`s expanded in place, recursively; the last
    one wins), `"train"` for no arguments (the quickstart), or None when argv does not name one or a
    flagfile cannot be read (absl reports that). Reads no TensorFlow: it runs before TensorFlow is imported."""
    if len(argv) <= 1:
        return "train"
    mode, pending, seen = None, list(argv[1:]), set()
    while pending:
        arg = pending.pop(0)
        name, has_value, value = arg.lstrip("-").partition("=")
        if not arg.startswith("-") or name not in ("mode", "flagfile"):
            continue
        if not has_value:
            if not pending:
                break
            value = pending.pop(0)
        if name == "mode":
            mode = value
            continue
        path = os.path.abspath(os.path.expanduser(value))
        if path in seen:
            continue  # absl rejects a flagfile cycle itself
        seen.add(path)
        try:
            with open(path) as f:
                lines = [line.strip() for line in f]
        except OSError:
            return None
        pending[:0] = [line for line in lines if line and not line.startswith(("#", "//"))]
    return mode


def assume_frozen_weights(argv, environ):
    """Set TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1 for a `FROZEN_WEIGHTS_MODES` run unless the user set it; whether
    it did. Call before TensorFlow runs its first conv (TensorFlow reads the variable once, then)."""
    if FROZEN_WEIGHTS_VARIABLE in environ or requested_mode(argv) not in FROZEN_WEIGHTS_MODES:
        return False
    environ[FROZEN_WEIGHTS_VARIABLE] = "1"
    return True


if __name__ == "__main__":  # not on `import app` (tests run app.main in a process that also trains)
    assume_frozen_weights(sys.argv, os.environ)

from absl import app, flags  # noqa: E402

from tsm_keras.config import config_from_flags  # noqa: E402  (importing tsm_keras loads TensorFlow)
from tsm_keras.modes import MODES, dispatch  # noqa: E402
from tsm_keras.runtime import skip_exit_collection  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
QUICKSTART = os.path.join(HERE, "flags", "quickstart.flags")

F = flags.FLAGS
flags.DEFINE_enum("mode", "summary", sorted(MODES), "What to do.")
flags.DEFINE_string("model_dir", "runs/tsm", "Run folder: checkpoints, config, label map, logs, reports.")

# Data.
flags.DEFINE_enum("data_format", "synthetic", ["frames", "videos", "tfrecord", "synthetic"], "Input kind.")
flags.DEFINE_string("data_root", "", "Root folder that list-file paths are relative to.")
flags.DEFINE_string("train_list", "", "Training list file (PaddleVideo format).")
flags.DEFINE_string("val_list", "", "Validation/test list file (PaddleVideo format).")
flags.DEFINE_string("label_map", "", "Class names: kinetics400, a classInd.txt or one name per line.")
flags.DEFINE_integer("num_classes", 400, "Number of classes.", lower_bound=1)
flags.DEFINE_integer("num_segments", 8, "Frames per clip (TSN segments).", lower_bound=1)
flags.DEFINE_integer("image_size", 224, "Crop size fed to the model.", lower_bound=32)
flags.DEFINE_integer("scale_size", 256, "Short side before the centre crop at evaluation.", lower_bound=32)
flags.DEFINE_string("frame_template", "img_{:05d}.jpg", "Frame file name template (1-based index).")
flags.DEFINE_enum("on_bad_sample", "skip", ["skip", "fail"], "Unreadable video/frame: skip (counted) or fail.")
flags.DEFINE_string("tfrecord_dir", "tfrecords", "TFRecord shards folder.")
flags.DEFINE_boolean("allow_duplication", True, "MultiScaleCrop offers all 13 offsets, those coinciding when "
                     "there is no free space too (every PaddleVideo TSM yaml; --noallow_duplication: the class "
                     "default, duplicates dropped).")
flags.DEFINE_integer("train_scale_size", 0, "Training: short side to this before MultiScaleCrop (PP-TSM: 256; "
                     "0 = MultiScaleCrop of the frames as decoded).", lower_bound=0)
flags.DEFINE_integer("multi_scale_crop_size", 0, "Training: MultiScaleCrop output size; larger than --image_size, a "
                     "random --image_size crop follows (PP-TSM: 256 then 224; 0 = --image_size, no random crop).",
                     lower_bound=0)
flags.DEFINE_boolean("flip", True, "Random horizontal flip in training (--noflip for direction-aware classes).")
flags.DEFINE_integer("test_clips", 1, "Clips per video at evaluation.", lower_bound=1)
flags.DEFINE_integer("test_crops", 1, "Spatial crops per clip at evaluation (1 centre or 3).")
flags.DEFINE_enum("sampling", "uniform", ["uniform", "dense"], "Frame sampling: uniform (TSN: one frame per "
                  "segment; MMAction2 1x1xT) or dense (T frames --dense_interval apart in one window; 8x8x1; at "
                  "evaluation --test_clips windows spread over the video, 10 in the references).")
flags.DEFINE_integer("eval_batch_size", 0, "Videos per batch in validation and --mode=eval (0 = as many as "
                     "--batch_size allows within 1 GiB of decoded views: 29 videos at 10 clips x 3 crops x 8 x 224^2).",
                     lower_bound=0)
flags.DEFINE_integer("dense_interval", 0, "Dense sampling: frames between samples (0 = 64 // num_segments).",
                     lower_bound=0)
flags.DEFINE_integer("short_side", 0, "prepare/tfrecords: resize frames to this short side (0 keeps them).",
                     lower_bound=0)
flags.DEFINE_integer("tfrecord_videos_per_shard", 64, "tfrecords: videos per TFRecord shard.", lower_bound=1)
flags.DEFINE_integer("data_workers", 0, "prepare/tfrecords: worker processes (0 = all cores).", lower_bound=0)
flags.DEFINE_string("prepare_videos_dir", "", "prepare: class-per-folder video tree (Kinetics) or UCF-101 root.")
flags.DEFINE_string("ucf101_annotations", "", "prepare: folder with UCF-101 classInd.txt, trainlist0N/testlist0N.txt.")
flags.DEFINE_integer("ucf101_split", 1, "prepare: UCF-101 split 1, 2 or 3.", lower_bound=1, upper_bound=3)
flags.DEFINE_string("sthv2_annotations", "", "prepare: Something-Something V2 folder with labels.json, train.json "
                    "and validation.json (or their something-something-v2-*.json names); videos <id>.webm in "
                    "--prepare_videos_dir.")
flags.DEFINE_string("frames_dir", "", "prepare: extract the videos of --train_list/--val_list into frame folders here.")

# Model.
flags.DEFINE_enum("backbone", "resnet50",
                  ["resnet10", "resnet18", "resnet34", "resnet50", "resnet101", "resnet50_vd", "resnet101_vd",
                   "mobilenetv2", "mobilenetv2_paddle"],
                  "Backbone (the _vd ones: PP-TSM's ResNet-vd with ppTSMHead's N(0, 0.01) classifier init; "
                  "mobilenetv2: the official MobileNetV2-TSM; mobilenetv2_paddle: PaddleVideo's ppTSM_mv2).")
flags.DEFINE_enum("shift", "bidirectional", ["bidirectional", "unidirectional", "none"], "Temporal shift (none = TSN).")
flags.DEFINE_integer("shift_div", 8, "1/shift_div of the channels shift each way.", lower_bound=1)
flags.DEFINE_enum("shift_place", "blockres", ["blockres", "block"], "Where the shift goes in a block.")
flags.DEFINE_enum("convention", "auto", ["auto", "tsm", "paddle"], "Shift direction: tsm (official code: channels "
                  "[0, C/8) take frame t+1), paddle (PaddleVideo: the reverse, fold C/T), auto (what the "
                  "--pretrained/--weights file was trained with: .pdparams -> paddle, .pth and keras.applications "
                  "-> tsm, this project's files -> theirs; else tsm).")
flags.DEFINE_float("dropout", 0.5, "Dropout before the classifier.")
flags.DEFINE_string("pretrained", "", "Initial weights (ImageNet or K400), any format the converters read.")
flags.DEFINE_string("weights", "", "Trained weights for eval/predict/export: model_dir, .keras or a converter source.")
flags.DEFINE_string("source", "", "--mode=convert: .pdparams, .pth/.pth.tar, keras.applications .h5, .keras or "
                    ".weights.h5.")
flags.DEFINE_string("output", "", "--mode=convert: where to write, OUT.keras (whole model) or OUT.weights.h5; "
                    "--mode=predict: JSON lines file (preds.jsonl).")

# Export and predict.
flags.DEFINE_string("export_dir", "saved_models/tsm", "--mode=export: versioned folder (<export_dir>/<version>/); "
                    "ONNX/TFLite write <export_dir>/<name>.onnx|.tflite.")
flags.DEFINE_enum("export_format", "saved_model", ["saved_model", "onnx", "tflite"], "--mode=export: artefact kind.")
flags.DEFINE_enum("export_precision", "float32", ["float32", "bfloat16"], "--mode=export SavedModel compute "
                  "precision: bfloat16 stores weights and runs convs in bfloat16 (logits and probabilities stay "
                  "float32); fast on CPUs with AMX / AVX-512 BF16 and on recent GPUs.")
flags.DEFINE_enum("tflite_quant", "float32", ["float32", "float16", "dynamic_int8"], "TFLite weights: float32, "
                  "float16, or dynamic-range int8.")
flags.DEFINE_enum("trt_precision", "", ["", "FP32", "FP16", "INT8"], "--mode=export: also convert the SavedModel "
                  "with TF-TRT (needs TensorFlow built with TensorRT; INT8 calibrates on --val_list).")
flags.DEFINE_boolean("streaming", False, "--mode=export: the online (streaming) form of a --shift=unidirectional "
                     "model: one frame and the shift states in, per-frame scores and new states out (SavedModel "
                     "signatures init_states and call; TFLite and ONNX of one step, batch 1).")
flags.DEFINE_integer("top_k", 5, "Labels reported per video (predict) and in the SavedModel's top_k outputs.",
                     lower_bound=1)
flags.DEFINE_string("input", "", "--mode=predict: a video file, a frame folder, a folder of videos, or a list file.")
flags.DEFINE_boolean("online", False, "--mode=predict: stream each video frame by frame through a --shift="
                     "unidirectional model (run folder, --weights, or a --streaming SavedModel export) and print "
                     "the smoothed label and latency per frame.")
flags.DEFINE_integer("online_every", 1, "--mode=predict --online: print a label every N frames (every frame "
                     "still goes through the model: the states need it).", lower_bound=1)
flags.DEFINE_integer("online_history", 12, "--mode=predict --online: the label is the argmax of the mean logits of "
                     "the last K frames (the official online demo: 12; 1 = no smoothing).", lower_bound=1)
flags.DEFINE_integer("online_stride", 1, "--mode=predict --online: stream video frames 1, 1+S, 1+2S, ... (a model "
                     "trained on T segments of V-frame videos saw frames about V/T apart: S = V/T).", lower_bound=1)
flags.DEFINE_string("saved_model", "", "--mode=predict: a SavedModel export (or its versioned folder) instead of "
                    "--weights.")

# Optimization.
flags.DEFINE_integer("batch_size", 128, "Global batch size (split across replicas).", lower_bound=1)
flags.DEFINE_integer("epochs", 50, "Training epochs.", lower_bound=0)
flags.DEFINE_float("lr", 0.02, "Base learning rate for the global batch (first of --lr_values).", lower_bound=0)
flags.DEFINE_list("lr_boundaries", ["20", "40"], "Epochs where the learning rate drops.")
flags.DEFINE_list("lr_values", ["0.02", "0.002", "0.0002"], "Learning rates between the boundaries.")
flags.DEFINE_float("momentum", 0.9, "Momentum.", lower_bound=0, upper_bound=1)
flags.DEFINE_float("weight_decay", 1e-4, "L2 decay on conv and FC kernels (g + wd * w).", lower_bound=0)
flags.DEFINE_float("clip_norm", 20.0, "Global gradient norm clip (0 = off).", lower_bound=0)
flags.DEFINE_integer("lr_batch_size", 128, "Global batch the lr values are for; lr scales by batch_size/this "
                     "(0 = off).", lower_bound=0)
flags.DEFINE_enum("lr_schedule", "piecewise", ["piecewise", "cosine"], "Learning-rate schedule by epoch.")
flags.DEFINE_float("warmup_epochs", 0.0, "Linear lr warmup epochs (0 = none, as PaddleVideo's TSM).", lower_bound=0)
flags.DEFINE_float("fc_weight_decay", 1e-4, "L2 decay on the FC kernel (PaddleVideo TSMHead's own).", lower_bound=0)
flags.DEFINE_float("fc_lr_mult", 5.0, "lr multiplier of the FC kernel (PaddleVideo TSMHead: 5).", lower_bound=0)
flags.DEFINE_float("fc_bias_lr_mult", 10.0, "lr multiplier of the FC bias (PaddleVideo TSMHead: 10).", lower_bound=0)
flags.DEFINE_float("label_smoothing", 0.0, "Training loss over (1 - eps) * one_hot + eps / num_classes "
                   "(PaddleVideo ls_eps; PP-TSM: 0.1). Accuracy stays on the hard labels.")
flags.DEFINE_float("mixup_alpha", 0.0, "Clip-level mixup across each replica's batch, lam ~ Beta(alpha, alpha); "
                   "loss lam * CE(a) + (1 - lam) * CE(b) (PaddleVideo Mixup; PP-TSM: 0.2; 0 = off).", lower_bound=0)
flags.DEFINE_integer("precise_bn_every", 0, "Recompute BatchNorm statistics after epochs 1, 1+N, 1+2N, ... and the "
                     "last (PaddleVideo preciseBN_interval; PP-TSM: 5; 0 = off). One replica only.", lower_bound=0)
flags.DEFINE_integer("precise_bn_steps", 200, "Training batches per precise-BN pass (PaddleVideo "
                     "num_iters_preciseBN, at most an epoch's steps): moving mean/variance = the mean of the "
                     "batches' mean/variance.", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Random seed.")

# Execution.
flags.DEFINE_enum("strategy", "auto", ["auto", "one_device", "mirrored", "multi_worker"], "tf.distribute strategy.")
flags.DEFINE_enum("precision", "auto", ["auto", "float32", "mixed_float16", "mixed_bfloat16"],
                  "Precision policy. auto: training in mixed_bfloat16 where bfloat16 runs faster than float32 "
                  "(CPU amx_bf16, or avx512_bf16 on AMD; NVIDIA compute capability >= 8.0), mixed_float16 on "
                  "NVIDIA 7.x, else float32; evaluation, predict and export in float32.")
flags.DEFINE_boolean("amp", False, "PaddleVideo's alias for --precision=mixed_float16.")
flags.DEFINE_boolean("validate", False, "Evaluate on the val list after each epoch (see --validate_every).")
flags.DEFINE_integer("validate_every", 1, "With --validate: evaluate after epochs N, 2N, 3N, ... and the last "
                     "(PaddleVideo val_interval); the last one is the run's final result.", lower_bound=1)
flags.DEFINE_integer("steps_per_epoch", 0, "Training steps per epoch (0 = one pass over the list).", lower_bound=0)
flags.DEFINE_integer("checkpoint_every", 500, "Checkpoint every N steps (and at each epoch end; 0 = epoch ends only).",
                     lower_bound=0)
flags.DEFINE_integer("keep_checkpoints", 3, "Checkpoints kept (plus the best by validation top-1).", lower_bound=1)
flags.DEFINE_boolean("sync_bn", False, "Synchronized BatchNorm in training: batch statistics over the global batch "
                     "(all replicas and workers) instead of each replica's share, as PaddleVideo's and MMAction2's "
                     "SyncBN; costs all-reduces per BatchNorm layer and step.")
flags.DEFINE_boolean("debug", False, "Show the Python traceback of a user error (a bad flag, list file or "
                     "checkpoint) instead of the one `error: ...` line.")
flags.DEFINE_boolean("deterministic", False, "Deterministic ops (bit-identical reruns and resumes; slower).")


# Checked when the flags are parsed, before any work (a bad value used to surface after an epoch of training).
flags.register_validator("test_crops", lambda n: n in (1, 3), "--test_crops must be 1 (centre) or 3 (along the "
                         "long side)")
flags.register_validator("dropout", lambda p: 0 <= p < 1, "--dropout must be in [0, 1)")
flags.register_validator("label_smoothing", lambda eps: 0 <= eps < 1, "--label_smoothing must be in [0, 1)")


def _all_at_least_0(kind, values):
    try:
        return all(kind(v) >= 0 for v in values)
    except ValueError:
        return False


flags.register_validator("lr_boundaries", lambda v: _all_at_least_0(int, v),
                         "--lr_boundaries must be whole epochs >= 0, comma-separated (e.g. 20,40)")
flags.register_validator("lr_values", lambda v: len(v) > 0 and _all_at_least_0(float, v),
                         "--lr_values must be learning rates >= 0, comma-separated (e.g. 0.02,0.002,0.0002)")
flags.register_multi_flags_validator(
    ["image_size", "scale_size"], lambda f: f["scale_size"] >= f["image_size"],
    "--scale_size (the short side before the evaluation crop) must be at least --image_size: pass both")
flags.register_multi_flags_validator(
    ["image_size", "multi_scale_crop_size"],
    lambda f: f["multi_scale_crop_size"] == 0 or f["multi_scale_crop_size"] >= f["image_size"],
    "--multi_scale_crop_size must be 0 or at least --image_size (a random --image_size crop follows it)")

def main(argv):
    del argv
    return dispatch(F.mode, config_from_flags(F), debug=F.debug, ending=True)


if __name__ == "__main__":
    if len(sys.argv) == 1:
        sys.argv.append(f"--flagfile={QUICKSTART}")
    skip_exit_collection()
    app.run(main)
