"""Setting 2, frozen-backbone head: a small 1D CNN is trained on a separate MNIST-1D draw, then frozen; the
heads (MLP vs GLAI) train on its features of the main draw, GLAI with the pattern cache.

The features are the CNN's flattened last convolution (32 channels x 10 positions), not its penultimate
classifier layer, so that the head still has something to learn. The backbone is trained once per study (seed
0) and shared by every head seed and by the few-shot setting; its own training time is not part of any head's.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from ..data import NUM_CLASSES, Split, mnist1d
from ..train import cosine_lr
from .common import Preset, Record, run_heads, runs_per_seed_and_tuning
from .hyper_search import validation_split
from .variants import policy_variants, select

NAME = "backbone"


class ConvEncoder(nn.Module):
    """``[B, 40] -> [B, 320]``: three 1D convolutions with ReLU, the last two halving the length."""

    def __init__(self, channels: int = 32, length: int = 40):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(1, channels, 5, padding=2),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.out_features = channels * ((length + 3) // 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.unsqueeze(1))


@torch.no_grad()
def features(encoder: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    encoder.eval()
    return torch.cat([encoder(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)])


def train_backbone(preset: Preset, device, data_seed: int = 1042, seed: int = 0) -> tuple[ConvEncoder, dict]:
    """The CNN classifier on its own draw; returns the frozen encoder and what it cost and reached."""
    data = mnist1d(preset.backbone_samples, seed=data_seed).to(device)
    torch.manual_seed(seed)
    encoder = ConvEncoder().to(device)
    classifier = nn.Linear(encoder.out_features, NUM_CLASSES).to(device)
    params = [*encoder.parameters(), *classifier.parameters()]
    opt = torch.optim.Adam(params, lr=preset.lr)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for epoch in range(preset.backbone_epochs):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(preset.lr, epoch, preset.backbone_epochs)
        order = torch.randperm(data.x.shape[0], generator=gen).to(device)
        encoder.train()
        for i in range(0, data.x.shape[0], preset.batch_size):
            idx = order[i : i + preset.batch_size]
            loss = F.cross_entropy(classifier(encoder(data.x[idx])), data.y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        acc = (classifier(features(encoder, data.x_test)).argmax(-1) == data.y_test).float().mean().item()
    for p in encoder.parameters():
        p.requires_grad_(False)
    info = {
        "backbone_seconds": seconds,
        "backbone_test_acc": 100 * acc,
        "backbone_samples": preset.backbone_samples,
    }
    return encoder, info


def feature_split(encoder: nn.Module, data: Split) -> Split:
    return Split(features(encoder, data.x), data.y, features(encoder, data.x_test), data.y_test)


def variants_for(preset: Preset) -> dict:
    return policy_variants(preset.backbone_grid, preset.head_epochs)


def count(preset: Preset, only=None) -> int:
    per_seed, tuning = runs_per_seed_and_tuning(select(variants_for(preset), only), preset)
    return len(preset.seeds) * per_seed + tuning


def run(
    preset: Preset, device, encoder: nn.Module, info: dict, data_seed: int = 42, tick=None, only=None
) -> list[Record]:
    data = feature_split(encoder, mnist1d(preset.samples, seed=data_seed).to(device))
    variants = select(variants_for(preset), only)
    return run_heads(
        NAME,
        data,
        variants,
        preset=preset,
        epochs=preset.head_epochs,
        extra=info,
        tick=tick,
        tune_data=validation_split(data),
    )
