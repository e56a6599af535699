"""Shared fixtures: one real headless GL context for every GL test."""

from __future__ import annotations

import os

import moderngl
import pytest
import torch._dynamo  # noqa: F401  - Triton's LLVM must load before Mesa's llvmpipe (see preload_decoders)

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")


@pytest.fixture(scope="session")
def gl_ctx():
    """One standalone EGL context (Mesa llvmpipe on CI) for every GL test."""
    ctx = moderngl.create_context(standalone=True, backend="egl")
    yield ctx
    ctx.release()
