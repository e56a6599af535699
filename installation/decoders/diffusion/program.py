"""The per-frame program: 1-8 denoising steps, scheduler arithmetic, decode, uint8 conversion and the finite flag,
all over static buffers, so that on CUDA the whole frame is one captured graph (``Programs``) and a frame's inputs
(latent, source, conditioning, live scalars) are in-place writes into those buffers."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .._accel import Programs, StageTimer, maybe_compile, to_uint8_hwc
from .loading import Components
from .schedules import TABLE_COLUMNS, Schedule
from .settings import DiffusionSettings


def guidance_embedding(w: float, dim: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """LCM's sinusoidal embedding of the guidance scale (``time_cond_proj_dim`` UNets)."""
    wt = torch.tensor([(w - 1.0) * 1000.0])
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    emb = wt[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb.to(device=device, dtype=dtype)


class FrameProgram:
    """Static buffers and the tensor-only programs over them (full frame, one emergence step, reconstruction,
    source encode). Nothing here reads the host or the bus: the decoder writes the inputs, then runs a program."""

    def __init__(self, s: DiffusionSettings, comps: Components, schedule: Schedule, device: torch.device,
                 dtype: torch.dtype, max_len: int, timer: StageTimer) -> None:
        self.settings, self.comps, self.schedule = s, comps, schedule
        self.device, self.dtype = device, dtype
        self.timer = timer
        self.unet, self.vae = comps.unet, comps.vae
        self.family, self.prediction = comps.family, comps.prediction
        self.tiny_vae, self.vae_dtype, self.vae_scale = comps.tiny_vae, comps.vae_dtype, comps.vae_scale
        self.use_graphs = bool(s.cuda_graph and device.type == "cuda")
        self.unet_fn = maybe_compile(self.unet, s.compile, s.compile_cache_dir, self.use_graphs)
        self.vae_decode = maybe_compile(self.vae.decoder, s.compile, s.compile_cache_dir, self.use_graphs) \
            if s.compile else None
        self.programs = Programs(device, self.use_graphs)
        self.cfg = s.guidance > 1.0 and self.unet.config.get("time_cond_proj_dim") is None
        self._make_buffers(max_len)
        self.tab_key: float | None = None
        self.timesteps_now: tuple = ()
        self.alpha_start = 1.0
        self._init_now: tuple[float, float] | None = None
        self._guidance_value = max(s.guidance, 1.0)

    def _make_buffers(self, max_len: int) -> None:
        """Static tensors every program reads or writes; their addresses never change after prepare."""
        s, dev, comps = self.settings, self.device, self.comps
        c, f = int(self.unet.config.in_channels), comps.vae_factor
        h, w = s.height // f, s.width // f
        self.lat_shape = (c, h, w)
        batch = 2 if self.cfg else 1
        gen = torch.Generator().manual_seed(s.seed)
        emb_dim = int(self.unet.config.cross_attention_dim)
        b: dict[str, torch.Tensor] = {
            "z": torch.zeros((1, c, h, w), device=dev, dtype=self.dtype),
            "src": torch.zeros((1, c, h, w), device=dev, dtype=self.dtype),
            "x": torch.zeros((1, c, h, w), device=dev, dtype=self.dtype),
            "renoise": torch.randn((s.steps, 1, c, h, w), generator=gen).to(dev, self.dtype),
            "fixed_noise": torch.randn((1, c, h, w), generator=gen).to(dev, self.dtype),
            "tab": torch.zeros((s.steps, TABLE_COLUMNS), device=dev, dtype=torch.float32),
            "init": torch.tensor([0.0, 1.0], device=dev, dtype=torch.float32),
            "emb": torch.zeros((batch, max_len, emb_dim), device=dev, dtype=self.dtype),
            "g": torch.tensor(max(s.guidance, 1.0), device=dev, dtype=torch.float32),
            "rgb": torch.zeros((s.height, s.width, 3), device=dev, dtype=torch.uint8),
            "ok": torch.ones((), device=dev, dtype=torch.bool),
        }
        if self.family == "sdxl":
            pooled_dim = int(comps.text_encoders[1].config.projection_dim)
            b["pooled"] = torch.zeros((batch, pooled_dim), device=dev, dtype=self.dtype)
            ids = torch.tensor([s.height, s.width, 0, 0, s.height, s.width], dtype=torch.float32)
            b["time_ids"] = ids.repeat(batch, 1).to(dev, self.dtype)
        tcd = self.unet.config.get("time_cond_proj_dim")
        if tcd is not None:
            w_scale = s.guidance if s.guidance > 0 else 8.0
            b["tcond"] = guidance_embedding(w_scale, int(tcd), self.dtype, dev).repeat(batch, 1)
            self._tcond_w = w_scale
        self.buf = b
        # Source images are resized to the frame on the host, so one (pinned host, device) pair serves every camera
        # and the encode program captured in prepare() is the only one (a graph keeps the addresses it captured).
        shape = (s.height, s.width, 3)
        self.staging = (torch.empty(shape, dtype=torch.uint8, pin_memory=dev.type == "cuda"),
                        torch.zeros(shape, dtype=torch.uint8, device=dev))
        self.z_host = torch.empty((1, c, h, w), dtype=torch.float32, pin_memory=dev.type == "cuda")

    # -- inputs: in-place writes into the static buffers ---------------------------------------------------------

    def set_negative(self, emb: torch.Tensor, pooled: torch.Tensor | None) -> None:
        """The negative prompt's conditioning (row 0 of a CFG batch)."""
        self.buf["emb"][0].copy_(emb[0])
        if pooled is not None and "pooled" in self.buf:
            self.buf["pooled"][0].copy_(pooled[0])

    def set_condition(self, emb: torch.Tensor, pooled: torch.Tensor | None) -> None:
        """The blended prompt's conditioning (the last row of the batch)."""
        self.buf["emb"][-1].copy_(emb[0])
        if pooled is not None and "pooled" in self.buf:
            self.buf["pooled"][-1].copy_(pooled[0])

    def set_guidance(self, g: float) -> None:
        """The CFG scale (when CFG is on) and LCM's guidance embedding, written only when they move."""
        b = self.buf
        if self.cfg and max(g, 1.0) != self._guidance_value:
            b["g"].fill_(max(g, 1.0))
            self._guidance_value = max(g, 1.0)
        if "tcond" in b:
            w = g if g > 0 else 8.0
            if w != self._tcond_w:
                b["tcond"].copy_(guidance_embedding(w, b["tcond"].shape[1], self.dtype, self.device)
                                 .expand_as(b["tcond"]))
                self._tcond_w = w

    def set_table(self, strength: float) -> None:
        """Per-step constants (timestep, alphas, LCM scalings) for a strength, copied into the static table."""
        key = round(strength, 4)
        if key == self.tab_key:
            return
        run = self.schedule.full if key >= 1.0 else self.schedule.img2img(strength)
        self.buf["tab"].copy_(torch.tensor(self.schedule.rows(run), dtype=torch.float32))
        self.tab_key = key
        self.timesteps_now = tuple(int(t) if float(t).is_integer() else t for t, _ in run)
        self.alpha_start = run[0][1]

    def set_init(self, coef: tuple[float, float]) -> None:
        """The start latent's weights of (source, z)."""
        if coef != self._init_now:
            self.buf["init"].copy_(torch.tensor(coef, dtype=torch.float32))
            self._init_now = coef

    def set_z(self, z: np.ndarray, into: str) -> None:
        """Upload a request's latent into ``z`` or ``src`` (through the pinned host buffer)."""
        self.z_host.copy_(torch.from_numpy(z)[None])
        self.buf[into].copy_(self.z_host, non_blocking=True)

    # -- the programs ------------------------------------------------------------------------------------------

    def _unet_kwargs(self) -> dict[str, Any]:
        b = self.buf
        kw: dict[str, Any] = {"encoder_hidden_states": b["emb"]}
        if "pooled" in b:
            kw["added_cond_kwargs"] = {"text_embeds": b["pooled"], "time_ids": b["time_ids"]}
        if "tcond" in b:
            kw["timestep_cond"] = b["tcond"]
        return kw

    def step(self, i: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One denoising step at table row i: (next x, x0 prediction). Tensor-only, so it can be captured."""
        b, row = self.buf, self.buf["tab"][i]
        t, sa, s1a, c_skip, c_out, sa_n, s1a_n = (row[k] for k in range(TABLE_COLUMNS))
        model_in = torch.cat([x, x]) if self.cfg else x
        # The timestep stays float32 (bfloat16 would round 999 to 1000); the UNet embeds it in float32 anyway.
        out = self.unet_fn(model_in, row[0:1].clone().expand(model_in.shape[0]), return_dict=False,
                           **self._unet_kwargs())[0]
        if self.cfg:
            uncond, cond = out.float().chunk(2)
            out = uncond + b["g"] * (cond - uncond)
        out, xf = out.float(), x.float()
        if self.prediction == "epsilon":
            x0 = (xf - s1a * out) / sa
            eps = out
        elif self.prediction == "v_prediction":
            x0 = sa * xf - s1a * out
            eps = sa * out + s1a * xf
        else:
            x0 = out
            eps = (xf - sa * x0) / s1a
        if self.family == "lcm":
            x0 = c_out * x0 + c_skip * xf
            x_next = sa_n * x0 + s1a_n * b["renoise"][i].float()  # LCM multi-step: fresh (fixed per-run) noise
        else:
            x_next = sa_n * x0 + s1a_n * eps  # deterministic (DDIM == Euler) step
        del t
        return x_next.to(self.dtype), x0

    def decode_into_rgb(self, x0: torch.Tensor) -> None:
        """Decode latents, convert to uint8 RGB in the static buffer and store the finite flag.

        The flag checks the latents too: TAESD's input clamp (tanh) would turn an fp16 overflow in the UNet into a
        finite but meaningless image.
        """
        lat = (x0.float() / self.vae_scale).to(self.vae_dtype)
        t0 = self.timer
        if self.vae_decode is not None and self.tiny_vae:
            img = self.vae_decode(lat)
        elif self.vae_decode is not None:
            pq = getattr(self.vae, "post_quant_conv", None)
            img = self.vae_decode(pq(lat) if pq is not None else lat)
        else:
            img = self.vae.decode(lat, return_dict=False)[0]
        t0.mark("decode")
        self.buf["ok"].copy_(torch.isfinite(img).all() & torch.isfinite(x0).all())
        self.buf["rgb"].copy_(to_uint8_hwc(img))
        t0.mark("convert")

    def _init_x(self) -> torch.Tensor:
        b = self.buf
        return (b["init"][0] * b["src"].float() + b["init"][1] * b["z"].float()).to(self.dtype)

    def full(self) -> None:
        x = self._init_x()
        x0 = x
        for i in range(self.settings.steps):
            x, x0 = self.step(i, x)
        self.timer.mark("unet")
        self.decode_into_rgb(x0)

    def emergence(self, i: int) -> None:
        x = self._init_x() if i == 0 else self.buf["x"]
        x_next, x0 = self.step(i, x)
        self.buf["x"].copy_(x_next)
        self.timer.mark("unet")
        self.decode_into_rgb(x0)
        self.buf["ok"].logical_and_(torch.isfinite(x_next).all())  # a carried Inf would poison the next steps

    def recon(self) -> None:
        self.timer.mark("unet")
        self.decode_into_rgb(self.buf["src"])

    def encode_source(self, img: np.ndarray) -> None:
        """Upload an RGB uint8 image (resized to the frame on the host) and encode it into the static source latent."""
        s = self.settings
        if img.shape[:2] != (s.height, s.width):
            import cv2

            img = cv2.resize(img, (s.width, s.height), interpolation=cv2.INTER_AREA)
        host, dev_img = self.staging
        host.copy_(torch.from_numpy(np.ascontiguousarray(img)))
        dev_img.copy_(host, non_blocking=True)  # safe: the previous frame's readback synced the stream
        self.timer.mark("upload")

        def program() -> None:
            x = dev_img.permute(2, 0, 1)[None].float().div(127.5).sub(1.0).to(self.vae_dtype)
            if self.tiny_vae:
                lat = self.vae.encode(x, return_dict=False)[0]
            else:
                lat = self.vae.encode(x).latent_dist.mode()
            self.buf["src"].copy_((lat.float() * self.vae_scale).to(self.dtype))

        self.programs.run(("encode",), program)
        self.timer.mark("encode")

    def reset(self) -> None:
        """Forget the emergence chain's carried latent."""
        with torch.inference_mode():
            self.buf["x"].zero_()

    def close(self) -> None:
        self.programs.clear()  # waits for a replay still in flight
        for name in ("unet", "vae", "unet_fn", "vae_decode", "buf", "staging", "comps"):
            setattr(self, name, None)
