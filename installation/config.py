"""Config and scene files: TOML in, validated models out, or one message naming the file, the key and what is allowed.

Fail fast at start-up: everything a show needs (config, every scene it plays, every shader those scenes chain, every
parameter they set) is checked here before a window opens or a decoder loads.
"""

from __future__ import annotations

import logging
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

from . import decoders, files, parts
from .files import ConfigError  # defined below the subsystems, which raise it too
from .bus import ParamSpec
from .decoders import DecoderSpec
from .modulation import ModMatrix, ModulationSettings
from .ops.logs import LogSettings
from .ops.schedule import ScheduleSettings
from .latent.prompts import PromptMotionSettings
from .latent.trajectories import TRAJECTORIES, AnyTrajectorySettings, LoopSettings, Trajectory
from .render.hooks import hook_params
from .render.projection import CanvasConfig, OutputSpec, check_outputs
from .render.shaders import ShaderError, ShaderFile, load_dir
from .sizes import Size, SizeT
from .vision.settings import SceneVision, SteerSettings

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "config" / "default.toml"

# Parameters every show has; shader uniforms and input features add theirs.
CORE_PARAMS = (
    ParamSpec("speed", "float", 0.0, 10.0, 1.0, 0.6, 0.6, "how fast the path is walked (path seconds per second)"),
    ParamSpec("radius", "float", 0.0, 2.0, 0.5, 0.6, 0.6, "how far orbits and walks stray from their centre"),
    ParamSpec("temperature", "float", 0.0, 3.0, 1.0, 0.6, 0.6, "latent scale: below 1 calmer, above 1 wilder"),
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MapOverlayConfig(_Strict):
    """``[output.map]``: the live map of the archive drawn over a corner of the window (installation/archive/live_map.py)."""

    enabled: bool = False
    corner: Literal["top-left", "top-right", "bottom-left", "bottom-right"] = "bottom-right"
    width: Annotated[float, Field(gt=0.0, le=1.0)] = 0.28  # of the window's width
    margin: Annotated[float, Field(ge=0.0, le=0.25)] = 0.02  # of the window's shorter side
    opacity: Annotated[float, Field(ge=0.0, le=1.0)] = 0.85
    resolution: Annotated[int, Field(ge=64, le=2048)] = 480  # the picture's width in pixels
    refit_s: Annotated[float, Field(ge=1.0, le=3600.0)] = 30.0  # seconds between refits of the projection
    fps: Annotated[float, Field(gt=0.0, le=30.0)] = 4.0  # redraws of the current position per second
    points: Annotated[int, Field(ge=10, le=100000)] = 2000  # the newest this many archived points are drawn


class OutputConfig(_Strict):
    size: Size = SizeT(1280, 720)
    fps: Annotated[int, Field(ge=1, le=240)] = 60
    fullscreen: bool = False
    display: Annotated[int, Field(ge=0, le=16)] = 0
    vsync: bool = True
    fit: Literal["cover", "contain", "stretch"] = "cover"
    work_scale: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    detail_scale: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0  # passes of "size": "output"; 0 = auto
    title: str = "installation"
    hide_cursor: bool = True
    map: MapOverlayConfig = MapOverlayConfig()


# The default show, in play order: a config without [show] scenes plays these (config/default.toml lists the same,
# and a test holds the two together).
DEFAULT_SCENES = ("aurora", "halo", "tide", "lattice", "nocturne", "voyage", "vigil", "atlas")


class ShowConfig(_Strict):
    scenes: Annotated[list[str], Field(min_length=1)] = list(DEFAULT_SCENES)
    order: Literal["sequence", "shuffle"] = "sequence"
    shuffle_seed: Annotated[int, Field(ge=0)] = 0
    scenes_dir: str = "../scenes"
    shaders_dir: str = "../shaders"
    safe_scene: str = ""  # scene played after repeated decoder faults; "" = the built-in CPPN scene


class DecoderRuntimeConfig(_Strict):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    isolation: Literal["process", "thread"] = "process"
    max_fps: Annotated[float, Field(ge=0, le=1000)] = 0.0
    threads: Annotated[int, Field(ge=0, le=256)] = 0
    restart_backoff_s: Annotated[float, Field(ge=0, le=60)] = 0.5
    restart_backoff_max_s: Annotated[float, Field(ge=0, le=600)] = 10.0
    hang_s: Annotated[float, Field(ge=5, le=3600)] = 120.0
    fallback_retry_s: Annotated[float, Field(ge=1, le=86400)] = 300.0
    fallback_faults: Annotated[int, Field(ge=0, le=100_000)] = 20  # 0 = never fall back
    fallback_window_s: Annotated[float, Field(gt=0, le=86400)] = 60.0
    hooks: tuple[str, ...] = ()  # post-render hooks on every decoded frame (render/hooks.py), e.g. ["frame_stats"]

    @field_validator("hooks")
    @classmethod
    def _known_hooks(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        hook_params(names)  # raises naming the allowed hooks
        return names


class RecordConfig(_Strict):
    ffmpeg: str = "ffmpeg"
    codec: str = "libx264"
    preset: str = "veryfast"
    crf: Annotated[int, Field(ge=0, le=51)] = 20


class CoreConfig(_Strict):
    """The tables the runtime itself reads; each registered part adds its own (see :func:`config_model`)."""

    output: OutputConfig = OutputConfig()
    show: ShowConfig = ShowConfig()
    decoder: DecoderRuntimeConfig = DecoderRuntimeConfig()
    record: RecordConfig = RecordConfig()
    log: LogSettings = LogSettings()
    modulation: ModulationSettings = ModulationSettings()
    schedule: ScheduleSettings = ScheduleSettings()
    params: dict[str, float] = {}
    canvas: CanvasConfig = CanvasConfig()  # projector outputs: render/projection.py
    outputs: list[OutputSpec] = []


_MODEL: tuple[int, type[CoreConfig]] | None = None  # (registry generation, the model built from it)


def config_model() -> type[CoreConfig]:
    """The whole config file's model: :class:`CoreConfig` plus each registered part's table (``[health]``,
    ``[state]``; ``[inputs]`` with one sub-table per input), rebuilt when a part is registered or unregistered."""
    global _MODEL
    gen = parts.generation()
    if _MODEL is None or _MODEL[0] != gen:
        _MODEL = (gen, _build_config_model())
    return _MODEL[1]


def _build_config_model() -> type[CoreConfig]:
    groups: dict[str, dict[str, Any]] = {}
    tables: dict[str, Any] = {}
    for info in parts.infos():
        head, _, tail = info.table.partition(".")
        if head in CoreConfig.model_fields or (not tail and head in groups) or (tail and head in tables):
            raise ValueError(f"part {info.name!r}: table [{info.table}] collides with another table")
        if tail:
            groups.setdefault(head, {})[tail] = (info.settings, info.settings())
        else:
            tables[head] = (info.settings, info.settings())
    for head, fields in groups.items():
        group = create_model(f"{head.capitalize()}Settings", __base__=_Strict, __module__=__name__,
                             __doc__=f"The ``[{head}]`` table: one sub-table per registered part.", **fields)
        tables[head] = (group, group())
    return create_model("Config", __base__=CoreConfig, __module__=__name__,
                        __doc__="The config file: the runtime's tables and the registered parts'.", **tables)


Config = config_model()  # with the built-in parts


class Prompt(_Strict):
    text: Annotated[str, Field(min_length=1, max_length=500)]
    weight: Annotated[float, Field(ge=0, le=10)] = 1.0


class _SceneBody(_Strict):
    description: str = ""
    still: str = Field("", description="a picture of the scene (PNG or JPEG, relative to the scene file): its "
                                       "thumbnail on the web page until the show has shown the scene itself")
    duration: Annotated[float, Field(ge=0, le=7 * 86400)] = 60.0
    transition: Annotated[float, Field(ge=0, le=120)] = 4.0
    seed: Annotated[int, Field(ge=0, le=2**63 - 1)] = 0
    trajectory: AnyTrajectorySettings = LoopSettings()
    params: dict[str, float] = {}
    shaders: Annotated[list[str], Field(min_length=1)] = ["present", "feedback", "grade"]
    prompts: list[Prompt] = []
    prompt_motion: PromptMotionSettings = PromptMotionSettings()
    modulation: ModulationSettings = ModulationSettings()
    vision: SceneVision = SceneVision()  # describe loop, hidden prompts, negative concepts (installation/vision)
    steer: SteerSettings = SteerSettings()  # bend the walk towards a text (installation/vision/steer.py)


@dataclass(frozen=True)
class Scene:
    """A validated scene: what it decodes with, how it walks, and how it looks."""

    name: str
    path: Path
    decoder: DecoderSpec
    body: _SceneBody

    def __getattr__(self, item: str) -> Any:
        return getattr(self.body, item)


@dataclass
class ShowSpec:
    """A loaded, fully validated show: config, scenes in play order, shaders and parameter specs."""

    config: Config
    path: Path
    scenes: list[Scene]
    shaders: dict[str, ShaderFile]
    params: dict[str, ParamSpec] = field(default_factory=dict)
    safe: Scene | None = None  # the configured safe scene (None: the built-in one, see :func:`builtin_safe_scene`)
    refused: dict[str, str] = field(default_factory=dict)  # shader files left out (name -> why), chained by no scene

    def scene(self, name: str) -> Scene:
        for s in self.scenes:
            if s.name == name:
                return s
        raise KeyError(name)


# -- reading ---------------------------------------------------------------------------------------------------

def read_toml(path: Path) -> dict[str, Any]:
    """A whole config or scene file (bounded, stable, UTF-8, no inf/nan, not too deep: :mod:`installation.files`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(path, "", "file not found")
    try:
        return files.load_toml(path)
    except FileNotFoundError:
        raise ConfigError(path, "", "file not found") from None
    except files.FileError as e:
        raise ConfigError(path, e.key, e.why) from None


def _allowed_keys(model: type[BaseModel], loc: tuple, data: Any) -> list[str] | None:
    """Walk ``loc`` through nested models (and the trajectory's 'kind' union) to list the keys allowed there."""
    for part in loc:
        if not isinstance(part, str) or part not in model.model_fields:
            return None
        ann = model.model_fields[part].annotation
        data = data.get(part) if isinstance(data, dict) else None
        candidates = [a for a in typing.get_args(typing.get_args(ann)[0] if typing.get_origin(ann) is Annotated
                                                 else ann) if isinstance(a, type) and issubclass(a, BaseModel)]
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        elif candidates:
            kind = data.get("kind") if isinstance(data, dict) else None
            match = [c for c in candidates if c.model_fields.get("kind") and c.model_fields["kind"].default == kind]
            if not match:
                return None
            model = match[0]
        else:
            return None
    return sorted(model.model_fields)


def _describe(e: ValidationError, model: type[BaseModel], data: Any, prefix: str = "") -> tuple[str, str]:
    """(dotted key, message) for the first error, phrased for someone editing the file."""
    err = e.errors()[0]
    # pydantic puts the union member's tag (the trajectory kind) in the path; the file has no such key.
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p in TRAJECTORIES))
    key = ".".join(str(p) for p in (prefix.split(".") if prefix else []) + list(loc))
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, loc[:-1], data)
        return key, "unknown key" + (f"; allowed: {', '.join(allowed)}" if allowed else "")
    if kind == "union_tag_invalid":
        return key + ".kind", f"unknown kind {err['ctx'].get('tag')!r}; allowed: {err['ctx'].get('expected_tags')}"
    if kind == "union_tag_not_found":
        return key + ".kind", f"missing; allowed: {err['ctx'].get('discriminator')}"
    msg = err["msg"]
    if "input" in err and kind != "missing":
        msg += f" (got {err['input']!r})"
    return key, msg


def _validate(model: type[BaseModel], data: Any, file: Path, prefix: str = "") -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        key, msg = _describe(e, model, data, prefix)
        raise ConfigError(file, key, msg) from None


def load_config(path: Path | str | None = None) -> CoreConfig:
    path = Path(path) if path else DEFAULT_CONFIG
    return _validate(config_model(), read_toml(path), path)


def decoder_spec(table: Any, file: Path, key: str = "decoder") -> DecoderSpec:
    """Validate a ``[decoder]`` table against the settings model of the decoder its ``type`` names."""
    if not isinstance(table, dict):
        raise ConfigError(file, key, "must be a table with a 'type' key")
    table = dict(table)
    name = table.pop("type", None)
    if name is None:
        raise ConfigError(file, f"{key}.type", f"missing; allowed: {', '.join(decoders.names())}")
    if not isinstance(name, str):
        raise ConfigError(file, f"{key}.type", f"must be a name such as \"cppn\" (got {name!r:.40}); allowed: "
                          f"{', '.join(decoders.names())}")
    try:
        cls = decoders.decoder_kind(name)
    except KeyError:
        raise ConfigError(file, f"{key}.type", f"unknown decoder {name!r}; allowed: {', '.join(decoders.names())}")
    base = Path(file).resolve().parent
    table = _resolved(table, cls.Settings.path_fields, base)
    table = _resolved(table, tuple(f"{field_name}.{k}" for field_name, keys in  # [[decoder.controls]] model...
                                   getattr(cls.Settings, "nested_path_fields", {}).items() for k in keys), base)
    return DecoderSpec(name, _validate(cls.Settings, table, file, key))


def _resolved(table: dict, keys: tuple[str, ...], base: Path) -> dict:
    """A copy of ``table`` with its relative paths under ``keys`` read from ``base`` (as top-level path fields); a
    dotted key ``a.b`` reaches ``b`` in the table ``a``, or in each table of the list ``a``."""
    out = dict(table)
    for k in keys:
        head, _, rest = k.partition(".")
        if rest:
            inner = out.get(head)
            if isinstance(inner, dict):
                out[head] = _resolved(inner, (rest,), base)
            elif isinstance(inner, list):
                out[head] = [_resolved(item, (rest,), base) if isinstance(item, dict) else item for item in inner]
            continue
        value = out.get(k)
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute() and \
                ((base / value).exists() or value.startswith(("./", "../"))):
            out[k] = str((base / value).resolve())
    return out


def check_decoder_files(scene: "Scene") -> None:
    """Ask the scene's decoder whether the files it names are there (no weights are loaded)."""
    check = getattr(decoders.decoder_kind(scene.decoder.type), "check", None)
    if check is None:
        return
    try:
        check(scene.decoder.settings)
    except (FileNotFoundError, ValueError, OSError) as e:
        raise ConfigError(scene.path, "decoder", str(e)) from None


def load_scene(path: Path) -> Scene:
    data = read_toml(path)
    if not data:  # a truncated file (an editor rewriting it, a full disk) is no scene of defaults
        raise ConfigError(path, "", "empty: a scene sets at least its [decoder] or [trajectory] (see scenes/*.toml)")
    if not isinstance(data.get("decoder", {"type": "cppn"}), dict):
        raise ConfigError(path, "decoder", "must be a table such as [decoder] type = \"cppn\"")
    spec = decoder_spec(data.pop("decoder", {"type": "cppn"}), path)
    data.pop("name", None)
    traj = data.get("trajectory")
    if isinstance(traj, dict) and isinstance(traj.get("space"), str) and traj["space"]:  # images: beside the scene
        traj["space"] = str((path.resolve().parent / Path(traj["space"]).expanduser()).resolve())
    body = _validate(_SceneBody, data, path)
    if body.still:  # only a thumbnail: a scene copied away from its picture still plays
        still = (path.resolve().parent / Path(body.still).expanduser()).resolve()
        if still.suffix.lower() not in (".png", ".jpg", ".jpeg"):
            raise ConfigError(path, "still", f"{body.still!r} must be a .png or .jpg file")
        if not still.is_file():
            log.warning("%s: still %s not found; no thumbnail until the scene plays", path, still)
        body = body.model_copy(update={"still": str(still) if still.is_file() else ""})
    traj_cls = TRAJECTORIES[body.trajectory.kind]
    if traj_cls.check.__func__ is not Trajectory.check.__func__:  # one that reads a file (images: a space file)
        try:
            traj_cls.check(body.trajectory, decoders.decoder_kind(spec.type).latent_shape(spec.settings))
        except (FileNotFoundError, ValueError, OSError) as e:
            raise ConfigError(path, "trajectory", str(e)) from None
    return Scene(path.stem, path, spec, body)


def check_params(values: dict[str, float], specs: dict[str, ParamSpec], file: Path, table: str) -> None:
    """Every key must be a declared parameter and every value inside its range."""
    for name, value in values.items():
        spec = specs.get(name)
        if spec is None:
            raise ConfigError(file, f"{table}.{name}", f"unknown parameter; allowed: {', '.join(sorted(specs))}")
        if not math.isfinite(value) or not spec.min <= value <= spec.max:
            raise ConfigError(file, f"{table}.{name}", f"{value} is outside [{spec.min}, {spec.max}]")


def load_show(path: Path | str | None = None, only_scene: str | None = None) -> ShowSpec:
    """Load the config and everything it refers to; raises ConfigError on the first problem."""
    path = Path(path) if path else DEFAULT_CONFIG
    config = load_config(path)
    base = path.resolve().parent
    try:
        check_outputs(config, base)
    except ValueError as e:
        raise ConfigError(path, "outputs", str(e)) from None
    scenes_dir = (base / config.show.scenes_dir).resolve()
    shaders_dir = (base / config.show.shaders_dir).resolve()
    refused: dict[str, str] = {}
    try:
        shaders = load_dir(shaders_dir, refused)
    except ShaderError as e:
        raise ConfigError(path, "show.shaders_dir", str(e)) from None
    available = sorted(p.stem for p in scenes_dir.glob("*.toml")) if scenes_dir.is_dir() else []
    if not scenes_dir.is_dir():
        raise ConfigError(path, "show.scenes_dir", f"folder {scenes_dir} not found")
    names = [only_scene] if only_scene else list(config.show.scenes)
    scenes = []
    for name in names:
        file = scenes_dir / f"{name}.toml"
        if not file.is_file():
            key = "show.scenes" if not only_scene else "--scene"
            raise ConfigError(path, key, f"no scene {name!r} ({file}); available: {', '.join(available) or 'none'}")
        scenes.append(load_scene(file))
    specs = {s.name: s for s in CORE_PARAMS}
    for shader in shaders.values():
        specs.update({s.name: s for s in shader.uniforms})
    # What parts write (input features) are parameters too (zero while the part is off), so routes can name them.
    specs.update({s.name: s for s in parts.param_specs(config)})
    specs.update({s.name: s for s in hook_params(config.decoder.hooks)})  # what post-render hooks report
    try:
        parts.check_all(config, base)  # the parts' files (the CLIP checkpoint of [vision])
    except parts.PartCheckError as e:
        raise ConfigError(path, e.table, str(e)) from None
    for scene in scenes:
        _add_decoder_params(specs, scene)
    check_params(config.params, specs, path, "params")
    check_modulation(config.modulation, specs, path)
    for scene in scenes:
        _check_scene(scene, shaders, shaders_dir, specs, config, refused)
    for reason in refused.values():  # chained by no scene of this show: the show goes on without it
        log.warning("shader left out: %s", reason)
    sched = config.schedule
    if sched.enabled and sched.closed_action == "standby" and sched.standby_scene not in {s.name for s in scenes}:
        raise ConfigError(path, "schedule.standby_scene", f"{sched.standby_scene!r} is not a scene of this show; "
                          f"allowed: {', '.join(s.name for s in scenes)}")
    safe = None
    if config.show.safe_scene:
        name = config.show.safe_scene
        safe = next((s for s in scenes if s.name == name), None)
        if safe is None:
            file = scenes_dir / f"{name}.toml"
            if not file.is_file():
                raise ConfigError(path, "show.safe_scene", f"no scene {name!r} ({file}); available: "
                                  f"{', '.join(available) or 'none'}")
            safe = load_scene(file)
            _add_decoder_params(specs, safe)
            _check_scene(safe, shaders, shaders_dir, specs, config, refused)
    return ShowSpec(config, path, scenes, shaders, specs, safe, refused)


def _add_decoder_params(specs: dict[str, ParamSpec], scene: Scene) -> None:
    """Declare the live parameters a scene's decoder reads (the first scene to declare a name sets its range).

    Each scene's own defaults for them (e.g. its img2img strength) apply when it starts: see ``Show.defaults``.
    """
    for spec in decoders.param_specs(scene.decoder):
        specs.setdefault(spec.name, spec)


def _check_scene(scene: Scene, shaders: dict[str, ShaderFile], shaders_dir: Path, specs: dict[str, ParamSpec],
                 config: Config, refused: dict[str, str] | None = None) -> None:
    """A scene's shader chain, parameters and modulation must fit the show."""
    for i, sname in enumerate(scene.shaders):
        if refused and sname in refused:
            raise ConfigError(scene.path, f"shaders[{i}]", f"shader {sname!r} cannot be used: {refused[sname]}")
        if sname not in shaders:
            raise ConfigError(scene.path, f"shaders[{i}]",
                              f"no shader {sname!r} in {shaders_dir}; available: {', '.join(sorted(shaders))}")
    if scene.shaders[0] != "present":
        raise ConfigError(scene.path, "shaders[0]", "the chain must start with 'present'")
    check_params(scene.params, specs, scene.path, "params")
    check_modulation(modulation_for(config, scene), specs, scene.path)
    check_decoder_files(scene)


def builtin_safe_scene() -> Scene:
    """The embedded safe scene: a small CPPN on a slow loop, no files, nothing that can fail to load."""
    from .decoders.cppn import CPPNSettings

    body = _SceneBody(description="built-in safe scene (after repeated decoder faults)", duration=0.0,
                      shaders=["present"], trajectory=LoopSettings(period=60.0))
    settings = CPPNSettings(resolution=SizeT(256, 144), width=24, depth=3)
    return Scene("safe", Path("<built-in>"), DecoderSpec("cppn", settings), body)


def modulation_for(config: Config, scene: Scene) -> ModulationSettings:
    """The config's LFOs and routes followed by the scene's own."""
    return ModulationSettings(lfos=config.modulation.lfos + scene.modulation.lfos,
                              routes=config.modulation.routes + scene.modulation.routes)


def check_modulation(mod: ModulationSettings, specs: dict[str, ParamSpec], file: Path) -> None:
    try:
        ModMatrix.from_settings(mod, specs)
    except ValueError as e:
        raise ConfigError(file, "modulation", str(e)) from None


def all_scene_files(show: ShowSpec) -> list[Path]:
    base = show.path.resolve().parent
    return sorted((base / show.config.show.scenes_dir).resolve().glob("*.toml"))
