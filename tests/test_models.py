"""The MLP and the CIFAR ResNet-18: shapes, parameter counts, architecture, memory format."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sfn_teach.models import ACTIVATIONS, MLP, count_parameters, resnet18_cifar


@pytest.fixture(autouse=True)
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def test_default_mlp_is_the_small_digits_network():
    model = MLP()
    assert count_parameters(model) == 64 * 24 + 24 + 24 * 10 + 10 == 1810
    assert model(torch.randn(5, 8, 8)).shape == (5, 10)  # (N, 8, 8) images are flattened


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_mlp_computes_affine_maps_with_activation_between_layers(activation):
    model = MLP((4, 6, 5, 3), activation).double()
    x = torch.randn(7, 2, 2, dtype=torch.float64)
    sigma = {
        "tanh": torch.tanh,
        "relu": F.relu,
        "gelu": F.gelu,
        "sigmoid": torch.sigmoid,
        "softplus": F.softplus,
    }[activation]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(4, 6), (6, 5), (5, 3)]
    h = x.reshape(7, 4)
    for i, layer in enumerate(linears):
        h = h @ layer.weight.T + layer.bias
        if i < len(linears) - 1:  # no activation after the last layer: the output is logits
            h = sigma(h)
    torch.testing.assert_close(model(x), h, rtol=0, atol=1e-12)


def test_mlp_bad_input():
    with pytest.raises(ValueError, match="activation must be one of .*'swish'"):
        MLP(activation="swish")
    with pytest.raises(ValueError, match=r"sizes must be .*at least 2 positive ints.*\(64,\)"):
        MLP(sizes=(64,))
    with pytest.raises(ValueError, match=r"sizes must be .*\(64, 0, 10\)"):
        MLP(sizes=(64, 0, 10))


def test_full_resnet18_has_the_published_parameter_count():
    model = resnet18_cifar()
    assert count_parameters(model) == 11_173_962
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    batchnorms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == 1 + 8 * 2 + 3 == len(batchnorms)  # stem, 8 blocks, 3 shortcut convs
    assert convs[0].kernel_size == (3, 3) and convs[0].stride == (1, 1)
    assert all(conv.bias is None for conv in convs)


def test_resnet18_stages_downsample_and_widen():
    width = 4
    model = resnet18_cifar(num_classes=7, width=width, in_channels=1)
    shapes = []
    for stage in range(4):
        block = model[2 + 2 * stage]
        block.register_forward_hook(lambda m, inputs, out: shapes.append(tuple(out.shape[1:])))
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)
    assert shapes == [(4, 32, 32), (8, 16, 16), (16, 8, 8), (32, 4, 4)]


def test_resnet18_channels_last_matches_contiguous():
    model = resnet18_cifar(width=8).double()
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    for train in (True, False):
        model.train(train)
        reference = model(x)
        last = model.to(memory_format=torch.channels_last)
        assert last[0][0].weight.is_contiguous(memory_format=torch.channels_last)
        out = last(x.to(memory_format=torch.channels_last))
        model.to(memory_format=torch.contiguous_format)
        torch.testing.assert_close(out, reference, rtol=0, atol=1e-10)


def test_resnet18_bad_input():
    with pytest.raises(ValueError, match="width must be an int >= 1, got 0"):
        resnet18_cifar(width=0)
    with pytest.raises(ValueError, match="num_classes must be an int >= 1, got -1"):
        resnet18_cifar(num_classes=-1)
    with pytest.raises(ValueError, match="in_channels must be an int >= 1, got 2.0"):
        resnet18_cifar(in_channels=2.0)
