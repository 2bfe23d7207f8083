"""PaddleVideo's own ppTSM_mv2 (`backbones/pptsm_mv2.py`), loaded from the installed `ppvideo` files.

Run as a script in a subprocess (`python pptsm_mv2_reference.py OUT_DIR NUM_SEG CLASSES SIZE`), as
`paddle_reference.py` is (importing paddle after TensorFlow segfaults). It builds
`pptsm_mv2.MobileNet(class_num=CLASSES, scale=1.0, num_seg=NUM_SEG)` — `PPTSM_MobileNetV2`, whose forward ends
in its own pooling, mean over time and `out` Linear (ppTSM_mv2's head, MoViNetHead, is the identity) —
randomizes its weights and BatchNorm statistics, and writes

- `structured.pdparams`: `paddle.save(model.state_dict())` of PaddleVideo's Recognizer2D (`backbone.conv1._conv.weight`,
  `backbone.conv3._first_block._expand_conv._batch_norm._mean`, `backbone.conv3.conv3_2...`, `backbone.out.weight`);
- `parameter_names.pdparams`: the same arrays under their Paddle parameter names (`conv1_1_weights`,
  `conv3_2_dwise_bn_scale`, `conv9_bn_variance`, `fc10_weights`, `fc10_offset`);
- `reference.npz`: a random clip `[1, T, 3, H, W]`, the model's logits for it in eval mode, and its trainable
  parameter count.
"""

import os
import sys

import numpy as np

from paddle_reference import load_ppvideo_modules, randomize


def write_reference(out_dir, num_seg, classes, size):
    import paddle

    (pptsm_mv2,) = load_ppvideo_modules("backbones/pptsm_mv2.py")
    paddle.seed(0)
    model = pptsm_mv2.PPTSM_MobileNetV2(class_num=classes, num_seg=num_seg)
    randomize(model, seed=1)
    clip = np.random.default_rng(3).normal(size=(1, num_seg, 3, size, size)).astype(np.float32)
    model.eval()
    with paddle.no_grad():  # Recognizer2D.forward_net: frames folded into the batch, the head an identity
        logits = model(paddle.to_tensor(clip.reshape((-1,) + clip.shape[2:]))).numpy()
    count = sum(int(np.prod(p.shape)) for p in model.parameters() if not p.stop_gradient)
    np.savez(os.path.join(out_dir, "reference.npz"), clip=clip, logits=logits, parameters=count)

    paddle.save({f"backbone.{k}": v for k, v in model.state_dict().items()},
                os.path.join(out_dir, "structured.pdparams"))
    # Parameter names; the moving statistics as ConvBNLayer names them (name + "_bn_mean" / "_bn_variance").
    bn_names = {key[:-len(".weight")]: value.name[:-len("scale")]
                for key, value in model.state_dict().items() if key.endswith("_batch_norm.weight")}
    params = {}
    for key, value in model.state_dict().items():
        layer, field = key.rsplit(".", 1)
        name = f"{bn_names[layer]}{field[1:]}" if field in ("_mean", "_variance") else value.name
        params[name] = value.numpy()
    paddle.save(params, os.path.join(out_dir, "parameter_names.pdparams"))


if __name__ == "__main__":
    write_reference(sys.argv[1], *(int(a) for a in sys.argv[2:5]))
