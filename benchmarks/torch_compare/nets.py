"""The PyTorch networks of the comparison (reference layouts), calibrated on noise."""

import functools

import torch
import torch.nn.functional as F
from torch import nn

from dgad_tf.teachers.torch_reference import NETWORKS

from .settings import NUM_CLASSES


class SmallCNN(nn.Module):
    """`dgad_tf.models.small`'s four-conv CNN (for the CI-sized test)."""

    def __init__(self, num_classes=NUM_CLASSES):
        super().__init__()
        widths = (32, 32, 64, 64)
        in_ch = 3
        for i, width in enumerate(widths, start=1):
            setattr(self, f"conv{i}", nn.Conv2d(in_ch, width, 3, 1, 1, bias=False))
            setattr(self, f"bn{i}", nn.BatchNorm2d(width))
            in_ch = width
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        for i in range(1, 5):
            x = F.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
            if i in (2, 4):
                x = F.max_pool2d(x, 2)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


# The zoo's networks in the public PyTorch layouts the converter reads (kuangliu, TRADES).
TORCH_NETS = {
    "small-cnn": SmallCNN,
    **{
        arch: functools.partial(NETWORKS[arch], NUM_CLASSES)
        for arch in ("resnet-18", "mobilenetv2", "wrn-34-10")
    },
}


def build_torch_net(arch: str, seed: int, device="cpu") -> nn.Module:
    """A PyTorch network with default init and batch-norm statistics calibrated on noise.

    The running statistics are the cumulative mean over four training-mode forwards of
    uniform images (so inference mode normalises to about unit scale, as in a trained network).
    """
    torch.manual_seed(seed)
    net = TORCH_NETS[arch]()
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.momentum = None  # cumulative average
    net.train()
    with torch.no_grad():
        for _ in range(4):
            net(torch.rand(16, 3, 32, 32))
    for bn in bns:
        bn.momentum = 0.1
        bn.num_batches_tracked.zero_()
    return net.eval().to(device)
