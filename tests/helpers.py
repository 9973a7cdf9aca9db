"""Small builders shared by several test files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def make_tiny_camvid(root: Path, splits=("train", "val", "test"), count: int = 3, size=(24, 32)) -> Path:
    """A CamVid-layout folder of random images and labels (0..11, 11 = void)."""
    rng = np.random.default_rng(0)
    for split in splits:
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        for i in range(count):
            Image.fromarray(rng.integers(0, 12, size=size, dtype=np.uint8)).save(root / f"{split}annot" / f"{i}.png")
            Image.fromarray(rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)).save(root / split / f"{i}.png")
    return root


def randomize_bn_statistics(model: torch.nn.Module) -> torch.nn.Module:
    """Give every BatchNorm2d non-trivial running statistics, as a trained model has."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    return model
