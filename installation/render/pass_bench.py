"""``installation bench --passes``: what the look costs the presenter, pass by pass, at the output size.

Each variant renders the same decoder frame through a chain into the output (the canvas blit included) for a
number of frames and waits for the GL driver to finish: milliseconds per presented frame. On a software rasteriser
(llvmpipe) a pass at the output's full size is what costs; the passes at the work size are nearly free.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .outputs import Output
from .present import Presenter
from .slot import Frame
from .targets import HeadlessTarget

# (name, chain, parameter values): the chain before this work, the palette at the work size, then the detail pass at
# the output size with its parts in turn (all off: it is skipped, the output's blit upscales)
_CHAIN = ("present", "feedback", "palette", "detail")
_OFF = {"detail.grain": 0.0, "detail.dither": 0, "detail.lines": 0.0}
VARIANTS: tuple[tuple[str, tuple[str, ...], dict[str, float]], ...] = (
    ("grade_chain_before", ("present", "feedback", "grade"), {}),
    ("palette_work_size", _CHAIN, _OFF),
    ("detail_dither", _CHAIN, {**_OFF, "detail.dither": 1}),
    ("detail_dither_grain", _CHAIN, {**_OFF, "detail.dither": 1, "detail.grain": 0.04}),
    ("detail_dither_grain_lines", _CHAIN, {"detail.dither": 1, "detail.grain": 0.04, "detail.lines": 0.5}),
)
DETAIL_SCALES = (1.0, 0.5)  # the detail pass at the output's full size, and at half (auto on a software rasteriser)


def pass_costs(spec: Any, frames: int = 60, decoder_size: tuple[int, int] = (320, 180)) -> dict[str, Any]:
    """Milliseconds per presented frame for each of :data:`VARIANTS` at the config's output size: wall time
    (``_ms``) and the CPU time of this process with the GL driver's threads (``_cpu_ms``: what the frame costs on
    a software rasteriser whatever the load, to be shared among the cores)."""
    size = tuple(spec.config.output.size)
    target = HeadlessTarget(size)
    out: dict[str, Any] = {"output_size": f"{size[0]}x{size[1]}", "frames": frames,
                           "gl_renderer": target.ctx.info.get("GL_RENDERER", "?")}
    rgb = (np.random.default_rng(0).random((decoder_size[1], decoder_size[0], 3)) * 255).astype(np.uint8)
    defaults = {name: p.default for name, p in spec.params.items()}
    try:
        output = Output(target.ctx, target.framebuffer, size, fit="stretch")
        runs = [(f"{name}_x{scale:g}" if "detail" in name else name, chain, values, scale)
                for name, chain, values in VARIANTS for scale in DETAIL_SCALES
                if "detail" in name or scale == DETAIL_SCALES[0]]
        for name, chain, values, scale in runs:
            pr = Presenter(target.ctx, size, [spec.shaders[n] for n in chain], spec.config.output.fit,
                           detail_scale=scale)
            vals = {**defaults, "feedback.amount": 0.35, **values}
            pr.take(Frame(rgb, 1, 0.0, 0.0), 0.0)
            for i in range(5):  # warm up: shader compiles, first allocations
                output.show(pr.render(i / 60.0, vals))
            target.ctx.finish()
            t0, c0 = time.perf_counter(), time.process_time()
            for i in range(frames):
                output.show(pr.render(i / 60.0, vals))
            target.ctx.finish()
            out[f"{name}_ms"] = round((time.perf_counter() - t0) / frames * 1000.0, 2)
            out[f"{name}_cpu_ms"] = round((time.process_time() - c0) / frames * 1000.0, 2)
            pr.release()
        output.release()
    finally:
        target.close()
    return out
