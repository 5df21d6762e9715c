"""CIFAR ResNet-18/34 (BasicBlock, 3x3 stride-1 stem, no max-pool), as in kuangliu/pytorch-cifar.

Layer names follow the PyTorch module paths (`conv1`, `bn1`, `layer2.0.shortcut.0`, `linear`),
so checkpoints of that layout convert by name.
"""

import keras

from dgad_tf.models import _common

# Blocks per stage for each depth; stage widths are 64, 128, 256, 512.
RESNET_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
STAGE_WIDTHS = (64, 128, 256, 512)


def basic_block(x, in_planes, planes, stride, name, sync):
    """Post-activation BasicBlock: conv-BN-ReLU-conv-BN plus shortcut, then ReLU.

    The shortcut is a 1x1 conv + BN when the stride or the width changes, else the identity.
    """
    out = _common.conv(x, planes, 3, stride, f"{name}.conv1")
    out = _common.batch_norm(out, f"{name}.bn1", sync)
    out = _common.relu(out, f"{name}.relu1")
    out = _common.conv(out, planes, 3, 1, f"{name}.conv2")
    out = _common.batch_norm(out, f"{name}.bn2", sync)
    if stride != 1 or in_planes != planes:
        shortcut = _common.conv(x, planes, 1, stride, f"{name}.shortcut.0")
        shortcut = _common.batch_norm(shortcut, f"{name}.shortcut.1", sync)
    else:
        shortcut = x
    out = keras.layers.Add(name=f"{name}.add")([out, shortcut])
    return _common.relu(out, f"{name}.relu2")


def build_resnet(
    depth,
    num_classes,
    input_shape=(32, 32, 3),
    *,
    normalize=None,
    sync_batchnorm=False,
    name_prefix=None,
    init="torch",
):
    """Build a CIFAR ResNet-18 or ResNet-34 returning logits.

    A 3x3 stride-1 conv stem (64 channels, no max-pool), four stages of BasicBlocks (widths
    64-512, stages 2-4 start with stride 2), global average pooling and a linear layer.

    Args:
        depth: 18 or 34.
        num_classes: number of output logits (>= 2).
        input_shape: (H, W, C) of the [0, 1] input images. Defaults to (32, 32, 3).
        normalize: optional (mean, std) applied inside the model. Defaults to None.
        sync_batchnorm: use synchronized BatchNormalization. Defaults to False.
        name_prefix: string prepended to every layer name and the model name. Defaults to None.
        init: "torch" (PyTorch's initial weights, see `_common.initialize`) or "keras".
            Defaults to "torch".

    Example:
        >>> model = build_resnet(18, 10)
        >>> model.output_shape
        (None, 10)
    """
    if depth not in RESNET_BLOCKS:
        raise ValueError(
            f"`depth` must be one of {sorted(RESNET_BLOCKS)}; received depth={depth!r}"
        )

    num_classes, prefix, init, inputs, x = _common.begin(
        num_classes, input_shape, normalize, name_prefix, init
    )
    x = _common.conv(x, 64, 3, 1, f"{prefix}conv1")
    x = _common.batch_norm(x, f"{prefix}bn1", sync_batchnorm)
    x = _common.relu(x, f"{prefix}relu1")
    in_planes = 64
    for stage, (blocks, planes) in enumerate(zip(RESNET_BLOCKS[depth], STAGE_WIDTHS)):
        for index in range(blocks):
            stride = 2 if stage > 0 and index == 0 else 1
            name = f"{prefix}layer{stage + 1}.{index}"
            x = basic_block(x, in_planes, planes, stride, name, sync_batchnorm)
            in_planes = planes
    logits = _common.classifier(x, num_classes, f"{prefix}linear", prefix)
    model = keras.Model(inputs, logits, name=f"{prefix}resnet-{depth}")
    return _common.initialize(model, init)
