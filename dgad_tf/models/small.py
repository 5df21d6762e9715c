"""A small CNN for quick runs and tests: works on 8x8x1 digits as on 32x32x3 CIFAR."""

import keras

from dgad_tf.models import _common

# (filters, max-pool after this conv)
SMALL_CNN_CFG = ((32, False), (32, True), (64, False), (64, True))


def build_small_cnn(
    num_classes,
    input_shape=(32, 32, 3),
    *,
    normalize=None,
    sync_batchnorm=False,
    name_prefix=None,
    init="torch",
):
    """Build a four-conv CNN returning logits.

    Two conv-BN-ReLU pairs of 32 and 64 channels, each pair followed by a 2x2 max-pool, then
    global average pooling and a linear layer; about 66k parameters for 10 classes. Height
    and width must be at least 4.

    Args:
        num_classes: number of output logits (>= 2).
        input_shape: (H, W, C) of the [0, 1] input images. Defaults to (32, 32, 3).
        normalize: optional (mean, std) applied inside the model. Defaults to None.
        sync_batchnorm: use synchronized BatchNormalization. Defaults to False.
        name_prefix: string prepended to every layer name and the model name. Defaults to None.
        init: "torch" (PyTorch's initial weights, see `_common.initialize`) or "keras".
            Defaults to "torch".

    Example:
        >>> model = build_small_cnn(10, (8, 8, 1))
        >>> model.output_shape
        (None, 10)
    """

    num_classes, prefix, init, inputs, x = _common.begin(
        num_classes, input_shape, normalize, name_prefix, init, min_size=4
    )
    for index, (filters, pool) in enumerate(SMALL_CNN_CFG, start=1):
        x = _common.conv(x, filters, 3, 1, f"{prefix}conv{index}")
        x = _common.batch_norm(x, f"{prefix}bn{index}", sync_batchnorm)
        x = _common.relu(x, f"{prefix}relu{index}")
        if pool:
            x = keras.layers.MaxPooling2D(2, name=f"{prefix}pool{index}")(x)
    logits = _common.classifier(x, num_classes, f"{prefix}fc", prefix)
    model = keras.Model(inputs, logits, name=f"{prefix}small-cnn")
    return _common.initialize(model, init)
