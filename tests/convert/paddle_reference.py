"""PaddleVideo's own ResNetTSM, loaded from the installed `ppvideo` files, as the parity reference.

Run as a script in a subprocess (`python paddle_reference.py OUT_DIR NUM_SEG CLASSES SIZE`):
importing paddle after TensorFlow segfaults, and the test process has TensorFlow loaded.
It writes a randomized ResNetTSM(50) + Linear head as .pdparams in each key style, and
`reference.npz` with a random clip `[1, T, 3, H, W]` and PaddleVideo's logits for it.

`ppvideo` cannot be imported as a package on paddle 3.x (it imports paddle.fluid), so
`resnet_tsm.py` is loaded by path with its relative imports stubbed (`load_ppvideo_modules`: the
BACKBONES registry decorator, weight_init, load_ckpt: none is used by the forward pass) and
`paddle.device.is_compiled_with_npu` (removed in paddle 3.x) reading False. `pptsm_reference.py`
loads PP-TSM's files the same way.
"""

import importlib.util
import os
import sys
import types

import numpy as np


def load_ppvideo_modules(*relative_paths):
    """Load `ppvideo/paddlevideo/modeling/<relative path>` files by path, in order (a file may import an
    earlier one relatively, e.g. heads/pptsm_head.py -> heads/tsn_head.py -> heads/base.py); returns them.

    Their other imports are stubbed: the BACKBONES/HEADS registry decorators, weight_init, load_ckpt,
    build_loss and paddlevideo.utils' logger (none is used by the forward pass).
    """
    import paddle

    spec = importlib.util.find_spec("ppvideo")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("ppvideo is not installed (pip install --no-deps ppvideo==2.3.1)")
    modeling = os.path.join(list(spec.submodule_search_locations)[0], "paddlevideo", "modeling")
    if not hasattr(paddle.device, "is_compiled_with_npu"):
        paddle.device.is_compiled_with_npu = lambda: False

    root = "_ppvideo_stub"
    registry = types.ModuleType(f"{root}.modeling.registry")
    registry.BACKBONES = registry.HEADS = types.SimpleNamespace(register=lambda *a, **k: (lambda cls: cls))
    weight_init = types.ModuleType(f"{root}.modeling.weight_init")
    weight_init.weight_init_ = lambda *a, **k: None
    builder = types.ModuleType(f"{root}.modeling.builder")
    builder.build_loss = lambda *a, **k: None
    utils = types.ModuleType(f"{root}.utils")
    utils.load_ckpt = lambda *a, **k: None
    save_load = types.ModuleType(f"{root}.utils.save_load")  # resnet_tweaks_tsm.py imports load_ckpt from here
    save_load.load_ckpt = utils.load_ckpt
    # heads/base.py imports `paddlevideo.utils` absolutely.
    absolute_utils = types.ModuleType("paddlevideo.utils")
    absolute_utils.get_logger = lambda *a, **k: types.SimpleNamespace(info=print, warning=print)
    absolute_utils.get_dist_info = lambda: (0, 1)
    packages = [root, f"{root}.modeling", f"{root}.modeling.backbones", f"{root}.modeling.heads", "paddlevideo"]
    for module in (registry, weight_init, builder, utils, save_load, absolute_utils):
        sys.modules[module.__name__] = module
    for name in packages:
        module = sys.modules.setdefault(name, types.ModuleType(name))
        module.__path__ = []
    utils.__path__ = []
    loaded = []
    for relative in relative_paths:
        name = f"{root}.modeling." + relative[:-len(".py")].replace("/", ".")
        module_spec = importlib.util.spec_from_file_location(name, os.path.join(modeling, relative))
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
        loaded.append(module)
    return loaded


def load_resnet_tsm_module():
    return load_ppvideo_modules("backbones/resnet_tsm.py")[0]


def randomize(layer, seed):
    """Random weights AND BatchNorm statistics (the default ones would hide a mean/variance mix-up)."""
    import paddle

    rng = np.random.default_rng(seed)
    for name, value in layer.state_dict().items():
        shape = tuple(value.shape)
        if name.endswith("_variance"):
            array = rng.uniform(0.5, 2.0, shape)
        elif name.endswith("_mean"):
            array = rng.normal(0.0, 0.2, shape)
        elif len(shape) == 4:  # conv OIHW: scale like He init so activations stay O(1)
            array = rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[1:])), shape)
        elif name.endswith("_batch_norm.weight"):
            array = rng.uniform(0.5, 1.5, shape)
        else:
            array = rng.normal(0.0, 0.1, shape)
        value.set_value(paddle.to_tensor(array.astype(np.float32)))


def paddle_tsm_logits(backbone, fc, clip, num_seg):
    """PaddleVideo's recognizer2d + TSMHead at inference: [N, T, C, H, W] -> ([N, classes] logits,
    [N * T, 2048] pooled backbone features).

    avgpool -> dropout (identity in eval) -> fc -> reshape [-1, T, classes] -> mean over T.
    """
    import paddle

    backbone.eval()
    fc.eval()
    with paddle.no_grad():
        x = paddle.to_tensor(clip.reshape((-1,) + clip.shape[2:]))
        features = backbone(x)
        pooled = paddle.nn.functional.adaptive_avg_pool2d(features, 1)
        pooled = paddle.reshape(pooled, pooled.shape[:2])
        score = fc(pooled)
        score = paddle.reshape(score, [-1, num_seg, score.shape[1]])
        return paddle.mean(score, axis=1).numpy(), pooled.numpy()


def write_reference(out_dir, num_seg, classes, size):
    import paddle

    resnet_tsm = load_resnet_tsm_module()
    paddle.seed(0)
    backbone = resnet_tsm.ResNetTSM(depth=50, num_seg=num_seg)
    # TSMHead names its fc parameters fc_0.w_0 / fc_0.b_0 (weight_init_); do the same.
    fc = paddle.nn.Linear(2048, classes, weight_attr=paddle.ParamAttr(name="fc_0.w_0"),
                          bias_attr=paddle.ParamAttr(name="fc_0.b_0"))
    randomize(backbone, seed=1)
    randomize(fc, seed=2)
    clip = np.random.default_rng(3).normal(size=(1, num_seg, 3, size, size)).astype(np.float32)
    logits, features = paddle_tsm_logits(backbone, fc, clip, num_seg)
    np.savez(os.path.join(out_dir, "reference.npz"), clip=clip, logits=logits, features=features)

    # What PaddleVideo's trainer writes: paddle.save(model.state_dict()) of the recognizer.
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    state.update({f"head.fc.{k}": v for k, v in fc.state_dict().items()})
    paddle.save(state, os.path.join(out_dir, "structured.pdparams"))
    # The same names without the recognizer's prefixes.
    state = dict(backbone.state_dict())
    state.update({f"fc.{k}": v for k, v in fc.state_dict().items()})
    paddle.save(state, os.path.join(out_dir, "structured_no_prefix.pdparams"))
    # Parameter names (PaddleClas-era files): conv1_weights, bn_conv1_scale ..., fc_0.w_0. Their moving
    # statistics carry the BN's name + _mean/_variance (paddle 2+ would auto-name them batch_norm2d_N.w_1).
    bn_names = {key[:-len(".weight")]: value.name[:-len("_scale")]
                for key, value in backbone.state_dict().items() if key.endswith("_batch_norm.weight")}
    params = {}
    for key, value in backbone.state_dict().items():
        layer, field = key.rsplit(".", 1)
        name = f"{bn_names[layer]}{field}" if field in ("_mean", "_variance") else value.name
        params[name] = value.numpy()
    params.update({p.name: p.numpy() for p in fc.parameters()})
    paddle.save(params, os.path.join(out_dir, "parameter_names.pdparams"))
    # Backbone only (an ImageNet-pretraining-style file).
    paddle.save(dict(backbone.state_dict()), os.path.join(out_dir, "backbone_only.pdparams"))


if __name__ == "__main__":
    write_reference(sys.argv[1], *(int(a) for a in sys.argv[2:5]))
