"""The presenter: newest decoder frame -> textures -> shader chain -> any framebuffer.

It runs on the GL thread at display rate and never waits for the decoder. When a new frame arrives the previous one
is kept, and the two are crossfaded over the decoder's measured frame interval, so a 12 fps decoder still moves
smoothly on a 60 Hz display. A frame from a new "cut" (another decoder after a scene change) fades in from a held
copy of the last frame instead of popping. Passes whose parameters sit at their declared identity are skipped.
Passes run at a reduced work size, except those declared ``"size": "output"`` (detail made at full resolution).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import moderngl
import numpy as np

from .outputs import VERTEX, Output, fit_scale
from .shaders import ShaderError, ShaderFile
from .slot import Frame

log = logging.getLogger(__name__)

SOFTWARE_GL = ("llvmpipe", "softpipe", "swrast", "SwiftShader")  # renderers that shade on the CPU


@dataclass
class _Pass:
    shader: ShaderFile
    program: moderngl.Program
    vao: moderngl.VertexArray
    targets: list[tuple[moderngl.Texture, moderngl.Framebuffer]]
    flip: int = 0


class Presenter:
    """Owns the GL resources of the chain at one output size; ``draw`` renders one display frame."""

    def __init__(self, ctx: moderngl.Context, size: tuple[int, int], chain: Sequence[ShaderFile],
                 fit: str = "cover", work_scale: float = 0.0, crossfade: bool = True,
                 detail_scale: float | None = None) -> None:
        self.ctx = ctx
        self.crossfade = crossfade  # off for offline (lockstep) renders: each frame is exactly its own
        self.size = (int(size[0]), int(size[1]))
        # The chain runs at a reduced "work" size and one bilinear blit upscales it to the output. On a software
        # rasteriser (llvmpipe) this is the difference between 25 and 60+ presented frames a second at 1280x720.
        # Auto (0) matches the visible part of the decoder's frame, so no decoded detail is lost.
        self.work_scale = work_scale
        self.fit = fit
        self.work_size = self._work_size(None)
        # Passes declared "size": "output" run at this share of the output size. Auto (None): all of it on a GPU;
        # half on a software rasteriser, where a pass at 1280x720 costs about 8 ms of CPU (as much as the output's
        # own blit) plus its shading, and the decoder needs the cores: still twice the decoder's resolution there.
        if detail_scale is None:
            renderer = str(ctx.info.get("GL_RENDERER", ""))
            detail_scale = 0.5 if any(name in renderer for name in SOFTWARE_GL) else 1.0
        self.detail_size = (max(int(round(self.size[0] * detail_scale)), 8),
                            max(int(round(self.size[1] * detail_scale)), 8))
        self._chain: list[ShaderFile] = []
        self._passes: list[_Pass] = []
        self.set_chain(chain)
        self._frames: dict[str, moderngl.Texture | None] = {"prev": None, "cur": None, "hold": None}
        self._frame_sizes: dict[str, tuple[int, int]] = {}
        self._last_rgb: np.ndarray | None = None
        self._shown_seq = -1
        self._cut = None
        self._arrived = 0.0
        self._interval = 0.0
        self._hold_start = -math.inf
        self._hold_len = 0.0
        self._outputs: dict[int, object] = {}  # draw()'s outputs, one per framebuffer it was given
        self.frames_drawn = 0
        self.frames_uploaded = 0

    # -- setup -------------------------------------------------------------------------------------------------
    def _work_size(self, frame: tuple[int, int] | None) -> tuple[int, int]:
        ow, oh = self.size
        if self.work_scale > 0:
            w = ow * self.work_scale
        elif frame is None:
            w = ow / 4
        else:
            w = frame[0] * fit_scale(frame, self.size, self.fit)[0]
        w = int(round(min(max(w, ow / 4, 8), ow)))
        return w, max(int(round(w * oh / ow)), 8)

    def set_chain(self, chain: Sequence[ShaderFile]) -> None:
        """Compile a new chain (all of it before releasing the old one, so a bad shader changes nothing)."""
        if not chain or chain[0].name != "present":
            raise ShaderError("the shader chain must start with 'present' (it reads the decoder's frames)")
        passes = []
        try:
            for s in chain:
                passes.append(self._build(s))
        except ShaderError:
            self._release_passes(passes)
            raise
        self._release_passes(self._passes)
        self._passes = passes
        self._chain = list(chain)

    def check(self, chain: Sequence[ShaderFile]) -> None:
        """Compile a chain and throw it away: raises ShaderError naming the file when one does not compile here."""
        self._release_passes([self._build(s) for s in chain])

    @staticmethod
    def _release_passes(passes: list[_Pass]) -> None:
        for p in passes:
            for tex, fbo in p.targets:
                fbo.release()
                tex.release()
            p.vao.release()
            p.program.release()

    def _build(self, shader: ShaderFile) -> _Pass:
        try:
            program = self.ctx.program(vertex_shader=VERTEX, fragment_shader=shader.source)
        except moderngl.Error as e:
            log.debug("GLSL compiler log for %s:\n%s", shader.path, e)
            raise ShaderError(shader.compile_error(str(e))) from None
        vao = self.ctx.vertex_array(program, [])
        n = 2 if "feedback" in program else 1
        size = self.detail_size if shader.full_size else self.work_size  # e.g. contour lines at the output's size
        targets = []
        for _ in range(n):
            tex = self.ctx.texture(size, 4, dtype="f2" if shader.half_float else "f1")
            tex.filter = (moderngl.LINEAR, moderngl.LINEAR)
            tex.repeat_x = tex.repeat_y = False
            fbo = self.ctx.framebuffer(color_attachments=[tex])
            fbo.clear(0.0, 0.0, 0.0, 1.0)
            targets.append((tex, fbo))
        return _Pass(shader, program, vao, targets)

    def _upload(self, key: str, rgb: np.ndarray) -> None:
        h, w = rgb.shape[:2]
        tex = self._frames[key]
        if tex is None or tex.size != (w, h):
            if tex is not None:
                tex.release()
            tex = self.ctx.texture((w, h), 3, alignment=1)
            tex.filter = (moderngl.LINEAR, moderngl.LINEAR)
            tex.repeat_x = tex.repeat_y = False
            self._frames[key] = tex
        tex.write(np.ascontiguousarray(rgb).data)
        self._frame_sizes[key] = (w, h)

    # -- per frame ---------------------------------------------------------------------------------------------
    def take(self, frame: Frame | None, now: float, transition: float = 0.0) -> bool:
        """Upload ``frame`` if it is newer than what is shown; returns True when it was taken."""
        if frame is None or frame.seq == self._shown_seq:
            return False
        if self._last_rgb is None:
            self._upload("prev", frame.rgb)
        elif frame.cut != self._cut:
            # A cut (another decoder): hold the last look and fade from it, instead of a hard switch.
            self._upload("hold", self._last_rgb)
            self._upload("prev", frame.rgb)
            self._hold_start, self._hold_len = now, max(transition, 0.0)
        else:
            self._frames["prev"], self._frames["cur"] = self._frames["cur"], self._frames["prev"]
            self._frame_sizes["prev"] = self._frame_sizes["cur"]
            gap = min(now - self._arrived, 0.5)  # a pause (freeze, restart) must not stretch the next fades
            self._interval = gap if self._interval == 0.0 else 0.8 * self._interval + 0.2 * gap
        self._upload("cur", frame.rgb)
        work = self._work_size((frame.rgb.shape[1], frame.rgb.shape[0]))
        if work != self.work_size:
            self.work_size = work
            self.set_chain(self._chain)
        self._last_rgb = frame.rgb
        self._cut = frame.cut
        self._shown_seq = frame.seq
        self._arrived = now
        self.frames_uploaded += 1
        return True

    @property
    def has_frame(self) -> bool:
        return self._last_rgb is not None

    def forget(self) -> None:
        """Drop every frame held and what feedback passes remember: :meth:`render` gives None (black) until the
        next :meth:`take` (a frame check that changed must not let an earlier frame, or its echo, on screen)."""
        for tex in self._frames.values():
            if tex is not None:
                tex.release()
        self._frames = {"prev": None, "cur": None, "hold": None}
        self._frame_sizes.clear()
        self._last_rgb, self._shown_seq, self._cut = None, -1, None
        self._interval, self._hold_len = 0.0, 0.0
        for p in self._passes:
            for _, fbo in p.targets:
                fbo.clear(0.0, 0.0, 0.0, 1.0)

    def draw(self, fbo: moderngl.Framebuffer, now: float, values: Mapping[str, float], master: float = 1.0) -> None:
        """Render the chain and show it in ``fbo`` (the window's screen or a headless framebuffer) at the presenter's
        size, faded to ``master``: :meth:`render` plus one :class:`~.outputs.Output`."""
        out = self._outputs.get(id(fbo))
        if out is None or out.framebuffer is not fbo:
            out = self._outputs[id(fbo)] = Output(self.ctx, fbo, self.size, fit="stretch")
        out.show(self.render(now, values), master)

    def render(self, now: float, values: Mapping[str, float]) -> moderngl.Texture | None:
        """Run the chain once and return the canvas (its last pass's texture, at the work size and the output's
        aspect), or None before the first frame. Outputs draw the canvas where it goes."""
        if self._frames["cur"] is None:
            return None
        interval = min(self._interval, 0.5)
        frame_mix = 1.0 if interval <= 0.0 or not self.crossfade else \
            min(max((now - self._arrived) / interval, 0.0), 1.0)
        hold = self._hold_len > 0 and now - self._hold_start < self._hold_len
        hold_mix = 0.0
        if hold:
            u = (now - self._hold_start) / self._hold_len
            hold_mix = 1.0 - u * u * (3.0 - 2.0 * u)
        active = [p for p in self._passes if p is self._passes[0] or not self._at_identity(p, values)]
        src: moderngl.Texture | None = None
        for p in active:
            if "feedback" in p.program:
                p.flip ^= 1
            self._bind(p, src, now, values, frame_mix, hold_mix if hold else 0.0)
            p.targets[p.flip][1].use()
            p.vao.render(moderngl.TRIANGLES, vertices=3)
            src = p.targets[p.flip][0]
        self.frames_drawn += 1
        return src

    def _at_identity(self, p: _Pass, values: Mapping[str, float]) -> bool:
        ident = p.shader.identity
        return bool(ident) and all(abs(values.get(p.shader.param(k), v) - v) < 1e-4 for k, v in ident.items())

    def _bind(self, p: _Pass, src, now, values, frame_mix, hold_mix) -> None:
        prog = p.program
        units = {"src": (0, src), "tex_prev": (1, self._frames["prev"]), "tex_cur": (2, self._frames["cur"]),
                 "tex_hold": (3, self._frames["hold"] or self._frames["cur"]),
                 "feedback": (4, p.targets[p.flip ^ 1][0] if len(p.targets) > 1 else None)}
        for name, (unit, tex) in units.items():
            if name in prog and tex is not None:
                tex.use(unit)
                prog[name].value = unit
        scalars = {"time": now, "frame_mix": frame_mix, "hold_mix": hold_mix, "resolution": p.targets[0][0].size}
        for key in ("cur", "prev", "hold"):
            size = self._frame_sizes.get(key) or self._frame_sizes.get("cur")
            scalars[f"{key}_scale"] = fit_scale(size, self.size, self.fit)
        for name, value in scalars.items():
            if name in prog:
                prog[name].value = value
        for spec in p.shader.uniforms:
            uname = spec.name.split(".", 1)[1]
            if uname in prog:
                v = values.get(spec.name, spec.default)
                prog[uname].value = int(v) if spec.type in ("int", "bool") else float(v)

    def release(self) -> None:
        self._release_passes(self._passes)
        self._passes = []
        for out in self._outputs.values():
            out.release()
        self._outputs.clear()
        for tex in self._frames.values():
            if tex is not None:
                tex.release()
