"""Paddle's own Momentum + ClipGradByGlobalNorm + L2Decay/ParamAttr(learning_rate) on two parameters.

Run in a subprocess (importing paddle after TensorFlow segfaults): prints JSON {"w": [...], "b": [...]}.
usage: python paddle_momentum_reference.py GRADS_JSON
"""

import json
import sys

import numpy as np


def main():
    import paddle
    from paddle.regularizer import L2Decay

    grads = json.loads(sys.argv[1])
    paddle.disable_static()
    w = paddle.create_parameter([3], "float32", attr=paddle.ParamAttr(
        regularizer=L2Decay(0.1), initializer=paddle.nn.initializer.Assign(np.array([1.0, -2.0, 0.5], np.float32))))
    b = paddle.create_parameter([2], "float32", attr=paddle.ParamAttr(
        learning_rate=10.0, regularizer=L2Decay(0.0),
        initializer=paddle.nn.initializer.Assign(np.array([0.3, 0.0], np.float32))))
    scheduler = paddle.optimizer.lr.PiecewiseDecay(boundaries=[1], values=[0.1, 0.01])
    opt = paddle.optimizer.Momentum(learning_rate=scheduler, momentum=0.9, parameters=[w, b],
                                    grad_clip=paddle.nn.ClipGradByGlobalNorm(1.0))
    for step, (gw, gb) in enumerate(grads):
        loss = (w * paddle.to_tensor(np.array(gw, np.float32))).sum() + \
            (b * paddle.to_tensor(np.array(gb, np.float32))).sum()
        loss.backward()
        opt.step()
        opt.clear_grad()
        if step % 2 == 1:
            scheduler.step()  # PaddleVideo steps its epoch schedulers once per epoch (2 steps here)
    print(json.dumps({"w": w.numpy().tolist(), "b": b.numpy().tolist()}))


if __name__ == "__main__":
    main()
