"""CIFAR MobileNetV2 as in kuangliu/pytorch-cifar (stride 1 in the stem and in the 2nd stage).

Layer names follow the PyTorch module paths (`conv1`, `layers.3.conv2`, `layers.0.shortcut.0`,
`conv2`, `linear`). 2,296,922 trainable parameters for 10 classes.
"""

import keras

from dgad_tf.models import _common

# (expansion, out_planes, num_blocks, first_stride); kuangliu's CIFAR cfg, whose second row
# uses stride 1 where ImageNet MobileNetV2 uses 2.
MOBILENETV2_CFG = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def inverted_residual(x, in_planes, out_planes, expansion, stride, name, sync):
    """Expand (1x1) - depthwise (3x3) - project (1x1) block.

    As in the reference, stride-1 blocks always add a shortcut (a 1x1 conv + BN when the width
    changes) and stride-2 blocks have none; the expansion conv exists even for expansion 1.
    """
    planes = expansion * in_planes
    out = _common.conv(x, planes, 1, 1, f"{name}.conv1")
    out = _common.batch_norm(out, f"{name}.bn1", sync)
    out = _common.relu(out, f"{name}.relu1")
    out = _common.depthwise_conv(out, 3, stride, f"{name}.conv2")
    out = _common.batch_norm(out, f"{name}.bn2", sync)
    out = _common.relu(out, f"{name}.relu2")
    out = _common.conv(out, out_planes, 1, 1, f"{name}.conv3")
    out = _common.batch_norm(out, f"{name}.bn3", sync)
    if stride != 1:
        return out
    if in_planes != out_planes:
        shortcut = _common.conv(x, out_planes, 1, 1, f"{name}.shortcut.0")
        shortcut = _common.batch_norm(shortcut, f"{name}.shortcut.1", sync)
    else:
        shortcut = x
    return keras.layers.Add(name=f"{name}.add")([out, shortcut])


def build_mobilenet_v2(
    num_classes,
    input_shape=(32, 32, 3),
    *,
    normalize=None,
    sync_batchnorm=False,
    name_prefix=None,
    init="torch",
):
    """Build kuangliu's CIFAR MobileNetV2 returning logits.

    A 3x3 stride-1 stem (32 channels), 17 inverted-residual blocks, a 1x1 conv to 1280
    channels with BN-ReLU, global average pooling and a linear layer.

    Args:
        num_classes: number of output logits (>= 2).
        input_shape: (H, W, C) of the [0, 1] input images. Defaults to (32, 32, 3).
        normalize: optional (mean, std) applied inside the model. Defaults to None.
        sync_batchnorm: use synchronized BatchNormalization. Defaults to False.
        name_prefix: string prepended to every layer name and the model name. Defaults to None.
        init: "torch" (PyTorch's initial weights, see `_common.initialize`) or "keras".
            Defaults to "torch".

    Example:
        >>> model = build_mobilenet_v2(10)
        >>> model.output_shape
        (None, 10)
    """

    num_classes, prefix, init, inputs, x = _common.begin(
        num_classes, input_shape, normalize, name_prefix, init
    )
    x = _common.conv(x, 32, 3, 1, f"{prefix}conv1")
    x = _common.batch_norm(x, f"{prefix}bn1", sync_batchnorm)
    x = _common.relu(x, f"{prefix}relu1")
    in_planes = 32
    index = 0
    for expansion, out_planes, num_blocks, first_stride in MOBILENETV2_CFG:
        for block in range(num_blocks):
            stride = first_stride if block == 0 else 1
            name = f"{prefix}layers.{index}"
            x = inverted_residual(x, in_planes, out_planes, expansion, stride, name, sync_batchnorm)
            in_planes = out_planes
            index += 1
    x = _common.conv(x, 1280, 1, 1, f"{prefix}conv2")
    x = _common.batch_norm(x, f"{prefix}bn2", sync_batchnorm)
    x = _common.relu(x, f"{prefix}relu2")
    logits = _common.classifier(x, num_classes, f"{prefix}linear", prefix)
    model = keras.Model(inputs, logits, name=f"{prefix}mobilenetv2")
    return _common.initialize(model, init)
