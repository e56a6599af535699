"""The embedded default decoder: a compositional pattern-producing network (CPPN).

Each pixel's coordinates (x, y, r) and the frame's latent z go through a small MLP with mixed activations (sine,
tanh, gaussian, softsign) to RGB. Weights are drawn from ``model_seed``, so there is no weights file and every seed
is a different "model" whose latent space the show walks. The coordinate half of the first layer is computed once
per resolution; per frame the latent only shifts that layer's bias, so a frame costs depth x width^2 MACs a pixel.

A scene gives its CPPN a form through ``[decoder.geometry]`` (:class:`Geometry`): the pixel coordinates are bent
before they enter the network (polar angle and radius, mirror and rotational symmetry, tiling, a domain warp,
stretched axes) and a soft envelope can fade the picture out away from a centre. All of it is computed once per
resolution with the coordinate term, so a form costs nothing per frame.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..sizes import Size, SizeT
from . import register
from .base import DecoderSettings, LatentRequest

if TYPE_CHECKING:
    import torch

Activation = Literal["sin", "tanh", "gauss", "softsign", "cos", "relu"]


def _act_(name: str, x: torch.Tensor) -> None:
    """Apply an activation in place on a contiguous block of units."""
    if name == "sin":
        x.sin_()
    elif name == "cos":
        x.cos_()
    elif name == "tanh":
        x.tanh_()
    elif name == "gauss":
        x.square_().clamp_(max=80.0).neg_().exp_().mul_(2.0).sub_(1.0)  # clamp: no denormals (slow path)
    elif name == "softsign":
        x.div_(x.abs().add_(1.0))
    else:
        x.relu_().sub_(0.5)


Pair = tuple[Annotated[float, Field(ge=-8, le=8)], Annotated[float, Field(ge=-8, le=8)]]


class Geometry(BaseModel):
    """``[decoder.geometry]``: how the pixel coordinates are bent before they enter the network, in screen units
    (the picture's height spans -1..1), in this order: centre, rotate, stretch, mirror, folds (or polar), tile, warp;
    then ``zoom``. The defaults leave the plain (x, y, r) of a CPPN, and the same seed draws the same network."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    coords: Annotated[Literal["cartesian", "polar"], Field(
        description="'polar': the network sees (angle, radius) instead of (x, y): rays and rings")] = "cartesian"
    centre: Annotated[Pair, Field(description="[x, y] of the form's centre, in screen units")] = (0.0, 0.0)
    rotate: Annotated[float, Field(ge=-360, le=360, description="degrees, counter-clockwise")] = 0.0
    stretch: Annotated[tuple[Annotated[float, Field(gt=0, le=16)], Annotated[float, Field(gt=0, le=16)]], Field(
        description="[x, y] scale of the coordinates (in polar: [angle, radius]); [4, 0.4] makes vertical "
                    "curtains, fine across and long down")] = (1.0, 1.0)
    mirror: Annotated[Literal["none", "x", "y", "xy"], Field(
        description="mirror symmetry: 'x' mirrors the left half onto the right (a vertical axis)")] = "none"
    folds: Annotated[int, Field(ge=0, le=24, description="rotational symmetry: the angle folded into this many "
                                                         "mirrored wedges (a kaleidoscope); 0 = none")] = 0
    tile: Annotated[float, Field(ge=0, le=8, description="period of a mirrored tiling in screen units (a lattice); "
                                                         "0 = none")] = 0.0
    warp: Annotated[float, Field(ge=0, le=4, description="domain warp: how far (screen units) the coordinates are "
                                                         "pushed by a seeded smooth field; 0 = none")] = 0.0
    warp_scale: Annotated[float, Field(gt=0, le=32, description="spatial frequency of the warp field")] = 1.5
    warp_octaves: Annotated[int, Field(ge=1, le=6, description="layers of the warp, each twice as fine")] = 2
    envelope: Annotated[float, Field(ge=0, le=8, description="radius (screen units) of a soft fade to black around "
                                                             "the centre; 0 = none")] = 0.0

    def coordinates(self, w: int, h: int, zoom: float, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """((3, h*w) network inputs, (1, h*w) output logit offset or None) for a w x h picture."""
        import torch

        aspect = w / h
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, dtype=torch.float64),
                                torch.linspace(-aspect, aspect, w, dtype=torch.float64), indexing="ij")
        x, y = xs - self.centre[0], ys + self.centre[1]  # screen y grows downwards; the centre's y upwards
        envelope = None
        if self.envelope > 0:
            envelope = (-4.0 * (x * x + y * y) / self.envelope ** 2).reshape(1, -1).float()
        if self.rotate:
            a = math.radians(self.rotate)
            x, y = x * math.cos(a) + y * math.sin(a), -x * math.sin(a) + y * math.cos(a)
        polar = self.coords == "polar"
        if not polar:
            x, y = x * self.stretch[0], y * self.stretch[1]
        if self.mirror in ("x", "xy"):
            x = x.abs()
        if self.mirror in ("y", "xy"):
            y = y.abs()
        if polar or self.folds:
            r, theta = torch.sqrt(x * x + y * y), torch.atan2(y, x)
            wedge = 2 * math.pi / max(self.folds, 1)
            theta = (theta % wedge - wedge / 2).abs()  # mirrored wedges: continuous across their edges
            if polar:  # the angle scaled to the radius's range, so neither dominates by units alone
                x, y = theta / (wedge / 2) * self.stretch[0], r * self.stretch[1]
            else:
                x, y = r * torch.cos(theta), r * torch.sin(theta)
        if self.tile > 0:
            p = self.tile
            x = p * ((x / p) % 2.0 - 1.0).abs()  # a triangle wave: mirrored cells, no seams
            y = p * ((y / p) % 2.0 - 1.0).abs()
        if self.warp > 0:
            g = torch.Generator().manual_seed(int(seed) * 7919 + 17)  # its own stream: the network draws stay put
            dx, dy = torch.zeros_like(x), torch.zeros_like(y)
            for octave in range(self.warp_octaves):
                f, amp = self.warp_scale * 2 ** octave, self.warp / 2 ** octave
                for d in (dx, dy):
                    k = torch.randn(2, generator=g, dtype=torch.float64)
                    k = k / k.norm() * f
                    phase = float(torch.rand(1, generator=g, dtype=torch.float64)) * 2 * math.pi
                    d += amp * torch.sin(k[0] * x + k[1] * y + phase)
            x, y = x + dx, y + dy
        x, y = x * zoom, y * zoom
        coords = torch.stack([x, y, torch.sqrt(x * x + y * y)], dim=0).reshape(3, -1).float()
        return coords, envelope


class CPPNSettings(DecoderSettings):
    """Architecture and look of one CPPN "model"."""

    model_seed: Annotated[int, Field(ge=0, description="draws the weights: each seed is a different model")] = 0
    resolution: Size = SizeT(256, 256)
    cuda_resolution: Annotated[Size | None, Field(
        description="on a CUDA device render at this size instead, e.g. the projector's (about 1.5 ms at 1080p on "
                    "an H200); the CPU keeps `resolution` and its rate")] = None
    width: Annotated[int, Field(ge=4, le=256, description="hidden units per layer")] = 32
    depth: Annotated[int, Field(ge=1, le=12, description="hidden layers")] = 4
    latent_dim: Annotated[int, Field(ge=1, le=512, description="size of the latent z")] = 8
    activations: Annotated[tuple[Activation, ...], Field(min_length=1)] = ("sin", "tanh", "gauss", "softsign")
    gain: Annotated[float, Field(gt=0, le=8, description="hidden weight scale: higher is more intricate")] = 1.6
    zoom: Annotated[float, Field(gt=0, le=32, description="coordinate scale: higher is finer structure")] = 1.8
    latent_gain: Annotated[float, Field(ge=0, le=8, description="how strongly z moves the pattern")] = 1.0
    colour: Annotated[float, Field(gt=0, le=8, description="output contrast before the sigmoid")] = 2.5
    geometry: Geometry = Geometry()


@register("cppn")
class CPPN:
    """Coordinates + latent -> RGB through a seeded MLP. Runs on the CPU or CUDA, float32."""

    Settings = CPPNSettings

    def __init__(self, settings: CPPNSettings, device: str = "cpu") -> None:
        import torch  # here, not at the top: checking a scene or listing parameters never imports torch

        self.settings = settings
        self.device = torch.device(device)
        self._layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._coord_term: torch.Tensor | None = None
        self._wz: torch.Tensor | None = None
        self._bufs: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def latent_shape(cls, settings: CPPNSettings) -> tuple[int, ...]:
        return (settings.latent_dim,)

    @property
    def size(self) -> tuple[int, int]:
        """(w, h) of the frames: ``cuda_resolution`` on a CUDA device when it is set, else ``resolution``."""
        s = self.settings
        return tuple(s.cuda_resolution if self.device.type == "cuda" and s.cuda_resolution else s.resolution)

    def prepare(self) -> None:
        import torch

        s = self.settings
        g = torch.Generator().manual_seed(int(s.model_seed))
        w, h = self.size
        coords, envelope = s.geometry.coordinates(w, h, s.zoom, s.model_seed)

        def rand(*shape: int, std: float) -> torch.Tensor:
            return torch.randn(*shape, generator=g) * std

        # Channel-first (units x pixels): each activation group is a contiguous block of rows, done in place.
        w_xy = rand(s.width, 3, std=1.0)
        b0 = rand(s.width, 1, std=0.5)
        self._wz = rand(s.width, s.latent_dim, std=s.latent_gain / math.sqrt(s.latent_dim)).to(self.device)
        self._coord_term = (w_xy @ coords + b0).to(self.device)
        self._layers = []
        for _ in range(s.depth):
            self._layers.append((rand(s.width, s.width, std=s.gain / math.sqrt(s.width)).to(self.device),
                                 rand(s.width, 1, std=0.3).to(self.device)))
        w_out, b_out = rand(3, s.width, std=s.colour / math.sqrt(s.width)), rand(3, 1, std=0.3)
        if envelope is not None:  # the fade is a per-pixel output bias: free per frame
            b_out = b_out + envelope
        self._out = (w_out.to(self.device), b_out.to(self.device))
        acts = s.activations
        bounds = [round(i * s.width / len(acts)) for i in range(len(acts) + 1)]
        self._groups = [(name, bounds[i], bounds[i + 1]) for i, name in enumerate(acts) if bounds[i + 1] > bounds[i]]
        # The hidden layers ping-pong between two buffers made once: a frame allocates only its 3 x pixels output, so
        # the decoder's heap does not churn through (units x pixels) blocks every layer of every frame (issue 33).
        self._bufs = (torch.empty_like(self._coord_term), torch.empty_like(self._coord_term))
        with torch.inference_mode():
            self._forward(torch.zeros(s.latent_dim, device=self.device))

    def _mixed_(self, x: torch.Tensor) -> torch.Tensor:
        for name, a, b in self._groups:
            _act_(name, x[a:b])
        return x

    def _forward(self, z: torch.Tensor) -> torch.Tensor:
        import torch

        a, b = self._bufs
        h = self._mixed_(torch.add(self._coord_term, (self._wz @ z)[:, None], out=a))
        for wgt, bias in self._layers:
            h = self._mixed_(torch.addmm(bias, wgt, h, out=b if h is a else a))
        w_out, b_out = self._out
        return torch.sigmoid_(torch.addmm(b_out, w_out, h).clamp_(-30.0, 30.0))

    def render(self, request: LatentRequest) -> np.ndarray:
        """HxWx3 float32 in 0..1, top row first."""
        import torch

        w, h = self.size
        z = torch.as_tensor(np.asarray(request.z, dtype=np.float32).reshape(-1), device=self.device)
        with torch.inference_mode():
            rgb = self._forward(z)
        return rgb.reshape(3, h, w).permute(1, 2, 0).cpu().numpy()

    def close(self) -> None:
        self._layers = []
        self._coord_term = self._bufs = None
