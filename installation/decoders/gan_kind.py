"""The GAN decoder's class-level side: its settings, what a generator file says about itself and whether it loads
without running anything, read from the file's headers (JSON only, never a tensor or a pickle), its latent shape
and live parameters. A scene is checked, and the commands that only print run, without importing torch
(:func:`installation.decoders.decoder_kind`); :class:`~installation.decoders.gan.GanDecoder` inherits it."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from ..bus import ParamSpec
from .base import DecoderSettings
from .gan_configs import build_config, config_class
from .weights import UnsafeModelFile

META_KEY = "installation"  # the safetensors metadata entry with the architecture and what the decoder reads
LEGACY_META = "installation.json"  # the extra file of a .pt2 written by an earlier `installation train`
SUFFIX = ".safetensors"


class GanSettings(DecoderSettings):
    """Which generator file to run and how."""

    path_fields: ClassVar[tuple[str, ...]] = ("path",)

    path: str = Field(description="generator file: .safetensors (weights of a declared architecture), or a .pt2 "
                                  "written by an earlier `installation train`")
    latent_shape: tuple[int, ...] = Field((), description="z shape without batch; empty = from the file")
    class_dim: int = Field(-1, ge=-1, description="class vector length; -1 = from the file (0 = unconditional)")
    class_index: int = Field(0, ge=0, description="one-hot class used when no class vector arrives")
    output_range: Literal["auto", "tanh", "unit"] = "auto"
    truncation: float = Field(1.0, ge=0.0, le=2.0, description="psi: z is scaled by it (0 = the mean image)")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    cuda_graph: bool = True
    compile: bool = False
    compile_cache_dir: str = ""


def _refuse(path: Path, why: str) -> UnsafeModelFile:
    return UnsafeModelFile(f"gan: {path}: {why}")


def read_metadata(path: str | Path) -> dict[str, Any]:
    """What the file says about itself (architecture, config, latent_shape, ...): a ``.safetensors`` header's
    ``installation`` entry, or a legacy ``.pt2``'s ``installation.json``; {} when it has none or is unreadable.
    Reads JSON only, never a tensor or a pickle."""
    p = Path(path).expanduser()
    try:
        if p.suffix == SUFFIX:
            from safetensors import safe_open

            with safe_open(str(p), "numpy") as f:
                meta = json.loads((f.metadata() or {}).get(META_KEY, "{}"))
        else:
            meta = _legacy_metadata(p)
    except Exception:  # noqa: BLE001 - a damaged header (SafetensorError, bad zip, bad JSON): no metadata
        return {}
    return meta if isinstance(meta, dict) else {}


def _legacy_metadata(p: Path) -> Any:
    with zipfile.ZipFile(p) as zf:
        for name in zf.namelist():
            if name.endswith("/extra/" + LEGACY_META):
                return json.loads(_read_entry(zf, name).decode("utf-8"))
    return {}


def check_file(path: str | Path) -> dict[str, Any]:
    """Whether ``path`` is a generator file this decoder loads without running anything from it, from its headers
    alone (no tensor is read): its metadata, or UnsafeModelFile with one line naming the file and why."""
    p = Path(path).expanduser()
    if p.suffix == SUFFIX:
        meta = read_metadata(p)
        if not meta:
            raise _refuse(p, f"no readable '{META_KEY}' metadata naming its architecture (write generator files "
                             f"with installation.decoders.gan.save_generator)")
    elif p.suffix == ".pt2":
        meta = _legacy_metadata_checked(p)
    else:
        raise _refuse(p, f"a {p.suffix or 'suffixless'} file is not a generator file this program loads: TorchScript "
                         f"and pickled modules run code when loaded; give a {SUFFIX} generator file (README: \"Model "
                         f"files from others are safe to load\")")
    try:
        build_config(config_class(meta.get("architecture")), meta.get("config"))
    except ValueError as e:
        raise _refuse(p, str(e)) from None
    return meta


def _legacy_metadata_checked(p: Path) -> dict[str, Any]:
    """A .pt2 is read only when an earlier `installation train` wrote it (its architecture is then known) and every
    weight is raw bytes: a weight marked use_pickle, or a legacy pickled payload, is refused."""
    try:
        meta = _legacy_metadata(p)
        with zipfile.ZipFile(p) as zf:
            config = _pt2_weights_config(zf)
    except (OSError, zipfile.BadZipFile, ValueError, KeyError) as e:
        raise _refuse(p, f"not a readable .pt2 archive ({e})") from None
    if not isinstance(meta, dict) or meta.get("trained_by") != "installation train" or "config" not in meta:
        raise _refuse(p, "a torch.export program not written by `installation train`: its graph and pickles could "
                         "run code, so it is not loaded; save the generator's weights with "
                         f"installation.decoders.gan.save_generator as {SUFFIX}")
    pickled = [fqn for fqn, entry in config.items() if not isinstance(entry, dict) or entry.get("use_pickle")]
    if pickled:
        raise _refuse(p, f"weight {pickled[0]!r} is a pickle (use_pickle), which could run code when loaded; "
                         "refused")
    return {**meta, "architecture": "stylegan-lite"}


def _read_entry(zf: zipfile.ZipFile, name: str) -> bytes:
    """One member, no larger than the archive itself (torch stores them uncompressed): no zip bomb is inflated."""
    if zf.getinfo(name).file_size > Path(zf.filename or "").stat().st_size:
        raise ValueError(f"{name} claims to be larger than the archive")
    return zf.read(name)


def _pt2_weights_config(zf: zipfile.ZipFile) -> dict[str, Any]:
    names = [n for n in zf.namelist() if n.endswith("/data/weights/model_weights_config.json")]
    if len(names) != 1:
        raise ValueError("no single data/weights/model_weights_config.json (a legacy pickled archive?)")
    config = json.loads(_read_entry(zf, names[0]).decode("utf-8")).get("config")
    if not isinstance(config, dict):
        raise ValueError("model_weights_config.json has no config table")
    return config


class GanKind:
    """What a GAN scene needs before anything is loaded."""

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
        """Start-up check from the file's headers: it exists, it is a format that loads without running anything
        (UnsafeModelFile otherwise) and its latent shape is known."""
        if not Path(settings.path).expanduser().is_file():
            raise FileNotFoundError(f"gan: generator file {settings.path} not found")
        check_file(settings.path)
        cls.latent_shape(settings)
