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
        guided = s.guidance > 1.0 and self.unet.config.get("time_cond_proj_dim") is None
        self.cfg_mode = s.cfg if guided else "none"  # LCM's guidance embedding takes the place of CFG
        self.cfg = self.cfg_mode in ("full", "onetime")  # the negative prompt's row is evaluated
        self.guided = self.cfg_mode != "none"
        self.delta = float(s.rcfg_delta)
        self.controls = list(comps.controls or [])  # [(class name, ControlNetModel | T2IAdapter)]
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
            "init": torch.tensor([0.0, 1.0, 0.0], device=dev, dtype=torch.float32),  # src, z, residual reference
            "neg_x0": torch.zeros((1, c, h, w), device=dev, dtype=torch.float32),  # residual CFG: the x0 it points to
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
        if s.stream_batch:  # one slot per step: slot k holds the latent that entered k frames ago, with its inputs
            n = s.steps
            b.update({
                "sx": torch.zeros((n, c, h, w), device=dev, dtype=self.dtype),
                "stab": torch.zeros((n, n, TABLE_COLUMNS), device=dev, dtype=torch.float32),
                "semb": torch.zeros((n, max_len, emb_dim), device=dev, dtype=self.dtype),
                "sg": torch.ones((n,), device=dev, dtype=torch.float32),
                "sref": torch.zeros((n, c, h, w), device=dev, dtype=torch.float32),
                "out_slot": torch.zeros((1,), device=dev, dtype=torch.long),
            })
            if "pooled" in b:
                b["spooled"] = torch.zeros((n, b["pooled"].shape[1]), device=dev, dtype=self.dtype)
            if "tcond" in b:
                b["stcond"] = b["tcond"][-1:].repeat(n, 1)
        if self.controls:
            self._control_buffers(b, s)
        self.ip = comps.ip_adapter  # image prompts: their embedding and scale in b (ip_*), per slot (sip_*)
        if self.ip is not None:
            self.ip.make_buffers(b, s.steps if s.stream_batch else 0)
        self._slot_state = [k for k in ("stab", "semb", "sg", "sref", "spooled", "stcond") if k in b]
        self._slot_state += [k for k in b if k.startswith(("sctl_", "sip_"))]
        self.buf = b
        self._reset_slots()
        # Source images are resized to the frame on the host, so one (pinned host, device) pair serves every camera
        # and the encode program captured in prepare() is the only one (a graph keeps the addresses it captured).
        shape = (s.height, s.width, 3)
        self.staging = (torch.empty(shape, dtype=torch.uint8, pin_memory=dev.type == "cuda"),
                        torch.zeros(shape, dtype=torch.uint8, device=dev))
        self.z_host = torch.empty((1, c, h, w), dtype=torch.float32, pin_memory=dev.type == "cuda")

    def _control_buffers(self, b: dict[str, torch.Tensor], s: DiffusionSettings) -> None:
        """Each control's conditioning image (0..1, as the ControlNet/adapter pipelines pass it), a T2I-Adapter's
        features (computed when its image changes), the live scales and diffusers' per-step keep (start/end)."""
        dev = self.device
        b["ctl_keep"] = torch.tensor(self._keep([(c.start, c.end) for c in s.controls]), device=dev,
                                     dtype=torch.float32)
        b["ctl_scale"] = torch.tensor([c.scale for c in s.controls], device=dev, dtype=torch.float32)
        self.control_staging = []
        for j, (name, module) in enumerate(self.controls):
            b[f"ctl_img.{j}"] = torch.zeros((1, 3, s.height, s.width), device=dev, dtype=self.dtype)
            kind = s.controls[j].kind
            if kind == "depth":  # made on the device (depth.py): no host copy
                self.control_staging.append((None, torch.zeros((s.height, s.width), dtype=torch.float32, device=dev)))
            else:  # canny: one channel (the edge map), spread to three on the device
                shape = (s.height, s.width) if kind == "canny" else (s.height, s.width, 3)
                self.control_staging.append((torch.empty(shape, dtype=torch.uint8, pin_memory=dev.type == "cuda"),
                                             torch.zeros(shape, dtype=torch.uint8, device=dev)))
            if name == "T2IAdapter":
                with torch.inference_mode():
                    feats = module(b[f"ctl_img.{j}"])
                b[f"ctl_feats.{j}"] = torch.zeros((len(feats),), device=dev)  # the count, for the programs
                for k, f in enumerate(feats):
                    b[f"ctl_feat.{j}.{k}"] = torch.zeros_like(f)
        if s.stream_batch:  # each slot keeps its request's control images, features and scales
            n = s.steps
            for name in [k for k in b if k.startswith(("ctl_img.", "ctl_feat."))]:
                b["s" + name] = b[name].repeat(n, *([1] * (b[name].ndim - 1)))
            b["sctl_scale"] = b["ctl_scale"].repeat(n, 1)

    def set_control_image(self, j: int, img: np.ndarray | torch.Tensor) -> None:
        """Control j's image into its static buffer: HxWx3 uint8 from the host (kind canny: the HxW edge map), or
        (kind depth) an HxW 0..1 depth map on the device; a single channel becomes the three; a T2I-Adapter's
        features are computed from it here, once per image."""
        host, dev_img = self.control_staging[j]
        if host is None:
            dev_img.copy_(img)
        else:
            host.copy_(torch.from_numpy(np.ascontiguousarray(img)))
            dev_img.copy_(host, non_blocking=True)
        name, module = self.controls[j]
        b = self.buf

        def program() -> None:
            img = (dev_img if dev_img.ndim == 3 else dev_img[:, :, None].expand(*dev_img.shape, 3)).permute(2, 0, 1)
            b[f"ctl_img.{j}"].copy_(img[None] if img.is_floating_point() else img[None].float().div(255.0))
            if name == "T2IAdapter":
                for k, f in enumerate(module(b[f"ctl_img.{j}"])):
                    b[f"ctl_feat.{j}.{k}"].copy_(f)

        self.programs.run(("control", j), program)

    def set_control_scale(self, j: int, value: float) -> None:
        self.buf["ctl_scale"][j].fill_(value)

    def _keep(self, spans: list[tuple[float, float]]) -> list[list[float]]:
        """Whether each control acts at each step: diffusers' controlnet_keep for (start, end) fractions."""
        n = self.settings.steps
        return [[1.0 - float(i / n < start or (i + 1) / n > end) for start, end in spans] for i in range(n)]

    def set_control_spans(self, spans: list[tuple[float, float]]) -> None:
        """Live guidance start/end of every control (the per-step keep table)."""
        self.buf["ctl_keep"].copy_(torch.tensor(self._keep(spans), dtype=torch.float32))

    def _control_residuals(self, model_in: torch.Tensor, ts: torch.Tensor, kw: dict[str, Any],
                           scale: torch.Tensor, m: int, slots: bool) -> dict[str, Any]:
        """The UNet's extra inputs from the controls: ControlNet residuals and T2I-Adapter features, each scaled per
        row (``scale`` [rows, controls]) and summed over the controls (diffusers' Multi-ControlNet / MultiAdapter).
        ``slots``: the stream batch's per-slot images and features (the first ``m`` repeated for negative rows)."""
        b, rows = self.buf, model_in.shape[0]

        def per_row(name: str) -> torch.Tensor:
            if not slots:
                return b[name].expand(rows, *b[name].shape[1:])
            t = b["s" + name]
            return torch.cat([t[:m], t]) if m else t

        down = mid = intra = None
        for j, (name, module) in enumerate(self.controls):
            sj = scale[:, j].view(-1, 1, 1, 1).to(self.dtype)
            if name == "ControlNetModel":
                d, md = module(model_in, ts, controlnet_cond=per_row(f"ctl_img.{j}"),
                               conditioning_scale=1.0, return_dict=False, **kw)
                d, md = [r * sj for r in d], md * sj
                down = d if down is None else [x + y for x, y in zip(down, d)]
                mid = md if mid is None else mid + md
            else:
                feats = [per_row(f"ctl_feat.{j}.{k}") * sj for k in range(b[f"ctl_feats.{j}"].shape[0])]
                intra = feats if intra is None else [x + y for x, y in zip(intra, feats)]
        out: dict[str, Any] = {}
        if down is not None:
            out["down_block_additional_residuals"], out["mid_block_additional_residual"] = down, mid
        if intra is not None:
            out["down_intrablock_additional_residuals"] = intra
        return out

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
        if self.guided and max(g, 1.0) != self._guidance_value:
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
        """The start latent's weights of (source, z); with a source, residual CFG's self-negative points to it."""
        if coef != self._init_now:
            ref = 1.0 if coef[0] > 0 else 0.0  # text-to-image: the residual towards the zero latent
            self.buf["init"].copy_(torch.tensor((*coef, ref), dtype=torch.float32))
            self._init_now = coef

    def set_out_slot(self, slot: int) -> None:
        """Stream batch: the slot whose x0 the frame shows (the last, once the pipeline has filled)."""
        if slot != self._out_now:
            self.buf["out_slot"].fill_(slot)
            self._out_now = slot

    def set_z(self, z: np.ndarray, into: str) -> None:
        """Upload a request's latent into ``z`` or ``src`` (through the pinned host buffer)."""
        self.z_host.copy_(torch.from_numpy(z)[None])
        self.buf[into].copy_(self.z_host, non_blocking=True)

    # -- the programs ------------------------------------------------------------------------------------------

    def _kwargs(self, emb: torch.Tensor, pooled: torch.Tensor | None, tcond: torch.Tensor | None) -> dict[str, Any]:
        kw: dict[str, Any] = {"encoder_hidden_states": emb}
        if pooled is not None:
            kw["added_cond_kwargs"] = {"text_embeds": pooled,
                                       "time_ids": self.buf["time_ids"][:1].expand(emb.shape[0], -1)}
        if tcond is not None:
            kw["timestep_cond"] = tcond
        return kw

    def _x0_eps(self, out: torch.Tensor, xf: torch.Tensor, sa: torch.Tensor,
                s1a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) from a model output, by the folder's prediction type."""
        if self.prediction == "epsilon":
            return (xf - s1a * out) / sa, out
        if self.prediction == "v_prediction":
            return sa * xf - s1a * out, sa * out + s1a * xf
        return out, (xf - sa * out) / s1a

    def _output_towards(self, x0: torch.Tensor, xf: torch.Tensor, sa: torch.Tensor,
                        s1a: torch.Tensor) -> torch.Tensor:
        """The model output that would predict ``x0`` from ``xf``: residual CFG's virtual negative (its residual noise
        (x - sqrt(a) x0) / sqrt(1 - a), in the folder's prediction type)."""
        eps = (xf - sa * x0) / s1a
        if self.prediction == "epsilon":
            return eps
        if self.prediction == "v_prediction":
            return sa * eps - s1a * x0
        return x0

    def _denoise(self, x: torch.Tensor, rows: torch.Tensor, emb: torch.Tensor, pooled: torch.Tensor | None,
                 tcond: torch.Tensor | None, g: torch.Tensor, ref: torch.Tensor, renoise: torch.Tensor,
                 negatives: int, keep: torch.Tensor | None = None,
                 slots: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """One denoising step of n latents, each at its own table row, in one UNet call: (next x, x0 prediction).

        ``emb``/``pooled``/``tcond``: the n rows' conditioning; ``g``: their guidance; ``ref`` [n]: the x0 residual
        CFG's negative points to (read; under ``onetime`` the first rows' are written here); ``negatives``: how many
        of the first rows are evaluated with the negative prompt too (full CFG: all, onetime: the first step's);
        ``keep`` [n, controls]: whether each control acts at each row's step.
        Tensor-only, so it can be captured.
        """
        b, m = self.buf, negatives
        t = rows[:, 0].clone()  # float32: bfloat16 would round 999 to 1000; the UNet embeds it in float32 anyway
        model_in, ts = x, t
        if m:
            model_in, ts = torch.cat([x[:m], x]), torch.cat([t[:m], t])
            emb = torch.cat([b["emb"][:1].expand(m, -1, -1), emb])
            if pooled is not None:
                pooled = torch.cat([b["pooled"][:1].expand(m, -1), pooled])
        kw = self._kwargs(emb, pooled, tcond)
        extra = {}
        if self.controls:
            scale = keep * (b["sctl_scale"] if slots else b["ctl_scale"])
            extra = self._control_residuals(model_in, ts, kw, torch.cat([scale[:m], scale]) if m else scale, m,
                                            slots)
        if self.ip is not None:
            kw = self.ip.unet_kwargs(b, kw, model_in.shape[0], m, slots)
        out = self.unet_fn(model_in, ts, return_dict=False, **kw, **extra)[0].float()
        neg, out = out[:m], out[m:]
        xf = x.float()
        sa, s1a, c_skip, c_out, sa_n, s1a_n = (rows[:, k].view(-1, 1, 1, 1) for k in range(1, TABLE_COLUMNS))
        if self.cfg_mode == "full":
            out = neg + g.view(-1, 1, 1, 1) * (out - neg)
        elif self.guided:  # residual CFG: delta * eps' + g * (eps_c - delta * eps')
            if m:  # onetime's first step: the negative prompt's x0 is where the residual points from now on
                ref[:m].copy_(self._x0_eps(neg, xf[:m], sa[:m], s1a[:m])[0])
            uncond = self.delta * self._output_towards(ref, xf, sa, s1a)
            out = uncond + g.view(-1, 1, 1, 1) * (out - uncond)
        x0, eps = self._x0_eps(out, xf, sa, s1a)
        if self.family == "lcm":
            x0 = c_out * x0 + c_skip * xf
            x_next = sa_n * x0 + s1a_n * renoise.float()  # LCM multi-step: fresh (fixed per-run) noise
        else:
            x_next = sa_n * x0 + s1a_n * eps  # deterministic (DDIM == Euler) step
        return x_next.to(self.dtype), x0

    def _negatives(self, i: int, n: int = 1) -> int:
        """Rows evaluated with the negative prompt at step i (of n rows)."""
        if self.cfg_mode == "full":
            return n
        return 1 if self.cfg_mode == "onetime" and i == 0 else 0

    def step(self, i: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One denoising step at table row i: (next x, x0 prediction). Tensor-only, so it can be captured."""
        b = self.buf
        return self._denoise(x, b["tab"][i:i + 1], b["emb"][-1:], b["pooled"][-1:] if "pooled" in b else None,
                             b["tcond"][-1:] if "tcond" in b else None, b["g"], b["neg_x0"], b["renoise"][i],
                             self._negatives(i), b["ctl_keep"][i:i + 1] if self.controls else None)

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
        """The start latent; residual CFG's self-negative points to the source (text-to-image: the zero latent)."""
        b = self.buf
        if self.cfg_mode == "self":
            b["neg_x0"].copy_(b["init"][2] * b["src"].float())
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

    def stream(self) -> None:
        """Stream batch: the slots move one step on, this frame's request enters slot 0, every slot takes its next
        step in one UNet call, and the last slot's x0 (finished) is decoded."""
        b, n = self.buf, self.settings.steps
        for name in self._slot_state:
            b[name][1:].copy_(b[name][:-1].clone())
        b["sx"][:1].copy_(self._init_x())
        b["stab"][0].copy_(b["tab"])
        b["semb"][:1].copy_(b["emb"][-1:])
        b["sg"][:1].copy_(b["g"].view(1))
        b["sref"][:1].copy_(b["neg_x0"])
        for name, src in (("spooled", "pooled"), ("stcond", "tcond"), ("sctl_scale", "ctl_scale")):
            if name in b:
                b[name][:1].copy_(b[src].view(-1, *b[name].shape[1:])[-1:])
        for name in self._slot_state:
            if name.startswith(("sctl_img.", "sctl_feat.", "sip_")):
                b[name][:1].copy_(b[name[1:]])
        rows = b["stab"].diagonal(0, 0, 1).T  # slot k at step k of its own request's table
        x_next, x0 = self._denoise(b["sx"], rows, b["semb"], b.get("spooled"), b.get("stcond"), b["sg"], b["sref"],
                                   b["renoise"][:, 0], self._negatives(0, n), b.get("ctl_keep"), slots=True)
        b["sx"][1:].copy_(x_next[:-1])
        self.timer.mark("unet")
        self.decode_into_rgb(x0.index_select(0, b["out_slot"]))
        self.buf["ok"].logical_and_(torch.isfinite(x_next).all())  # a carried Inf would poison the next frames

    def _reset_slots(self) -> None:
        b = self.buf
        if "sx" not in b:
            return
        b["sx"].zero_()
        b["sref"].zero_()
        b["sg"].fill_(1.0)
        b["out_slot"].zero_()
        self._out_now = 0
        # Empty slots run on the text-to-image table (a zero row would divide by sqrt(alpha) = 0).
        b["stab"].copy_(torch.tensor(self.schedule.rows(self.schedule.full), dtype=torch.float32)
                        .expand_as(b["stab"]))

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
            self._reset_slots()

    def close(self) -> None:
        self.programs.clear()  # waits for a replay still in flight
        for name in ("unet", "vae", "unet_fn", "vae_decode", "buf", "staging", "comps", "controls", "ip"):
            setattr(self, name, None)
