"""Which parameters act in a scene, grouped by what they do, with readable labels: what the web page, OSCQuery and
``installation params --scene`` offer for the playing scene (a fader for a pass the scene does not run changes no
pixel, so it is not offered first).

A scene's parameters are the core ones its trajectory reads (``speed``, ``radius``, ``temperature``), the uniforms
of the shaders in its chain and the live parameters its decoder declares. Groups: ``motion`` (how the walk moves),
``look`` (the passes after the decoder), ``palette``, ``prompts`` (what the decoder is asked for: reference weights,
strength, guidance) and ``inputs`` (what parts measure: audio, camera, MIDI, Link, vision).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from installation.bus import ParamSpec

GROUPS = ("motion", "look", "palette", "prompts", "inputs")
_CORE = ("speed", "radius", "temperature")
_INPUTS = ("audio.", "camera.", "midi.", "link.", "vision.")
_PROMPTS = ("reference.", "prompt.", "strength", "guidance", "img2img.")


def group_of(name: str) -> str:
    """The group a parameter belongs to (see :data:`GROUPS`)."""
    if name in _CORE or name.startswith(("trajectory.", "walk.", "motion.")):
        return "motion"
    if name.startswith("palette."):
        return "palette"
    if name.startswith(_INPUTS):
        return "inputs"
    if name.startswith(_PROMPTS):
        return "prompts"
    return "look"


def label(spec: ParamSpec) -> str:
    """A short readable label: the doc's first clause when there is one, else the name spelled out."""
    doc = spec.doc.split(":")[0].split(";")[0].split("(")[0].strip()
    if doc and len(doc) <= 40:
        return doc[0].upper() + doc[1:]
    words = spec.name.replace(".", " ").replace("_", " ").split()
    return " ".join(words).capitalize() if words else spec.name


def scene_params(scene: Any, shaders: Mapping[str, Any], specs: Mapping[str, ParamSpec]) -> list[str]:
    """The names of the parameters that act in ``scene`` (a validated :class:`~installation.config.Scene`): the
    core ones, its shader chain's uniforms and its decoder's live parameters, in that order, each once."""
    from installation import decoders  # the registry of decoder classes (base layer)

    names: list[str] = list(_CORE)
    for shader in scene.shaders:
        sh = shaders.get(shader)
        names += [u.name for u in getattr(sh, "uniforms", ())]
    try:
        names += [s.name for s in decoders.param_specs(scene.decoder)]
    except Exception:  # noqa: BLE001 - a decoder that cannot say: its parameters are offered with the rest
        pass
    return [n for n in dict.fromkeys(names) if n in specs]


def takes_prompts(scene: Any) -> bool:
    """Whether a scene's decoder reads prompts (diffusion does; CPPN and GAN scenes do not, whatever is typed)."""
    return getattr(scene.decoder, "type", "") == "diffusion"


def scene_info(scene: Any, shaders: Mapping[str, Any], specs: Mapping[str, ParamSpec]) -> dict[str, Any]:
    """What a controller needs of a scene: its acting parameters, whether it takes prompts, its description, its
    still (a picture file, or ""), and the space file an ``images`` walk plays (``/seek`` searches its images)."""
    trajectory = getattr(scene, "trajectory", None)
    space = getattr(trajectory, "space", None) if getattr(trajectory, "kind", "") == "images" else None
    return {"params": scene_params(scene, shaders, specs), "prompts": takes_prompts(scene),
            "description": str(getattr(scene, "description", "") or ""), "still": str(getattr(scene, "still", "") or ""),
            "space": str(space) if space else None}


def grouped(names: Iterable[str], specs: Mapping[str, ParamSpec]) -> dict[str, list[str]]:
    """``names`` by group, in :data:`GROUPS` order (empty groups left out)."""
    out: dict[str, list[str]] = {g: [] for g in GROUPS}
    for n in names:
        if n in specs:
            out[group_of(n)].append(n)
    return {g: v for g, v in out.items() if v}
