"""``installation scenes``, ``params`` and ``osc-map``: print what a show holds, from its config and scene files
alone (neither torch nor GL is imported; a test holds them to it)."""

from __future__ import annotations

import argparse

from ..config import ConfigError, all_scene_files, check_decoder_files, load_scene, load_show
from .registry import command
from .shared import EXIT_CONFIG, fail


def cmd_scenes(args: argparse.Namespace) -> int:
    """List every scene file and validate it; exit 2 if any is invalid."""
    try:
        spec = load_show(args.config)
    except ConfigError as e:
        return fail(str(e))
    bad = 0
    playing = {s.name for s in spec.scenes}
    for path in all_scene_files(spec):
        try:
            scene = load_scene(path)
            from ..config import check_params

            check_params(scene.params, spec.params, path, "params")
            missing = [s for s in scene.shaders if s not in spec.shaders]
            if missing:
                why = spec.refused.get(missing[0])
                raise ConfigError(path, "shaders", f"shader {missing[0]!r} cannot be used: {why}" if why else
                                  f"no shader {missing[0]!r}")
        except ConfigError as e:
            bad += 1
            print(f"  INVALID  {e}")
            continue
        mark = "*" if scene.name in playing else " "
        dur = "until told" if scene.duration == 0 else f"{scene.duration:g}s"
        print(f"{mark} {scene.name:<14} {scene.decoder.type:<10} {scene.trajectory.kind:<6} {dur:<10} "
              f"{scene.description}")
        try:
            check_decoder_files(scene)
        except ConfigError as e:  # valid, but its model files are not on this machine
            print(f"    needs files first: {e.message}")
    print("(* in the show's play list)")
    return EXIT_CONFIG if bad else 0


def cmd_params(args: argparse.Namespace) -> int:
    """List every parameter a show declares: name, range, default, the scenes it acts in, what it does. A
    parameter no scene's chain or decoder reads (a shader pass in none of the chains) acts in none: setting it
    changes no pixel."""
    from ..scene_params import group_of, scene_params

    try:
        spec = load_show(args.config, only_scene=args.scene)
    except ConfigError as e:
        return fail(str(e))
    acting = {s.name: set(scene_params(s, spec.shaders, spec.params)) for s in spec.scenes}
    print(f"# {'name':<20} {'type':<5} range, default, group, scenes it acts in"
          + (f" (only {args.scene})" if args.scene else ""))
    for name, p in sorted(spec.params.items(), key=lambda kv: (not any(kv[0] in a for a in acting.values()), kv[0])):
        where = [s for s, names in acting.items() if name in names]
        scenes = "all" if where and len(where) == len(acting) else ",".join(where) if where else "none"
        if name.startswith(("audio.", "camera.", "midi.", "link.", "vision.")):
            scenes = "input"  # a part's measurement: a source for routes, not a control
        print(f"{name:<22} {p.type:<5} [{p.min:g}, {p.max:g}] default {p.default:g}  {group_of(name):<7} "
              f"{scenes:<12} {p.doc}")
    return 0


def cmd_osc_map(args: argparse.Namespace) -> int:
    """Print every OSC address the show answers, with its argument types and what it does."""
    from ..inputs.osc import address_map
    from ..inputs.surface import capabilities

    try:
        spec = load_show(args.config)
    except ConfigError as e:
        return fail(str(e))
    osc = spec.config.inputs.osc
    print(f"# OSC on udp://{osc.host}:{osc.port} ({'enabled' if osc.enabled else 'disabled'})")
    for address, types, doc in address_map(spec.params, [s.name for s in spec.scenes], osc,
                                           capabilities(spec.config)):
        print(f"{address:<34} {types:<8} {doc}")
    return 0


def params_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scene", help="the parameters when only this scene plays (its decoder's live ones included)")


command("scenes", help="list and validate the scene files", description=cmd_scenes.__doc__, run=cmd_scenes)
command("params", help="list the parameters (bus names, ranges, defaults)", description=cmd_params.__doc__,
        arguments=params_arguments, run=cmd_params)
command("osc-map", help="print the OSC address map", description=cmd_osc_map.__doc__, run=cmd_osc_map)
