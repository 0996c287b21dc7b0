"""The networks of the notebooks: a small MLP and the CIFAR variant of ResNet-18.

The MLP is small enough (1,810 parameters by default) that its exact Hessian can be formed
and compared with the matrix-free products; ResNet-18 is the paper's large-scale network.
"""

import torch
from torch import nn

from .checks import ArgumentError, choice, integer, real

__all__ = ["ACTIVATIONS", "MLP", "BasicBlock", "count_parameters", "resnet18_cifar"]

ACTIVATIONS = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "softplus": nn.Softplus,
}


class MLP(nn.Module):
    """``x ↦ W_L σ(… σ(W_1 x + b_1) …) + b_L``, the layer widths given by ``sizes``.

    ``sizes = (n_0, n_1, …, n_L)``: ``L`` linear layers with the activation ``σ`` between them
    (not after the last, so the output is logits). An input of shape ``(N, …)`` is flattened to
    ``(N, n_0)``. The default ``(64, 24, 10)`` has ``64·24 + 24 + 24·10 + 10 = 1,810``
    parameters, for the 8×8 digits, where the exact Hessian is still cheap.

    ``init_scale = a₀`` multiplies every parameter of PyTorch's default initialisation
    (``W, b ~ U(−1/√n_in, 1/√n_in)``) by ``a₀``, so that ``θ₀ = a₀ θ_default``: with ``a₀ ≪ 1``
    and two hidden layers or more the network starts next to the saddle ``θ = 0`` and sits
    on a plateau (notebook 05, :mod:`sfn_teach.plateaus`). The default ``a₀ = 1`` leaves the
    initialisation untouched.
    """

    def __init__(self, sizes=(64, 24, 10), activation="tanh", init_scale=1.0):
        super().__init__()
        sizes = tuple(sizes)
        if len(sizes) < 2 or not all(type(size) is int and size >= 1 for size in sizes):
            raise ArgumentError("sizes", "must be a sequence of at least 2 positive ints (input, "
                                f"..., output), got {sizes!r}")
        choice("activation", activation, ACTIVATIONS)
        init_scale = real("init_scale", init_scale, 0.0, low_open=True)
        layers = [nn.Flatten()]
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(n_in, n_out), ACTIVATIONS[activation]()]
        self.layers = nn.Sequential(*layers[:-1])
        if init_scale != 1.0:
            with torch.no_grad():
                for parameter in self.parameters():
                    parameter.mul_(init_scale)

    def forward(self, x):
        return self.layers(x)


def _conv_bn(in_channels, out_channels, kernel_size, stride):
    """A bias-free ``kernel_size`` convolution ('same' padding) followed by BatchNorm."""
    conv = nn.Conv2d(
        in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False
    )
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels))


class BasicBlock(nn.Module):
    """``x ↦ ReLU(BN(conv(ReLU(BN(conv(x))))) + shortcut(x))``, two 3×3 convolutions.

    The shortcut is the identity, or a strided 1×1 convolution with BatchNorm when the stride
    or the number of channels changes.
    """

    def __init__(self, in_channels, out_channels, stride):
        super().__init__()
        self.residual = nn.Sequential(
            _conv_bn(in_channels, out_channels, 3, stride),
            nn.ReLU(),
            _conv_bn(out_channels, out_channels, 3, 1),
        )
        if stride != 1 or in_channels != out_channels:
            self.shortcut = _conv_bn(in_channels, out_channels, 1, stride)
        else:
            self.shortcut = nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.residual(x) + self.shortcut(x))


def resnet18_cifar(num_classes=10, width=64, in_channels=3):
    """ResNet-18 for 32×32 images (He et al. 2016, as used for CIFAR-10 in the paper).

    A 3×3 stride-1 stem convolution with BatchNorm and ReLU (no max-pool), four stages of two
    :class:`BasicBlock` with ``width·(1, 2, 4, 8)`` channels and strides ``(1, 2, 2, 2)``,
    global average pooling and a linear head. With ``width=64`` it has 11,173,962 parameters;
    a small ``width`` (e.g. 8) gives the same architecture for quick tests. Works in
    ``torch.channels_last`` memory format.
    """
    integer("num_classes", num_classes, 1)
    integer("width", width, 1)
    integer("in_channels", in_channels, 1)
    layers = [_conv_bn(in_channels, width, 3, 1), nn.ReLU()]
    channels = width
    for multiple, stride in zip((1, 2, 4, 8), (1, 2, 2, 2)):
        out_channels = width * multiple
        layers += [
            BasicBlock(channels, out_channels, stride),
            BasicBlock(out_channels, out_channels, 1),
        ]
        channels = out_channels
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)]
    return nn.Sequential(*layers)


def count_parameters(model):
    """The number of scalar parameters of ``model``, ``Σ_p numel(p)`` over all its parameters."""
    return sum(p.numel() for p in model.parameters())
