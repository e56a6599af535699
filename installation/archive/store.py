"""The archive's file: one SQLite database per show (WAL mode), one session per run.

Tables: ``sessions`` (when, which config and scenes, the output size, the show state it started from), ``events``
(the bus journal: every accepted parameter set, event and reset with its show time and source, plus the models that
came into play), ``points`` (once per ``point_every`` seconds: scene, seed, path time, the latent as float16+zlib, a
JPEG thumbnail and, when a vision worker supplied one, a CLIP embedding), ``ticks`` (the show time of every loop
tick, float64+zlib per batch, so a replay walks the live show's exact timing) and ``samples`` (the continuous input
features — camera, microphone — as the loop consumed them, once per tick at most: a batch's entries packed in one
row, their times float64, their values float32 where every one is a float32, as the inputs make them, else float64;
:meth:`Store.events` gives them back among the events, in time, exactly as they were).

Every batch is one transaction: a kill -9 or a power cut loses at most the batch being written and never corrupts
the file (WAL). The file is bounded by ``max_mb``: :meth:`Store.enforce` thins the oldest points first, then drops
the oldest tick times (a replay then steps at a fixed rate), and only then the oldest events.
"""

from __future__ import annotations

import heapq
import json
import sqlite3
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions(id INTEGER PRIMARY KEY, started TEXT, ended TEXT, config TEXT, scenes TEXT,
    size TEXT, initial TEXT, first TEXT, last_t REAL DEFAULT 0, kind TEXT DEFAULT 'live');
CREATE TABLE IF NOT EXISTS events(id INTEGER PRIMARY KEY, session INTEGER, t REAL, kind TEXT, name TEXT, value TEXT,
    source TEXT);
CREATE INDEX IF NOT EXISTS events_at ON events(session, t);
CREATE TABLE IF NOT EXISTS points(id INTEGER PRIMARY KEY, session INTEGER, t REAL, scene TEXT, seed INTEGER, tau REAL,
    latent BLOB, shape TEXT, thumb BLOB, clip BLOB, prompts TEXT);
CREATE INDEX IF NOT EXISTS points_at ON points(session, t);
CREATE TABLE IF NOT EXISTS ticks(id INTEGER PRIMARY KEY, session INTEGER, t0 REAL, n INTEGER, data BLOB);
CREATE TABLE IF NOT EXISTS samples(id INTEGER PRIMARY KEY, session INTEGER, t0 REAL, t1 REAL, n INTEGER, names TEXT,
    sources TEXT, dtype TEXT, data BLOB);
CREATE INDEX IF NOT EXISTS samples_at ON samples(session, t0);
"""
SUFFIX = ".sqlite"
WRITER_CACHE_KIB = 256  # the page cache of a writing connection (SQLite's default: 2000 KiB)
MIN_POINTS = 32  # thinning stops here; then tick times, then events go


def pack_latent(z: np.ndarray) -> tuple[bytes, str]:
    """A latent as float16 bytes, zlib-compressed, and its shape as JSON."""
    z = np.asarray(z, dtype=np.float32)
    return zlib.compress(z.astype(np.float16).tobytes(), 6), json.dumps(list(z.shape))


def unpack_latent(blob: bytes | None, shape: str | None) -> np.ndarray | None:
    if blob is None or shape is None:
        return None
    return np.frombuffer(zlib.decompress(blob), dtype=np.float16).astype(np.float32).reshape(json.loads(shape))


def pack_vector(v: Any) -> bytes:
    return zlib.compress(np.asarray(v, dtype=np.float32).tobytes(), 6)


def unpack_vector(blob: bytes | None) -> np.ndarray | None:
    return None if blob is None else np.frombuffer(zlib.decompress(blob), dtype=np.float32)


def pack_samples(samples: list[tuple[float, str, float, str]]) -> tuple:
    """Sampled entries ``(t, name, value, source)``, in journal order, as one row's ``(t0, t1, n, names, sources,
    dtype, data)``: zlib of the times (float64), name and source indexes (uint16) and values (float32 when each one
    is a float32 exactly, float64 otherwise), one column after the other."""
    names: dict[str, int] = {}
    sources: dict[str, int] = {}
    t = np.array([s[0] for s in samples], "<f8")
    ni = np.array([names.setdefault(s[1], len(names)) for s in samples], "<u2")
    si = np.array([sources.setdefault(s[3], len(sources)) for s in samples], "<u2")
    v64 = np.array([s[2] for s in samples], "<f8")
    v32 = v64.astype("<f4")
    exact = bool(np.array_equal(v32.astype("<f8"), v64))
    values = v32 if exact else v64
    data = zlib.compress(t.tobytes() + ni.tobytes() + si.tobytes() + values.tobytes(), 6)
    return (float(t.min()), float(t.max()), len(samples), json.dumps(list(names)), json.dumps(list(sources)),
            "f4" if exact else "f8", data)


def unpack_samples(n: int, names: str, sources: str, dtype: str, data: bytes) -> list[dict[str, Any]]:
    """One ``samples`` row back as journal entries (kind "set", ``sampled`` True), in their order."""
    raw = zlib.decompress(data)
    width = 4 if dtype == "f4" else 8
    if dtype not in ("f4", "f8") or len(raw) != n * (8 + 2 + 2 + width):
        raise ValueError(f"a samples row of {n} entries holds {len(raw)} bytes")
    t = np.frombuffer(raw, "<f8", n)
    ni = np.frombuffer(raw, "<u2", n, 8 * n)
    si = np.frombuffer(raw, "<u2", n, 10 * n)
    v = np.frombuffer(raw, f"<{dtype}", n, 12 * n).astype(np.float64)
    name_list, source_list = json.loads(names), json.loads(sources)
    return [{"t": float(t[k]), "kind": "set", "name": name_list[ni[k]], "value": float(v[k]),
             "source": source_list[si[k]], "sampled": True} for k in range(n)]


def to_json(value: Any) -> str:
    """An event's value as JSON (tuples become lists; anything odd its string)."""
    return json.dumps(value, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o), allow_nan=False)


def from_json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


@dataclass(frozen=True)
class Point:
    """One archived point: where the show was at show time ``t``."""

    id: int
    session: int
    t: float
    scene: str
    seed: int
    tau: float
    latent: np.ndarray | None
    thumb: bytes | None  # JPEG
    clip: np.ndarray | None
    prompts: Any


class CorruptArchive(ValueError):
    """An archive file SQLite finds damaged (truncated, pages overwritten, not a database at all)."""

    def __init__(self, path: Path, why: str) -> None:
        self.path, self.why = Path(path), why
        super().__init__(f"{path}: damaged archive ({why})")


def is_corrupt(e: BaseException) -> bool:
    """Whether an SQLite error means the file itself is damaged (not a full disk, a lock or a missing folder)."""
    return isinstance(e, sqlite3.DatabaseError) and getattr(e, "sqlite_errorcode", None) in (
        sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def archive_file(folder: Path, config: Path | str) -> Path:
    """The show's archive file in ``folder``: named after its config file (one file per show)."""
    return Path(folder) / f"{Path(config).stem}{SUFFIX}"


class Store:
    """One connection to an archive file. Writers use it from one thread; readers open their own."""

    def __init__(self, path: Path | str, readonly: bool = False) -> None:
        self.path = Path(path)
        if readonly:
            if not self.path.is_file():
                raise FileNotFoundError(f"no archive at {self.path}")
            self.conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(self.path, check_same_thread=False, timeout=10)
        try:
            if not readonly:
                self.conn.execute("PRAGMA auto_vacuum=INCREMENTAL")  # only takes effect on a new, empty file
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=NORMAL")  # WAL: a power cut loses the last commits, never the file
                # A writer appends: its hot pages are the right edge of each table and index, a few dozen. SQLite's
                # default cache (2000 KiB) fills over the first half hour of a show as the file grows, which read
                # as a memory slope in the soaks; 256 KiB holds the hot pages and is full within minutes.
                self.conn.execute(f"PRAGMA cache_size=-{WRITER_CACHE_KIB}")
                self.conn.executescript(SCHEMA)
            self.conn.execute("SELECT 1 FROM sessions LIMIT 1")
            # an archive written before sampled features had their table (read-only: not added)
            self.has_samples = self.conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='samples'").fetchone() is not None
        except sqlite3.DatabaseError as e:
            self.conn.close()
            if is_corrupt(e):
                raise CorruptArchive(self.path, str(e)) from None
            raise ValueError(f"{self.path} is not an archive ({e})") from None

    def close(self) -> None:
        self.conn.close()

    # -- writing -----------------------------------------------------------------------------------------------
    def new_session(self, started: str, config: str, scenes: list[str], size: tuple[int, int] | None,
                    initial: dict[str, Any], kind: str = "live") -> int:
        with self.conn:
            cur = self.conn.execute(
                "INSERT INTO sessions(started, config, scenes, size, initial, kind) VALUES (?,?,?,?,?,?)",
                (started, config, to_json(scenes), "x".join(map(str, size)) if size else None, to_json(initial), kind))
        return int(cur.lastrowid)

    def write_batch(self, session: int, *, events: Iterable[tuple] = (), points: Iterable[tuple] = (),
                    ticks: np.ndarray | None = None, first: dict[str, Any] | None = None,
                    clips: Iterable[tuple[float, bytes]] = (), last_t: float | None = None,
                    ended: str | None = None, samples: list[tuple[float, str, float, str]] = ()) -> None:
        """One transaction: events ``(t, kind, name, value_json, source)``, points ``(t, scene, seed, tau, latent,
        shape, thumb, clip, prompts_json)``, the batch's tick times, sampled features ``(t, name, value, source)``
        (one packed row), embeddings for the newest point at or before their time, and the session's
        bookkeeping."""
        with self.conn:
            c = self.conn
            c.executemany("INSERT INTO events(session, t, kind, name, value, source) VALUES (?,?,?,?,?,?)",
                          [(session, *e) for e in events])
            if samples:
                c.execute("INSERT INTO samples(session, t0, t1, n, names, sources, dtype, data) "
                          "VALUES (?,?,?,?,?,?,?,?)", (session, *pack_samples(list(samples))))
            c.executemany("INSERT INTO points(session, t, scene, seed, tau, latent, shape, thumb, clip, prompts) "
                          "VALUES (?,?,?,?,?,?,?,?,?,?)", [(session, *p) for p in points])
            if ticks is not None and len(ticks):
                c.execute("INSERT INTO ticks(session, t0, n, data) VALUES (?,?,?,?)",
                          (session, float(ticks[0]), len(ticks), zlib.compress(np.asarray(ticks, "<f8").tobytes())))
            for t, blob in clips:
                c.execute("UPDATE points SET clip=? WHERE id=(SELECT id FROM points WHERE session=? AND t<=? "
                          "ORDER BY t DESC LIMIT 1)", (blob, session, t))
            if first is not None:
                c.execute("UPDATE sessions SET first=? WHERE id=?", (to_json(first), session))
            if last_t is not None:
                c.execute("UPDATE sessions SET last_t=max(last_t, ?) WHERE id=?", (last_t, session))
            if ended is not None:
                c.execute("UPDATE sessions SET ended=? WHERE id=?", (ended, session))

    # -- size and retention ----------------------------------------------------------------------------------------
    def used_bytes(self) -> int:
        """Bytes in use (the file less its free pages, plus the write-ahead log)."""
        pages = self.conn.execute("PRAGMA page_count").fetchone()[0]
        free = self.conn.execute("PRAGMA freelist_count").fetchone()[0]
        size = self.conn.execute("PRAGMA page_size").fetchone()[0]
        wal = self.path.with_name(self.path.name + "-wal")
        return (pages - free) * size + (wal.stat().st_size if wal.exists() else 0)

    def enforce(self, max_bytes: int) -> dict[str, int]:
        """Bring the file under ``max_bytes``: thin the oldest half of the points (every other one) while there are
        more than MIN_POINTS, then drop the oldest session's tick times, then the oldest tenth of the events. Returns
        what was removed."""
        removed = {"points": 0, "ticks": 0, "events": 0, "samples": 0}
        for _ in range(64):
            if self._data_bytes() <= max_bytes:
                break
            with self.conn:
                n = self.conn.execute("SELECT count(*) FROM points").fetchone()[0]
                if n > MIN_POINTS:
                    # every other point in the oldest half (by time of recording)
                    cur = self.conn.execute(
                        "DELETE FROM points WHERE id IN (SELECT id FROM (SELECT id, row_number() OVER (ORDER BY id) "
                        "AS k FROM points ORDER BY id LIMIT ?) WHERE k % 2 = 0)", (n // 2,))
                    removed["points"] += cur.rowcount
                    continue
                row = self.conn.execute("SELECT min(session) FROM ticks").fetchone()
                if row[0] is not None:  # a replay of that session then steps at a fixed rate
                    removed["ticks"] += self.conn.execute("DELETE FROM ticks WHERE session=?", (row[0],)).rowcount
                    continue
                n = self.conn.execute("SELECT count(*) FROM events").fetchone()[0]
                k = self.conn.execute("SELECT count(*) FROM samples").fetchone()[0]
                if n == 0 and k == 0:
                    break
                cur = self.conn.execute("DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY id LIMIT ?)",
                                        (max(n // 10, 1),))
                removed["events"] += cur.rowcount
                cur = self.conn.execute("DELETE FROM samples WHERE id IN (SELECT id FROM samples ORDER BY id "
                                        "LIMIT ?)", (max(k // 10, 1),))  # with them, the oldest sampled features
                removed["samples"] += cur.rowcount
        pages = self.conn.execute("PRAGMA page_count").fetchone()[0]
        if any(removed.values()) or pages * self.conn.execute("PRAGMA page_size").fetchone()[0] > max_bytes:
            self.conn.executescript("PRAGMA incremental_vacuum;")  # the file shrinks (execute() frees one page)
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return removed

    def _data_bytes(self) -> int:
        pages = self.conn.execute("PRAGMA page_count").fetchone()[0]
        free = self.conn.execute("PRAGMA freelist_count").fetchone()[0]
        return (pages - free) * self.conn.execute("PRAGMA page_size").fetchone()[0]

    # -- reading -----------------------------------------------------------------------------------------------
    def sessions(self) -> list[dict[str, Any]]:
        """Every session with its time span (show seconds), counts and tick coverage."""
        rows = self.conn.execute(
            "SELECT s.id, s.started, s.ended, s.config, s.scenes, s.size, s.kind, s.last_t, "
            "(SELECT count(*) FROM events e WHERE e.session=s.id)" +
            (" + (SELECT coalesce(sum(n), 0) FROM samples m WHERE m.session=s.id), " if self.has_samples else ", ") +
            "(SELECT count(*) FROM points p WHERE p.session=s.id),"
            " (SELECT coalesce(sum(n), 0) FROM ticks k WHERE k.session=s.id), "
            "(SELECT min(t) FROM events e WHERE e.session=s.id) FROM sessions s ORDER BY s.id").fetchall()
        keys = ("id", "started", "ended", "config", "scenes", "size", "kind", "last_t", "events", "points", "ticks",
                "first_event_t")
        out = []
        for row in rows:
            d = dict(zip(keys, row))
            d["scenes"] = from_json(d["scenes"])
            out.append(d)
        return out

    def session(self, sid: int | None = None) -> dict[str, Any]:
        """One session (the newest when ``sid`` is None) with its initial and first-tick state; KeyError if none."""
        q = "SELECT id, started, ended, config, scenes, size, initial, first, last_t, kind FROM sessions "
        row = self.conn.execute(q + ("WHERE id=?" if sid is not None else "ORDER BY id DESC LIMIT 1"),
                                (sid,) if sid is not None else ()).fetchone()
        if row is None:
            raise KeyError(f"no session {sid} in {self.path}" if sid is not None else f"no sessions in {self.path}")
        keys = ("id", "started", "ended", "config", "scenes", "size", "initial", "first", "last_t", "kind")
        d = dict(zip(keys, row))
        for k in ("scenes", "initial", "first"):
            d[k] = from_json(d[k])
        return d

    def events(self, sid: int, t0: float = -1e300, t1: float = 1e300) -> Iterator[dict[str, Any]]:
        """A session's journal between ``t0`` and ``t1``: its events and its sampled features (``"sampled": True``),
        merged in time (at equal times, the events first: the loop consumed the samples at that tick)."""
        def events() -> Iterator[dict[str, Any]]:
            for t, kind, name, value, source in self.conn.execute(
                    "SELECT t, kind, name, value, source FROM events WHERE session=? AND t>=? AND t<=? ORDER BY id",
                    (sid, t0, t1)):
                yield {"t": t, "kind": kind, "name": name, "value": from_json(value), "source": source}

        def samples() -> Iterator[dict[str, Any]]:
            if not self.has_samples:
                return
            rows = self.conn.execute("SELECT n, names, sources, dtype, data FROM samples WHERE session=? AND t1>=? "
                                     "AND t0<=? ORDER BY id", (sid, t0, t1)).fetchall()
            for row in rows:
                for entry in unpack_samples(*row):
                    if t0 <= entry["t"] <= t1:
                        yield entry

        yield from heapq.merge(events(), samples(), key=lambda e: e["t"])

    def points(self, sid: int | None = None, with_thumbs: bool = True, newest: int | None = None) -> list[Point]:
        """A session's points (or every session's), in time; ``newest``: only the newest this many."""
        cols = "id, session, t, scene, seed, tau, latent, shape, " + ("thumb" if with_thumbs else "NULL") + \
            ", clip, prompts"
        where = " WHERE session=?" if sid is not None else ""
        if newest is not None:
            where += (" AND" if where else " WHERE") + \
                f" id IN (SELECT id FROM points{' WHERE session=?' if sid is not None else ''} ORDER BY id DESC " \
                f"LIMIT {int(newest)})"
        q = f"SELECT {cols} FROM points{where} ORDER BY session, t"
        return [Point(i, s, t, sc, seed, tau, unpack_latent(lat, shape), thumb, unpack_vector(clip), from_json(pr))
                for i, s, t, sc, seed, tau, lat, shape, thumb, clip, pr in
                self.conn.execute(q, (sid,) * ((sid is not None) * (1 + (newest is not None))))]

    def embeddings(self, sid: int | None = None, after: int = 0,
                   width: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The points (of one session, or all) with an id above ``after``: their ids, in order, and of those that
        have a CLIP embedding (of ``width``, when given), the ids and the embeddings as float32 rows (``archive
        search``, ``/seek``)."""
        where = "id>?" + (" AND session=?" if sid is not None else "")
        rows = self.conn.execute(f"SELECT id, clip FROM points WHERE {where} ORDER BY id",
                                 (after, sid) if sid is not None else (after,)).fetchall()
        ids = np.array([r[0] for r in rows], np.int64)
        have = [(i, unpack_vector(c)) for i, c in rows if c is not None]
        if width is not None:
            have = [(i, v) for i, v in have if len(v) == width]
        widths = {len(v) for _, v in have}
        if len(widths) > 1:
            raise ValueError(f"{self.path}: embeddings of different widths {sorted(widths)} (from different CLIP "
                             "models); search one session with --session")
        matrix = np.stack([v for _, v in have]) if have else np.zeros((0, 0), np.float32)
        return ids, np.array([i for i, _ in have], np.int64), matrix

    def points_by_id(self, ids: Iterable[int], with_thumbs: bool = True) -> dict[int, Point]:
        """The points with these ids that are still kept (thinning removes old ones), by id."""
        ids = [int(i) for i in ids]
        cols = "id, session, t, scene, seed, tau, latent, shape, " + ("thumb" if with_thumbs else "NULL") + \
            ", clip, prompts"
        out: dict[int, Point] = {}
        for k in range(0, len(ids), 500):
            chunk = ids[k:k + 500]
            for i, s, t, sc, seed, tau, lat, shape, thumb, clip, pr in self.conn.execute(
                    f"SELECT {cols} FROM points WHERE id IN ({','.join('?' * len(chunk))})", chunk):
                out[i] = Point(i, s, t, sc, seed, tau, unpack_latent(lat, shape), thumb, unpack_vector(clip),
                               from_json(pr))
        return out

    def embedded(self, sid: int) -> int:
        """How many of a session's points have a CLIP embedding."""
        return self.conn.execute("SELECT count(*) FROM points WHERE session=? AND clip IS NOT NULL",
                                 (sid,)).fetchone()[0]

    def set_embeddings(self, rows: Iterable[tuple[int, Any]]) -> None:
        """Store CLIP embeddings ``(point id, vector)`` on their points, in one transaction (``archive embed``)."""
        with self.conn:
            self.conn.executemany("UPDATE points SET clip=? WHERE id=?", [(pack_vector(v), int(i)) for i, v in rows])

    def thumbs(self) -> dict[str, bytes]:
        """The newest thumbnail (JPEG) of each scene, over every session: what each scene last looked like here."""
        q = ("SELECT scene, thumb FROM points WHERE id IN "
             "(SELECT max(id) FROM points WHERE thumb IS NOT NULL GROUP BY scene)")
        return {str(scene): bytes(thumb) for scene, thumb in self.conn.execute(q)}

    def ticks(self, sid: int) -> np.ndarray:
        """Every archived tick time of a session, in order (empty when none were kept)."""
        blobs = [np.frombuffer(zlib.decompress(d), "<f8") for (d,) in
                 self.conn.execute("SELECT data FROM ticks WHERE session=? ORDER BY id", (sid,))]
        return np.concatenate(blobs) if blobs else np.zeros(0)

    def integrity(self) -> str:
        """"ok", or SQLite's first finding and how many there are (one line); a file too damaged to check says why."""
        try:
            rows = [r[0] for r in self.conn.execute("PRAGMA integrity_check(100)").fetchall()]
        except sqlite3.DatabaseError as e:
            return f"failed ({e})"
        if rows == ["ok"]:
            return "ok"
        first = " ".join(str(rows[0]).split())
        return f"failed: {first}" + (f" (and {len(rows) - 1} more{'+' if len(rows) >= 100 else ''})"
                                     if len(rows) > 1 else "")


__all__ = ["CorruptArchive", "Point", "Store", "archive_file", "is_corrupt", "pack_latent", "pack_samples",
           "pack_vector", "to_json", "unpack_latent", "unpack_samples", "unpack_vector"]


def parse_source(text: str | Path) -> tuple[Path, int | None]:
    """``FILE`` or ``FILE#SESSION`` -> (path, session id or None for the newest)."""
    text = str(text)
    if "#" in text:
        path, _, sid = text.rpartition("#")
        if sid.isdigit():
            return Path(path), int(sid)
    return Path(text), None
