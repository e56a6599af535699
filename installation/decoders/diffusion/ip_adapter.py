"""Image prompts (IP-Adapter), the model side: the adapter loaded into the UNet by diffusers' own loader (its
attention processors add image tokens beside the text), the CLIP image encoder, the static buffers the frame program
(and its CUDA graph) reads, and the host side that feeds them (image files once, the camera at a limited rate, the
live weights and scale).

The adapter's scale is live without a re-capture: diffusers' processors keep their Python scale at 1 and each value
projection (``to_v_ip``) is multiplied by a per-row scale tensor the program writes before the UNet call. Scaling the
values scales the attention output (softmax(QK^T)(sV) = s softmax(QK^T)V), which is what the processor's scale
multiplies, so the result is diffusers' for the same scale; scale 0 adds exactly nothing.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from .image_prompts import SCALE_MAX, WEIGHT_MAX, IPAdapterSettings
from .settings import bounded

log = logging.getLogger(__name__)

HOLD_S = 1.0  # no camera frame for this long: a camera image prompt holds its last image (counted)
MAX_ROWS = 16  # UNet rows a call can have: stream batch (up to 8 steps) with full CFG


class ScaledValue(nn.Module):
    """An IP-Adapter processor's value projection times each row's live scale (``rows``, shared, not owned)."""

    def __init__(self, linear: nn.Module, rows: torch.Tensor) -> None:
        super().__init__()
        self.linear = linear
        self._rows = [rows]  # a list: not registered as this module's buffer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x)
        return out * self._rows[0][:out.shape[0]].view(-1, *([1] * (out.ndim - 1))).to(out.dtype)


class IPAdapter:
    """The loaded adapter: the UNet's IP-Adapter processors (value projections scaled per row) and the encoder."""

    def __init__(self, settings: IPAdapterSettings, unet: Any, device: torch.device, dtype: torch.dtype) -> None:
        from diffusers.models.attention_processor import IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0
        from safetensors import safe_open
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        from .image_prompts import check_ip_adapter

        check_ip_adapter(settings, dict(unet.config), str(settings.path))
        self.settings = settings
        state: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
        with safe_open(str(Path(settings.path).expanduser()), framework="pt", device="cpu") as f:
            for key in f.keys():  # as diffusers' load_ip_adapter splits a .safetensors file
                head, _, rest = key.partition(".")
                if head in state:
                    state[head][rest] = f.get_tensor(key)
        unet._load_ip_adapter_weights([state], low_cpu_mem_usage=False)
        self.rows = torch.ones((MAX_ROWS,), device=device, dtype=torch.float32)
        for proc in unet.attn_processors.values():
            if isinstance(proc, (IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0)):
                proc.to_v_ip[0] = ScaledValue(proc.to_v_ip[0], self.rows)
        enc = Path(settings.image_encoder).expanduser()
        self.encoder = CLIPVisionModelWithProjection.from_pretrained(
            enc, dtype=dtype, use_safetensors=True, local_files_only=True).to(device).eval().requires_grad_(False)
        size = int(self.encoder.config.image_size)
        self.preprocess = CLIPImageProcessor(size=size, crop_size=size)  # what diffusers' load_ip_adapter makes
        self.size, self.dim = size, int(self.encoder.config.projection_dim)
        self.device, self.dtype = device, dtype

    # -- static buffers and what the program reads ----------------------------------------------------------------

    def make_buffers(self, b: dict[str, torch.Tensor], slots: int) -> None:
        """Each image's embedding, the blend, the negative (zeros, as diffusers' encode_image gives for CFG), the
        scale, the encoder's input; with stream batch (``slots``) each slot's blend and scale."""
        dev, dt, d = self.device, self.dtype, self.dim
        for i in range(len(self.settings.images)):
            b[f"ip_img.{i}"] = torch.zeros((1, 1, d), device=dev, dtype=dt)
        b["ip_emb"] = torch.zeros((1, 1, d), device=dev, dtype=dt)
        b["ip_neg"] = torch.zeros((1, 1, d), device=dev, dtype=dt)
        b["ip_new"] = torch.zeros((1, 1, d), device=dev, dtype=dt)
        b["ip_scale"] = torch.zeros((1,), device=dev, dtype=torch.float32)
        b["ip_rows"] = self.rows
        b["ip_pixels"] = torch.zeros((1, 3, self.size, self.size), device=dev, dtype=dt)
        self.pixels_host = torch.empty((1, 3, self.size, self.size), dtype=torch.float32,
                                       pin_memory=dev.type == "cuda")
        if slots:
            b["sip_emb"] = torch.zeros((slots, 1, d), device=dev, dtype=dt)
            b["sip_scale"] = torch.zeros((slots,), device=dev, dtype=torch.float32)

    def unet_kwargs(self, b: dict[str, torch.Tensor], kw: dict[str, Any], rows: int, negatives: int,
                    slots: bool) -> dict[str, Any]:
        """The UNet's keyword arguments with the image embeddings added (``added_cond_kwargs["image_embeds"]``) and
        each row's scale written; the first ``negatives`` rows take the negative (zero) embedding. Tensor-only."""
        m = negatives
        n = rows - m
        emb = b["sip_emb"] if slots else b["ip_emb"].expand(n, -1, -1)
        scale = b["sip_scale"] if slots else b["ip_scale"].expand(n)
        if m:
            emb = torch.cat([b["ip_neg"].expand(m, -1, -1), emb])
            scale = torch.cat([scale[:m], scale])
        b["ip_rows"][:rows].copy_(scale)
        added = dict(kw.get("added_cond_kwargs") or {})
        added["image_embeds"] = [emb]
        return {**kw, "added_cond_kwargs": added}

    def encode(self, programs: Any, b: dict[str, torch.Tensor], img: np.ndarray) -> torch.Tensor:
        """An RGB uint8 image's CLIP image embedding [1, 1, D] (a fresh tensor), preprocessed as diffusers does."""
        pixels = self.preprocess(img, return_tensors="pt").pixel_values
        self.pixels_host.copy_(pixels)
        b["ip_pixels"].copy_(self.pixels_host, non_blocking=True)

        def program() -> None:
            b["ip_new"].copy_(self.encoder(b["ip_pixels"]).image_embeds[:, None])

        programs.run(("ip_encode",), program)
        return b["ip_new"].clone()

    def close(self) -> None:
        self.encoder = None


class ImagePromptFeed:
    """The host side: image files encoded once at start, the camera's newest frame encoded at most ``camera_hz`` a
    second when it changed (held, counted, when it stops), the live weights and scale blended into the buffers."""

    def __init__(self, settings: IPAdapterSettings, adapter: IPAdapter, program: Any, counters: dict[str, int],
                 threshold: float) -> None:
        from PIL import Image

        from .sources import SourceFilter

        self.settings, self.adapter, self.program = settings, adapter, program
        self.counters = counters
        counters.setdefault("ip_held", 0)
        self.camera = [i for i, im in enumerate(settings.images) if im.source == "camera"]
        self.ready = [im.source != "camera" for im in settings.images]  # a camera prompt waits for a frame
        self._filter = SourceFilter(threshold, counters)
        self._pending: np.ndarray | None = None
        self._encoded_at = -1e9
        self._seen = time.monotonic()
        self.version = 0
        self._blend_key: tuple | None = None
        b = program.buf
        for i, im in enumerate(settings.images):
            if im.source != "camera":
                with Image.open(Path(im.source).expanduser()) as f:  # whole: the preprocessing crops as diffusers'
                    img = np.array(f.convert("RGB"))
                b[f"ip_img.{i}"].copy_(adapter.encode(program.programs, b, img))
                program.programs.sync()  # the next image reuses the pinned buffer this upload reads from
        if self.camera and not any(self.ready):  # capture the encode program now, never mid-show
            adapter.encode(program.programs, b, np.zeros((adapter.size, adapter.size, 3), np.uint8))
            program.programs.sync()
        self.weights = tuple(im.weight for im in settings.images)
        self.scale = settings.scale
        self._blend()

    @property
    def takes_camera(self) -> bool:
        return bool(self.camera)

    def update(self, params: Mapping[str, float], camera: np.ndarray | None) -> None:
        """Live weights and scale; the camera's frame into the camera prompts (rate-limited, held when none comes)."""
        s = self.settings
        self.weights = tuple(bounded(params, f"ip.{i}.weight", im.weight, 0.0, WEIGHT_MAX)
                             for i, im in enumerate(s.images))
        self.scale = bounded(params, "ip.scale", s.scale, 0.0, SCALE_MAX)
        if self.camera:
            now = time.monotonic()
            if camera is None:
                if now - self._seen > HOLD_S:
                    self.counters["ip_held"] += 1  # the camera stopped: its last image holds
            else:
                self._seen = now
                if self._filter.changed(camera):
                    self._pending = camera
            if self._pending is not None and now - self._encoded_at >= 1.0 / s.camera_hz:
                b = self.program.buf
                emb = self.adapter.encode(self.program.programs, b, self._pending)
                for i in self.camera:
                    b[f"ip_img.{i}"].copy_(emb)
                    self.ready[i] = True
                self._pending, self._encoded_at = None, now
                self.version += 1
        self._blend()

    def _blend(self) -> None:
        """The weighted mean of the ready images' embeddings into ``ip_emb``; the scale times min(1, sum of weights)
        into ``ip_scale`` (so all weights 0, or no camera frame yet, is no image prompt)."""
        key = (self.weights, self.scale, self.version)
        if key == self._blend_key:
            return
        b = self.program.buf
        w = [wi if ok else 0.0 for wi, ok in zip(self.weights, self.ready)]
        total = sum(w)
        if total > 0:
            out = sum(b[f"ip_img.{i}"].float() * (wi / total) for i, wi in enumerate(w) if wi > 0)
            b["ip_emb"].copy_(out)
        b["ip_scale"].fill_(self.scale * min(total, 1.0))
        self._blend_key = key

    @property
    def key(self) -> tuple:
        """What the frame skip compares: the blend's inputs."""
        return self._blend_key

    def reset(self) -> None:
        self._filter.reset()

    def after_warm_up(self) -> None:
        """Forget the warm-up's camera frames: a camera prompt waits for the first real one."""
        self._pending, self._encoded_at = None, -1e9  # the first real frame is encoded at once
        self._filter.reset()
        for i in self.camera:
            self.ready[i] = False
        self.counters["ip_held"] = 0
        self._seen = time.monotonic()
        self.version += 1
        self._blend()
