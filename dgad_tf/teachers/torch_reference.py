"""PyTorch reference networks in the public layouts the converter reads.

TRADES / RobustBench WideResNet with its unused `sub_block1`, kuangliu's ResNet, PreAct-ResNet
and MobileNetV2: what the converter's tests convert, the model tests count parameters of, and
the benchmarks time against. Needs the `torch` extra.
"""

import torch

nn = torch.nn
F = torch.nn.functional


class TradesBlock(nn.Module):
    def __init__(self, in_planes, out_planes, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = (
            None
            if self.equal_in_out
            else nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False)
        )

    def forward(self, x):
        if self.equal_in_out:
            out = F.relu(self.bn1(x))
            shortcut = x
        else:
            x = F.relu(self.bn1(x))
            out = x
            shortcut = self.convShortcut(x)
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return shortcut + out


class TradesNetworkBlock(nn.Module):
    def __init__(self, n, in_planes, out_planes, stride):
        super().__init__()
        self.layer = nn.Sequential(
            *[
                TradesBlock(
                    in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1
                )
                for i in range(n)
            ]
        )

    def forward(self, x):
        return self.layer(x)


class TradesWideResNet(nn.Module):
    def __init__(self, depth, width, num_classes, buffers=None):
        super().__init__()
        n = (depth - 4) // 6
        channels = [16, 16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.block1 = TradesNetworkBlock(n, 16, channels[1], 1)
        self.sub_block1 = TradesNetworkBlock(n, 16, channels[1], 1)  # never used, as in TRADES
        self.block2 = TradesNetworkBlock(n, channels[1], channels[2], 2)
        self.block3 = TradesNetworkBlock(n, channels[2], channels[3], 2)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.fc = nn.Linear(channels[3], num_classes)
        self.normalized = buffers is not None
        if buffers is not None:  # RobustBench style in-model normalisation
            self.register_buffer("mu", torch.tensor(buffers[0]).view(1, 3, 1, 1))
            self.register_buffer("sigma", torch.tensor(buffers[1]).view(1, 3, 1, 1))

    def forward(self, x):
        if self.normalized:
            x = (x - self.mu) / self.sigma
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn1(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


class KuangliuBasicBlock(nn.Module):
    def __init__(self, in_planes, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class KuangliuPreActBlock(nn.Module):
    def __init__(self, in_planes, planes, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class KuangliuResNet(nn.Module):
    """kuangliu ResNet (block=BasicBlock) or PreActResNet (final_bn adds Rice et al.'s `bn`).

    `avg_pool2d(out, 4)` keeps (input_size / 32)^2 positions of the last map, so the linear layer
    takes 512 features at 32x32 and 2048 at 64x64 (the reference's Tiny ImageNet network).
    """

    def __init__(self, block, num_blocks, num_classes, final_bn=False, input_size=32):
        super().__init__()
        self.preact = block is KuangliuPreActBlock
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        if not self.preact:
            self.bn1 = nn.BatchNorm2d(64)
        in_planes = 64
        for index, (planes, blocks) in enumerate(zip((64, 128, 256, 512), num_blocks)):
            layers = []
            for i in range(blocks):
                layers.append(block(in_planes, planes, (1 if index == 0 else 2) if i == 0 else 1))
                in_planes = planes
            setattr(self, f"layer{index + 1}", nn.Sequential(*layers))
        if final_bn:
            self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512 * (input_size // 32) ** 2, num_classes)

    def forward(self, x):
        out = self.conv1(x)
        if not self.preact:
            out = F.relu(self.bn1(out))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        if hasattr(self, "bn"):
            out = F.relu(self.bn(out))
        return self.linear(F.avg_pool2d(out, 4).flatten(1))


class KuangliuMobileBlock(nn.Module):
    def __init__(self, in_planes, out_planes, expansion, stride):
        super().__init__()
        self.stride = stride
        planes = expansion * in_planes
        self.conv1 = nn.Conv2d(in_planes, planes, 1, 1, 0, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, groups=planes, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, 1, 0, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride == 1 and in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, 1, 0, bias=False), nn.BatchNorm2d(out_planes)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + self.shortcut(x) if self.stride == 1 else out


class KuangliuMobileNetV2(nn.Module):
    cfg = [
        (1, 16, 1, 1),
        (6, 24, 2, 1),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ]

    def __init__(self, num_classes):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        layers, in_planes = [], 32
        for expansion, out_planes, num_blocks, stride in self.cfg:
            for s in [stride] + [1] * (num_blocks - 1):
                layers.append(KuangliuMobileBlock(in_planes, out_planes, expansion, s))
                in_planes = out_planes
        self.layers = nn.Sequential(*layers)
        self.conv2 = nn.Conv2d(320, 1280, 1, 1, 0, bias=False)
        self.bn2 = nn.BatchNorm2d(1280)
        self.linear = nn.Linear(1280, num_classes)

    def forward(self, x):
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        out = F.relu(self.bn2(self.conv2(out)))
        return self.linear(F.avg_pool2d(out, 4).flatten(1))


def count_parameters(net) -> int:
    """PyTorch's parameter count without TRADES' `sub_block1` (built, never called, dropped)."""
    return sum(
        p.numel() for path, p in net.named_parameters() if not path.startswith("sub_block1.")
    )


NETWORKS = {
    "wrn-10-2": lambda classes: TradesWideResNet(10, 2, classes),
    "wrn-16-1": lambda classes: TradesWideResNet(16, 1, classes),
    "resnet-18": lambda classes: KuangliuResNet(KuangliuBasicBlock, (2, 2, 2, 2), classes),
    "resnet-34": lambda classes: KuangliuResNet(KuangliuBasicBlock, (3, 4, 6, 3), classes),
    "preact-resnet-18": lambda classes: KuangliuResNet(KuangliuPreActBlock, (2, 2, 2, 2), classes),
    "mobilenetv2": lambda classes: KuangliuMobileNetV2(classes),
    "wrn-34-10": lambda classes: TradesWideResNet(34, 10, classes),
}
