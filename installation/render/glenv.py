"""The process environment Mesa reads when the first GL context is made: set before any exists, and inherited by
every child process the show starts (the decoder's, the camera's), so a GL context made there gets it too.

``LP_NUM_THREADS=0``: llvmpipe (Mesa's software rasteriser) rasterises on the thread that draws instead of in its
own worker threads. With worker threads the show aborted on rare occasions with ``free(): corrupted unsorted
chunks`` inside a moderngl draw (issue 23, see the README's troubleshooting section): a heap corruption from a race
between llvmpipe's rasteriser threads and the thread that draws and reads back. Mesa reads the variable once, when
its screen is created, so it must be in the environment before the first context. A value the user set is kept
(their machine, their choice; e.g. a GPU driver ignores it anyway). This module imports nothing heavy: the CLI
calls it first thing.
"""

from __future__ import annotations

import os
from typing import MutableMapping

GL_ENV = {"LP_NUM_THREADS": "0"}  # what prepare_gl_env sets when the user has not


def prepare_gl_env(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Put :data:`GL_ENV` into ``environ`` (default ``os.environ``) where the user has not set the variable; returns
    the values in force afterwards."""
    env = os.environ if environ is None else environ
    for key, value in GL_ENV.items():
        if not env.get(key, "").strip():  # unset or empty: an empty LP_NUM_THREADS means "default" to Mesa too
            env[key] = value
    return {key: env[key] for key in GL_ENV}
