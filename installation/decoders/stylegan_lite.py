"""The generator ``installation train`` trains and the GAN decoder runs (architecture ``stylegan-lite``).

A mapping network turns z into a style w, a learned 4x4 constant is upsampled block by block, and every block's
features are scaled and shifted by w (AdaIN). It lives with the decoders, which load it from a generator file's
declared architecture (:mod:`installation.decoders.gan_nets`); the training (:mod:`installation.spaces.train`)
imports it from here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .gan_configs import GanConfig  # (the config lives without torch, for a file's header check)


# -- the nets ---------------------------------------------------------------------------------------------------


class EqLinear(nn.Module):
    """A linear layer with StyleGAN's equalised learning rate: N(0, 1) weights scaled by 1/sqrt(fan_in) at run time,
    so Adam moves every layer at the same relative rate (``lr_mul`` slows one, as the mapping network wants)."""

    def __init__(self, cin: int, cout: int, lr_mul: float = 1.0, bias_init: float = 0.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin) / lr_mul)
        self.bias = nn.Parameter(torch.full((cout,), bias_init / lr_mul))
        self.scale, self.lr_mul = lr_mul / math.sqrt(cin), lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class EqConv2d(nn.Module):
    """A conv with the equalised learning rate (see :class:`EqLinear`); 'same' padding."""

    def __init__(self, cin: int, cout: int, k: int, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.scale, self.pad = 1 / math.sqrt(cin * k * k), k // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.pad)


class Mapping(nn.Module):
    """z -> w: normalise z to the unit sphere (times sqrt(dim)), then an MLP."""

    def __init__(self, z_dim: int, w_dim: int, layers: int) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        for i in range(layers):
            mods += [EqLinear(z_dim if i == 0 else w_dim, w_dim, lr_mul=0.01), nn.LeakyReLU(0.2)]
        self.net = nn.Sequential(*mods)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z * torch.rsqrt(z.square().mean(dim=1, keepdim=True) + 1e-8)
        return self.net(z)


class StyleBlock(nn.Module):
    """Upsample x2, then two 3x3 convs, each followed by instance norm and a per-channel scale/shift from w."""

    def __init__(self, cin: int, cout: int, w_dim: int, upsample: bool = True) -> None:
        super().__init__()
        self.upsample = upsample
        self.conv1 = EqConv2d(cin, cout, 3)
        self.conv2 = EqConv2d(cout, cout, 3)
        self.style = EqLinear(w_dim, 4 * cout)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        s1, b1, s2, b2 = self.style(w)[:, :, None, None].chunk(4, dim=1)
        x = F.leaky_relu(F.instance_norm(self.conv1(x)) * (1 + s1) + b1, 0.2)
        return F.leaky_relu(F.instance_norm(self.conv2(x)) * (1 + s2) + b2, 0.2)


class Synthesis(nn.Module):
    """w -> image in -1..1: a learned 4x4 constant, StyleBlocks up to ``size``, a 1x1 conv to RGB and tanh."""

    def __init__(self, cfg: GanConfig) -> None:
        super().__init__()
        self.const = nn.Parameter(torch.randn(1, cfg.channels(4), 4, 4))
        blocks = [StyleBlock(cfg.channels(4), cfg.channels(4), cfg.w_dim, upsample=False)]
        res = 4
        while res < cfg.size:
            blocks.append(StyleBlock(cfg.channels(res), cfg.channels(res * 2), cfg.w_dim))
            res *= 2
        self.blocks = nn.ModuleList(blocks)
        self.to_rgb = EqConv2d(cfg.channels(cfg.size), 3, 1)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        x = self.const.expand(w.shape[0], -1, -1, -1)
        for block in self.blocks:
            x = block(x, w)
        return torch.tanh(self.to_rgb(x))


class Generator(nn.Module):
    """Mapping + synthesis; ``w_avg`` (tracked while training) is the centre the truncation pulls toward."""

    def __init__(self, cfg: GanConfig) -> None:
        super().__init__()
        self.mapping = Mapping(cfg.z_dim, cfg.w_dim, cfg.mapping_layers)
        self.synthesis = Synthesis(cfg)
        self.register_buffer("w_avg", torch.zeros(cfg.w_dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.synthesis(self.mapping(z))


class ExportedGenerator(nn.Module):
    """What the GAN decoder runs: z [B, z_dim] -> image [B, 3, size, size] in -1..1.

    The mapping normalises z, so z's length is free to carry the truncation: w = w_avg + (|z| / sqrt(dim)) *
    (mapping(z) - w_avg). A standard-normal z (length ~ sqrt(dim)) is the trained model; the decoder's
    ``gan.truncation`` psi scales z, so psi 0 is the mean image and psi < 1 stays closer to it, as in StyleGAN.
    """

    architecture = "stylegan-lite"  # the name a generator file declares (decoders/gan_nets.py)
    Config = GanConfig

    def __init__(self, cfg: GanConfig, gen: Generator | None = None) -> None:
        super().__init__()
        gen = gen or Generator(cfg)
        self.config = cfg
        self.mapping = gen.mapping
        self.synthesis = gen.synthesis
        self.register_buffer("w_avg", gen.w_avg.detach().clone())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        r = z.square().mean(dim=1, keepdim=True).sqrt()
        w = self.w_avg + r * (self.mapping(z) - self.w_avg)
        return self.synthesis(w)
