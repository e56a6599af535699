"""Process limits set at start-up: the open-file soft limit raised towards the hard one.

systemd (and many shells) start a process with a soft RLIMIT_NOFILE of 1024 for the sake of old select() users; this
runtime uses none (poll/epoll throughout), and 1024 descriptors are few for a process holding a window, sockets,
log and state files, a decoder process's pipes and an ffmpeg recorder. Raising the soft limit needs no privilege.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

NOFILE_TARGET = 65536  # enough for anything this process does; bounded so a huge hard limit is not passed on


def raise_nofile_limit(target: int = NOFILE_TARGET) -> tuple[int, int] | None:
    """Raise the soft open-file limit to ``min(hard limit, target)``; never lowers it. Returns (before, after), or
    None where there is no such limit (Windows) or it cannot be read. A refusal is logged, never raised."""
    try:
        import resource  # noqa: PLC0415 - POSIX only
    except ImportError:
        return None
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return None
    want = target if hard == resource.RLIM_INFINITY else min(hard, target)
    if soft != resource.RLIM_INFINITY and soft >= want:
        return soft, soft
    if soft == resource.RLIM_INFINITY:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (OSError, ValueError) as e:
        log.warning("cannot raise the open-file limit from %d to %d: %s", soft, want, e)
        return soft, soft
    log.info("open-file limit raised from %d to %d (hard limit %s)", soft, want,
             "unlimited" if hard == resource.RLIM_INFINITY else hard)
    return soft, want
