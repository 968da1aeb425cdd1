"""Models shared by the conversion tests.

timm does not install beside this torch, so its ``timm.layers.Mlp`` is emulated by ``TimmStyleMlp`` (the same
attributes and forward as timm's for ``act_layer=nn.ReLU``, ``norm_layer=None``: ``fc1, act, drop1,
norm=Identity, fc2, drop2``).
"""

import torch
from torch import nn


class TimmStyleMlp(nn.Module):
    """Emulation of timm's ``Mlp`` with ReLU (the same attribute names and forward)."""

    def __init__(self, in_features, hidden_features, out_features, drop=(0.0, 0.0), bias=True):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = nn.ReLU()
        self.drop1 = nn.Dropout(drop[0])
        self.norm = nn.Identity()
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias)
        self.drop2 = nn.Dropout(drop[1])

    def forward(self, x):
        x = self.fc1(x)
        x = self.act(x)
        x = self.drop1(x)
        x = self.norm(x)
        x = self.fc2(x)
        x = self.drop2(x)
        return x


class Encoder(nn.Module):
    def __init__(self, mlp):
        super().__init__()
        self.embed = nn.Linear(5, 12)
        self.mlp = mlp

    def forward(self, x):
        return self.mlp(torch.tanh(self.embed(x)))
