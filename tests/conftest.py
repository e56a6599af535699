"""Shared fixtures: one real headless GL context for every GL test."""

from __future__ import annotations

import os

import moderngl
import pytest
import torch._dynamo  # noqa: F401  - Triton's LLVM must load before Mesa's llvmpipe (see preload_decoders)

from installation.render.glenv import prepare_gl_env

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")


@pytest.fixture(scope="session")
def gl_ctx():
    """One standalone EGL context (Mesa llvmpipe on CI) for every GL test, made as the show makes its own."""
    prepare_gl_env()
    ctx = moderngl.create_context(standalone=True, backend="egl")
    yield ctx
    ctx.release()


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """A tiny open_clip model built from a config and saved as a checkpoint file (tests/clip_support.py)."""
    from clip_support import make_tiny_clip

    return make_tiny_clip(tmp_path_factory.mktemp("clip"))
