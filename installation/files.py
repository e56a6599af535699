"""Reading untrusted files (bounded, whole, and with one error type that names the file and why) and writing the
show's own files atomically.

Every file the show reads at start or reload (config, scenes, shader headers, calibration, MIDI learn, state, space
metadata) comes through here: a size cap (a file far bigger than its kind ever is is not ours), a read that is whole
and stable (read again if the file changed while it was read: an editor rewriting it in place), strict UTF-8, and a
nesting cap (a deeply nested document would otherwise end in a ``RecursionError`` in the parser or in whatever walks
the result). Whatever is wrong, the caller gets a :class:`FileError` whose ``str()`` is one line; it decides whether
that stops the start (exit 2) or sets the file aside (a warning, the show goes on). What the show writes itself (state,
calibration, MIDI learn, presets, checkpoints) is written with :func:`write_atomic`: the old file or the new one after
a power cut, never a mix.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
import tomllib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

log = logging.getLogger(__name__)

MAX_BYTES = 1 << 20  # a config, scene, shader, calibration or learn file is a few KiB; 1 MiB is far past any of them
MAX_DEPTH = 32  # the deepest real document (a calibration's mesh points) nests 5 levels
STABLE_TRIES = 5  # reads of a file that keeps changing under us before giving up


class FileError(ValueError):
    """A file that cannot be used as it is. ``path`` and ``why``; ``str()`` is the one line shown to the user."""

    def __init__(self, path: Path | str, why: str, key: str = "") -> None:
        self.path, self.why, self.key = Path(path), why, key
        super().__init__(f"{path}: key '{key}': {why}" if key else f"{path}: {why}")


class ConfigError(Exception):
    """A config, scene or shader that cannot be used. ``str()`` is the one line shown to the user."""

    def __init__(self, file: Path | str, key: str, message: str) -> None:
        self.file, self.key, self.message = str(file), key, message
        where = f"{self.file}: key '{key}'" if key else self.file
        super().__init__(f"{where}: {message}")


def _signature(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns


def read_bytes(path: Path | str, max_bytes: int = MAX_BYTES, *, tries: int = STABLE_TRIES) -> bytes:
    """The whole file, read when it is not changing: when its inode, size or modification time differ after the read
    from before it (an editor truncating and rewriting it, a copy in progress), it is read again.

    Raises FileNotFoundError for a missing file (callers often treat that as "nothing saved yet") and
    :class:`FileError` for anything else: not a regular file, unreadable, over ``max_bytes``, never stable."""
    path = Path(path)
    for attempt in range(max(tries, 1)):
        try:
            before = os.stat(path)
            if not os.path.isfile(path):
                raise FileError(path, "not a regular file")
            if before.st_size > max_bytes:
                raise FileError(path, f"larger than {max_bytes} bytes ({before.st_size}); not a file of this kind")
            with open(path, "rb") as f:
                data = f.read(max_bytes + 1)
            after = os.stat(path)
        except FileNotFoundError:
            raise
        except OSError as e:
            raise FileError(path, f"cannot read ({e.strerror or e})") from None
        if len(data) > max_bytes:
            raise FileError(path, f"larger than {max_bytes} bytes; not a file of this kind")
        if _signature(before) == _signature(after) and len(data) == after.st_size:
            return data
        if attempt + 1 < tries:
            time.sleep(0.02 * (attempt + 1))  # let the writer finish; not a test's synchronisation
    raise FileError(path, f"kept changing while it was read ({tries} tries); try again when it is written")


def read_text(path: Path | str, max_bytes: int = MAX_BYTES) -> str:
    """:func:`read_bytes` as strict UTF-8 text."""
    return decode(read_bytes(path, max_bytes), path)


def decode(data: bytes, path: Path | str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FileError(path, f"not UTF-8 text ({e.reason} at byte {e.start})") from None


def depth(value: Any, limit: int = MAX_DEPTH) -> int:
    """How deeply ``value``'s lists and dicts nest (a scalar is 0), counted without recursion and stopping at
    ``limit + 1``."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            children = v.values()
        elif isinstance(v, (list, tuple)):
            children = v
        else:
            continue
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        stack.extend((c, d + 1) for c in children)
    return deepest


def check_depth(value: Any, path: Path | str, limit: int = MAX_DEPTH) -> Any:
    if depth(value, limit) > limit:
        raise FileError(path, f"nested more than {limit} levels deep; not a file of this kind")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed (numbers must be finite)")


def parse_json(text: str | bytes, path: Path | str, *, max_depth: int = MAX_DEPTH, finite: bool = True) -> Any:
    """JSON text from ``path`` (a file, or a part of one such as a shader's header): FileError for invalid JSON,
    nesting deeper than ``max_depth``, and (``finite``) NaN, Infinity or a number too large for a float (``1e400``)."""
    if isinstance(text, bytes):
        text = decode(text, path)
    try:
        value = json.loads(text, parse_constant=_no_constant if finite else None,
                           parse_float=_finite_float if finite else float)
    except RecursionError:
        raise FileError(path, f"nested more than {max_depth} levels deep; not a file of this kind") from None
    except json.JSONDecodeError as e:
        raise FileError(path, f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except ValueError as e:
        raise FileError(path, f"not usable JSON ({e})") from None
    return check_depth(value, path, max_depth)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is too large for a number")
    return value


def load_json(path: Path | str, *, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH,
              finite: bool = True) -> Any:
    """A whole JSON file (see :func:`read_bytes` and :func:`parse_json`)."""
    return parse_json(read_bytes(path, max_bytes), path, max_depth=max_depth, finite=finite)


def parse_toml(text: str, path: Path | str, *, max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """TOML text from ``path``: FileError for invalid TOML, nesting deeper than ``max_depth``, inf or nan."""
    try:
        doc = tomllib.loads(text)
    except RecursionError:
        raise FileError(path, f"nested more than {max_depth} levels deep; not a file of this kind") from None
    except ValueError as e:  # TOMLDecodeError, or an integer of more than 4300 digits
        raise FileError(path, f"not valid TOML ({str(e)[:200]})") from None
    check_depth(doc, path, max_depth)
    key = non_finite(doc)
    if key is not None:
        raise FileError(path, "must be a finite number (TOML's inf and nan are not allowed)", key)
    return doc


def load_toml(path: Path | str, *, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """A whole TOML file (see :func:`read_bytes` and :func:`parse_toml`)."""
    return parse_toml(read_text(path, max_bytes), path, max_depth=max_depth)


def non_finite(value: Any, key: str = "") -> str | None:
    """The dotted key of the first inf or nan in a parsed document (depth already bounded), or None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else key
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        found = non_finite(v, f"{key}[{k}]" if isinstance(k, int) else f"{key}.{k}" if key else str(k))
        if found is not None:
            return found
    return None


def set_aside(path: Path | str, why: str, *, what: str = "file", companions: tuple[str, ...] = (),
              wall: Callable[[], float] = time.time, then: str = "",
              logger: logging.Logger | None = None) -> Path | None:
    """Rename an unusable file to ``<name>.corrupt-<UTC time>`` so it no longer loads and can be inspected; one
    warning. ``companions`` are suffixes of files that belong to it (SQLite's ``-wal``, ``-shm``), moved alike.
    Returns the new path, or None when it could not be moved (also one warning)."""
    out = logger or log
    path = Path(path)
    stamp = datetime.fromtimestamp(wall(), timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    try:
        os.replace(path, target)
    except OSError as e:
        out.warning("%s %s is unusable (%s) and could not be moved aside (%s)%s", what, path, why, e,
                    f"; {then}" if then else "")
        return None
    for suffix in companions:
        extra = path.with_name(path.name + suffix)
        try:
            os.replace(extra, target.with_name(target.name + suffix))
        except FileNotFoundError:
            pass
        except OSError as e:
            out.warning("%s %s: could not move %s aside (%s)", what, path, extra.name, e)
    try:
        fd = os.open(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    out.warning("%s %s is unusable (%s); moved it to %s%s", what, path, why, target.name, f" and {then}" if then else "")
    return target


# -- writing ---------------------------------------------------------------------------------------------------------

def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable; some platforms and file systems cannot open folders, which is fine."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_json(path: Path | str, state: Mapping[str, Any], *, version: int,
              wall: Callable[[], float] = time.time) -> dict[str, Any]:
    """Write ``state`` plus ``version`` and ``saved_at`` (wall time) to ``path`` atomically, as compact JSON with
    sorted keys (every float in its shortest round-trip form); returns what was written. The show state and the
    projector calibration are written so.

    Raises OSError (disk), TypeError or ValueError (state not JSON-serialisable, NaN); the old file is then untouched.
    """
    path = Path(path)
    data = dict(state)
    data["version"] = version
    data["saved_at"] = wall()
    # Serialise before touching the disk: a bad value must not cost us the previous good file.
    write_atomic(path, json.dumps(data, allow_nan=False, separators=(",", ":"), sort_keys=True).encode())
    return data


def write_atomic(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` so that a crash or power cut leaves the old file or the new one, never a mix:
    a temporary file beside it, fsynced, renamed over it, and the folder fsynced. Raises OSError."""
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(folder)
