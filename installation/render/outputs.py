"""Outputs: where the canvas goes, and the tap that hands presented frames to sinks.

The presenter renders the show once per tick into a canvas texture (:meth:`Presenter.render`). Each :class:`Output`
then draws that canvas into its own destination with its own fit and level: today the one window or headless
framebuffer; projector outputs with their warps and blends, several windows or an NDI sender's framebuffer are more
outputs of the same canvas. The master fade (blackout, stop, opening hours) is applied per output, after its fit.

A :class:`PresentedTap` offers what an output shows to sinks (the recorder, later NDI or a web preview) without ever
blocking the presenter: one read-back per tick, only when some sink wants that frame, and each sink queues or drops
(counted) on its own.
"""

from __future__ import annotations

import moderngl

from .sinks import FrameSink, LatestFrame

VERTEX = """
#version 330
out vec2 uv;
void main() {
    // One triangle that covers the screen; no vertex buffer needed.
    vec2 p = vec2(float((gl_VertexID << 1) & 2), float(gl_VertexID & 2));
    uv = p;
    gl_Position = vec4(p * 2.0 - 1.0, 0.0, 1.0);
}
"""

FITS = ("cover", "contain", "stretch")


def fit_scale(frame_size: tuple[int, int], out_size: tuple[int, int], fit: str) -> tuple[float, float]:
    """uv scale that maps the output onto a frame of another aspect: crop (cover), letterbox (contain) or stretch."""
    if fit == "stretch":
        return (1.0, 1.0)
    fa = frame_size[0] / frame_size[1]
    oa = out_size[0] / out_size[1]
    wider = oa > fa
    if fit == "cover":
        return (1.0, fa / oa) if wider else (oa / fa, 1.0)
    return (oa / fa, 1.0) if wider else (1.0, fa / oa)


_BLIT = """#version 330
uniform sampler2D src;
uniform vec2 scale;   // fit of the canvas to this output's aspect (see fit_scale)
in vec2 uv;
out vec4 fragColor;
void main() {
    vec2 q = (uv - 0.5) * scale + 0.5;
    bool outside = any(lessThan(q, vec2(0.0))) || any(greaterThan(q, vec2(1.0)));
    fragColor = outside ? vec4(0.0, 0.0, 0.0, 1.0) : texture(src, q);
}
"""
_BLACK = """#version 330
uniform float alpha;
out vec4 fragColor;
void main() { fragColor = vec4(0.0, 0.0, 0.0, alpha); }
"""


class Output:
    """One destination of the canvas: a framebuffer of ``size`` with its own ``fit`` of the canvas and ``level``
    (0..1, multiplied with the show's master fade)."""

    def __init__(self, ctx: moderngl.Context, framebuffer: moderngl.Framebuffer, size: tuple[int, int],
                 fit: str = "cover", level: float = 1.0, name: str = "main") -> None:
        if fit not in FITS:
            raise ValueError(f"output {name!r}: fit must be one of {FITS}, not {fit!r}")
        self.ctx, self.framebuffer, self.name = ctx, framebuffer, name
        self.size = (int(size[0]), int(size[1]))
        self.fit = fit
        self.level = float(level)
        self._blit = self._program(_BLIT)
        self._black = self._program(_BLACK)
        self.frames = 0

    def _program(self, source: str) -> tuple[moderngl.Program, moderngl.VertexArray]:
        prog = self.ctx.program(vertex_shader=VERTEX, fragment_shader=source)
        return prog, self.ctx.vertex_array(prog, [])

    def show(self, canvas: moderngl.Texture | None, master: float = 1.0) -> None:
        """Draw the canvas (black when there is none yet) into this output, faded to ``level * master``."""
        self.framebuffer.use()
        if canvas is None:
            self.framebuffer.clear(0.0, 0.0, 0.0, 1.0)
            return
        prog, vao = self._blit
        canvas.use(0)
        prog["src"].value = 0
        prog["scale"].value = fit_scale(canvas.size, self.size, self.fit)
        vao.render(moderngl.TRIANGLES, vertices=3)
        level = min(max(self.level * master, 0.0), 1.0)
        if level < 1.0:
            prog, vao = self._black
            prog["alpha"].value = 1.0 - level
            self.ctx.enable(moderngl.BLEND)
            self.ctx.blend_func = moderngl.SRC_ALPHA, moderngl.ONE_MINUS_SRC_ALPHA
            vao.render(moderngl.TRIANGLES, vertices=3)
            self.ctx.disable(moderngl.BLEND)
        self.frames += 1

    def read(self) -> bytes:
        """What this output shows: RGB bytes, bottom row first (GL order)."""
        return self.framebuffer.read(components=3, alignment=1)

    def release(self) -> None:
        for prog, vao in (self._blit, self._black):
            vao.release()
            prog.release()


class PresentedTap:
    """Offers one output's presented frames to its sinks; never blocks the presenter (see the module's doc)."""

    def __init__(self, output: Output) -> None:
        self.output = output
        self.sinks: list[FrameSink] = []
        self.reads = 0

    def add(self, sink: FrameSink) -> None:
        self.sinks.append(sink)

    def remove(self, sink: FrameSink) -> None:
        if sink in self.sinks:
            self.sinks.remove(sink)

    def offer(self, t: float | None) -> None:
        """After the output was drawn: read it back once if a sink wants the frame at show time ``t`` (None in
        a fixed-step render: every frame counts) and hand it to each of them."""
        wanting = [s for s in self.sinks if s.wants(t)]
        if not wanting:
            return
        rgb = self.output.read()
        self.reads += 1
        for sink in wanting:
            sink.put(rgb, self.output.size, t)


__all__ = ["FITS", "VERTEX", "FrameSink", "LatestFrame", "Output", "PresentedTap", "fit_scale"]
