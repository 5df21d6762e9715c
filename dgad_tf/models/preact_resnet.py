"""CIFAR PreAct-ResNet-18 (He et al. 2016 identity mappings), as used in robust training.

The layout is kuangliu/pytorch-cifar's `PreActResNet18` plus the final BN-ReLU (`bn`) that the
robust-training versions (Rice et al. 2020, RobustBench) add before pooling. `final_bn=False`
gives kuangliu's exact network, which has no final BN. Layer names follow the PyTorch module
paths (`layer2.0.bn1`, `layer2.0.shortcut.0`, `bn`, `linear`).
"""

import keras

from dgad_tf.models import _common
from dgad_tf.models.resnet import STAGE_WIDTHS

PREACT_BLOCKS = {18: (2, 2, 2, 2)}


def preact_block(x, in_planes, planes, stride, name, sync):
    """Pre-activation block: BN-ReLU-conv-BN-ReLU-conv plus shortcut.

    When the stride or width changes, the shortcut is a 1x1 conv applied to the *activated*
    input (after bn1-ReLU); otherwise it is the raw input.
    """
    activated = _common.batch_norm(x, f"{name}.bn1", sync)
    activated = _common.relu(activated, f"{name}.relu1")
    if stride != 1 or in_planes != planes:
        shortcut = _common.conv(activated, planes, 1, stride, f"{name}.shortcut.0")
    else:
        shortcut = x
    out = _common.conv(activated, planes, 3, stride, f"{name}.conv1")
    out = _common.batch_norm(out, f"{name}.bn2", sync)
    out = _common.relu(out, f"{name}.relu2")
    out = _common.conv(out, planes, 3, 1, f"{name}.conv2")
    return keras.layers.Add(name=f"{name}.add")([out, shortcut])


def build_preact_resnet(
    depth,
    num_classes,
    input_shape=(32, 32, 3),
    *,
    normalize=None,
    sync_batchnorm=False,
    name_prefix=None,
    init="torch",
    final_bn=True,
):
    """Build a CIFAR PreAct-ResNet returning logits.

    A 3x3 stride-1 conv stem (64 channels, no BN after it), four stages of pre-activation
    blocks (widths 64-512), a final BN-ReLU, global average pooling and a linear layer.

    Args:
        depth: 18.
        num_classes: number of output logits (>= 2).
        input_shape: (H, W, C) of the [0, 1] input images. Defaults to (32, 32, 3).
        normalize: optional (mean, std) applied inside the model. Defaults to None.
        sync_batchnorm: use synchronized BatchNormalization. Defaults to False.
        name_prefix: string prepended to every layer name and the model name. Defaults to None.
        init: "torch" (PyTorch's initial weights, see `_common.initialize`) or "keras".
            Defaults to "torch".
        final_bn: add the BN-ReLU before pooling (RobustBench/Rice et al.); False gives
            kuangliu's layout. Defaults to True.

    Example:
        >>> model = build_preact_resnet(18, 10)
        >>> model.output_shape
        (None, 10)
    """
    if depth not in PREACT_BLOCKS:
        raise ValueError(f"`depth` must be one of {sorted(PREACT_BLOCKS)}; received depth={depth!r}")
    num_classes = _common.check_num_classes(num_classes)
    input_shape = _common.check_input_shape(input_shape)
    prefix = _common.check_prefix(name_prefix)
    init = _common.check_init(init)

    inputs, x = _common.model_input(input_shape, normalize, prefix)
    x = _common.conv(x, 64, 3, 1, f"{prefix}conv1")
    in_planes = 64
    for stage, (blocks, planes) in enumerate(zip(PREACT_BLOCKS[depth], STAGE_WIDTHS)):
        for index in range(blocks):
            stride = 2 if stage > 0 and index == 0 else 1
            name = f"{prefix}layer{stage + 1}.{index}"
            x = preact_block(x, in_planes, planes, stride, name, sync_batchnorm)
            in_planes = planes
    if final_bn:
        x = _common.batch_norm(x, f"{prefix}bn", sync_batchnorm)
        x = _common.relu(x, f"{prefix}relu")
    logits = _common.classifier(x, num_classes, f"{prefix}linear", prefix)
    model = keras.Model(inputs, logits, name=f"{prefix}preact-resnet-{depth}")
    return _common.initialize(model, init)
