"""Layer helpers shared by the CIFAR model builders.

Every weight-carrying layer is named after the PyTorch module path of the reference network
(`layer1.0.conv1`, `block2.layer.3.bn1`, `fc`), so a PyTorch state dict maps onto the Keras
model by name alone (see `dgad_tf.teachers.conversion`). Layers without weights get the same stem
plus an underscore suffix (`layer1.0.conv1_pad`), which no PyTorch key can collide with.
"""

import keras
import numpy as np

# PyTorch BatchNorm2d defaults: momentum 0.1 weights the *new* batch, Keras weights the old mean.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
# "torch": PyTorch's initial values (see `initialize`); "keras": the Keras initialisers the layers
# were built with.
INITS = ("torch", "keras")


def check_input_shape(input_shape, min_size=1):
    """Validate an (H, W, C) input shape and return it as a tuple of ints.

    Args:
        input_shape: sequence of three positive ints, height, width, channels.
        min_size: smallest allowed height and width. Defaults to 1.
    """
    try:
        shape = tuple(int(d) for d in input_shape)
        ok = len(shape) == 3 and all(d == v for d, v in zip(shape, input_shape))
    except (TypeError, ValueError):
        ok = False
    if not ok or shape[2] < 1 or min(shape[:2]) < min_size:
        raise ValueError(
            f"`input_shape` must be (height, width, channels) with positive ints and "
            f"height, width >= {min_size}; received input_shape={input_shape!r}"
        )
    return shape


def check_num_classes(num_classes):
    """Validate the class count (an int >= 2) and return it."""
    if (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, (int, np.integer))
        or num_classes < 2
    ):
        raise ValueError(f"`num_classes` must be an int >= 2; received num_classes={num_classes!r}")
    return int(num_classes)


def model_input(input_shape, normalize, prefix):
    """Create the float32 image input and the optional in-model mean/std normalisation.

    Args:
        input_shape: (H, W, C) of the images, pixels in [0, 1].
        normalize: None, or a pair (mean, std) of per-channel sequences (or scalars). Defaults
            to None (no normalisation layer).
        prefix: string prepended to the layer names.

    Returns:
        (inputs, x): the `keras.Input` tensor and the tensor the network body starts from.
    """
    inputs = keras.Input(shape=input_shape, dtype="float32", name=f"{prefix}image")
    if normalize is None:
        return inputs, inputs
    mean, std = check_normalize(normalize, input_shape[-1])
    layer = keras.layers.Normalization(
        axis=-1, mean=mean.tolist(), variance=(std**2).tolist(), name=f"{prefix}normalize"
    )
    return inputs, layer(inputs)


def check_normalize(normalize, channels):
    """Return (mean, std) as float64 arrays of length `channels`, or raise ValueError.

    Args:
        normalize: pair (mean, std), each a scalar or a sequence of one or `channels` numbers;
            std must be positive.
        channels: number of image channels.
    """
    try:
        mean, std = normalize
        mean = np.broadcast_to(np.asarray(mean, dtype=np.float64).reshape(-1), (channels,)).copy()
        std = np.broadcast_to(np.asarray(std, dtype=np.float64).reshape(-1), (channels,)).copy()
    except (TypeError, ValueError):
        raise ValueError(
            f"`normalize` must be a pair (mean, std) of scalars or sequences of length 1 or "
            f"{channels}; received normalize={normalize!r}"
        ) from None
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
        raise ValueError(
            f"`normalize` needs finite means and positive stds; received normalize={normalize!r}"
        )
    return mean, std


def begin(num_classes, input_shape, normalize, name_prefix, init, min_size=1):
    """Every builder's first lines: check the arguments, create the input (and normalisation).

    Returns:
        (num_classes, prefix, init, inputs, x), with x the (normalised) input tensor.
    """
    num_classes = check_num_classes(num_classes)
    input_shape = check_input_shape(input_shape, min_size=min_size)
    prefix = check_prefix(name_prefix)
    init = check_init(init)
    inputs, x = model_input(input_shape, normalize, prefix)
    return num_classes, prefix, init, inputs, x


def check_prefix(name_prefix):
    """Return the layer-name prefix ('' for None); Keras forbids '/' in names."""
    if name_prefix is None:
        return ""
    if not isinstance(name_prefix, str) or "/" in name_prefix:
        raise ValueError(
            f"`name_prefix` must be a string without '/'; received name_prefix={name_prefix!r}"
        )
    return name_prefix


def _torch_padding(x, kernel_size, stride, name):
    """PyTorch's symmetric `padding=kernel_size // 2`, as (padded input, Keras padding mode).

    Keras 'same' pads stride-2 convs on even inputs only at the bottom/right, PyTorch pads both
    sides, which shifts the sampling grid by one pixel; explicit zero padding keeps them equal.
    """
    pad = kernel_size // 2
    if stride > 1 and pad > 0:
        return keras.layers.ZeroPadding2D(pad, name=f"{name}_pad")(x), "valid"
    return x, "same"


def conv(x, filters, kernel_size, stride, name, use_bias=False):
    """Conv2D with PyTorch's symmetric `padding=kernel_size // 2` (see `_torch_padding`)."""
    x, padding = _torch_padding(x, kernel_size, stride, name)
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=stride,
        padding=padding,
        use_bias=use_bias,
        kernel_initializer="he_normal",
        name=name,
    )(x)


def depthwise_conv(x, kernel_size, stride, name):
    """DepthwiseConv2D (PyTorch `groups=channels`, bias-free) with PyTorch's symmetric padding."""
    x, padding = _torch_padding(x, kernel_size, stride, name)
    return keras.layers.DepthwiseConv2D(
        kernel_size,
        strides=stride,
        padding=padding,
        use_bias=False,
        depthwise_initializer="he_normal",
        name=name,
    )(x)


def batch_norm(x, name, sync):
    """Batch normalisation with PyTorch's momentum, epsilon and running-variance update.

    `FusedBatchNormalization`, or Keras's synchronized BatchNormalization when `sync`.
    """
    layer = keras.layers.BatchNormalization if sync else FusedBatchNormalization
    return layer(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, synchronized=sync, name=name)(x)


@keras.saving.register_keras_serializable(package="dgad_tf")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """BatchNormalization in TensorFlow's fused kernel, updating the moving variance as PyTorch.

    Keras 3 normalises with separate ops (moments, then subtract and scale: several passes over
    the activations forward and backward) and, under a mixed policy, casts every activation to
    float32 and back. TensorFlow's `FusedBatchNormV3` does each direction in one kernel and takes
    16-bit activations with float32 statistics. In training mode it normalises with the batch's
    biased variance, as Keras and PyTorch do, and returns the unbiased one (n / (n - 1), n the
    values per channel), which is what PyTorch's `BatchNorm2d` averages into `running_var`;
    Keras averages the biased one. Same weights, same config, same moving-average momentum.

    Where the fused kernel does not apply (another backend, synchronized statistics, renorm, a
    mask, inputs that are not 4-D with channels last) it is Keras's layer unchanged. Inference is
    Keras's computation, so `dgad_tf.models.save_model` writes it as Keras's `BatchNormalization`
    (the file then loads in plain Keras) and `dgad_tf.models.load_model` restores it; a file
    naming this class (plain `model.save`) loads only where `dgad_tf.models` is imported.
    """

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        channels = inputs.shape[-1]
        gamma = tf.cast(self.gamma, "float32") if self.scale else tf.ones([channels])
        beta = tf.cast(self.beta, "float32") if self.center else tf.zeros([channels])
        if training and self.trainable:
            outputs, mean, unbiased_variance = tf.compat.v1.nn.fused_batch_norm(
                inputs, gamma, beta, epsilon=self.epsilon, is_training=True
            )
            momentum = self.momentum
            self.moving_mean.assign(self.moving_mean * momentum + mean * (1.0 - momentum))
            self.moving_variance.assign(
                self.moving_variance * momentum + unbiased_variance * (1.0 - momentum)
            )
        else:
            outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
                inputs,
                gamma,
                beta,
                mean=tf.cast(self.moving_mean, "float32"),
                variance=tf.cast(self.moving_variance, "float32"),
                epsilon=self.epsilon,
                is_training=False,
            )
        return tf.cast(outputs, self.compute_dtype)

    def _fusable(self, inputs, mask):
        return (
            keras.backend.backend() == "tensorflow"
            and mask is None
            and not self.synchronized
            and not self.renorm
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
            and inputs.dtype in ("float16", "bfloat16", "float32")
        )


def relu(x, name):
    """ReLU as a named layer."""
    return keras.layers.ReLU(name=name)(x)


def classifier(x, num_classes, name, prefix, pool_size=None):
    """Average pooling and a linear layer with bias, giving logits.

    Args:
        x: the last feature map (N, H, W, C).
        num_classes: number of logits.
        name: name of the linear layer.
        prefix: string prepended to the other layer names.
        pool_size: None pools globally to C features. An int is PyTorch's
            `F.avg_pool2d(out, pool_size)` followed by `out.view(N, -1)`: every pooled position
            is kept and flattened in PyTorch's (C, H, W) order, so the linear weight of a
            checkpoint applies unchanged. Defaults to None.
    """
    if pool_size is None:
        x = keras.layers.GlobalAveragePooling2D(name=f"{prefix}pool")(x)
    else:
        x = keras.layers.AveragePooling2D(pool_size, name=f"{prefix}pool")(x)
        x = keras.layers.Permute((3, 1, 2), name=f"{prefix}pool_nchw")(x)
        x = keras.layers.Flatten(name=f"{prefix}flatten")(x)
    return keras.layers.Dense(num_classes, name=name)(x)


def check_init(init):
    """Return `init` if it is one of `INITS`, else raise ValueError naming it."""
    if init not in INITS:
        raise ValueError(f"`init` must be one of {', '.join(INITS)}; received init={init!r}")
    return init


def initialize(model, init, *, wrn=False):
    """Re-draw `model`'s conv and linear weights as PyTorch initialises them (init="torch").

    PyTorch's default for `Conv2d` and `Linear` weights is kaiming_uniform with a = sqrt(5):
    gain sqrt(2 / (1 + 5)) = sqrt(1/3), bound gain * sqrt(3 / fan_in) = 1 / sqrt(fan_in); biases
    are U(+-1 / sqrt(fan_in)) too. A depthwise conv (`groups=C`) has fan_in k*k, not k*k*C.
    The WideResNet reference re-initialises its convs N(0, sqrt(2 / (k*k*out_channels))) and
    zeroes the linear bias (its linear weight keeps PyTorch's default). Batch-norm gamma = 1 and
    beta = 0 are Keras's defaults already. init="keras" leaves the Keras initial values alone.
    The values are drawn from Keras's global seed (`keras.utils.set_random_seed`); the layers'
    configs keep naming their Keras initialisers, which only a rebuild from config would use.

    Args:
        model: a model of the zoo, freshly built.
        init: "torch" or "keras".
        wrn: use the WideResNet reference's conv and linear-bias initialisation. Defaults to False.

    Returns:
        `model`, for chaining.
    """
    if check_init(init) == "keras":
        return model
    for layer in model.layers:
        for weight, draw in _torch_initializers(layer, wrn):
            weight.assign(draw(tuple(weight.shape), weight.dtype))
    return model


def _uniform(bound):
    return lambda shape, dtype: keras.random.uniform(shape, -bound, bound, dtype=dtype)


def _zeros(shape, dtype):
    return keras.ops.zeros(shape, dtype)


def _torch_initializers(layer, wrn):
    """[(weight, draw(shape, dtype))] giving `layer` PyTorch's initial values; [] for others."""
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        # Keras (kh, kw, C, multiplier); each PyTorch output channel sees one input channel.
        kh, kw = layer.kernel.shape[:2]
        fan_in, fan_out = kh * kw, kh * kw * layer.kernel.shape[2] * layer.kernel.shape[3]
    elif isinstance(layer, keras.layers.Conv2D):
        kh, kw, channels_in, channels_out = layer.kernel.shape
        fan_in, fan_out = kh * kw * channels_in, kh * kw * channels_out
    elif isinstance(layer, keras.layers.Dense):
        fan_in = layer.kernel.shape[0]
        draws = [(layer.kernel, _uniform(1.0 / np.sqrt(fan_in)))]
        if layer.use_bias:
            draws.append((layer.bias, _zeros if wrn else _uniform(1.0 / np.sqrt(fan_in))))
        return draws
    else:
        return []
    if wrn:
        std = np.sqrt(2.0 / fan_out)
        draws = [(layer.kernel, lambda shape, dtype: keras.random.normal(shape, 0.0, std, dtype))]
    else:
        draws = [(layer.kernel, _uniform(1.0 / np.sqrt(fan_in)))]
    if layer.use_bias:
        draws.append((layer.bias, _uniform(1.0 / np.sqrt(fan_in))))
    return draws
