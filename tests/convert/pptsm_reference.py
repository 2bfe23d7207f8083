"""PaddleVideo's own PP-TSM (ResNetTweaksTSM + ppTSMHead), loaded from the installed `ppvideo` files.

Run as a script in a subprocess (`python pptsm_reference.py OUT_DIR NUM_SEG CLASSES SIZE DEPTH`), as
`paddle_reference.py` is (importing paddle after TensorFlow segfaults). It builds
`resnet_tweaks_tsm.ResNetTweaksTSM(depth, num_seg)` and `pptsm_head.ppTSMHead`, randomizes their weights and
BatchNorm statistics, and writes

- `structured.pdparams`: what `paddle.save(model.state_dict())` of PaddleVideo's Recognizer2D writes (the
  key layout of `ppTSM_k400_uniform.pdparams`: `backbone.conv1_1._conv.weight`,
  `backbone.bb_0_0.conv0._batch_norm._mean`, ..., `head.fc.weight`);
- `parameter_names.pdparams`: the same arrays under their Paddle parameter names (`conv1_1_weights`,
  `bnv1_1_scale`, `res2a_branch2a_weights`, ..., `fc_0.w_0`);
- `reference.npz`: a random clip `[1, T, 3, H, W]`, the recognizer's logits for it (backbone, then
  `ppTSMHead.forward(feature, num_seg)` in eval mode), and the backbone's trainable parameter count.
"""

import os
import sys

import numpy as np

from paddle_reference import load_ppvideo_modules, randomize


def write_reference(out_dir, num_seg, classes, size, depth):
    import paddle

    tweaks, _, _, pptsm_head = load_ppvideo_modules("backbones/resnet_tweaks_tsm.py", "heads/base.py",
                                                     "heads/tsn_head.py", "heads/pptsm_head.py")
    paddle.seed(0)
    backbone = tweaks.ResNetTweaksTSM(depth=depth, num_seg=num_seg)
    head = pptsm_head.ppTSMHead(num_classes=classes, in_channels=2048, drop_ratio=0.5, num_seg=num_seg)
    randomize(backbone, seed=1)
    randomize(head, seed=2)
    clip = np.random.default_rng(3).normal(size=(1, num_seg, 3, size, size)).astype(np.float32)
    backbone.eval()
    head.eval()
    with paddle.no_grad():  # Recognizer2D.forward_net
        frames = paddle.to_tensor(clip.reshape((-1,) + clip.shape[2:]))
        logits = head(backbone(frames), num_seg).numpy()
    count = sum(int(np.prod(p.shape)) for p in backbone.parameters() if not p.stop_gradient)
    np.savez(os.path.join(out_dir, "reference.npz"), clip=clip, logits=logits, backbone_parameters=count)

    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    state.update({f"head.{k}": v for k, v in head.state_dict().items()})
    paddle.save(state, os.path.join(out_dir, "structured.pdparams"))
    # Parameter names; the moving statistics carry the BN's name + _mean/_variance, as in PaddleClas files.
    bn_names = {key[:-len(".weight")]: value.name[:-len("_scale")]
                for key, value in backbone.state_dict().items() if key.endswith("_batch_norm.weight")}
    params = {}
    for key, value in backbone.state_dict().items():
        layer, field = key.rsplit(".", 1)
        name = f"{bn_names[layer]}{field}" if field in ("_mean", "_variance") else value.name
        params[name] = value.numpy()
    params.update({"fc_0.w_0": head.fc.weight.numpy(), "fc_0.b_0": head.fc.bias.numpy()})
    paddle.save(params, os.path.join(out_dir, "parameter_names.pdparams"))


if __name__ == "__main__":
    write_reference(sys.argv[1], *(int(a) for a in sys.argv[2:6]))
