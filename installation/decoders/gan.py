"""GAN decoder: a TorchScript or torch.export generator file mapping z (and an optional class vector) to an image.

The file may carry its own metadata as an extra file ``installation.json`` (``latent_shape``, ``class_dim``,
``output_range`` "tanh" (-1..1) or "unit" (0..1)); scene settings override it. Same acceleration as diffusion:
float32 eager on the CPU always works; on CUDA fp16/bf16, optional torch.compile and one captured graph.

Live values: ``request.extras["class_vector"]`` (class_dim floats) or the bus ``gan.class.<i>.weight`` mixed onto
the settings' class; ``gan.truncation`` (psi, scales z). :meth:`GanDecoder.param_specs` declares them on the bus
(class weights for the first 16 classes).
"""

from __future__ import annotations

import json
import logging
import math
import zipfile
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping

import numpy as np
import torch
from pydantic import Field

from . import register
from ..bus import ParamSpec
from ._accel import (PrepareProgress, Programs, Readback, StageTimer, maybe_compile, resolve_device, resolve_dtype,
                     to_uint8_hwc)
from .base import DecoderSettings, LatentRequest, NonFiniteFrame

log = logging.getLogger(__name__)

META_NAME = "installation.json"


class GanSettings(DecoderSettings):
    """Which generator file to run and how."""

    path_fields: ClassVar[tuple[str, ...]] = ("path",)

    path: str = Field(description="TorchScript (.pt/.ts) or torch.export (.pt2) generator file")
    latent_shape: tuple[int, ...] = Field((), description="z shape without batch; empty = from the file")
    class_dim: int = Field(-1, ge=-1, description="class vector length; -1 = from the file (0 = unconditional)")
    class_index: int = Field(0, ge=0, description="one-hot class used when no class vector arrives")
    output_range: Literal["auto", "tanh", "unit"] = "auto"
    truncation: float = Field(1.0, ge=0.0, le=2.0, description="psi: z is scaled by it (0 = the mean image)")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    cuda_graph: bool = True
    compile: bool = False
    compile_cache_dir: str = ""


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``installation.json`` extra file of a TorchScript / torch.export zip, or {} when it has none."""
    p = Path(path).expanduser()
    try:
        with zipfile.ZipFile(p) as zf:
            for name in zf.namelist():
                if name.endswith("extra/" + META_NAME) or name.endswith("/" + META_NAME):
                    return json.loads(zf.read(name).decode("utf-8"))
    except (OSError, zipfile.BadZipFile, ValueError):
        return {}
    return {}


def save_generator(module: torch.nn.Module, path: str | Path, latent_shape: tuple[int, ...], class_dim: int = 0,
                   output_range: str = "tanh", export: bool = False, meta: Mapping[str, Any] | None = None) -> Path:
    """Script (or export) ``module`` into ``path`` with the metadata this decoder reads back (plus ``meta``)."""
    meta = json.dumps({**(meta or {}), "latent_shape": list(latent_shape), "class_dim": class_dim,
                       "output_range": output_range})
    path = Path(path)
    module = module.eval()
    if export:
        args: tuple = (torch.zeros((1, *latent_shape)),)
        if class_dim:
            args += (torch.zeros((1, class_dim)),)
        ep = torch.export.export(module, args)
        torch.export.save(ep, str(path), extra_files={META_NAME: meta})
    else:
        torch.jit.save(torch.jit.script(module), str(path), _extra_files={META_NAME: meta})
    return path


@register("gan")
class GanDecoder:
    """z (+ class vector) -> generator -> HxWx3 uint8, with the same NaN guard and graphs as diffusion."""

    Settings = GanSettings

    @classmethod
    def latent_shape(cls, settings: GanSettings) -> tuple[int, ...]:
        """From the settings, else the file's metadata; a clear error when neither says."""
        if settings.latent_shape:
            return tuple(settings.latent_shape)
        meta = read_metadata(settings.path)
        if "latent_shape" in meta:
            return tuple(int(v) for v in meta["latent_shape"])
        raise ValueError(f"gan: {settings.path} carries no latent_shape metadata; set latent_shape in the scene")

    @classmethod
    def param_specs(cls, settings: GanSettings) -> list[ParamSpec]:
        """gan.truncation, and gan.class.<i>.weight for the first 16 classes (the settings' class starts at 1)."""
        specs = [ParamSpec("gan.truncation", "float", 0.0, 2.0, settings.truncation, 0.3, 0.3,
                           "psi: scales z toward the mean image (0) or past it (above 1)")]
        class_dim = settings.class_dim
        if class_dim < 0:
            try:
                class_dim = int(read_metadata(settings.path).get("class_dim", 0))
            except (OSError, ValueError):
                class_dim = 0
        specs += [ParamSpec(f"gan.class.{i}.weight", "float", -4.0, 4.0, float(i == settings.class_index), 0.3,
                            0.3, f"weight of class {i} in the class vector") for i in range(min(class_dim, 16))]
        return specs

    @classmethod
    def check(cls, settings: GanSettings) -> None:
        """Start-up check: the generator file exists and its latent shape is known."""
        if not Path(settings.path).expanduser().is_file():
            raise FileNotFoundError(f"gan: generator file {settings.path} not found")
        cls.latent_shape(settings)

    def __init__(self, settings: GanSettings, device: str = "cpu") -> None:
        if not isinstance(settings, GanSettings):
            settings = GanSettings.model_validate(settings)
        self.settings = settings
        self.device_name = device
        self.prepared = False
        self._counters = {"frames": 0, "nonfinite": 0}

    def prepare(self) -> None:
        """Load the file, move/cast it, warm up and capture the graph."""
        s = self.settings
        path = Path(s.path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"gan: generator file {path} not found; export one with "
                                    f"installation.decoders.gan.save_generator (TorchScript or torch.export)")
        self.device = resolve_device(self.device_name)
        self.dtype = resolve_dtype(s.dtype, self.device)
        with PrepareProgress(f"gan {path.name}", 3) as progress:
            self._prepare_steps(path, progress)

    def _prepare_steps(self, path: Path, progress: PrepareProgress) -> None:
        s = self.settings
        progress.step("loading the generator")
        meta = read_metadata(path)
        self.lat_shape = self.latent_shape(s)
        self.class_dim = s.class_dim if s.class_dim >= 0 else int(meta.get("class_dim", 0))
        rng = s.output_range if s.output_range != "auto" else meta.get("output_range", "tanh")
        if rng not in ("tanh", "unit"):
            raise ValueError(f"gan: {path}: output_range must be tanh or unit, not {rng!r}")
        self.unit_range = rng == "unit"
        self.gen = self._load(path)
        self._fn = maybe_compile(self.gen, s.compile, s.compile_cache_dir, s.cuda_graph)
        self.programs = Programs(self.device, s.cuda_graph)
        self.readback = Readback(self.device)
        self.timer = StageTimer(self.device)
        self.buf: dict[str, torch.Tensor] = {
            "z": torch.zeros((1, *self.lat_shape), device=self.device, dtype=self.dtype),
            "psi": torch.tensor(s.truncation, device=self.device, dtype=self.dtype),
            "ok": torch.ones((), device=self.device, dtype=torch.bool),
        }
        if self.class_dim:
            if s.class_index >= self.class_dim:
                raise ValueError(f"gan: class_index {s.class_index} >= class_dim {self.class_dim}")
            self.buf["c"] = torch.zeros((1, self.class_dim), device=self.device, dtype=self.dtype)
        progress.step("probing its output" + (" (compiling)" if s.compile else ""))
        with torch.inference_mode():
            probe = self._generate()
        if probe.ndim != 4 or probe.shape[1] != 3:
            raise ValueError(f"gan: {path} returned shape {tuple(probe.shape)}; expected [1,3,H,W]")
        self.buf["rgb"] = torch.zeros((probe.shape[2], probe.shape[3], 3), device=self.device, dtype=torch.uint8)
        self._psi = s.truncation
        self._class_key: Any = None
        self.prepared = True
        progress.step("first frame" + (" and CUDA graph capture" if self.programs.use_graphs else ""))
        self._render(np.zeros(self.lat_shape, np.float32), {}, {})
        self._counters["frames"] = 0
        log.info("gan: %s ready (latent %s, class_dim %d, graphs=%s)", path, self.lat_shape, self.class_dim,
                 self.programs.use_graphs)

    def _load(self, path: Path) -> torch.nn.Module:
        errors = []
        loaders = [self._load_export, self._load_script]
        if path.suffix != ".pt2":
            loaders.reverse()
        for loader in loaders:
            try:
                return loader(path)
            except Exception as exc:  # noqa: BLE001 - try the other format, report both
                errors.append(f"{loader.__name__[6:]}: {exc}")
        raise ValueError(f"gan: {path} is neither a TorchScript nor a torch.export file ({'; '.join(errors)})")

    def _load_script(self, path: Path) -> torch.nn.Module:
        mod = torch.jit.load(str(path), map_location=self.device)
        return mod.to(self.dtype).eval()

    def _load_export(self, path: Path) -> torch.nn.Module:
        from torch.export.passes import move_to_device_pass

        # An exported program records the device of every tensor its forward creates (saved on the CPU, it would
        # build them there); the pass rewrites those too, which .to(device) on the module does not.
        ep = move_to_device_pass(torch.export.load(str(path)), self.device)
        return ep.module().to(self.dtype)

    def _generate(self) -> torch.Tensor:
        z = self.buf["z"] * self.buf["psi"]
        img = self._fn(z, self.buf["c"]) if self.class_dim else self._fn(z)
        if isinstance(img, (tuple, list)):
            img = img[0]
        return img * 2 - 1 if self.unit_range else img

    def _program(self) -> None:
        img = self._generate()
        self.buf["ok"].copy_(torch.isfinite(img).all())
        self.buf["rgb"].copy_(to_uint8_hwc(img))

    def render(self, request: LatentRequest) -> np.ndarray:
        """One HxWx3 uint8 frame; NaN/Inf raises NonFiniteFrame and resets the live state."""
        if not self.prepared:
            raise RuntimeError("gan decoder: call prepare() before render()")
        z = np.asarray(request.z, dtype=np.float32)
        if z.shape != self.lat_shape:
            raise ValueError(f"gan: request.z has shape {z.shape}, expected {self.lat_shape}")
        return self._render(z, request.params or {}, request.extras or {})

    def _class_vector(self, params: Mapping[str, float], extras: Mapping[str, Any]) -> np.ndarray:
        vec = extras.get("class_vector")
        if vec is not None:
            arr = np.asarray(vec, dtype=np.float32).reshape(-1)
            if arr.shape == (self.class_dim,) and np.isfinite(arr).all():
                return arr
            log.warning("gan: ignoring class_vector of shape %s (need %d finite floats)", arr.shape, self.class_dim)
        arr = np.zeros(self.class_dim, np.float32)
        arr[self.settings.class_index] = 1.0
        for key, value in params.items():
            if key.startswith("gan.class.") and key.endswith(".weight"):
                try:
                    i, v = int(key.split(".")[2]), float(value)
                except (ValueError, IndexError):
                    continue
                if 0 <= i < self.class_dim and math.isfinite(v):
                    arr[i] = v
        return arr

    @torch.inference_mode()
    def _render(self, z: np.ndarray, params: Mapping[str, float], extras: Mapping[str, Any]) -> np.ndarray:
        self.timer.start()
        psi = params.get("gan.truncation", self.settings.truncation)
        try:
            psi = min(max(float(psi), 0.0), 2.0)
        except (TypeError, ValueError):
            psi = self.settings.truncation
        if psi != self._psi and math.isfinite(psi):
            self.buf["psi"].fill_(psi)
            self._psi = psi
        if self.class_dim:
            vec = self._class_vector(params, extras)
            key = vec.tobytes()
            if key != self._class_key:
                self.buf["c"].copy_(torch.from_numpy(vec)[None])
                self._class_key = key
        self.buf["z"].copy_(torch.from_numpy(z)[None])
        self.timer.mark("upload")
        self.programs.run(("gen",), self._program)
        self.timer.mark("generate")
        try:
            frame = self.readback.fetch(self.buf["rgb"], self.buf["ok"])
        except NonFiniteFrame:
            self._counters["nonfinite"] += 1
            self._class_key = None
            log.warning("gan: non-finite frame caught; state reset")
            raise
        self.timer.mark("download")
        self._counters["frames"] += 1
        return frame

    def stats(self) -> dict[str, float]:
        """Last frame's stage milliseconds and counters."""
        out = {f"{k}_ms": v for k, v in self.timer.ms.items()} if self.prepared else {}
        out.update({k: float(v) for k, v in self._counters.items()})
        return out

    def close(self) -> None:
        """Release the generator and its graph."""
        if getattr(self, "programs", None) is not None:
            self.programs.clear()
        self.gen = self._fn = self.buf = None
        self.prepared = False
