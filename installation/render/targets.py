"""Where presented frames go: a pygame window with a GL context, or a headless EGL framebuffer.

Both give the presenter a moderngl context and a framebuffer of the output size, read pixels back for the
recorder, and report user actions (quit, next/previous scene) without blocking.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

from typing import Any, Protocol, runtime_checkable

import moderngl
import numpy as np

from .glenv import prepare_gl_env

log = logging.getLogger(__name__)


@runtime_checkable
class Target(Protocol):
    """Where presented frames go. ``ctx`` is the moderngl context the presenter draws with, ``framebuffer`` the
    output-size framebuffer it draws into, ``size`` (w, h) its size and ``kind`` a word for logs ("window",
    "headless"). ``read()`` gives RGB bytes bottom row first, ``swap()`` shows the frame (flip, or finish),
    ``poll()`` returns user actions without blocking ('quit', 'next', 'prev'), ``close()`` releases it all."""

    ctx: Any
    framebuffer: Any
    size: tuple[int, int]
    kind: str

    def read(self) -> bytes: ...

    def swap(self) -> None: ...

    def poll(self) -> list[str]: ...

    def close(self) -> None: ...


def preload_decoders(types) -> None:
    """Import torch's compiler stack (and so Triton) before a GL context exists, when a decoder will need it.

    Triton bundles its own LLVM; importing it after Mesa's llvmpipe has loaded LLVM 15 into the process segfaults.
    Decoders in their own process are safe; an in-process decoder (fixed-step renders, thread isolation) is not.
    """
    if any(t not in ("cppn", "faulty", "atlas") for t in types):
        import torch._dynamo  # noqa: F401


def _gl_finish():
    """glFinish through ctypes, which releases the GIL while the GL driver works (moderngl's finish does not)."""
    for name in ("OpenGL", "GL"):
        path = ctypes.util.find_library(name)
        if path:
            try:
                return ctypes.CDLL(path).glFinish
            except (OSError, AttributeError):
                continue
    return None


class HeadlessTarget:
    """An offscreen framebuffer on a standalone EGL context: no display, no window."""

    kind = "headless"

    def __init__(self, size: tuple[int, int]) -> None:
        prepare_gl_env()
        self.ctx = moderngl.create_context(standalone=True, backend="egl")
        self._finish = _gl_finish() or self.ctx.finish
        self.size = (int(size[0]), int(size[1]))
        self._tex = self.ctx.texture(self.size, 3)
        self.framebuffer = self.ctx.framebuffer(color_attachments=[self._tex])
        self.vsync = False

    def read(self) -> bytes:
        """RGB bytes, bottom row first (GL order)."""
        return self.framebuffer.read(components=3, alignment=1)

    def swap(self) -> None:
        self._finish()

    def poll(self) -> list[str]:
        return []

    def close(self) -> None:
        self.framebuffer.release()
        self._tex.release()
        self.ctx.release()


_NO_SCREEN = ("offscreen", "dummy")  # SDL video drivers that put nothing on a screen


class NoDisplay(RuntimeError):
    """A window was asked for where there is no display to show it."""


class WindowTarget:
    """A pygame OPENGL window (windowed or fullscreen, on a chosen display, with or without vsync)."""

    kind = "window"

    def __init__(self, size: tuple[int, int], fullscreen: bool = False, display: int = 0, vsync: bool = True,
                 title: str = "installation", hide_cursor: bool = True, keyboard_quit: bool | None = None,
                 borderless: bool = False) -> None:
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        if borderless:  # projector outputs: one undecorated window from the desktop's top-left over all of them
            os.environ.setdefault("SDL_VIDEO_WINDOW_POS", "0,0")
        os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
        prepare_gl_env()
        import pygame

        self._pg = pygame
        pygame.display.init()
        driver = pygame.display.get_driver()
        if driver in _NO_SCREEN and os.environ.get("SDL_VIDEODRIVER", "").lower() != driver:
            # SDL fell back to a driver that shows nothing: "running on a window" would be a lie.
            pygame.display.quit()
            raise NoDisplay(f"no display to open a window on (DISPLAY is {os.environ.get('DISPLAY') or 'not set'}; "
                            f"SDL found only its {driver!r} driver). Use --headless to render offscreen, or start "
                            "an X server first (e.g. `Xvfb :99 &` and DISPLAY=:99)")
        count = pygame.display.get_num_displays()
        if display >= count:
            log.warning("display %d not found (%d available); using display 0", display, count)
            display = 0
        flags = pygame.OPENGL | pygame.DOUBLEBUF
        if fullscreen:
            flags |= pygame.FULLSCREEN | pygame.NOFRAME
            size = pygame.display.get_desktop_sizes()[display]
        elif borderless:
            flags |= pygame.NOFRAME
        pygame.display.gl_set_attribute(pygame.GL_CONTEXT_MAJOR_VERSION, 3)
        pygame.display.gl_set_attribute(pygame.GL_CONTEXT_MINOR_VERSION, 3)
        pygame.display.gl_set_attribute(pygame.GL_CONTEXT_PROFILE_MASK, pygame.GL_CONTEXT_PROFILE_CORE)
        pygame.display.set_mode(tuple(size), flags, display=display, vsync=1 if vsync else 0)
        pygame.display.set_caption(title)
        if fullscreen and hide_cursor:
            pygame.mouse.set_visible(False)
        self.ctx = moderngl.create_context()
        self.size = tuple(pygame.display.get_surface().get_size())
        self.framebuffer = self.ctx.screen
        self.vsync = vsync
        # A fullscreen piece in a public room must not close on a visitor's Esc; a window on a desk may.
        self.keyboard_quit = (not fullscreen) if keyboard_quit is None else keyboard_quit

    def read(self) -> bytes:
        return self.framebuffer.read(components=3, alignment=1)

    def swap(self) -> None:
        self._pg.display.flip()

    def poll(self) -> list[str]:
        """Window events as actions: 'quit', 'next', 'prev'; and every key as 'key:[ctrl+][shift+]<name>' and the
        left mouse button as 'mouse:down|move|up:x,y' (window pixels) for calibration, which others ignore."""
        pg = self._pg
        actions = []
        for ev in pg.event.get():
            if ev.type == pg.QUIT:
                actions.append("quit")
            elif ev.type in (pg.MOUSEBUTTONDOWN, pg.MOUSEBUTTONUP) and ev.button == 1:
                actions.append(f"mouse:{'down' if ev.type == pg.MOUSEBUTTONDOWN else 'up'}:{ev.pos[0]},{ev.pos[1]}")
            elif ev.type == pg.MOUSEMOTION and ev.buttons[0]:
                actions.append(f"mouse:move:{ev.pos[0]},{ev.pos[1]}")
            elif ev.type == pg.KEYDOWN:
                mods = ("ctrl+" if ev.mod & pg.KMOD_CTRL else "") + ("shift+" if ev.mod & pg.KMOD_SHIFT else "")
                actions.append(f"key:{mods}{pg.key.name(ev.key)}")
                if ev.key in (pg.K_ESCAPE, pg.K_q) and self.keyboard_quit:
                    actions.append("quit")
                elif ev.key in (pg.K_RIGHT, pg.K_SPACE):
                    actions.append("next")
                elif ev.key == pg.K_LEFT:
                    actions.append("prev")
        return actions

    def close(self) -> None:
        self.ctx.release()
        self._pg.display.quit()


def pixels(data: bytes, size: tuple[int, int]) -> np.ndarray:
    """Read-back bytes (bottom row first) as an HxWx3 image, top row first."""
    return np.frombuffer(data, np.uint8).reshape(size[1], size[0], 3)[::-1]
