"""Training clips/s of ResNet-50 TSM (batch 8, 8 x 224 x 224): tsm-keras vs PyTorch eager vs PaddleVideo.

    python benchmarks/train_speed.py [--steps=6 --warmup=2 --repeats=2 --batch_size=8 --image_size=224]

tsm-keras is measured through the training loop itself (`tsm_keras.training.loop.train`: strategy,
PaddleMomentum with clip/L2/lr multipliers, the loop's own clips/s, which excludes the first step),
once in float32 and once in mixed_bfloat16, on in-memory uint8 clips; `--only` may add
`keras_float32_native_conv_gradients` / `keras_float32_gemm_conv_gradients` (float32 with
`TSM_KERAS_CONV_GRADIENTS` forced: the A/B of `tsm_keras.layers.Conv2D`'s GEMM gradients). The peers run the same model
and recipe step (forward, cross-entropy, backward, global-norm clip 20, momentum 0.9, L2 1e-4):
- PyTorch eager float32: `benchmarks/torch_tsm.py` (pure torch, NCHW);
- PaddleVideo: its `ResNetTSM` backbone (ppvideo's resnet_tsm.py loaded by path with its three
  relative imports stubbed, `paddle.device.is_compiled_with_npu()` False: `import ppvideo` fails on
  paddle 3.x) + the TSMHead computation, paddle.optimizer.Momentum, dygraph float32.
Each framework runs in its own subprocess (paddle after TensorFlow in one process segfaults), in
rounds `tf32, tf_bf16, torch, paddle` repeated `--repeats` times so load drift hits all of them.
Prints one JSON object: machine (`tsm_keras.runtime.machine_info()`, read in the parent, which runs no
framework itself), versions, load average, every measurement, medians and ratios.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

from child_process import run_json_child

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


# --------------------------------------------------------------------------------------- children
def run_keras(args, precision, conv_gradients=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if conv_gradients:
        os.environ["TSM_KERAS_CONV_GRADIENTS"] = conv_gradients
    sys.path.insert(0, REPO)
    import tsm_keras  # noqa: F401  (before TensorFlow: turns oneDNN on)
    from tsm_keras.config import Config
    from tsm_keras.training.loop import train

    sys.path.insert(0, HERE)
    from in_memory_data import InMemoryData

    with tempfile.TemporaryDirectory() as model_dir:
        # Epoch 1 is the warmup; the loop's clips/s of epoch 2 excludes that epoch's first step, so
        # it measures exactly `steps` steps.
        config = Config(mode="train", model_dir=model_dir, backbone="resnet50", num_classes=400, num_segments=8,
                        image_size=args.image_size, batch_size=args.batch_size, epochs=2,
                        steps_per_epoch=args.steps + 1, precision=precision, strategy="one_device",
                        checkpoint_every=0, validate=False)
        start = time.perf_counter()
        train(config, data=InMemoryData)
        with open(os.path.join(model_dir, "metrics.jsonl")) as f:
            record = json.loads(f.readlines()[-1])
    from tsm_keras.runtime import conv_gradients as chosen

    return dict(clips_per_sec=record["clips_per_sec"], wall_seconds=time.perf_counter() - start,
                conv_gradients="%s (%s)" % chosen())


def _timed_steps(step, args):
    for _ in range(args.warmup):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    return dict(clips_per_sec=args.batch_size * args.steps / (time.perf_counter() - start))


def run_torch(args):
    import torch

    sys.path.insert(0, HERE)
    from torch_tsm import TSMResNet50

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count())
    t = 8
    model = TSMResNet50(400, t).train()
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    other = [p for n, p in model.named_parameters() if p.ndim <= 1]
    optimizer = torch.optim.SGD([dict(params=decay, weight_decay=1e-4), dict(params=other, weight_decay=0.0)],
                                lr=0.01, momentum=0.9)
    x = torch.randint(0, 256, (args.batch_size * t, 3, args.image_size, args.image_size)).float()
    x = (x - 114.0) / 57.0
    y = torch.randint(0, 400, (args.batch_size,))

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 20.0)
        optimizer.step()
        return loss.item()

    result = _timed_steps(step, args)
    result["version"] = torch.__version__
    return result


def run_paddle(args):
    import numpy as np
    import paddle

    sys.path.insert(0, os.path.join(REPO, "tests", "convert"))
    from paddle_reference import load_resnet_tsm_module

    paddle.set_device("cpu")
    paddle.seed(0)
    t = 8
    module = load_resnet_tsm_module()
    backbone = module.ResNetTSM(depth=50, num_seg=t)
    if hasattr(backbone, "init_weights"):
        backbone.init_weights()
    from paddle.regularizer import L2Decay

    fc = paddle.nn.Linear(2048, 400, weight_attr=paddle.ParamAttr(learning_rate=5.0, regularizer=L2Decay(1e-4)),
                          bias_attr=paddle.ParamAttr(learning_rate=10.0, regularizer=L2Decay(0.0)))
    dropout = paddle.nn.Dropout(0.5)
    pool = paddle.nn.AdaptiveAvgPool2D(1)
    params = backbone.parameters() + fc.parameters()
    optimizer = paddle.optimizer.Momentum(learning_rate=0.01, momentum=0.9, parameters=params,
                                          weight_decay=L2Decay(1e-4),
                                          grad_clip=paddle.nn.ClipGradByGlobalNorm(20.0))
    rng = np.random.default_rng(0)
    x = paddle.to_tensor(((rng.integers(0, 256, (args.batch_size * t, 3, args.image_size, args.image_size))
                           - 114.0) / 57.0).astype(np.float32))
    y = paddle.to_tensor(rng.integers(0, 400, (args.batch_size,)).astype(np.int64))
    backbone.train()

    def step():
        feature = backbone(x)
        score = fc(dropout(paddle.reshape(pool(feature), [-1, 2048])))
        score = paddle.mean(paddle.reshape(score, [-1, t, 400]), axis=1)
        loss = paddle.nn.functional.cross_entropy(score, y)
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
        return loss.item()

    result = _timed_steps(step, args)
    result["version"] = paddle.__version__
    return result


# ----------------------------------------------------------------------------------------- parent
def _child(name, args):
    command = [sys.executable, os.path.abspath(__file__), f"--child={name}", f"--steps={args.steps}",
               f"--warmup={args.warmup}", f"--batch_size={args.batch_size}", f"--image_size={args.image_size}"]
    return run_json_child(command)


def _versions():
    import importlib.metadata as md

    out = {}
    for package in ("tensorflow", "keras", "torch", "paddlepaddle", "ppvideo", "numpy"):
        try:
            out[package] = md.version(package)
        except md.PackageNotFoundError:
            out[package] = None
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", default="")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--only", default="keras_float32,keras_mixed_bfloat16,torch_float32,paddlevideo_float32")
    args = parser.parse_args()
    if args.child:
        runners = dict(keras_float32=lambda: run_keras(args, "float32"),
                       keras_float32_native_conv_gradients=lambda: run_keras(args, "float32", "native"),
                       keras_float32_gemm_conv_gradients=lambda: run_keras(args, "float32", "gemm"),
                       keras_mixed_bfloat16=lambda: run_keras(args, "mixed_bfloat16"),
                       torch_float32=lambda: run_torch(args), paddlevideo_float32=lambda: run_paddle(args))
        print(json.dumps(runners[args.child]()))
        return
    # tsm_keras (it loads TensorFlow, after turning oneDNN on) only here in the parent: the torch and
    # paddle children must not load TensorFlow (paddle after TensorFlow segfaults).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, REPO)
    from tsm_keras import runtime

    names = args.only.split(",")
    runs = {name: [] for name in names}
    load_before = os.getloadavg()
    for _ in range(args.repeats):
        for name in names:
            runs[name].append(_child(name, args))
            print(json.dumps({name: runs[name][-1], "load_average": os.getloadavg()}), file=sys.stderr, flush=True)
    medians = {name: statistics.median([r["clips_per_sec"] for r in results if "clips_per_sec" in r])
               for name, results in runs.items() if any("clips_per_sec" in r for r in results)}
    ratios = {}
    for ours in ("keras_float32", "keras_mixed_bfloat16"):
        for peer in ("torch_float32", "paddlevideo_float32", "keras_float32_native_conv_gradients",
                     "keras_float32_gemm_conv_gradients"):
            if ours in medians and peer in medians:
                ratios[f"{ours}/{peer}"] = round(medians[ours] / medians[peer], 3)
    print(json.dumps(dict(
        benchmark="train_speed", model="ResNet-50 TSM, 8 segments", batch_size=args.batch_size,
        image_size=args.image_size, steps=args.steps, warmup=args.warmup, repeats=args.repeats,
        machine=dict(runtime.machine_info(), load_average_before=load_before, load_average_after=os.getloadavg()),
        versions=_versions(), clips_per_sec_median={k: round(v, 3) for k, v in medians.items()},
        ratios=ratios, runs=runs), indent=2))


if __name__ == "__main__":
    main()
