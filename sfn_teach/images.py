"""CIFAR-10 images as tensors: their classes and shape, and batch operations on the device.

The batch operations work on whole batches on the images' device, with no per-sample Python
work: per-channel normalisation of ``uint8`` images (:func:`normalize`) and the random crop
(zero padding 4) and horizontal flip (:func:`random_crop_flip`).
:func:`sfn_teach.data.cifar10_dataset` keeps the images on the device as ``uint8`` with these
as per-batch transform and augmentation, and :class:`sfn_teach.data.Batches` shuffles them;
:func:`validation_split` is the paper's hold-out of 10 % of the training set.
:func:`synthetic_cifar_batch` makes one CIFAR-shaped batch on the device for throughput
measurements. Reading the images from the archive is :mod:`sfn_teach.cifar10`'s job.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .checks import integer, real

__all__ = [
    "CLASSES", "IMAGE_SHAPE", "MEAN", "STD", "normalize", "random_crop_flip",
    "synthetic_cifar_batch", "validation_size", "validation_split"
]

CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
IMAGE_SHAPE = (3, 32, 32)
# Per-channel mean and standard deviation of the 50,000 training images, pixel values in [0, 1].
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


def synthetic_cifar_batch(batch_size, device=None, generator=None):
    """One normalised batch ``(float32 [B, 3, 32, 32], int64 [B])`` of random CIFAR-shaped data.

    Uniform random pixels through :func:`normalize` and uniform labels, made directly on
    ``device`` (``generator``, if given, must live there): for throughput measurements, where
    the content does not matter but the shapes, dtypes and normalisation cost do.
    """
    images = torch.randint(
        256, (batch_size, *IMAGE_SHAPE), generator=generator, device=device, dtype=torch.uint8
    )
    labels = torch.randint(len(CLASSES), (batch_size,), generator=generator, device=device)
    return normalize(images), labels


def normalize(images, mean=MEAN, std=STD, dtype=torch.float32):
    """``x ↦ (x/255 − mean_c)/std_c`` per channel ``c``, for ``uint8 [N, 3, H, W]`` images.

    Computed on the images' device in one broadcast; returns ``dtype`` (float32) with the
    images' memory format.
    """
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != len(mean):
        raise ValueError(
            f"images must be uint8 [N, {len(mean)}, H, W], got {images.dtype} "
            f"{tuple(images.shape)}"
        )
    mean = torch.tensor(mean, dtype=dtype, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(std, dtype=dtype, device=images.device).view(1, -1, 1, 1)
    return images.to(dtype).div_(255).sub_(mean).div_(std)


def random_crop_flip(images, generator=None, padding=4):
    """Random translation and horizontal flip of a batch ``[N, C, H, W]``, without a loop.

    Per image, independently: pad by ``padding`` zeros on each side, take the ``H×W`` window
    at a uniform offset ``(dy, dx) ∈ {0 … 2·padding}²`` and, with probability ½, reverse the
    width axis — i.e. ``out[n, c, i, j] = padded[n, c, i + dy, j + dx]``, or ``… W − 1 − j + dx``
    when flipped. The standard CIFAR augmentation (crop 32, pad 4, flip), done by one gather on
    the images' device; the dtype is kept, so apply it to ``uint8`` images before
    :func:`normalize` (the padding is then black). The ``3N`` random numbers are drawn from
    ``generator`` on its own device (the default generator of the images' device if ``None``)
    and moved to the images: with a CPU generator the result is the same on every device.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be [N, C, H, W], got shape {tuple(images.shape)}")
    integer("padding", padding, 0)
    n, channels, height, width = images.shape
    device = images.device
    source = generator.device if generator is not None else device
    padded = F.pad(images, (padding, padding, padding, padding))
    shifts = torch.randint(2 * padding + 1, (2, n, 1), generator=generator, device=source)
    dy, dx = shifts.to(device)
    flip = (torch.rand(n, 1, generator=generator, device=source) < 0.5).to(device)
    rows = dy + torch.arange(height, device=device)
    columns = torch.arange(width, device=device)
    columns = dx + torch.where(flip, columns.flip(0), columns)
    return padded[
        torch.arange(n, device=device).view(n, 1, 1, 1),
        torch.arange(channels, device=device).view(1, channels, 1, 1),
        rows.view(n, 1, height, 1),
        columns.view(n, 1, 1, width),
    ]


def validation_size(num_train, fraction):
    """How many of ``num_train`` images :func:`validation_split` holds out, ``round(f·N)``."""
    real("fraction", fraction, 0.0, 1.0, high_open=True)
    return round(fraction * num_train)


def validation_split(num_train, fraction=0.1, seed=0):
    """Disjoint index sets ``(train, validation)`` covering ``0 … num_train−1``, sorted.

    :func:`validation_size` indices, drawn uniformly without replacement by a CPU generator
    seeded with ``seed``, are held out for validation (the same on every machine).
    """
    held_out = validation_size(num_train, fraction)
    permutation = torch.randperm(num_train, generator=torch.Generator().manual_seed(seed))
    return permutation[held_out:].sort().values, permutation[:held_out].sort().values
