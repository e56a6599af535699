"""The diffusion decoder: prepare (load, buffers, warm-up, graph capture) and render (read the frame's inputs from
the request, write them into the program's static buffers, run the program, read the frame back).

Live values read from ``request.params`` (declared on the bus by :meth:`DiffusionDecoder.param_specs`):
``diffusion.strength`` (img2img strength 0..1), ``diffusion.guidance`` (CFG scale when CFG is on, LCM guidance
embedding), ``lora.<name>.scale``, ``prompt.<i>.gain`` (multiplies the weight of prompt i: a fader per prompt),
``reference.<i>.weight`` (weight of image i of ``source`` + ``references``, in that order), ``control.<i>.scale``,
``control.<i>.start``, ``control.<i>.end`` (ControlNet / T2I-Adapter i), ``ip.scale`` and ``ip.<i>.weight``
(the IP-Adapter's strength, image prompt i's share).
From ``request.extras``: ``prompts`` (tuple of (text, weight)), ``source`` (HxWx3 uint8 RGB image for img2img, or
for the controls and image prompts that take the camera), ``edges`` (the camera process's Canny maps of that image,
{(width, height, low, high): HxW uint8}, :mod:`installation.inputs.camera_edges`: a canny control takes its own as it
is, and makes it from the frame only when it is missing).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from .. import register
from .._accel import PrepareProgress, Readback, StageTimer, resolve_device, resolve_dtype
from ..base import LatentRequest, NonFiniteFrame
from .kind import DiffusionKind
from .loading import load_components, load_image
from .program import FrameProgram
from .prompts import PromptEncoder, blend_tensors, prompt_set
from .schedules import Schedule
from .settings import DiffusionSettings, bounded
from .sources import SourceFilter

log = logging.getLogger(__name__)

CONTROL_HOLD_S = 1.0  # no camera frame for this long: a camera control holds its last image (counted)


@register("diffusion")
class DiffusionDecoder(DiffusionKind):
    """Walks a text-to-image model: trajectory noise + blended prompt embeddings -> 1-8 denoising steps -> RGB."""

    def __init__(self, settings: DiffusionSettings, device: str = "cpu") -> None:
        if not isinstance(settings, DiffusionSettings):
            settings = DiffusionSettings.model_validate(settings)
        self.settings = settings
        self.device_name = device
        self.prepared = False
        self._counters = {"frames": 0, "skipped": 0, "nonfinite": 0, "rejected_sources": 0, "prompt_cache_hits": 0,
                          "prompt_cache_misses": 0, "control_held": 0, "control_frames": 0, "control_edges_made": 0,
                          "ip_held": 0}
        self.prompts: PromptEncoder | None = None
        self.program: FrameProgram | None = None
        self._ip = None  # the image prompts' host side (ip_adapter.ImagePromptFeed)

    # -- what tests and the benchmark read ----------------------------------------------------------------------

    @property
    def encode_calls(self) -> int:
        """int: text-encoder runs so far (prompt cache misses)."""
        return self.prompts.calls if self.prompts is not None else 0

    @property
    def timesteps_now(self) -> tuple:
        """tuple: the timesteps the last frame took."""
        return self.program.timesteps_now

    @property
    def buf(self) -> dict[str, torch.Tensor]:
        """dict: the program's static buffers."""
        return self.program.buf

    def _encode(self, text: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(prompt embeds [1,L,D], pooled [1,P] or None) for one prompt, through the LRU cache."""
        return self.prompts.encode(text)

    # -- prepare ------------------------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Resolve and validate the folder, load components, apply acceleration, warm up and capture graphs.

        All-or-nothing: on any error the partly loaded parts are released before the error propagates.
        """
        try:
            self._prepare()
        except BaseException:
            self.close()
            raise

    def _prepare(self) -> None:
        s = self.settings
        self.device = resolve_device(self.device_name)
        self.dtype = resolve_dtype(s.dtype, self.device)
        t0 = time.perf_counter()
        with PrepareProgress(f"diffusion {Path(s.model).name} {s.width}x{s.height}",
                             6 + (s.ip_adapter is not None) + len(self._warm_plan())) as progress:
            self._prepare_steps(progress, t0)

    def _prepare_steps(self, progress: PrepareProgress, t0: float) -> None:
        s = self.settings
        comps = load_components(s, self.device, self.dtype, progress)
        self.comps = comps
        self.family, self.model_dir = comps.family, comps.model_dir
        self.unet, self.vae, self.scheduler = comps.unet, comps.vae, comps.scheduler
        self.tokenizers, self.text_encoders = comps.tokenizers, comps.text_encoders
        self.tiny_vae, self.vae_dtype, self.vae_scale = comps.tiny_vae, comps.vae_dtype, comps.vae_scale
        self.vae_factor, self.prediction = comps.vae_factor, comps.prediction
        self.schedule = Schedule(comps.scheduler, s.steps, s.timesteps, comps.family == "lcm")
        self.full_schedule, self.z_coef = self.schedule.full, self.schedule.z_coef

        from .._lora import apply_loras

        progress.step(f"moving to {self.device}, LoRAs" + (", compile set-up" if s.compile else ""))

        self.lora_scales = apply_loras(self.unet, s.loras, self.device, self.dtype)
        self._lora_values = {name: 1.0 for name in self.lora_scales}
        self.prompts = PromptEncoder(comps.tokenizers, comps.text_encoders, comps.family == "sdxl", self.device,
                                     self.dtype, s.prompt_cache_size, self._counters)
        self.timer = StageTimer(self.device)
        self.readback = Readback(self.device)
        self._sources = SourceFilter(s.similar_threshold, self._counters)
        with torch.inference_mode():
            progress.step("static buffers, negative prompt, reference images")
            self.program = FrameProgram(s, comps, self.schedule, self.device, self.dtype, self.prompts.max_len,
                                        self.timer)
            self.programs, self.use_graphs, self.lat_shape = (self.program.programs, self.program.use_graphs,
                                                              self.program.lat_shape)
            self.cfg = self.program.cfg
            self._forget()
            if self.cfg:
                self.program.set_negative(*self.prompts.encode(s.negative_prompt))
            self._load_references()
            self._load_controls()
            if s.ip_adapter is not None:
                from .ip_adapter import ImagePromptFeed

                self._ip = ImagePromptFeed(s.ip_adapter, comps.ip_adapter, self.program, self._counters,
                                           s.similar_threshold)
            self.prepared = True
            log.info("diffusion: loaded in %.1f s; warming up%s%s", time.perf_counter() - t0,
                     ", compiling" if s.compile else "", " and capturing CUDA graphs" if self.use_graphs else "")
            self._warm_up(progress)
        log.info("diffusion: ready in %.1f s (graphs=%s, captures=%d)", time.perf_counter() - t0, self.use_graphs,
                 self.programs.captures)

    def _load_references(self) -> None:
        """Encode the configured source/reference images to latents once (img2img and reference blends)."""
        s = self.settings
        paths = ([s.source] if s.source else []) + list(s.references)
        self.ref_latents = []
        for p in paths:
            img = load_image(p, s.width, s.height)
            self.program.encode_source(img)
            self.ref_latents.append(self.buf["src"].clone())
            self.programs.sync()  # the next image reuses the pinned staging buffer this upload reads from
        self._src_key = None

    def _load_controls(self) -> None:
        """The controls' live state; those with an image file get it now, once."""
        s = self.settings
        self._control_values = [c.scale for c in s.controls]
        self._control_spans = [(c.start, c.end) for c in s.controls]
        self._control_version = 0
        self._camera_controls = [j for j, c in enumerate(s.controls) if c.source == "camera"]
        self._camera_seen = time.monotonic()
        from .depth import DepthEstimator

        self._depth: dict[int, DepthEstimator] = {}
        models: dict[str, DepthEstimator] = {}  # one model serves every control that names its folder
        for j, c in enumerate(s.controls):
            if c.kind == "depth":
                if c.depth_model not in models:
                    models[c.depth_model] = DepthEstimator(c.depth_model, self.device, self.dtype)
                self._depth[j] = models[c.depth_model]
        for j, c in enumerate(s.controls):
            if c.source != "camera":
                self.program.set_control_image(j, self._control_image(j, load_image(c.source, s.width, s.height)))
                self.programs.sync()

    def _control_image(self, j: int, img: np.ndarray, edges: Any = None) -> np.ndarray | torch.Tensor:
        """A source image as control j takes it, at the frame's size: its edges (canny, HxW: the camera process's map
        in ``edges`` when it sent one, else made here by the same function), its depth (on the device), or the image
        as it is."""
        import cv2

        from ...inputs.camera_edges import canny_edges

        s, c = self.settings, self.settings.controls[j]
        if c.kind == "canny":
            spec = (s.width, s.height, c.low, c.high)
            e = edges.get(spec) if isinstance(edges, Mapping) else None
            if not (isinstance(e, np.ndarray) and e.dtype == np.uint8 and e.shape == (s.height, s.width)):
                e = canny_edges(img, spec)
                self._counters["control_edges_made"] += 1
            return e
        if c.kind == "depth":
            return self._depth[j](img, s.width, s.height)
        if img.shape[:2] != (s.height, s.width):
            img = cv2.resize(img, (s.width, s.height), interpolation=cv2.INTER_AREA)
        return img

    def _update_controls(self, params: Mapping[str, float], camera: np.ndarray | None, edges: Any = None) -> None:
        """Live scales, and the camera's newest frame (and its edge maps) into the controls that take it (held when
        none comes)."""
        for j, v in enumerate(self._control_values):
            new = bounded(params, f"control.{j}.scale", self.settings.controls[j].scale, 0.0, 4.0)
            if new != v:
                self.program.set_control_scale(j, new)
                self._control_values[j] = new
        spans = [(bounded(params, f"control.{j}.start", c.start, 0.0, 1.0),
                  bounded(params, f"control.{j}.end", c.end, 0.0, 1.0)) for j, c in enumerate(self.settings.controls)]
        if spans != self._control_spans:
            self.program.set_control_spans(spans)
            self._control_spans = spans
        if not self._camera_controls:
            return
        now = time.monotonic()
        if camera is None:
            if now - self._camera_seen > CONTROL_HOLD_S:
                self._counters["control_held"] += 1  # the camera stopped: its last image holds
            return
        self._camera_seen = now
        if self._sources.changed(camera) or self._control_version == 0:
            for j in self._camera_controls:
                self.program.set_control_image(j, self._control_image(j, camera, edges))
            self._control_version += 1
            self._counters["control_frames"] += 1

    def _warm_plan(self) -> list[tuple[str, dict, dict]]:
        """The warm-up frames (label, params, extras) that reach every program a show can use."""
        s = self.settings
        plan: list[tuple[str, dict, dict]] = []
        steps = s.steps if s.emergence else 1
        full = {"diffusion.strength": s.strength or 1.0}  # strength 0 would take the reconstruction path instead
        name = "frame program (stream batch)" if s.stream_batch else "frame program"
        plan += [(f"frame program, step {i + 1}/{steps}" if steps > 1 else name, full, {})
                 for i in range(steps)]
        # Always the source encode (a camera may feed any diffusion scene) and the strength-0 reconstruction.
        src = {"source": np.zeros((s.height, s.width, 3), np.uint8)}
        plan.append(("source encode", {}, src))
        plan.append(("strength-0 reconstruction", {"diffusion.strength": 0.0}, src))
        return plan

    def _warm_up(self, progress: PrepareProgress) -> None:
        """Render a first frame for every program a show can use, so compile and capture never happen mid-show."""
        req_z = np.zeros(self.lat_shape, np.float32)
        what = "compile + capture" if self.settings.compile and self.use_graphs else (
            "compile" if self.settings.compile else "capture" if self.use_graphs else "warm-up")
        for label, params, extras in self._warm_plan():
            progress.step(f"{what}: {label}")
            self._render(req_z, params, extras, force=True)
        self.reset()
        if self._ip is not None:
            self._ip.after_warm_up()
        for k in ("frames", "skipped", "nonfinite", "control_held", "control_frames", "control_edges_made"):
            self._counters[k] = 0
        self._camera_seen = math.inf  # no camera frame has come yet: nothing is held until one has

    # -- render -------------------------------------------------------------------------------------------------

    def _set_condition(self, prompts: tuple[tuple[str, float], ...]) -> None:
        """Blend the cached embeddings into the static conditioning buffer (only when the blend changed)."""
        if prompts == self._cond_key:
            return
        self.program.set_condition(*self.prompts.blend(prompts, self.settings.blend))
        self._cond_key = prompts

    def render(self, request: LatentRequest) -> np.ndarray:
        """One frame, HxWx3 uint8. Raises NonFiniteFrame (after resetting cross-frame state) on NaN/Inf."""
        if not self.prepared:
            raise RuntimeError("diffusion decoder: call prepare() before render()")
        z = np.asarray(request.z, dtype=np.float32)
        if z.shape != self.lat_shape:
            raise ValueError(f"diffusion: request.z has shape {z.shape}, expected {self.lat_shape}")
        return self._render(z, request.params or {}, request.extras or {})

    @torch.inference_mode()
    def _render(self, z: np.ndarray, params: Mapping[str, float], extras: Mapping[str, Any],
                force: bool = False) -> np.ndarray:
        s, b, prog = self.settings, self.buf, self.program
        self.timer.start()
        prompts = prompt_set(s, params, extras)
        self._set_condition(prompts)
        self.timer.mark("encode")
        # Live scalars: only written when they move (each write is a tiny async device op).
        for name, tensor in self.lora_scales.items():
            v = bounded(params, f"lora.{name}.scale", 1.0, -4.0, 4.0)
            if v != self._lora_values[name]:
                tensor.fill_(v)
                self._lora_values[name] = v
        g = bounded(params, "diffusion.guidance", s.guidance, 0.0, 30.0)
        prog.set_guidance(g)

        src = camera = None if s.latent_source else self._sources.take(extras)
        if s.controls:  # a camera that steers a control is not also the img2img source
            self._update_controls(params, src if self._camera_controls else None, extras.get("edges"))
            if self._camera_controls:
                src = None
        if self._ip is not None:  # likewise a camera that is an image prompt
            self._ip.update(params, camera)
            if self._ip.takes_camera:
                src = None
        img2img = src is not None or bool(self.ref_latents) or s.latent_source
        strength = bounded(params, "diffusion.strength", s.strength, 0.0, 1.0) if img2img else 1.0
        src_changed = False
        if src is not None:
            src_changed = self._sources.changed(src) or self._src_key != "camera"
            if src_changed:
                prog.encode_source(src)
                self._src_key = "camera"
        elif s.latent_source:  # the trajectory's latent is the clean source (in the skip key); the noise is fixed
            self._src_key = ("z", z.tobytes())
        elif self.ref_latents:
            n = len(self.ref_latents)
            weights = tuple(bounded(params, f"reference.{i}.weight", 1.0, 0.0, 1e6) for i in range(n))
            if sum(weights) <= 0:
                weights = (1.0,) * n
            if self._src_key != ("refs", weights):
                b["src"].copy_(blend_tensors(self.ref_latents, list(weights), s.blend))
                self._src_key = ("refs", weights)
                src_changed = True
        use_z = not img2img or (s.img2img_noise == "trajectory" and not s.latent_source)

        # Skip the whole frame when nothing that shapes it moved (a paused walk, a still camera); a stream batch
        # first runs until the frames still in flight have left.
        key = (prompts, strength, g, tuple(self._lora_values.values()), self._src_key,
               z.tobytes() if use_z else None,
               (tuple(self._control_values), tuple(self._control_spans), self._control_version)
               if s.controls else None, self._ip.key if self._ip is not None else None)
        same = key == self._last_key and not src_changed
        self._same_run = self._same_run + 1 if same else 0
        flush = s.steps - 1 if s.stream_batch else 0
        if (not force and not s.emergence and self._last_frame is not None and same and self._same_run > flush
                and self._skip_run < s.similar_max_skip):
            self._skip_run += 1
            self._counters["skipped"] += 1
            return self._last_frame.copy()
        self._skip_run = 0

        if use_z or s.latent_source:
            prog.set_z(z, "src" if s.latent_source else "z")
        if not use_z:
            b["z"].copy_(b["fixed_noise"])
        self.timer.mark("upload")
        if img2img and strength <= 0.0:
            program, fn = ("recon",), prog.recon
        else:
            prog.set_table(strength)
            if img2img:  # the source noised to the first timestep (the scheduler's add_noise)
                a = prog.alpha_start
                prog.set_init((math.sqrt(a), math.sqrt(1 - a)))
            else:  # noise as the folder's scheduler starts it (init_noise_sigma, scale_model_input)
                prog.set_init((0.0, self.z_coef))
            if s.emergence and s.steps > 1:
                i = self._em_index
                program, fn = ("emergence", i), (lambda i=i: prog.emergence(i))
                self._em_index = (i + 1) % s.steps
            elif s.stream_batch:
                prog.set_out_slot(min(self._stream_ticks, s.steps - 1))  # filling: the oldest request so far
                self._stream_ticks += 1
                program, fn = ("stream",), prog.stream
            else:
                program, fn = ("full",), prog.full
        self.programs.run(program, fn)
        if self.use_graphs:
            self.timer.mark("graph")
        try:
            frame = self.readback.fetch(b["rgb"], b["ok"])
        except NonFiniteFrame:
            self._counters["nonfinite"] += 1
            self.reset()
            log.warning("diffusion: non-finite frame caught; cross-frame state reset")
            raise
        self.timer.mark("download")
        self._counters["frames"] += 1
        self._last_frame, self._last_key = frame, key
        return frame.copy()

    def _forget(self) -> None:
        """The host side of the cross-frame state."""
        self._em_index = 0
        self._last_frame, self._last_key = None, None
        self._skip_run = 0
        self._same_run = 0
        self._stream_ticks = 0
        self._src_key = None
        self._cond_key = None
        if getattr(self, "_sources", None) is not None:
            self._sources.reset()
        if getattr(self, "_ip", None) is not None:
            self._ip.reset()

    def reset(self) -> None:
        """Forget every cross-frame state (emergence chain, skip cache, source cache); keep models and graphs."""
        self._forget()
        if self.program is not None and self.program.buf is not None:
            self.program.reset()

    def health(self) -> dict[str, int]:
        """Counters for /health: frames rendered on a camera control's held image (its camera stopped), new camera
        frames the controls took, and those whose edges the decoder made itself (the camera's process makes them: a
        few at a scene's start); frames rendered on a camera image prompt's held image."""
        out = {k: self._counters[k] for k in ("control_held", "control_frames", "control_edges_made")} \
            if self.settings.controls else {}
        if self.settings.ip_adapter is not None:
            out["ip_held"] = self._counters["ip_held"]
        return out

    def stats(self) -> dict[str, float]:
        """Last frame's per-stage milliseconds (eager path; a graph replay lands in 'unet') plus counters."""
        timer = getattr(self, "timer", None)
        out: dict[str, float] = {f"{k}_ms": v for k, v in timer.ms.items()} if timer is not None else {}
        out.update({k: float(v) for k, v in self._counters.items()})
        out["encode_calls"] = float(self.encode_calls)
        out["graph_captures"] = float(self.programs.captures) if self.prepared else 0.0
        return out

    def close(self) -> None:
        """Drop graphs, models and caches so the memory goes back (safe to call twice)."""
        if self.program is not None:
            self.program.close()
        self.program = None
        for name in ("unet", "vae", "text_encoders", "tokenizers", "ref_latents", "lora_scales", "comps",
                     "programs", "_depth"):
            if hasattr(self, name):
                setattr(self, name, None)
        if self.prompts is not None:
            self.prompts.clear()
        self.prepared = False
        if torch.cuda.is_available() and self.device_name.startswith("cuda"):
            torch.cuda.empty_cache()
