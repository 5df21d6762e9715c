"""WideResNet-D-W in the TRADES / RobustBench layout (pre-activation blocks, 16-channel stem).

Layer names follow the PyTorch module paths of that code (`conv1`, `block1.layer.0.bn1`,
`block2.layer.0.convShortcut`, `bn1`, `fc`). TRADES also defines an unused `sub_block1`; it
never enters the forward pass, so it is not built (the converter drops its tensors).
"""

import keras

from dgad_tf.models import _common


def wide_block(x, in_planes, out_planes, stride, name, sync):
    """Pre-activation wide block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus shortcut.

    As in the reference, when the width changes the input is BN-ReLU'd once and that activation
    feeds both the residual branch and the 1x1 shortcut conv; when the width is unchanged the
    shortcut is the raw input.
    """
    activated = _common.batch_norm(x, f"{name}.bn1", sync)
    activated = _common.relu(activated, f"{name}.relu1")
    out = _common.conv(activated, out_planes, 3, stride, f"{name}.conv1")
    out = _common.batch_norm(out, f"{name}.bn2", sync)
    out = _common.relu(out, f"{name}.relu2")
    out = _common.conv(out, out_planes, 3, 1, f"{name}.conv2")
    if in_planes != out_planes:
        shortcut = _common.conv(activated, out_planes, 1, stride, f"{name}.convShortcut")
    else:
        shortcut = x
    return keras.layers.Add(name=f"{name}.add")([shortcut, out])


def build_wide_resnet(
    depth,
    width,
    num_classes,
    input_shape=(32, 32, 3),
    *,
    normalize=None,
    sync_batchnorm=False,
    name_prefix=None,
    init="torch",
):
    """Build WRN-`depth`-`width` returning logits.

    A 3x3 16-channel stem, three groups of (depth - 4) / 6 wide blocks of widths 16W, 32W, 64W
    (groups 2 and 3 start with stride 2), a final BN-ReLU, global average pooling and a linear
    layer with bias. WRN-34-10 has 46,160,474 trainable parameters for 10 classes.

    Args:
        depth: total depth, with (depth - 4) % 6 == 0 (e.g. 16, 28, 34).
        width: widening factor W (a positive int).
        num_classes: number of output logits (>= 2).
        input_shape: (H, W, C) of the [0, 1] input images. Defaults to (32, 32, 3).
        normalize: optional (mean, std) applied inside the model. Defaults to None.
        sync_batchnorm: use synchronized BatchNormalization. Defaults to False.
        name_prefix: string prepended to every layer name and the model name. Defaults to None.
        init: "torch" (the reference's: convs N(0, sqrt(2 / (k*k*out_channels))), linear bias 0,
            see `_common.initialize`) or "keras". Defaults to "torch".

    Example:
        >>> model = build_wide_resnet(16, 4, 10)
        >>> model.output_shape
        (None, 10)
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
        raise ValueError(
            f"`depth` must be an int >= 10 with (depth - 4) % 6 == 0; received depth={depth!r}"
        )
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"`width` must be a positive int; received width={width!r}")
    num_classes, prefix, init, inputs, x = _common.begin(
        num_classes, input_shape, normalize, name_prefix, init
    )

    blocks_per_group = (depth - 4) // 6
    widths = (16 * width, 32 * width, 64 * width)
    x = _common.conv(x, 16, 3, 1, f"{prefix}conv1")
    in_planes = 16
    for group, planes in enumerate(widths):
        for index in range(blocks_per_group):
            stride = 2 if group > 0 and index == 0 else 1
            name = f"{prefix}block{group + 1}.layer.{index}"
            x = wide_block(x, in_planes, planes, stride, name, sync_batchnorm)
            in_planes = planes
    x = _common.batch_norm(x, f"{prefix}bn1", sync_batchnorm)
    x = _common.relu(x, f"{prefix}relu")
    logits = _common.classifier(x, num_classes, f"{prefix}fc", prefix)
    model = keras.Model(inputs, logits, name=f"{prefix}wrn-{depth}-{width}")
    return _common.initialize(model, init, wrn=True)
