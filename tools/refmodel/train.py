"""Train the reference classifiers with PyTorch (CPU) and export them to ONNX.

Only this module imports torch; it runs in the separate torch venv (/work/venv-torch). Both
networks are plain chains of conv / depthwise conv / ReLU6 / pooling / dense layers with
BatchNorm folded before export, so their ONNX graphs can be read back layer by layer
(onnx_layers.py) and rebuilt elsewhere (Keras, for the TFLite files).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from refmodel.pack import normalise_nchw

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Arch:
    """A network: ('conv'|'dw', out_channels, stride) blocks, then global pooling and dense."""

    name: str
    description: str
    blocks: tuple[tuple[str, int, int], ...]
    epochs: int
    lr: float


# MobileNet-v1 style: a full 3x3 stem, then depthwise-separable blocks (dw 3x3 + pw 1x1).
PRIMARY = Arch(
    name="inspect-primary",
    description="MobileNet-v1 style: 3x3 conv stem, 6 depthwise-separable blocks, "
    "global avg+max pooling, dense; BatchNorm folded, ReLU6",
    blocks=(
        ("conv", 16, 2),
        ("dw", 32, 2),
        ("dw", 48, 1),
        ("dw", 64, 2),
        ("dw", 64, 1),
        ("dw", 128, 2),
        ("dw", 128, 1),
    ),
    epochs=16,
    lr=3e-3,
)
# A tiny plain CNN: the supervisor's fallback when the primary fails or is too slow.
FALLBACK = Arch(
    name="inspect-fallback",
    description="tiny CNN: 4 strided 3x3 convs, global avg+max pooling, dense; "
    "BatchNorm folded, ReLU6",
    blocks=(("conv", 8, 2), ("conv", 16, 2), ("conv", 24, 2), ("conv", 32, 2)),
    epochs=16,
    lr=6e-3,
)


def build(arch: Arch, classes: int) -> Any:
    """Return the torch model (with BatchNorm, for training) of ``arch``."""
    import torch
    from torch import nn

    layers: list[nn.Module] = []
    channels = 3
    for kind, out, stride in arch.blocks:
        if kind == "conv":
            layers += [nn.Conv2d(channels, out, 3, stride, 1, bias=False), nn.BatchNorm2d(out)]
            layers.append(nn.ReLU6())
        else:
            layers += [
                nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU6(),
                nn.Conv2d(channels, out, 1, 1, 0, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU6(),
            ]
        channels = out
    layers += [_global_pool(), nn.Linear(2 * channels, classes)]
    model = nn.Sequential(*layers)
    torch.nn.init.zeros_(model[-1].bias)
    return model


def _global_pool() -> Any:
    """Global average and max pooling, concatenated: [N,C,H,W] -> [N,2C].

    Averages count things (four holes or three); maxima keep a thin defect that covers a few
    cells of the last feature map from being diluted away.
    """
    import torch
    from torch import nn

    class GlobalAvgMaxPool(nn.Module):  # type: ignore[misc]
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)

    return GlobalAvgMaxPool()


def fold_batchnorm(model: Any) -> Any:
    """Return an eval-mode copy of ``model`` with every BatchNorm folded into its conv."""
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = model.eval()
    out: list[nn.Module] = []
    layers = list(model)
    k = 0
    while k < len(layers):
        layer = layers[k]
        if isinstance(layer, nn.Conv2d) and isinstance(layers[k + 1], nn.BatchNorm2d):
            out.append(fuse_conv_bn_eval(layer, layers[k + 1]))
            k += 2
        else:
            out.append(layer)
            k += 1
    return nn.Sequential(*out).eval()


def train(
    arch: Arch,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    val_images: np.ndarray,
    val_labels: np.ndarray,
    seed: int,
    classes: int,
) -> tuple[Any, dict[str, float]]:
    """Train ``arch``; return the BatchNorm-folded eval model and a few training figures."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    # channels_last is 1.3-2x faster for depthwise convolutions on CPU.
    model = build(arch, classes).to(memory_format=torch.channels_last)
    x_all = torch.from_numpy(normalise_nchw(train_images)).contiguous(
        memory_format=torch.channels_last
    )
    y_all = torch.from_numpy(train_labels)
    x_val = torch.from_numpy(normalise_nchw(val_images))
    batch = 64
    steps = arch.epochs * (len(x_all) // batch)
    optimiser = torch.optim.AdamW(model.parameters(), lr=arch.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, arch.lr, total_steps=steps, pct_start=0.15
    )
    generator = torch.Generator().manual_seed(seed)
    started = time.monotonic()
    for epoch in range(arch.epochs):
        model.train()
        order = torch.randperm(len(x_all), generator=generator)
        total = 0.0
        for b in range(len(x_all) // batch):
            idx = order[b * batch : (b + 1) * batch]
            x, y = x_all[idx], y_all[idx]
            # The parts are symmetric and lie in any orientation: flips and quarter turns are free
            # extra data and keep every defect's class.
            if torch.rand((), generator=generator) < 0.5:
                x = torch.flip(x, dims=(3,))
            x = torch.rot90(x, int(torch.randint(0, 4, (), generator=generator)), dims=(2, 3))
            loss = F.cross_entropy(model(x), y, label_smoothing=0.05)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item()
        val_acc = accuracy(model, x_val, val_labels)
        log.info(
            "%s epoch %d/%d loss %.4f val top1 %.4f (%.0f s)",
            arch.name,
            epoch + 1,
            arch.epochs,
            total / (len(x_all) // batch),
            val_acc,
            time.monotonic() - started,
        )
    folded = fold_batchnorm(model)
    figures = {
        "train_seconds": round(time.monotonic() - started, 1),
        "val_top1": accuracy(folded, x_val, val_labels),
        "params": sum(int(p.numel()) for p in folded.parameters()),
    }
    return folded, figures


def accuracy(model: Any, x: Any, labels: np.ndarray) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on normalised inputs ``x``."""
    import torch

    model.eval()
    with torch.no_grad():
        predictions = torch.cat([model(x[k : k + 256]) for k in range(0, len(x), 256)]).argmax(1)
    return float((predictions.numpy() == labels).mean())


def export_onnx(folded: Any, path: Path) -> None:
    """Write ``folded`` as FP32 ONNX opset 17: ``input`` [batch,3,96,96] -> ``logits``."""
    import onnx
    import torch

    dummy = torch.zeros(1, 3, 96, 96)
    torch.onnx.export(
        folded,
        (dummy,),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    # Drop the exporter's per-run metadata so the same weights give the same bytes.
    model.producer_version = ""
    del model.metadata_props[:]
    onnx.save(model, str(path))
