"""GAN decoder: a generator file of weights, built as a declared architecture, mapping z (+ a class vector) to an image.

The file is ``.safetensors``: tensors, plus an ``installation`` metadata entry (JSON) naming the architecture (one of
:data:`~installation.decoders.gan_nets.ARCHITECTURES`, code in this package) and its config, ``latent_shape``,
``class_dim`` and ``output_range`` ("tanh" (-1..1) or "unit" (0..1)); scene settings override the last three. The
network is built here and the file only fills its tensors, so a generator file from anyone is safe to load: nothing
in it runs. TorchScript and ``torch.export`` files are programs (TorchScript code runs when the module is loaded and
called; ``torch.export.load`` unpickles weights marked ``use_pickle``, pickled constants and legacy payloads, and its
graph may call any op, ``aten::from_file`` writing a file among them), so they are refused with one line, except a
``.pt2`` written by an earlier ``installation train``: its raw weights are read and built as ``stylegan-lite``; its
graph and any pickle in it are never touched. Same acceleration as diffusion: float32 eager on the CPU always works;
on CUDA fp16/bf16, optional torch.compile and one captured graph.

Live values: ``request.extras["class_vector"]`` (class_dim floats) or the bus ``gan.class.<i>.weight`` mixed onto
the settings' class; ``gan.truncation`` (psi, scales z). :meth:`GanDecoder.param_specs` declares them on the bus
(class weights for the first 16 classes).
"""

from __future__ import annotations

import json
import logging
import math
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from . import register
from .gan_kind import (META_KEY, SUFFIX, GanKind, GanSettings, _pt2_weights_config, _read_entry, _refuse, check_file,
                       read_metadata)
from .gan_nets import ARCHITECTURES, architecture, make_config
from ._accel import (PrepareProgress, Programs, Readback, StageTimer, maybe_compile, resolve_device, resolve_dtype,
                     to_uint8_hwc)
from .base import LatentRequest, NonFiniteFrame
from .weights import UnsafeModelFile

__all__ = ["GanDecoder", "GanSettings", "UnsafeModelFile", "check_file", "load_generator", "read_metadata",
           "save_generator"]

log = logging.getLogger(__name__)

_PT2_DTYPES = {6: torch.float16, 7: torch.float32, 13: torch.bfloat16}  # torch.export serde ScalarType codes


def save_generator(module: torch.nn.Module, path: str | Path, latent_shape: tuple[int, ...], class_dim: int = 0,
                   output_range: str = "tanh", meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``module``'s weights as a ``.safetensors`` generator file with the architecture that builds it again
    and the metadata this decoder reads (plus ``meta``). ``module`` must be a declared architecture
    (:mod:`~installation.decoders.gan_nets`): a file carries weights, never code."""
    path = Path(path)
    name = getattr(module, "architecture", None)
    if name not in ARCHITECTURES or architecture(name) is not type(module) or not hasattr(module, "config"):
        raise TypeError(f"save_generator: {type(module).__name__} is not a declared architecture "
                        f"(installation/decoders/gan_nets.py)")
    if path.suffix != SUFFIX:
        raise ValueError(f"save_generator: {path} must end in {SUFFIX}")
    from safetensors.torch import save_file

    info = {**(meta or {}), "architecture": name, "config": asdict(module.config), "latent_shape": list(latent_shape),
            "class_dim": class_dim, "output_range": output_range}
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}
    save_file(tensors, str(path), metadata={META_KEY: json.dumps(info)})
    return path


def _read_pt2_weights(p: Path) -> dict[str, torch.Tensor]:
    """The raw weights of a checked legacy .pt2 (sizes, strides and offsets from its JSON, bounds checked by
    as_strided); nothing in the archive is unpickled or run."""
    out = {}
    with zipfile.ZipFile(p) as zf:
        config = _pt2_weights_config(zf)
        folder = [n for n in zf.namelist() if n.endswith("/data/weights/model_weights_config.json")][0]
        folder = folder[: -len("model_weights_config.json")]
        for fqn, entry in config.items():
            meta = entry["tensor_meta"]
            dtype = _PT2_DTYPES.get(meta["dtype"])
            if entry.get("use_pickle") or dtype is None or meta.get("layout", 7) != 7:
                raise ValueError(f"weight {fqn!r} is not a plain float tensor")
            raw = bytearray(_read_entry(zf, folder + str(entry["path_name"])))
            flat = torch.frombuffer(raw, dtype=dtype) if raw else torch.zeros(0, dtype=dtype)
            sizes = [int(d["as_int"]) for d in meta["sizes"]]
            strides = [int(d["as_int"]) for d in meta["strides"]]
            out[fqn] = torch.as_strided(flat, sizes, strides, int(meta["storage_offset"]["as_int"])).clone()
    return out


def load_generator(path: str | Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build the file's declared architecture and fill it with the file's tensors (names and shapes must match
    exactly); (network in eval mode, metadata). UnsafeModelFile for a file that cannot be loaded safely."""
    p = Path(path).expanduser()
    meta = check_file(p)
    cls = architecture(meta["architecture"])
    cfg = make_config(cls, meta["config"])
    try:
        if p.suffix == SUFFIX:
            from safetensors.torch import load_file

            tensors = load_file(str(p))
        else:
            tensors = _read_pt2_weights(p)
        odd = [k for k, t in tensors.items() if not t.is_floating_point()]
        if odd:
            raise ValueError(f"tensor {odd[0]!r} is {tensors[odd[0]].dtype}, not floating point")
        with torch.device("meta"):  # no memory for the declared shapes until the file's tensors fill them
            net = cls(cfg)
        net.load_state_dict(tensors, strict=True, assign=True)
    except Exception as e:  # noqa: BLE001 - SafetensorError, size mismatch, missing keys: one line
        raise _refuse(p, f"its tensors do not fit architecture {meta['architecture']} {asdict(cfg)} "
                         f"({str(e).splitlines()[0][:300]})") from None
    if any(t.is_meta for t in [*net.parameters(), *net.buffers()]):
        raise _refuse(p, "some tensors of the architecture are missing from the file")
    return net.to(device).eval().requires_grad_(False), meta


@register("gan")
class GanDecoder(GanKind):
    """z (+ class vector) -> generator -> HxWx3 uint8, with the same NaN guard and graphs as diffusion."""

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
            raise FileNotFoundError(f"gan: generator file {path} not found; write one with `installation train` "
                                    f"or installation.decoders.gan.save_generator ({SUFFIX})")
        self.device = resolve_device(self.device_name)
        self.dtype = resolve_dtype(s.dtype, self.device)
        with PrepareProgress(f"gan {path.name}", 3) as progress:
            self._prepare_steps(path, progress)

    def _prepare_steps(self, path: Path, progress: PrepareProgress) -> None:
        s = self.settings
        progress.step("loading the generator")
        self.gen, meta = load_generator(path, self.device)
        self.gen = self.gen.to(self.dtype)
        self.lat_shape = self.latent_shape(s)
        self.class_dim = s.class_dim if s.class_dim >= 0 else int(meta.get("class_dim", 0))
        rng = s.output_range if s.output_range != "auto" else meta.get("output_range", "tanh")
        if rng not in ("tanh", "unit"):
            raise ValueError(f"gan: {path}: output_range must be tanh or unit, not {rng!r}")
        self.unit_range = rng == "unit"
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
