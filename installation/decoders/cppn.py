"""The embedded default decoder: a compositional pattern-producing network (CPPN).

Each pixel's coordinates (x, y, r) and the frame's latent z go through a small MLP with mixed activations (sine,
tanh, gaussian, softsign) to RGB. Weights are drawn from ``model_seed``, so there is no weights file and every seed
is a different "model" whose latent space the show walks. The coordinate half of the first layer is computed once
per resolution; per frame the latent only shifts that layer's bias, so a frame costs depth x width^2 MACs a pixel.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Literal

import numpy as np
from pydantic import Field

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
        aspect = w / h
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-aspect, aspect, w), indexing="ij")
        xs, ys = xs * s.zoom, ys * s.zoom
        coords = torch.stack([xs, ys, torch.sqrt(xs * xs + ys * ys)], dim=0).reshape(3, -1)

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
        self._out = (rand(3, s.width, std=s.colour / math.sqrt(s.width)).to(self.device),
                     rand(3, 1, std=0.3).to(self.device))
        acts = s.activations
        bounds = [round(i * s.width / len(acts)) for i in range(len(acts) + 1)]
        self._groups = [(name, bounds[i], bounds[i + 1]) for i, name in enumerate(acts) if bounds[i + 1] > bounds[i]]
        with torch.inference_mode():
            self._forward(torch.zeros(s.latent_dim, device=self.device))

    def _mixed_(self, x: torch.Tensor) -> torch.Tensor:
        for name, a, b in self._groups:
            _act_(name, x[a:b])
        return x

    def _forward(self, z: torch.Tensor) -> torch.Tensor:
        import torch

        h = self._mixed_(self._coord_term + (self._wz @ z)[:, None])
        for wgt, bias in self._layers:
            h = self._mixed_(torch.addmm(bias, wgt, h))
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
        self._coord_term = None
