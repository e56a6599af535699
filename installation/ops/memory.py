"""Memory probes for long runs: what a process holds and what grows (issue 33).

Resident memory alone does not say where growth comes from, so the probes split it:

- :func:`smaps` reads ``/proc/<pid>/smaps_rollup``: ``anon_mb`` (heap, Python objects, driver buffers: what leaks),
  ``file_mb`` (mapped libraries and files: grows with lazily loaded code, then stops);
- :func:`malloc_stats` asks glibc (``mallinfo2``): bytes in use by ``malloc`` against bytes held free inside its
  arenas (fragmentation that :func:`trim` hands back to the system); :func:`sqlite_mb` the part of it SQLite holds
  (the archive's page cache);
- :func:`gl_objects` counts live moderngl objects by type (programs, textures, framebuffers, vertex arrays,
  buffers): released ones are not counted, so a count that rises across reloads is a GL leak;
- :func:`process_tree` gives the resident memory of a process and of its children (the decoder and camera processes)
  by name;
- :func:`counts` the threads and file descriptors of this process.

Everything here is Linux-only and returns ``None`` (or empty) where it cannot be read; nothing raises.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import threading
import warnings
from collections import Counter
from typing import Any

_MB = 2**20


def rss_mb(pid: int | None = None) -> float | None:
    """Resident memory of ``pid`` (this process by default) in MiB, or None where it cannot be read."""
    try:
        with open(f"/proc/{pid or 'self'}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / _MB
    except (OSError, ValueError, IndexError):
        return None


def smaps(pid: int | None = None) -> dict[str, float]:
    """``rss_mb``, ``anon_mb``, ``file_mb`` (resident file-backed pages) and ``shmem_mb`` of ``pid`` from
    ``/proc/<pid>/smaps_rollup``; empty where it cannot be read."""
    fields: dict[str, float] = {}
    try:
        with open(f"/proc/{pid or 'self'}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                    fields[parts[0][:-1]] = int(parts[1]) / 1024
    except OSError:
        return {}
    rss, anon = fields.get("Rss", 0.0), fields.get("Anonymous", 0.0)
    shmem = fields.get("Pss_Shmem", 0.0)
    return {"rss_mb": rss, "anon_mb": anon, "file_mb": max(rss - anon - shmem, 0.0), "shmem_mb": shmem}


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _libc() -> Any:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


_LIBC = _libc()


def malloc_stats() -> dict[str, float] | None:
    """glibc's view of this process's heap in MiB: ``in_use_mb`` (allocated by malloc, mmapped blocks included),
    ``free_mb`` (held inside its arenas, not returned to the system), ``mmap_mb``; None without glibc 2.33+."""
    fn = getattr(_LIBC, "mallinfo2", None)
    if fn is None:
        return None
    fn.restype = _Mallinfo2
    m = fn()
    return {"in_use_mb": (m.uordblks + m.hblkhd) / _MB, "free_mb": m.fordblks / _MB, "mmap_mb": m.hblkhd / _MB,
            "arena_mb": m.arena / _MB}


def _sqlite() -> Any:
    try:
        import _sqlite3  # noqa: F401 - loads the libsqlite3 Python's sqlite3 uses, so the name below finds that one

        lib = ctypes.CDLL(ctypes.util.find_library("sqlite3") or "libsqlite3.so.0")
        lib.sqlite3_memory_used.restype = ctypes.c_int64
        return lib
    except (ImportError, OSError, AttributeError):
        return None


_SQLITE = _sqlite()


def sqlite_mb() -> float | None:
    """Memory SQLite holds in this process in MiB (``sqlite3_memory_used``: page caches, schemas, statements of
    every connection); part of malloc's bytes in use. None without a shared libsqlite3."""
    if _SQLITE is None:
        return None
    return _SQLITE.sqlite3_memory_used() / _MB


def trim() -> bool:
    """Hand the free memory at the top and inside glibc's arenas back to the system (``malloc_trim(0)``); True when
    some was returned. Cheap enough to call once a minute (a few ms on a heap of a few hundred MB)."""
    fn = getattr(_LIBC, "malloc_trim", None)
    if fn is None:
        return False
    return bool(fn(0))


M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)
LARGE_BLOCK = 128 * 1024  # glibc's own starting threshold


def map_large_blocks(nbytes: int = LARGE_BLOCK) -> bool:
    """Give every allocation of ``nbytes`` or more a mapping of its own, handed back to the system whole when freed;
    True when set.

    glibc starts at the same 128 KiB but raises its threshold to the largest block freed so far, so a show process
    soon keeps every frame-sized block (decoder frames from the pipe, textures and framebuffers the GL driver keeps
    in main memory, read-backs for sinks) inside its heap. When scenes of different sizes take turns, those blocks
    interleave with small ones and the freed space cannot all be reused or trimmed: in issue 33's soak the default
    show's process rose ~5 MB/h, one step per visit of its one 640x360 scene, while bytes in use stayed flat. Fixed
    here, a 14-minute run alternating a 320x180 and a 640x360 scene stayed flat (+4.65 -> -0.1 MB/h, and 7 MB lower).

    Only for a process that does not run the decoder: torch's frame-sized tensors, mapped and unmapped every frame,
    cost the CPPN about 30 % of its frames. A threshold the user set (``MALLOC_MMAP_THRESHOLD_``, or
    ``glibc.malloc.mmap_threshold`` in ``GLIBC_TUNABLES``) is kept."""
    import os

    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "mmap_threshold" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    fn = getattr(_LIBC, "mallopt", None)
    if fn is None:
        return False
    return bool(fn(M_MMAP_THRESHOLD, int(nbytes)))


class Trimmer:
    """Calls :func:`trim` at most every ``every_s`` seconds (monotonic) from whichever loop calls :meth:`maybe`.

    Why: glibc keeps memory that threads freed inside its arenas; a show's heap churns (frames, GL driver buffers,
    SQLite pages, decoder tensors between scenes), and in issue 33's soak of the default show most of the show
    process's resident growth was memory malloc held free (7.0 -> 10.6 MB in 35 minutes) rather than in use
    (146.4 -> 147.5 MB). Trimming once a minute hands it back."""

    def __init__(self, every_s: float = 60.0, clock=None) -> None:
        import time

        self.every_s = float(every_s)
        self._clock = clock or time.monotonic
        self._last = self._clock()
        self.trims = 0
        self.returned = 0  # trims that gave memory back

    def maybe(self) -> bool:
        """Trim if ``every_s`` passed since the last time; True when it trimmed."""
        now = self._clock()
        if now - self._last < self.every_s:
            return False
        self._last = now
        self.trims += 1
        if trim():
            self.returned += 1
        return True


GL_TYPES = ("Program", "Texture", "Framebuffer", "VertexArray", "Buffer", "Renderbuffer", "Texture3D",
            "TextureArray", "TextureCube", "Query", "Sampler", "ComputeShader", "Scope")


def gl_objects() -> dict[str, int]:
    """Live (not released) moderngl objects in this process by type name, found through the garbage collector.

    A released object keeps its Python wrapper until nothing refers to it, but its ``glo`` is gone (moderngl sets
    it to 0 or its ``mglo`` to an invalid object), so only objects still holding a GL name are counted. Walks every
    tracked object: tens of milliseconds on a big heap, for probes and tests, not for every frame."""
    try:
        import moderngl
    except ImportError:
        return {}
    types = tuple(t for t in (getattr(moderngl, n, None) for n in GL_TYPES) if isinstance(t, type))
    out: Counter[str] = Counter()
    with warnings.catch_warnings():  # isinstance on some modules' lazy attributes warns (torch.distributed)
        warnings.simplefilter("ignore")
        for obj in gc.get_objects():
            if type(obj) in types and _alive(obj):
                out[type(obj).__name__] += 1
    return dict(out)


def _alive(obj: Any) -> bool:
    mglo = getattr(obj, "mglo", None)
    if mglo is None or type(mglo).__name__ == "InvalidObject":
        return False
    glo = getattr(obj, "_glo", getattr(obj, "glo", None))
    return glo is None or glo != 0 or type(obj).__name__ in ("Scope", "Query")


def counts() -> dict[str, float]:
    """This process's Python threads, OS threads, open file descriptors and Python's allocated memory blocks in
    thousands (``py_kblocks``: objects and their buffers under 512 bytes, which live outside malloc's statistics in
    Python's own arenas; a count that rises is Python objects kept)."""
    import sys

    out: dict[str, float] = {"threads": threading.active_count(), "py_kblocks": sys.getallocatedblocks() / 1000}
    for key, path in (("os_threads", "/proc/self/task"), ("fds", "/proc/self/fd")):
        try:
            out[key] = len(os.listdir(path))
        except OSError:
            pass
    return out


def children(pid: int | None = None) -> list[int]:
    """The direct children of ``pid`` (this process by default)."""
    pid = pid or os.getpid()
    kids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids += [int(x) for x in f.read().split()]
    except (OSError, ValueError):
        pass
    return kids


def _name(pid: int, names: dict[int, str]) -> str:
    if pid in names:
        return names[pid]
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        text = " ".join(a.decode(errors="replace") for a in argv if a)
    except OSError:
        return "?"
    for known in ("resource_tracker", "forkserver", "multiprocessing", "ffmpeg"):
        if known in text:
            return known
    return os.path.basename(argv[0].decode(errors="replace")) if argv and argv[0] else "?"


def process_tree(pid: int | None = None, names: dict[int, str] | None = None) -> dict[str, float]:
    """Resident MiB of ``pid`` (``"self"``) and of each child by a short name (from ``names``, pid -> name, e.g. the
    decoder's and the camera's processes; else ``multiprocessing``, ``ffmpeg``, the executable's name; several of
    one name are summed), children's children included."""
    names = names or {}
    pid = pid or os.getpid()
    out: Counter[str] = Counter()
    own = rss_mb(pid)
    if own is not None:
        out["self"] += own
    todo = children(pid)
    seen: set[int] = set()
    while todo:
        kid = todo.pop()
        if kid in seen:
            continue
        seen.add(kid)
        mb = rss_mb(kid)
        if mb is not None:
            out[_name(kid, names)] += mb
        todo += children(kid)
    return {k: round(v, 2) for k, v in out.items()}


def _walk(obj: Any, depth: int):
    """Every object reachable from ``obj`` through attributes, slots, lists, tuples, sets and dict values, at most
    ``depth`` levels down, each once; modules, classes, functions, strings and numbers are not entered, nor are
    arrays, tensors and moderngl objects (yielded, not entered)."""
    skip = (type, type(os), type(_walk), type(len), str, bytes, bytearray, int, float, bool, type(None))
    seen: set[int] = set()
    todo: list[tuple[Any, int]] = [(obj, 0)]
    while todo:
        cur, level = todo.pop()
        if id(cur) in seen or isinstance(cur, skip):
            continue
        seen.add(id(cur))
        yield cur
        if level >= depth or type(cur).__module__.split(".")[0] in ("numpy", "torch", "sqlite3", "moderngl"):
            continue
        if isinstance(cur, dict):
            kids = list(cur.values())[:1000]
        elif isinstance(cur, (list, tuple, set, frozenset)):
            kids = list(cur)[:1000]
        else:
            try:
                kids = list(vars(cur).values())
            except TypeError:
                kids = []
            kids += [getattr(cur, s, None) for s in getattr(type(cur), "__slots__", ()) if isinstance(s, str)]
        todo += [(k, level + 1) for k in kids]


def held(obj: Any, depth: int = 4) -> dict[str, int]:
    """What ``obj`` (a part) holds, found by walking what it refers to ``depth`` levels down (:func:`_walk`):
    ``threads`` (alive :class:`threading.Thread` objects), ``processes`` (running multiprocessing processes and
    subprocess.Popen children) and ``gl`` (live moderngl objects).

    Why by reachability: a part's threads, its child process and its GL objects are what it can leak outside
    Python's heap, and all of them hang off the part object (a writer, a server, a map renderer)."""
    import moderngl

    gl_types = tuple(t for t in (getattr(moderngl, n, None) for n in GL_TYPES) if isinstance(t, type))
    out = {"threads": 0, "processes": 0, "gl": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for cur in _walk(obj, depth):
            if isinstance(cur, threading.Thread):
                out["threads"] += cur.is_alive()
            elif type(cur) in gl_types:
                out["gl"] += _alive(cur)
            elif _running_child(cur):
                out["processes"] += 1
    return out


def source_files(obj: Any, package: str = "installation", depth: int = 4) -> set[str]:
    """The source files of ``package`` that define the classes of what ``obj`` refers to (:func:`_walk`): the code
    a part's memory is allocated from, for :func:`traced_by_files`."""
    import sys

    files = set()
    for cur in _walk(obj, depth):
        module = sys.modules.get(type(cur).__module__)
        path = getattr(module, "__file__", None)
        if path and type(cur).__module__.split(".")[0] == package:
            files.add(path)
    return files

def _running_child(obj: Any) -> bool:
    """A multiprocessing process or a subprocess.Popen that runs."""
    import multiprocessing.process
    import subprocess

    try:
        if isinstance(obj, multiprocessing.process.BaseProcess):
            return obj.pid is not None and obj.is_alive()
        if isinstance(obj, subprocess.Popen):
            return obj.poll() is None
    except (AssertionError, ValueError, OSError):  # is_alive() from a process that is not the parent, a closed one
        return False
    return False


def traced_by_files(groups: dict[str, set[str]]) -> dict[str, float]:
    """Python memory traced by tracemalloc now, in KiB, split by ``groups`` (name -> source files): a block goes to
    the group of the innermost frame of its traceback that is in one of the group's files, else to ``"other"``.
    Empty unless tracemalloc is tracing; tracebacks are only as deep as ``tracemalloc.start(n)`` asked."""
    import tracemalloc

    if not tracemalloc.is_tracing():
        return {}
    owner = {f: name for name, files in groups.items() for f in files}
    out: Counter[str] = Counter()
    for stat in tracemalloc.take_snapshot().statistics("traceback"):
        name = next((owner[fr.filename] for fr in reversed(stat.traceback) if fr.filename in owner), "other")
        out[name] += stat.size
    return {k: round(v / 1024, 1) for k, v in out.items()}
