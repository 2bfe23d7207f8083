"""Online (streaming) TSM: a uni-directional TSM run one frame at a time, carrying its shifts' buffers.

A uni-directional shift moves channels [0, c1) from frame t-1 to frame t and takes nothing from the
future, so the clip model can run causally: at each shift point keep the c1 channels the next frame
needs (the *state*), and replace the current frame's first c1 channels by the previous frame's. At the
clip start the state is zeros, which is exactly the offline model's zero padding at t=0.

    stream = to_streaming(model)                  # model: any uni-directional TSM (ResNet, MobileNetV2, ...)
    states = stream.init_states(batch, image_size)
    for frame in frames:                          # [batch, H, W, 3], what the offline model takes per frame
        logits, states = stream({"frame": frame, **states})

`stream.step_function(batch, image_size)` is the same step in a `tf.function` traced once: call
`step(frame, states)` in the loop instead, several times faster per frame at batch 1.

`logits` are the per-frame scores (the classifier's output before the average over time): their mean
over a clip of T frames is the offline model's clip logits for T segments. The streaming model reuses
the offline model's layer objects, so the weights are shared, not copied: train the offline model,
stream it.

The conversion walks the offline model's functional graph and calls each layer again on the new
tensors, replacing three kinds of layer: `FoldTime` (one frame needs no folding), each `TemporalShift`
(by a `StreamingShift` with a state input and output) and `SegmentConsensus` (per-frame logits, cast
to float32). Anything else is backbone-agnostic, so any backbone whose shifts are `TemporalShift`
layers streams.
"""

import keras
import numpy as np
from keras import ops

from tsm_keras.errors import UsageError
from tsm_keras.layers import FoldTime, SegmentConsensus, TemporalShift, shift_folds

FRAME_INPUT = "frame"


def state_name(shift_layer_name):
    """`res3a_shift` -> `state_res3a_shift_buffer`: the state of one shift, named after its block."""
    return f"state_{shift_layer_name}_buffer"


def buffer_channels(shift, channels):
    """How many channels of the shift's input the next frame needs: c1 of `shift_folds`.

    With `convention="paddle"` the ratio defaults to 1/num_segments of the offline model, so a model
    trained on 8 segments streams with its 1/8 whatever the length of the stream."""
    c1, _ = shift_folds(channels, shift.num_segments, shift.shift_div, shift.convention, shift.shift_ratio)
    return min(int(c1), int(channels))


@keras.saving.register_keras_serializable(package="tsm_keras")
class StreamingShift(keras.layers.Layer):
    """A uni-directional temporal shift for one frame, with its state.

    Inputs: `x` `[batch, H, W, C]` (frame t at the shift point) and `buffer` `[batch, H, W, c1]`
    (channels [0, c1) of frame t-1 there; zeros at t=0). Outputs: `x` with channels [0, c1) replaced by
    `buffer`, and the new buffer `x[..., :c1]`. Values are copied, never computed: exact.
    """

    def __init__(self, buffer_channels, **kwargs):
        super().__init__(**kwargs)
        if int(buffer_channels) < 0:
            raise ValueError(f"StreamingShift: buffer_channels must be >= 0, got {buffer_channels}.")
        self.buffer_channels = int(buffer_channels)

    def call(self, inputs):
        x, buffer = inputs
        c1 = self.buffer_channels
        buffer = ops.cast(buffer, x.dtype)
        if c1 == 0:
            return x, buffer
        if c1 >= x.shape[-1]:
            return buffer, x
        return ops.concatenate([buffer, x[..., c1:]], axis=-1), x[..., :c1]

    def compute_output_shape(self, input_shape):
        x_shape, _ = input_shape
        return tuple(x_shape), tuple(x_shape[:-1]) + (self.buffer_channels,)

    def get_config(self):
        config = super().get_config()
        config.update(buffer_channels=self.buffer_channels)
        return config


def check_streamable(model):
    """Raise UsageError (a ValueError) unless every `TemporalShift` of `model` is uni-directional and at the
    top level of its graph."""
    if not isinstance(model, keras.Model) or not hasattr(model, "_run_through_graph"):
        raise UsageError(f"to_streaming needs a functional Keras model (tsm_keras.build_tsm), got "
                         f"{type(model).__name__}.")
    shifts = [layer for layer in model.layers if isinstance(layer, TemporalShift)]
    bidirectional = [layer.name for layer in shifts if layer.direction != "unidirectional"]
    if bidirectional:
        raise UsageError(f"a bi-directional TSM cannot stream: its shifts {bidirectional[:3]}"
                         f"{'...' if len(bidirectional) > 3 else ''} read the next frame. Train an online TSM "
                         f"with --shift=unidirectional (build_tsm(..., shift='unidirectional')).")
    for layer in model.layers:
        if isinstance(layer, keras.Model) and any(isinstance(inner, TemporalShift)
                                                   for inner in layer._flatten_layers(include_self=False)):
            raise UsageError(f"{model.name}: the shifts of nested model {layer.name!r} are out of reach; build the "
                             "backbone's layers directly in the classifier's graph (as build_tsm does).")
    if len(model.inputs) != 1 or len(model.inputs[0].shape) not in (4, 5):
        raise UsageError(f"{model.name}: expected one input of frames [batch, T, H, W, 3] (or folded "
                         f"[batch*T, H, W, 3]), got {[tuple(x.shape) for x in model.inputs]}.")


@keras.saving.register_keras_serializable(package="tsm_keras")
class StreamingTSM(keras.Model):
    """The per-frame form of a uni-directional TSM; see the module docstring.

    Call: `stream({"frame": frame, **states})` -> `(logits, new_states)`; `frame` as the offline model
    takes one (normalized, or raw 0-255 with `normalize_input=True`) `[batch, H, W, 3]`, states a dict
    `{state_<block>_shift_buffer: [batch, h, w, c1]}`, logits float32 `[batch, classes]`.

    `state_shapes`: {name: (h, w, c1)} (h, w None for a model without a fixed image size);
    `state_dtypes`: {name: dtype}. Save the offline model, not this one: `to_streaming` is the
    conversion, and it copies nothing.
    """

    def __init__(self, model, **kwargs):
        check_streamable(model)
        source = model.inputs[0]
        frame_shape = tuple(source.shape[2:] if len(source.shape) == 5 else source.shape[1:])
        frame = keras.Input(frame_shape, dtype=source.dtype, name=FRAME_INPUT)
        state_inputs, new_states = {}, {}

        def call_layer(layer, *args, **call_kwargs):
            if isinstance(layer, FoldTime):
                return args[0]
            if isinstance(layer, SegmentConsensus):
                return frame_logits(args[0])
            if isinstance(layer, TemporalShift):
                x = args[0]
                name = state_name(layer.name)
                if name in state_inputs:
                    raise ValueError(f"shift {layer.name!r} is called twice in the graph; each call needs its "
                                     "own state: give each call its own TemporalShift layer.")
                channels = buffer_channels(layer, x.shape[-1])
                state_inputs[name] = keras.Input(tuple(x.shape[1:-1]) + (channels,), dtype=x.dtype, name=name)
                shifted, new_states[name] = StreamingShift(channels, name=f"{layer.name}_stream")(
                    [x, state_inputs[name]])
                return shifted
            return layer(*args, **call_kwargs)

        frame_logits = SegmentConsensus(1, name="frame_logits")  # identity on one frame, float32 out
        # The same traversal keras.models.clone_model uses; the layers are called, not cloned.
        logits = model._run_through_graph(frame, call_fn=call_layer)
        kwargs.setdefault("name", f"{model.name}_streaming")
        super().__init__(inputs={FRAME_INPUT: frame, **state_inputs}, outputs=(logits, new_states), **kwargs)
        self.state_names = list(state_inputs)
        self.state_shapes = {name: tuple(x.shape[1:]) for name, x in state_inputs.items()}
        self.state_dtypes = {name: x.dtype for name, x in state_inputs.items()}
        self.frame_shape = frame_shape
        self.frame_dtype = frame.dtype
        self.source_config = model.get_config()

    def __call__(self, inputs, *args, **kwargs):
        # Keras refuses a dict mixing NumPy frames with the tensors init_states returns.
        if isinstance(inputs, dict):
            inputs = {name: ops.convert_to_tensor(value) if isinstance(value, np.ndarray) else value
                      for name, value in inputs.items()}
        return super().__call__(inputs, *args, **kwargs)

    def init_states(self, batch_size=1, image_size=None):
        """Zeros for every state, `{name: [batch_size, h, w, c1]}`: the offline model's padding at t=0.

        `image_size` (int or (height, width)) is needed when the model has no fixed image size, and
        checked against it when it has one."""
        shapes = self.state_shapes
        if image_size is not None:
            height, width = _height_width(image_size)
            if self.frame_shape[:2] not in ((None, None), (height, width)):
                raise ValueError(f"image_size {(height, width)} but the model was built for frames of "
                                 f"{self.frame_shape[:2]}.")
            if self.frame_shape[:2] == (None, None):
                shapes = self._state_shapes_at(height, width)
        elif any(dim is None for shape in shapes.values() for dim in shape):
            raise ValueError("the model has no fixed image size: pass init_states(batch_size, image_size).")
        return {name: ops.zeros((int(batch_size),) + tuple(shape), dtype=self.state_dtypes[name])
                for name, shape in shapes.items()}

    def step_function(self, batch_size=1, image_size=None, jit_compile=False):
        """`step(frame, states) -> (logits, new_states)`: this model in a `tf.function` traced once for
        `[batch_size, h, w, 3]` frames, the fast way to stream from Python.

        Calling the model itself (`stream({"frame": frame, **states})`) runs it eagerly, layer by layer,
        with Keras' input checks on every call: several times slower per frame at batch 1
        (benchmarks/online_speed.py). `frame` and the states as for a call; `image_size` as for
        `init_states`. `jit_compile=True` asks XLA, which is slower than the default on CPUs (its
        depthwise convolutions do not use oneDNN); measure before using it.
        """
        import tensorflow as tf

        states = self.init_states(batch_size, image_size)
        frame_shape = (int(batch_size),) + tuple(self.frame_shape) if image_size is None else (
            (int(batch_size),) + tuple(_height_width(image_size)) + tuple(self.frame_shape[2:]))
        signature = [tf.TensorSpec(frame_shape, self.frame_dtype, name=FRAME_INPUT),
                     {name: tf.TensorSpec(value.shape, value.dtype, name=name) for name, value in states.items()}]

        @tf.function(input_signature=signature, jit_compile=jit_compile)
        def step(frame, states):
            return self({FRAME_INPUT: frame, **states}, training=False)

        return step

    def _state_shapes_at(self, height, width):
        # A new buffer is a slice of the frame's path, so its shape follows from the frame's alone.
        frame = keras.KerasTensor((1, height, width) + self.frame_shape[2:], dtype=self.frame_dtype)
        states = {name: keras.KerasTensor((1, None, None, shape[-1]), dtype=self.state_dtypes[name])
                  for name, shape in self.state_shapes.items()}
        _, new_states = self.compute_output_spec({FRAME_INPUT: frame, **states})
        return {name: tuple(spec.shape[1:]) for name, spec in new_states.items()}

    def get_config(self):
        raise NotImplementedError("a StreamingTSM is not saved itself: save the offline model (model.save) and "
                                  "call tsm_keras.to_streaming on it after loading; the weights are the same.")


def _height_width(image_size):
    return (int(image_size), int(image_size)) if isinstance(image_size, int) else tuple(int(v) for v in image_size)


def to_streaming(model):
    """The streaming form of a uni-directional TSM, sharing its weights: a `StreamingTSM`.

    Raises UsageError (a ValueError) for a bi-directional model (it reads the next frame; train with
    `--shift=unidirectional`). A TSN (`shift="none"`) streams with no states.
    """
    return StreamingTSM(model)
