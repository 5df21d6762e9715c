"""PreAct-ResNet-18 (He et al. 2016 identity mappings) in the reference layout, for 32 and 64 px.

The layout is kuangliu/pytorch-cifar's `PreActResNet18`, the one the reference's Tiny ImageNet
run uses (docs/method.md §10.6): no batch-norm/ReLU after the last block, then
`F.avg_pool2d(out, 4)` and a linear layer on the flattened map. On 32x32 images the 4x4 map
pools to 512 features; on 64x64 Tiny ImageNet images the 8x8 map pools to 2x2x512 = 2048
features (Linear(2048, 200)). `final_bn=True` adds the final BN-ReLU (`bn`) of the robust-training
versions (Rice et al. 2020, RobustBench). Layer names follow the PyTorch module paths
(`layer2.0.bn1`, `layer2.0.shortcut.0`, `bn`, `linear`).
"""

import keras

from dgad_tf.models import _common
from dgad_tf.models.resnet import STAGE_WIDTHS

PREACT_BLOCKS = {18: (2, 2, 2, 2)}
# The reference's `F.avg_pool2d(out, 4)`; the last map is H/8 x W/8, so inputs need H, W >= 32.
POOL_SIZE = 4
MIN_INPUT_SIZE = 32


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
    final_bn=False,
):
    """Build a PreAct-ResNet in the reference layout, returning logits.

    A 3x3 stride-1 conv stem (64 channels, no BN after it), four stages of pre-activation
    blocks (widths 64-512), 4x4 average pooling, flattening in PyTorch's (C, H, W) order and a
    linear layer: 512 features at 32x32, 2048 at 64x64. 11,171,146 trainable parameters for
    10 classes at 32x32 and 11,575,816 for 200 classes at 64x64, as the PyTorch reference.

    Args:
        depth: 18.
        num_classes: number of output logits (>= 2).
        input_shape: (H, W, C) of the [0, 1] input images, H and W >= 32. Defaults to
            (32, 32, 3).
        normalize: optional (mean, std) applied inside the model. Defaults to None.
        sync_batchnorm: use synchronized BatchNormalization. Defaults to False.
        name_prefix: string prepended to every layer name and the model name. Defaults to None.
        init: "torch" (PyTorch's initial weights, see `_common.initialize`) or "keras".
            Defaults to "torch".
        final_bn: add a BN-ReLU before pooling (RobustBench/Rice et al.); False is the
            reference's (kuangliu's) layout. Defaults to False.

    Example:
        >>> model = build_preact_resnet(18, 10)
        >>> model.output_shape
        (None, 10)
    """
    if depth not in PREACT_BLOCKS:
        raise ValueError(
            f"`depth` must be one of {sorted(PREACT_BLOCKS)}; received depth={depth!r}"
        )

    num_classes, prefix, init, inputs, x = _common.begin(
        num_classes, input_shape, normalize, name_prefix, init, min_size=MIN_INPUT_SIZE
    )
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
    logits = _common.classifier(x, num_classes, f"{prefix}linear", prefix, pool_size=POOL_SIZE)
    model = keras.Model(inputs, logits, name=f"{prefix}preact-resnet-{depth}")
    return _common.initialize(model, init)
