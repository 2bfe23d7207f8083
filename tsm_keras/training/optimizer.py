"""PaddleVideo's TSM optimizer, exactly: clip -> L2 -> momentum with per-variable lr.

Per step, with `g` the gradient of the mean loss over the *global* batch:

1. `g *= clip_norm / max(global_norm(g), clip_norm)` over all raw gradients (Paddle's
   `ClipGradByGlobalNorm`; applied after the cross-replica sum, so every strategy clips the same
   gradient a single device would).
2. `g += wd * w` (Paddle's `L2Decay(wd)`, not Keras' `L2(l)` = `2*l*w`) for conv kernels
   (`weight_decay`, the optimizer-level decay in the yaml) and the FC kernel (`fc_weight_decay`,
   the `ParamAttr` of PaddleVideo's TSMHead); BatchNorm parameters and the FC bias get none.
3. `v = momentum * v + g; w -= lr * lr_mult * v` (Paddle's Momentum keeps lr outside the
   velocity; Keras' SGD puts it inside, which differs after every lr drop). `lr_mult` is 5 for the
   FC kernel and 10 for the FC bias (TSMHead's `ParamAttr(learning_rate=...)`), 1 elsewhere.

With `dynamic_loss_scale=True` (mixed_float16) the gradients arrive multiplied by `loss_scale`;
they are unscaled after the all-reduce, and a step whose gradients are not finite changes no
weight or velocity and halves the scale (doubled after 2000 good steps), as Keras/Paddle AMP do.
"""

import keras
import tensorflow as tf
from keras.src import backend

FC_LAYER = "fc"
FC_KERNEL_LR_MULT = 5.0
FC_BIAS_LR_MULT = 10.0


def paddle_recipe_rules(model, weight_decay, fc_weight_decay, fc_layer=FC_LAYER, fc_lr_mult=FC_KERNEL_LR_MULT,
                        fc_bias_lr_mult=FC_BIAS_LR_MULT):
    """`(decay, lr_mult)`: dicts variable path -> L2 coefficient / lr multiplier, from layer types.

    Conv kernels (every `Conv2D`, depthwise included) decay by `weight_decay`; the kernel of the
    Dense layer named `fc_layer` by `fc_weight_decay`, with lr x5 and its bias lr x10.
    """
    decay, lr_mult = {}, {}
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.Conv2D | keras.layers.DepthwiseConv2D) and weight_decay:
            kernel = getattr(layer, "kernel", None)
            if kernel is not None and kernel.trainable:
                decay[kernel.path] = float(weight_decay)
        elif isinstance(layer, keras.layers.Dense) and layer.name == fc_layer:
            if fc_weight_decay:
                decay[layer.kernel.path] = float(fc_weight_decay)
            lr_mult[layer.kernel.path] = float(fc_lr_mult)
            if layer.bias is not None:
                lr_mult[layer.bias.path] = float(fc_bias_lr_mult)
    return decay, lr_mult


def _all_layers(model):
    stack = list(model.layers)
    while stack:
        layer = stack.pop(0)
        yield layer
        stack.extend(getattr(layer, "layers", []) if isinstance(layer, keras.Model) else [])


@keras.saving.register_keras_serializable(package="tsm_keras")
class PaddleMomentum(keras.optimizers.Optimizer):
    """Momentum SGD with Paddle's semantics; see the module docstring for the exact update.

    Args:
        learning_rate: float or schedule of the optimizer step.
        momentum: velocity decay (0.9).
        clip_norm: global-norm clip of the summed raw gradients (0 = none).
        decay: dict variable path -> L2 coefficient (`g + c * w`); missing = 0.
        lr_mult: dict variable path -> lr multiplier; missing = 1.
        dynamic_loss_scale: expect loss-scaled gradients (mixed_float16).
    """

    def __init__(self, learning_rate=0.01, momentum=0.9, clip_norm=0.0, decay=None, lr_mult=None,
                 dynamic_loss_scale=False, initial_loss_scale=2.0 ** 15, loss_scale_period=2000,
                 name="paddle_momentum", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}.")
        self.momentum = float(momentum)
        self.clip_norm = float(clip_norm or 0.0)
        self.decay = dict(decay or {})
        self.lr_mult = dict(lr_mult or {})
        self.dynamic_loss_scale = bool(dynamic_loss_scale)
        self.initial_loss_scale = float(initial_loss_scale)
        self.loss_scale_period = int(loss_scale_period)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.velocities = [self.add_variable_from_reference(v, name="velocity") for v in variables]
        self._var_decay = [self.decay.get(v.path, 0.0) for v in variables]
        self._var_lr_mult = [self.lr_mult.get(v.path, 1.0) for v in variables]
        # [scale, finite steps since the last change] in one variable: one update per step.
        self.loss_scale_state = self.add_variable((2,), initializer=keras.initializers.Constant(
            [self.initial_loss_scale if self.dynamic_loss_scale else 1.0, 0.0]), dtype="float32",
            name="loss_scale_state")

    @property
    def loss_scale(self):
        return self.loss_scale_state.value[0]

    def scale_loss(self, loss):
        """The loss to differentiate: multiplied by the dynamic loss scale under mixed_float16."""
        if not self.dynamic_loss_scale:
            return loss
        return loss * tf.cast(self.loss_scale, loss.dtype)

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        trainable_variables = [v.value if isinstance(v, backend.Variable) else v for v in trainable_variables]
        reduced = self._all_reduce_sum_gradients(list(zip(grads, trainable_variables)))
        grads = [tf.cast(g, tf.float32) for g, _ in reduced]
        if self.dynamic_loss_scale:
            inverse = 1.0 / self.loss_scale
            grads = [g * inverse for g in grads]
        norm = tf.linalg.global_norm(grads)
        finite = tf.math.is_finite(norm)
        if self.clip_norm > 0:
            factor = self.clip_norm / tf.maximum(norm, self.clip_norm)
            grads = [g * factor for g in grads]
        tf.__internal__.distribute.interim.maybe_merge_call(
            self._paddle_update, self._distribution_strategy, grads, trainable_variables,
            learning_rate, finite)

    def _paddle_update(self, distribution, grads, variables, learning_rate, finite):
        for grad, var in zip(grads, variables):
            distribution.extended.update(var, self._update_variable, args=(grad, learning_rate, finite),
                                         group=False)
        if self.dynamic_loss_scale:
            distribution.extended.update(self.loss_scale_state.value, self._update_loss_scale, args=(finite,),
                                         group=False)

    def _update_variable(self, variable, gradient, learning_rate, finite):
        index = self._get_variable_index(variable)
        velocity = self.velocities[index]
        gradient = tf.cast(gradient, variable.dtype)
        if self._var_decay[index]:
            gradient = gradient + self._var_decay[index] * variable
        new_velocity = self.momentum * velocity + gradient
        lr = tf.cast(learning_rate, variable.dtype) * self._var_lr_mult[index]
        new_variable = variable - lr * new_velocity
        if self.dynamic_loss_scale:
            new_velocity = tf.where(finite, new_velocity, velocity)
            new_variable = tf.where(finite, new_variable, variable)
        velocity.assign(new_velocity)
        variable.assign(new_variable)

    def _update_loss_scale(self, state, finite):
        scale, good = state[0], state[1]
        good = tf.where(finite, good + 1.0, 0.0)
        grow = good >= self.loss_scale_period
        scale = tf.where(finite, tf.where(grow, scale * 2.0, scale), tf.maximum(scale * 0.5, 1.0))
        state.assign(tf.stack([scale, tf.where(grow, 0.0, good)]))

    def update_step(self, gradient, variable, learning_rate):
        # Only reached through paths that bypass `_backend_update_step` (none in this package).
        self._update_variable(variable, gradient, learning_rate, tf.constant(True))

    def get_config(self):
        config = super().get_config()
        config.update(momentum=self.momentum, clip_norm=self.clip_norm, decay=self.decay,
                      lr_mult=self.lr_mult, dynamic_loss_scale=self.dynamic_loss_scale,
                      initial_loss_scale=self.initial_loss_scale,
                      loss_scale_period=self.loss_scale_period)
        return config


def build_optimizer(config, model, schedule):
    """The recipe's optimizer for `model`: Paddle momentum, decay/lr-multiplier rules, clipping."""
    decay, lr_mult = paddle_recipe_rules(model, config.weight_decay,
                                         getattr(config, "fc_weight_decay", config.weight_decay),
                                         fc_lr_mult=getattr(config, "fc_lr_mult", FC_KERNEL_LR_MULT),
                                         fc_bias_lr_mult=getattr(config, "fc_bias_lr_mult", FC_BIAS_LR_MULT))
    return PaddleMomentum(learning_rate=schedule, momentum=config.momentum, clip_norm=config.clip_norm,
                          decay=decay, lr_mult=lr_mult,
                          dynamic_loss_scale=config.precision == "mixed_float16")
