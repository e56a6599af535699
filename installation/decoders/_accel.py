"""Shared acceleration helpers for torch decoders: dtype choice, captured CUDA graphs, guarded frame readback.

Everything here is per decoder instance (no module-level mutable state), so two decoders in two threads never
share a graph, a buffer or a stream.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable, Hashable

import numpy as np
import torch

from .base import NonFiniteFrame

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(device: str) -> torch.device:
    """The torch device for ``device``; a CUDA request without CUDA is a clear start-up error, not a crash later."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use device='cpu'")
    if dev.type == "cuda":
        # Shapes never change within a decoder, so cuDNN's per-shape search runs once, during the warm-up in
        # prepare() (before any graph capture), and every frame after uses the fastest convolution it found.
        torch.backends.cudnn.benchmark = True
    return dev


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` is float16 on CUDA and float32 on the CPU (the path that always works)."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of auto, {', '.join(DTYPES)}; not {name!r}")
    if device.type == "cpu" and name == "float16":
        log.warning("float16 on the CPU is slow and partly unsupported; prefer float32 or bfloat16")
    return DTYPES[name]


def to_uint8_hwc(img: torch.Tensor) -> torch.Tensor:
    """[1,3,H,W] image in -1..1 to HxWx3 uint8 on the same device (graph-safe: no host sync)."""
    x = img[0].float().clamp(-1.0, 1.0).add(1.0).mul(127.5).round().to(torch.uint8)
    return x.permute(1, 2, 0)


def maybe_compile(module: torch.nn.Module, enabled: bool, cache_dir: str, use_graphs: bool) -> torch.nn.Module:
    """torch.compile ``module`` when asked; inductor's own cudagraphs stay off when we capture our own graph."""
    if not enabled:
        return module
    if cache_dir:
        # Inductor reads its cache location from the environment; set it only if the user has not.
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", cache_dir)
        os.makedirs(cache_dir, exist_ok=True)
    # "default" mode: inductor kernels without inductor's own cudagraphs (we capture the whole frame ourselves),
    # and without max-autotune, whose benchmarking would make a UNet's prepare() take many minutes.
    log.info("compiling %s (cache=%s, graphs=%s)", type(module).__name__,
             os.environ.get("TORCHINDUCTOR_CACHE_DIR", "default"), use_graphs)
    return torch.compile(module, mode="default", fullgraph=False)


class PrepareProgress:
    """The steps of a long ``prepare()``: a tqdm bar on a terminal, one log line per step otherwise (a journal).

    Compilation and graph capture happen here, before the show, so a technician sees how far start-up has got.
    Used as ``with PrepareProgress(name, total) as progress:``; the bar is closed however the block ends.
    """

    def __init__(self, name: str, total: int) -> None:
        from tqdm import tqdm

        self.name = name
        self.done = 0
        self.total = total
        self._bar = tqdm(total=total, desc=name, unit="step", disable=None, leave=False, dynamic_ncols=True)

    def __enter__(self) -> "PrepareProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.update(self.total - self._bar.n)
        self._bar.close()

    def step(self, what: str) -> None:
        """Announce the step about to run (the previous one is complete)."""
        if self._bar.disable:
            log.info("%s: [%d/%d] %s", self.name, self.done + 1, self.total, what)
        else:
            self._bar.update(self.done - self._bar.n)
            self._bar.set_postfix_str(what)  # redraws the bar
        self.done += 1


class Programs:
    """Run named tensor programs (closures over static buffers) eagerly, or as CUDA graphs captured once per key.

    The key carries the shapes a program depends on, so a shape change captures a new graph and nothing else does.
    """

    def __init__(self, device: torch.device, use_graphs: bool) -> None:
        self.device = device
        self.use_graphs = bool(use_graphs and device.type == "cuda")
        self._graphs: dict[Hashable, torch.cuda.CUDAGraph] = {}
        # One memory pool for every program: they run one at a time and leave their results in static buffers
        # allocated outside the graphs, so their intermediates may share memory (one UNet's activations, not N).
        self._pool = torch.cuda.graph_pool_handle() if self.use_graphs else None
        self.captures = 0

    def has(self, key: Hashable) -> bool:
        return key in self._graphs

    def run(self, key: Hashable, fn: Callable[[], None]) -> None:
        """Run ``fn`` (eager), or replay its graph, capturing it first if this key is new."""
        if not self.use_graphs:
            fn()
            return
        graph = self._graphs.get(key)
        if graph is None:
            graph = self.capture(key, fn)
        graph.replay()

    def capture(self, key: Hashable, fn: Callable[[], None]) -> torch.cuda.CUDAGraph:
        """Warm ``fn`` up on a side stream (lazy inits, autotune), then capture it into a graph."""
        t0 = time.perf_counter()
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(3):
                fn()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        # thread_local: another thread's CUDA calls (a thread-isolated runtime freeing caches) cannot break it.
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            fn()
        torch.cuda.synchronize(self.device)
        self._graphs[key] = graph
        self.captures += 1
        log.info("captured CUDA graph %r in %.1f s", key, time.perf_counter() - t0)
        return graph

    def sync(self, timeout: float | None = None) -> bool:
        """Wait for the device's work so far (before graphs or the buffers they use are freed, or reused).

        With ``timeout``, give up after that many seconds (a wedged GPU must not block the caller) and return False.
        """
        if self.device.type != "cuda":
            return True
        if timeout is None:
            torch.cuda.synchronize(self.device)
            return True
        done = torch.cuda.Event()
        done.record()
        deadline = time.monotonic() + timeout
        while not done.query():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.002)
        return True

    def clear(self) -> None:
        """Drop the graphs once the device is done with them (a failed or timed-out wait is logged; freeing goes on)."""
        try:
            if not self.sync(timeout=2.0):
                log.warning("the device did not finish its work within 2 s; freeing the graphs anyway")
        except Exception as e:  # noqa: BLE001 - a broken context is why we are closing
            log.warning("device sync before freeing graphs failed: %s", e)
        self._graphs.clear()


class Readback:
    """Copy the device frame and its finite flag to the host with one synchronisation, then check the flag.

    The flag travels with the frame, so checking for NaN/Inf costs no extra host sync.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._host: torch.Tensor | None = None
        self._ok = torch.ones((), dtype=torch.bool, pin_memory=device.type == "cuda")
        self._event = torch.cuda.Event() if device.type == "cuda" else None

    def fetch(self, rgb: torch.Tensor, ok: torch.Tensor) -> np.ndarray:
        """Return a host copy of ``rgb`` (HxWx3 uint8); raise NonFiniteFrame when ``ok`` is false."""
        if self.device.type != "cuda":
            if not bool(ok):
                raise NonFiniteFrame("decoder produced NaN/Inf")
            return rgb.numpy().copy()
        if self._host is None or self._host.shape != rgb.shape:
            self._host = torch.empty(rgb.shape, dtype=torch.uint8, pin_memory=True)
        self._host.copy_(rgb, non_blocking=True)
        self._ok.copy_(ok, non_blocking=True)
        self._event.record()
        self._event.synchronize()
        if not bool(self._ok):
            raise NonFiniteFrame("decoder produced NaN/Inf")
        return self._host.numpy().copy()


class StageTimer:
    """Per-stage wall milliseconds; with ``sync`` it synchronises CUDA at each stage edge (benchmark use only)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.sync = False
        self.ms: dict[str, float] = {}
        self._t = 0.0

    def start(self) -> None:
        self.ms = {}
        self._edge()

    def _edge(self) -> None:
        if self.sync and self.device.type == "cuda" and not torch.cuda.is_current_stream_capturing():
            torch.cuda.synchronize(self.device)
        self._t = time.perf_counter()

    def mark(self, stage: str) -> None:
        """Add the time since the previous edge to ``stage``."""
        prev = self._t
        self._edge()
        self.ms[stage] = self.ms.get(stage, 0.0) + (self._t - prev) * 1000.0
