"""Shader files: GLSL fragment shaders that declare their uniforms in a JSON header (after ISF's INPUTS).

A file ``shaders/NAME.frag`` starts with a block comment holding JSON::

    /*{
      "description": "colour grade",
      "uniforms": {"contrast": {"type": "float", "min": 0, "max": 3, "default": 1, "doc": "..."}},
      "identity": {"amount": 0}
    }*/

Each declared uniform becomes a bus parameter ``NAME.uniform`` with that range and default, so OSC mappings can be
validated and the address map generated. ``identity`` lists values at which the pass changes nothing: the
presenter skips it then. ``"size": "output"`` runs the pass at the output's full size instead of the chain's reduced
work size: a pass that makes detail at the output's resolution (the palette's contours, grain and dither) and is
the chain's last. ``"precision": "half"`` gives the pass a 16-bit float target instead of 8 bits a channel. Built-in uniforms (``src``, ``time``, ``resolution`` and the presenter's textures) are not
declared. Parsing needs no GL context, so configs and scenes are validated before anything opens.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from .. import files
from ..bus import ParamSpec

_HEADER = re.compile(r"\A\s*/\*(\{.*?\})\*/", re.S)
_GLSL_ERROR = re.compile(r"^\s*\d+:(\d+)\(\d+\): error: (.*)$", re.M)  # Mesa's "0:LINE(COL): error: ..."
UNIFORM_TYPES = ("float", "int", "bool")
MAX_SHADER_BYTES = 1 << 20  # a fragment shader is a few KiB
BUILTINS = frozenset({"src", "time", "resolution", "tex_prev", "tex_cur", "tex_hold", "frame_mix", "hold_mix",
                      "cur_scale", "prev_scale", "hold_scale", "feedback", "level_quantiles"})


class ShaderError(ValueError):
    """A shader file that cannot be used: names the file and what is wrong."""


@dataclass(frozen=True)
class ShaderFile:
    """A parsed shader: its name, GLSL source (header stripped), declared uniforms and identity values."""

    name: str
    path: Path
    source: str
    description: str = ""
    uniforms: tuple[ParamSpec, ...] = ()
    identity: dict[str, float] = field(default_factory=dict)
    first_line: int = 1  # the file's line number of the source's first line (after the header)
    full_size: bool = False  # "size": "output": rendered at the output size, not the work size
    half_float: bool = False  # "precision": "half": a 16-bit float target (a smooth level for the next pass to draw)

    def param(self, uniform: str) -> str:
        return f"{self.name}.{uniform}"

    def compile_error(self, log_text: str) -> str:
        """One line from a GLSL compiler log: the file, the file's line of the first error, and its message."""
        errors = _GLSL_ERROR.findall(log_text)
        if not errors:
            first = next((ln.strip() for ln in log_text.splitlines() if ln.strip()), "unknown error")
            return f"{self.path}: does not compile: {first}"
        line, message = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return f"{self.path}:{int(line) + self.first_line - 1}: does not compile: {message.strip()}{more}"


def parse(path: Path) -> ShaderFile:
    """Read and validate one shader file's header."""
    path = Path(path)
    try:
        text = files.read_text(path, MAX_SHADER_BYTES)
    except FileNotFoundError:
        raise ShaderError(f"{path}: cannot read shader (No such file or directory)") from None
    except files.FileError as e:
        raise ShaderError(f"{path}: {e.why}") from None
    m = _HEADER.match(text)
    if not m:
        raise ShaderError(f"{path}: missing the JSON header comment /*{{...}}*/ at the top")
    try:
        header = files.parse_json(m.group(1), path, max_depth=8)
    except files.FileError as e:
        raise ShaderError(f"{path}: header is {e.why}" if e.why.startswith("not ") else f"{path}: header: {e.why}") \
            from None
    if not isinstance(header, dict):
        raise ShaderError(f"{path}: header must be a JSON object")
    unknown = set(header) - {"description", "uniforms", "identity", "size", "precision"}
    if unknown:
        raise ShaderError(f"{path}: unknown header key {sorted(unknown)[0]!r}; allowed: description, uniforms, "
                          "identity, size, precision")
    if header.get("size", "work") not in ("work", "output"):
        raise ShaderError(f"{path}: header key 'size' must be \"work\" or \"output\", got {header['size']!r}")
    if header.get("precision", "byte") not in ("byte", "half"):
        raise ShaderError(f"{path}: header key 'precision' must be \"byte\" or \"half\", got "
                          f"{header['precision']!r}")
    name = path.stem
    specs = []
    for key in ("uniforms", "identity"):
        if not isinstance(header.get(key) or {}, dict):
            raise ShaderError(f"{path}: header key {key!r} must be an object")
    for uname, decl in (header.get("uniforms") or {}).items():
        where = f"{path}: uniform {uname!r}"
        if uname in BUILTINS:
            raise ShaderError(f"{where}: name is reserved for a built-in")
        if not isinstance(decl, dict):
            raise ShaderError(f"{where}: declaration must be an object with type, min, max, default")
        extra = set(decl) - {"type", "min", "max", "default", "doc", "attack", "release"}
        if extra:
            raise ShaderError(f"{where}: unknown key {sorted(extra)[0]!r}")
        utype = decl.get("type", "float")
        if utype not in UNIFORM_TYPES:
            raise ShaderError(f"{where}: type must be one of {UNIFORM_TYPES}")
        lo, hi = (0.0, 1.0) if utype == "bool" else (decl.get("min"), decl.get("max"))
        default = decl.get("default")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi)) or \
                not isinstance(default, (int, float)):
            raise ShaderError(f"{where}: min, max and default must be numbers")
        try:
            specs.append(ParamSpec(f"{name}.{uname}", utype, float(lo), float(hi), float(default),
                                   float(decl.get("attack", 0.05)), float(decl.get("release", 0.05)),
                                   str(decl.get("doc", ""))))
        except ValueError as e:
            raise ShaderError(f"{where}: {e}") from None
    identity = header.get("identity") or {}
    declared = {s.name.split(".", 1)[1] for s in specs}
    for key, value in identity.items():
        if key not in declared:
            raise ShaderError(f"{path}: identity names {key!r}, which is not a declared uniform")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ShaderError(f"{path}: identity value of {key!r} must be a number, got {value!r}")
    body = text[m.end():]
    source = body.lstrip("\n")
    first_line = text[:m.end()].count("\n") + (len(body) - len(source)) + 1
    return ShaderFile(name, path, source, str(header.get("description", "")), tuple(specs),
                      {k: float(v) for k, v in identity.items()}, first_line, header.get("size") == "output",
                      header.get("precision") == "half")


def load_dir(directory: Path, refused: dict[str, str] | None = None) -> dict[str, ShaderFile]:
    """Every ``*.frag`` in a folder, by name. With ``refused``, a file that cannot be used is left out (its one
    line under its name there) instead of raising: one bad shader need not stop the scenes that do not chain it."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ShaderError(f"{directory}: shader folder not found")
    out = {}
    for p in sorted(directory.glob("*.frag")):
        try:
            out[p.stem] = parse(p)
        except ShaderError as e:
            if refused is None:
                raise
            refused[p.stem] = str(e)
    return out
