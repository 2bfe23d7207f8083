"""Small Keras layers of the TSM model: the temporal shift, and the reshapes around it.

All layers use `keras.ops` only, are registered serializable, and respect the
dtype policy (`self.compute_dtype`) so they work under mixed precision.
"""

import numpy as np
import keras
from keras import ops

# ImageNet statistics on the 0-255 scale: the one source of truth for normalization.
IMAGENET_MEAN = (0.485 * 255.0, 0.456 * 255.0, 0.406 * 255.0)
IMAGENET_STD = (0.229 * 255.0, 0.224 * 255.0, 0.225 * 255.0)

_PACKAGE = "tsm_keras"


def shift_folds(channels, num_segments, shift_div=8, convention="tsm", shift_ratio=None):
    """Channel boundaries `(c1, c2)` of the two shifted groups.

    `tsm` (official code): fold = channels // shift_div, groups [0, fold) and [fold, 2*fold).
    `paddle` (PaddleVideo `F.temporal_shift`): c1 = int(C*r), c2 = int(2*C*r) computed in float32
    as Paddle's kernel does, r = shift_ratio or 1/num_segments.
    """
    if convention == "tsm":
        fold = channels // shift_div
        return fold, 2 * fold
    ratio = np.float32(1.0 / num_segments if shift_ratio is None else shift_ratio)
    c1 = int(np.float32(channels) * ratio)
    c2 = int(np.float32(2 * channels) * ratio)
    return c1, c2


def shift_kernel(channels, c1, c2, first_offset, second_offset):
    """Depthwise kernel `[3, 1, channels, 1]` that moves channel groups along time.

    Tap 0 reads frame t-1, tap 1 frame t, tap 2 frame t+1; each channel has exactly one tap
    set to 1, so the convolution copies values exactly (x*1 + 0*y + 0*z == x).
    """
    taps = np.zeros((3, 1, channels, 1), np.float32)
    taps[1, 0, :, 0] = 1.0
    for lo, hi, offset in ((0, c1, first_offset), (c1, c2, second_offset)):
        if offset is not None and hi > lo:
            taps[1, 0, lo:hi, 0] = 0.0
            taps[1 + offset, 0, lo:hi, 0] = 1.0
    return taps


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TemporalShift(keras.layers.Layer):
    """Temporal Shift Module (Lin, Gan & Han, ICCV 2019): zero-parameter, zero-FLOP time mixing.

    Input and output: `[batch * num_segments, height, width, channels]` with the frames of
    one clip consecutive (the layout a per-frame 2D backbone sees).

    Args:
        num_segments: frames per clip, T.
        shift_div: with `convention="tsm"`, 1/shift_div of the channels moves each way.
        direction: `"bidirectional"` (offline TSM) or `"unidirectional"` (online TSM: channels
            [0, c1) take frame t-1; nothing comes from the future).
        convention: `"tsm"` (official PyTorch code: channels [0, C//div) at time t take frame t+1,
            [C//div, 2*C//div) take t-1) or `"paddle"` (PaddleVideo: [0, int(C*r)) take t-1,
            [int(C*r), int(2*C*r)) take t+1, r = shift_ratio or 1/num_segments).
        shift_ratio: only for `convention="paddle"`; defaults to 1/num_segments.

    Implementation: one 3x1 depthwise convolution over `[N, T, H*W, C]` whose taps are 0/1, so
    values are copied exactly; it reads and writes the activation once (slice+pad+concat takes
    several passes) and exports to ONNX/TFLite as a standard op. The gradient is
    the reverse shift (the kernel flipped in time), given as a custom gradient so no scatter or
    filter gradient is ever computed.
    """

    def __init__(self, num_segments, shift_div=8, direction="bidirectional", convention="tsm",
                 shift_ratio=None, **kwargs):
        super().__init__(**kwargs)
        if int(num_segments) < 1:
            raise ValueError(f"TemporalShift: num_segments must be >= 1, got {num_segments}.")
        if direction not in ("bidirectional", "unidirectional"):
            raise ValueError(f"TemporalShift: direction must be 'bidirectional' or 'unidirectional', "
                             f"got {direction!r}.")
        if convention not in ("tsm", "paddle"):
            raise ValueError(f"TemporalShift: convention must be 'tsm' or 'paddle', got {convention!r}.")
        if int(shift_div) < 1:
            raise ValueError(f"TemporalShift: shift_div must be >= 1, got {shift_div}.")
        self.num_segments = int(num_segments)
        self.shift_div = int(shift_div)
        self.direction = direction
        self.convention = convention
        self.shift_ratio = None if shift_ratio is None else float(shift_ratio)
        self.supports_masking = False

    def _offsets(self):
        """(offset of group [0,c1), offset of group [c1,c2)); None means the group is not shifted."""
        if self.direction == "unidirectional":
            return -1, None
        if self.convention == "tsm":
            return +1, -1
        return -1, +1

    def call(self, inputs):
        channels = inputs.shape[-1]
        if channels is None:
            raise ValueError("TemporalShift needs a known channel count.")
        c1, c2 = shift_folds(channels, self.num_segments, self.shift_div, self.convention,
                             self.shift_ratio)
        first, second = self._offsets()
        if second is None:
            c2 = c1
        if c1 == 0 and c2 == 0:
            return inputs
        forward = ops.convert_to_tensor(shift_kernel(channels, c1, c2, first, second), self.compute_dtype)
        # The gradient of a shift is the reverse shift: the same kernel flipped in time.
        backward = ops.convert_to_tensor(shift_kernel(channels, c1, c2, first, second)[::-1].copy(),
                                         self.compute_dtype)
        shape = ops.shape(inputs)
        t = self.num_segments

        def shift_with(x, kernel):
            # [N*T, H, W, C] -> [N, T, H*W, C]: a 3x1 depthwise conv over (T, H*W) shifts in time.
            clips = ops.reshape(x, (-1, t, shape[1] * shape[2], channels))
            moved = ops.depthwise_conv(clips, kernel, strides=1, padding="same")
            return ops.reshape(moved, shape)

        @ops.custom_gradient
        def shift(x):
            def grad(*args, upstream=None):
                if upstream is None:
                    (upstream,) = args
                return shift_with(upstream, backward)

            return shift_with(x, forward), grad

        return shift(inputs)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(num_segments=self.num_segments, shift_div=self.shift_div,
                      direction=self.direction, convention=self.convention,
                      shift_ratio=self.shift_ratio)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FrameNormalization(keras.layers.Layer):
    """`(frames - mean) / std` per channel, for raw 0-255 frames (uint8 or float).

    Computes in float32 whatever the policy (0-255 values lose precision in bfloat16) and
    returns the compute dtype. `channel_order="bgr"` reverses RGB input first (Caffe-style
    weights, e.g. keras.applications' ResNet50).
    """

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD, channel_order="rgb", **kwargs):
        super().__init__(**kwargs)
        if channel_order not in ("rgb", "bgr"):
            raise ValueError(f"FrameNormalization: channel_order must be 'rgb' or 'bgr', got {channel_order!r}.")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.channel_order = channel_order

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        if self.channel_order == "bgr":
            x = ops.flip(x, axis=-1)
        x = (x - ops.convert_to_tensor(self.mean, "float32")) / ops.convert_to_tensor(self.std, "float32")
        return ops.cast(x, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(mean=list(self.mean), std=list(self.std), channel_order=self.channel_order)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FoldTime(keras.layers.Layer):
    """`[batch, time, height, width, channels]` -> `[batch * time, height, width, channels]`."""

    def call(self, inputs):
        shape = ops.shape(inputs)
        return ops.reshape(inputs, (-1, shape[2], shape[3], shape[4]))

    def compute_output_shape(self, input_shape):
        batch, time = input_shape[0], input_shape[1]
        folded = None if batch is None or time is None else batch * time
        return (folded,) + tuple(input_shape[2:])


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SegmentConsensus(keras.layers.Layer):
    """Average per-frame scores over the clip: `[batch * T, classes]` -> `[batch, classes]`.

    Runs in float32 by default, so logits are float32 under any mixed-precision policy.
    """

    def __init__(self, num_segments, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.num_segments = int(num_segments)

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        x = ops.reshape(x, (-1, self.num_segments, x.shape[-1]))
        return ops.mean(x, axis=1)

    def compute_output_shape(self, input_shape):
        batch = input_shape[0]
        return (None if batch is None else batch // self.num_segments, input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update(num_segments=self.num_segments)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` computed by TensorFlow's fused kernel (oneDNN on CPU).

    Keras 3 normalizes with separate ops (cast to float32, two-pass moments, multiply, add, cast
    back) and differentiates through all of them; `FusedBatchNormV3` does the forward and the
    backward in one kernel each and reads bfloat16/float16 activations directly (statistics stay
    float32); the README's benchmarks give what it saves. Same variables, same semantics: the moving
    variance is updated with the *biased* batch variance, as Keras and Paddle do (the fused op
    returns the unbiased one, which is rescaled). Other backends, masks, renorm or a channel axis
    other than the last of a 4-D input fall back to the Keras implementation, and so does
    `synchronized=True` (`synchronize_batchnorm`: statistics over every replica's batch).
    """

    def _fusable(self, inputs, mask):
        # synchronized=True (--sync_bn): Keras' implementation all-reduces the moments across replicas.
        axis = self.axis if isinstance(self.axis, int) else (self.axis[0] if len(self.axis) == 1 else None)
        return (keras.backend.backend() == "tensorflow" and mask is None and not self.renorm
                and not self.synchronized
                and len(inputs.shape) == 4 and axis in (-1, 3) and self.scale and self.center)

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        gamma = tf.cast(self.gamma.value, tf.float32)
        beta = tf.cast(self.beta.value, tf.float32)
        if training and self.trainable:
            outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                inputs, gamma, beta, epsilon=self.epsilon, data_format="NHWC", is_training=True)[:3]
            count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:-1]), tf.float32)  # values per channel
            variance = variance * tf.maximum(count - 1.0, 1.0) / tf.maximum(count, 1.0)
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
            return outputs
        return tf.compat.v1.nn.fused_batch_norm(
            inputs, gamma, beta, mean=tf.cast(self.moving_mean.value, tf.float32),
            variance=tf.cast(self.moving_variance.value, tf.float32), epsilon=self.epsilon, data_format="NHWC",
            is_training=False)[0]


def _conv2d_with_gemm_gradients(inputs, kernel):
    """`tf.nn.conv2d(inputs, kernel, 1, "SAME")` (odd kernel) whose gradients are a conv and a GEMM.

    Input gradient: the stride-1 "same" conv of the output gradient with the kernel flipped in space and
    its channel axes swapped (the transpose of a stride-1 conv is that conv). Filter gradient: the kh*kw
    shifted windows of the zero-padded input side by side (im2col, `[N*H*W, kh*kw*C_in]`) times the
    output gradient (`[N*H*W, C_out]`): one matrix product, where oneDNN's `Conv2DBackpropFilter` on an
    AVX2 CPU is pathologically slow when H*W is small (README, "Conv gradients").
    """
    import tensorflow as tf

    @tf.custom_gradient
    def conv(x, w):
        def grad(dy):
            kh, kw, cin, cout = w.shape
            dx = tf.nn.conv2d(dy, tf.transpose(tf.reverse(w, [0, 1]), [0, 1, 3, 2]), 1, "SAME")
            height, width = tf.shape(x)[1], tf.shape(x)[2]
            padded = tf.pad(x, [[0, 0], [kh // 2, kh // 2], [kw // 2, kw // 2], [0, 0]])
            windows = [padded[:, i:i + height, j:j + width, :] for i in range(kh) for j in range(kw)]
            patches = tf.reshape(windows[0] if len(windows) == 1 else tf.concat(windows, -1), [-1, kh * kw * cin])
            dw = tf.matmul(patches, tf.reshape(dy, [-1, cout]), transpose_a=True)
            return dx, tf.reshape(dw, [kh, kw, cin, cout])

        return tf.nn.conv2d(x, w, 1, "SAME"), grad

    # Tensors, not variables: the variable read stays outside, and its gradient flows through it.
    return conv(tf.convert_to_tensor(inputs), tf.convert_to_tensor(kernel))


# Up to 7x7 output positions: where the GEMM gradients were measured faster (README, "Conv gradients"); at
# ResNet-50's 224-px sizes (56x56 to 7x7) the whole training step was the same either way.
GEMM_GRADIENTS_MAX_POSITIONS = 49


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Conv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` (same variables, config and outputs) that, while training, differentiates its
    stride-1 "same" convs with odd kernels larger than 1x1, on inputs of at most 7x7 positions
    (`GEMM_GRADIENTS_MAX_POSITIONS`), by a conv and a GEMM
    (`_conv2d_with_gemm_gradients`) where `tsm_keras.runtime.conv_gradients()` says "gemm" (AVX2-only CPUs;
    `TSM_KERAS_CONV_GRADIENTS=native|gemm` overrides). Inference (`training` false: evaluation, export,
    serving) always runs Keras' own call, so exported graphs are unchanged.
    """

    def _gemm_gradients(self, inputs):
        kernel = tuple(self.kernel_size)
        return (keras.backend.backend() == "tensorflow" and self.rank == 2 and self.groups == 1
                and tuple(self.strides) == (1, 1) and tuple(self.dilation_rate) == (1, 1)
                and self.padding == "same" and self.data_format == "channels_last"
                and kernel[0] % 2 == 1 and kernel[1] % 2 == 1 and kernel != (1, 1) and len(inputs.shape) == 4
                and inputs.shape[1] is not None and inputs.shape[2] is not None
                and inputs.shape[1] * inputs.shape[2] <= GEMM_GRADIENTS_MAX_POSITIONS)

    def call(self, inputs, training=None):
        if not (training and self._gemm_gradients(inputs)):
            return super().call(inputs)
        from tsm_keras.runtime import conv_gradients

        if conv_gradients()[0] != "gemm":
            return super().call(inputs)
        outputs = _conv2d_with_gemm_gradients(inputs, self.kernel.value)
        if self.use_bias:
            outputs = ops.add(outputs, ops.reshape(self.bias, (1, 1, 1, self.filters)))
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs


@keras.saving.register_keras_serializable(package=_PACKAGE)
class NegativeInfinityPadding2D(keras.layers.Layer):
    """Pad height and width of `[batch, height, width, channels]` by `padding` on each side with -inf.

    For a max pool that must ignore its padding, as Paddle's and PyTorch's do, when the input can be
    negative (after a LeakyReLU): zero padding would win the max there. Keras' `padding="same"` pads
    (0, 1) on even sizes at stride 2, the references (1, 1), so the window positions would differ.
    """

    def __init__(self, padding=1, **kwargs):
        super().__init__(**kwargs)
        if int(padding) < 0:
            raise ValueError(f"NegativeInfinityPadding2D: padding must be >= 0, got {padding}.")
        self.padding = int(padding)

    def call(self, inputs):
        p = self.padding
        return ops.pad(inputs, ((0, 0), (p, p), (p, p), (0, 0)), constant_values=float("-inf"))

    def compute_output_shape(self, input_shape):
        grow = lambda size: None if size is None else size + 2 * self.padding  # noqa: E731
        return (input_shape[0], grow(input_shape[1]), grow(input_shape[2]), input_shape[3])

    def get_config(self):
        config = super().get_config()
        config.update(padding=self.padding)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class UnfusedLeakyReLU(keras.layers.Layer):
    """LeakyReLU computed as `max(x, negative_slope * x)`: the same values for 0 <= slope <= 1, other ops.

    Why: TensorFlow's CPU graph optimizer (grappler's remapper, TF 2.21) fuses Conv2D + BiasAdd + Add +
    LeakyRelu, the end of a residual block once BatchNorm is folded into the convs, into one kernel that
    ignores `alpha` and uses its default 0.2: inside a `tf.function` (export, predict, eval) the logits
    are wrong, eagerly right. A Maximum is not part of that pattern.
    """

    def __init__(self, negative_slope=0.01, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= float(negative_slope) <= 1.0:
            raise ValueError(f"UnfusedLeakyReLU: negative_slope must be in [0, 1], got {negative_slope}.")
        self.negative_slope = float(negative_slope)

    def call(self, inputs):
        return ops.maximum(inputs, inputs * ops.cast(self.negative_slope, inputs.dtype))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(negative_slope=self.negative_slope)
        return config


def synchronize_batchnorm(model, synchronized=True):
    """Make every BatchNormalization layer of `model` compute its training statistics over the global batch
    (all replicas and workers of the current `tf.distribute` strategy), as `synchronized=True` layers do;
    returns how many. Inference and the variables are unchanged, so weights load either way."""
    count = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = bool(synchronized)
            count += 1
    return count
