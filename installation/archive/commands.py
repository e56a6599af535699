"""The archive's commands: ``installation archive ls|info|export``, ``installation replay``, ``installation map``,
and ``run --replay``. Each returns an exit status (2 with one line for a bad archive, session or flag)."""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

from ..cli.registry import command
from ..cli.shared import size_arg
from .store import SUFFIX, Store, archive_file


def _fail(message: str) -> int:
    print(f"installation: {message}", file=sys.stderr)
    return 2


def default_folder(config: Path | None) -> Path:
    """The archive folder a config names (``[archive] path``, relative to the config file)."""
    from ..config import DEFAULT_CONFIG, load_config

    path = Path(config) if config else DEFAULT_CONFIG
    folder = Path(load_config(path).archive.path).expanduser()
    return folder if folder.is_absolute() else path.resolve().parent / folder


def _files(arg: Path | None, config: Path | None) -> list[Path]:
    where = Path(arg) if arg else default_folder(config)
    if where.is_dir():
        return sorted(where.glob(f"*{SUFFIX}"))
    if where.is_file():
        return [where]
    raise FileNotFoundError(f"no archive at {where}")


def _mb(path: Path) -> float:
    wal = path.with_name(path.name + "-wal")
    return (path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)) / 1e6


def cmd_archive(args: argparse.Namespace) -> int:
    from ..config import ConfigError

    words = list(args.what)
    text = None
    if args.action == "search" and args.image is None:
        if not words:
            return _fail('archive search: give a text ("a storm at sea") or --image FILE')
        text = words.pop(0)
    if len(words) > 1:
        return _fail(f"{args.action}: unexpected arguments {' '.join(words[1:])}")
    args.archive = Path(words[0]) if words else None
    try:
        files = _files(args.archive, args.config)
        if args.action in ("search", "embed"):
            if len(files) != 1:
                return _fail(f"{args.action}: name one archive file (found {len(files)})")
            return _search(files[0], text, args) if args.action == "search" else _embed(files[0], args)
        if args.action == "ls":
            return _ls(files)
        if len(files) != 1:
            return _fail(f"{args.action}: name one archive file (found {len(files)})")
        store = Store(files[0], readonly=True)
        try:
            return _info(store, args) if args.action == "info" else _export(store, args)
        finally:
            store.close()
    except sqlite3.DatabaseError as e:  # a damaged file found while reading it
        return _fail(f"{files[0] if files else args.archive}: damaged archive ({e})")
    except (FileNotFoundError, KeyError, ValueError, ConfigError) as e:
        return _fail(str(e).strip("'\""))


def vision_settings(config: Path | None) -> Any:
    """The ``[vision]`` settings of a config (the CLIP model that embeds queries), paths resolved."""
    from ..config import DEFAULT_CONFIG, load_config

    path = Path(config) if config else DEFAULT_CONFIG
    return load_config(path).vision.resolved(path.resolve().parent)


def _query(encoder: Any, text: str | None, image: Path | None) -> Any:
    from ..vision.clip import WeightsMissing

    try:
        return encoder.image(image) if image is not None else encoder.text(text)
    except WeightsMissing as e:
        raise ValueError(f"the query needs the CLIP model of [vision]: {e}") from None


def _show_hits(hits: list, what: str, args: argparse.Namespace, figures: dict[str, Any]) -> int:
    from .search import contact_sheet, fmt_time

    if args.json:
        print(json.dumps({**figures, "hits": [h.row() for h in hits]}))
    else:
        for k, h in enumerate(hits, 1):
            if h.kind == "image":
                print(f"{k:>3}. {h.score:.4f}  image {h.id}  {h.name}")
            else:
                print(f"{k:>3}. {h.score:.4f}  session {h.session}  {fmt_time(h.t):>10}  {h.scene}  seed {h.seed}  "
                      f"path {h.tau:.2f}")
        if not hits:
            print("no results: nothing searched has a CLIP embedding")
    if args.out:
        contact_sheet(hits, args.out, what)
        if not args.json:
            print(f"contact sheet: {args.out}")
    return 0


def _recorded_config(path: Path) -> Path | None:
    """The config an archive's newest session was recorded with, when it is still there."""
    from .replay import parse_source

    store = Store(parse_source(path)[0], readonly=True)
    try:
        recorded = Path(store.session()["config"] or "")
    finally:
        store.close()
    return recorded if recorded.suffix == ".toml" and recorded.is_file() else None


def _search(path: Path, text: str | None, args: argparse.Namespace) -> int:
    from .search import QueryEncoder, search_archive

    if args.top < 1:
        return _fail("--top must be at least 1")
    if args.session is not None:  # before the model loads
        store = Store(path, readonly=True)
        try:
            store.session(args.session)
        finally:
            store.close()
    config = args.config or _recorded_config(path)
    query = _query(QueryEncoder(vision_settings(config)), text, args.image)
    hits, counts = search_archive(path, query, k=args.top, session=args.session)
    if counts["missing"] and not args.json:
        print(f"{counts['missing']} of {counts['points']} points have no embedding yet: `installation archive embed "
              f"{path}` computes them", file=sys.stderr)
    what = f"{text!r}" if text is not None else f"like {args.image.name}"
    return _show_hits(hits, f"{path.name}: {what}", args, {"archive": str(path), **counts})


def _embed(path: Path, args: argparse.Namespace) -> int:
    from .embed import embed_archive

    result = embed_archive(path, config=args.config, session=args.session, size=args.size,
                           progress=sys.stderr.isatty())
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{path}: embedded {result['embedded']} of {result['missing']} points without an embedding"
              + (f" ({result['model']}, {result['dim']}-dim, frames at {result['size']})" if result["embedded"]
                 else ""))
    return 0


def _ls(files: list[Path]) -> int:
    damaged = 0
    for f in files:
        try:
            store = Store(f, readonly=True)
            try:
                sessions = store.sessions()
            finally:
                store.close()
        except (ValueError, sqlite3.DatabaseError) as e:  # one damaged file does not hide the others
            damaged += 1
            print(f"{f}  {_mb(f):.2f} MB, unreadable: {str(e).removeprefix(f'{f}: ')}")
            continue
        print(f"{f}  {_mb(f):.2f} MB, {len(sessions)} session{'s' * (len(sessions) != 1)}")
        print(f"  {'session':>7}  {'kind':<6} {'started':<25} {'show s':>9} {'events':>7} {'points':>7}")
        for s in sessions:
            print(f"  {s['id']:>7}  {s['kind']:<6} {s['started']:<25} {s['last_t'] or 0:>9.1f} {s['events']:>7} "
                  f"{s['points']:>7}")
    return 2 if damaged else 0


def _info(store: Store, args: argparse.Namespace) -> int:
    integrity = store.integrity()
    if integrity != "ok":  # before reading it: a damaged file is reported as such, in one line, exit 2
        return _fail(f"{store.path}: integrity check {integrity}")
    sessions = store.sessions() if args.session is None else [s for s in store.sessions() if s["id"] == args.session]
    if not sessions:
        raise KeyError(f"no session {args.session} in {store.path}")
    models: dict[int, list] = {}
    for s in sessions:  # the models that came into play, and the points a live show could not wait to write
        journal = [e for e in store.events(s["id"]) if e["kind"] in ("model", "dropped")]
        models[s["id"]] = [e["value"] for e in journal if e["kind"] == "model"]
        s["points_dropped"] = sum(int(e["value"]["count"]) for e in journal if e["kind"] == "dropped")
        s["embedded"] = store.embedded(s["id"])
    info = {"archive": str(store.path), "mb": round(_mb(store.path), 3), "integrity": integrity,
            "sessions": sessions}
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"{info['archive']}: {info['mb']} MB, integrity {info['integrity']}")
    for s in sessions:
        print(f"session {s['id']} ({s['kind']}): started {s['started']}, ended {s['ended'] or '-'}, "
              f"{s['last_t'] or 0:.1f} s of show time at {s['size']}")
        print(f"  config {s['config']}; scenes {', '.join(s['scenes'] or [])}")
        print(f"  {s['events']} events, {s['points']} points, {s['ticks']} tick times "
              f"({'a --live-ticks replay is exact' if s['ticks'] else 'replays at a steady rate only'})")
        if s["points_dropped"]:
            print(f"  {s['points_dropped']} points dropped: the writer fell behind the live show")
        print(f"  {s['embedded']} of {s['points']} points have a CLIP embedding"
              + (" (`installation archive embed` computes the rest)" if s["embedded"] < s["points"] else ""))
        for m in models[s["id"]]:
            files = "; ".join(f"{k} {v['folder']} sha256 {v['config_sha256'][:12]}" for k, v in m["files"].items())
            print(f"  model {m['type']}" + (f": {files}" if files else ""))
    return 0


def _export(store: Store, args: argparse.Namespace) -> int:
    sid = store.session(args.session)["id"]
    out = open(args.out, "w") if args.out else sys.stdout
    n = 0
    try:
        sess = store.session(sid)
        out.write(json.dumps({"type": "session", **sess}) + "\n")
        for e in store.events(sid):
            out.write(json.dumps({"session": sid, "type": "event", **e}) + "\n")
            n += 1
        if args.points:
            for p in store.points(sid, with_thumbs=False):
                out.write(json.dumps({"session": sid, "type": "point", "t": p.t, "scene": p.scene, "seed": p.seed,
                                      "tau": p.tau, "prompts": p.prompts,
                                      "latent": None if p.latent is None else p.latent.ravel().tolist(),
                                      "clip": None if p.clip is None else p.clip.tolist()}) + "\n")
                n += 1
    finally:
        if out is not sys.stdout:
            out.close()
    if args.out:
        print(f"wrote {n} lines to {args.out}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from ..config import ConfigError
    from ..render.record import RecorderError
    from .replay import Overrides
    from .rerender import render_replay

    if args.record and args.record.suffix == "":
        return _fail("--record needs a file name such as out.mp4")
    try:
        seed, seeds = Overrides.parse_seeds(args.seed)
        result = render_replay(args.archive, args.session, config=args.config, t_from=args.t_from, t_to=args.t_to,
                               size=args.size, fps=args.fps, record=args.record, archive_out=args.archive_out,
                               overrides=Overrides(seed, args.prompt, args.scene, seeds),
                               live_ticks=args.live_ticks)
    except (FileNotFoundError, KeyError, ValueError, ConfigError, RecorderError) as e:
        return _fail(str(e).strip("'\""))
    for key, value in result.items():
        print(f"{key:<18} {value}")
    if args.json:
        print(json.dumps(result))
    return 0


def cmd_map(args: argparse.Namespace) -> int:
    from .maps import draw_map

    from ..config import ConfigError

    try:
        near = None
        if args.near is not None:
            from .search import QueryEncoder

            config = args.config or (None if str(args.archive).endswith(".npz") else _recorded_config(args.archive))
            near = _query(QueryEncoder(vision_settings(config)), args.near, None)
        result = draw_map(args.archive, args.out, session=args.session, html=args.html, size=args.size,
                          method=args.method, near=near, near_text=args.near or "")
    except (FileNotFoundError, KeyError, ValueError, ConfigError) as e:
        return _fail(str(e).strip("'\""))
    for key, value in result.items():
        print(f"{key:<12} {value}")
    return 0


def with_replay(spec: Any, source: str) -> Any:
    """The show spec playing an archived performance live (``run --replay``); ValueError for a bad archive."""
    from .replay import parse_source

    path, sid = parse_source(source)
    store = Store(path, readonly=True)  # FileNotFoundError / ValueError: not an archive
    try:
        store.session(sid)
    finally:
        store.close()
    archive = spec.config.archive.model_copy(update={"replay": f"{path.resolve()}" + (f"#{sid}" if sid else "")})
    spec.config = spec.config.model_copy(update={"archive": archive})
    return spec


def _archive_arguments(a: argparse.ArgumentParser) -> None:
    a.add_argument("action", choices=["ls", "info", "export", "search", "embed"])
    a.add_argument("what", nargs="*", metavar="[TEXT] [ARCHIVE]",
                   help="search: the text; then the archive file or folder (default: the config's [archive])")
    a.add_argument("--session", type=int, help="session id (default: all for info, search and embed; the newest "
                                               "for export)")
    a.add_argument("--out", type=Path, help="export: write to this file instead of stdout; search: a contact "
                                            "sheet (.png, or .html)")
    a.add_argument("--points", action="store_true", help="export: the points too (latents, no thumbnails)")
    a.add_argument("--image", type=Path, help="search: the moments most like this picture instead of a text")
    a.add_argument("--top", type=int, default=20, help="search: how many results (default 20)")
    a.add_argument("--size", type=int, default=224, help="embed: render the frames at this short side (default "
                                                         "224)")
    a.add_argument("--json", action="store_true", help="info, search, embed: print JSON")


def _replay_arguments(r: argparse.ArgumentParser) -> None:
    r.add_argument("archive", type=Path, help="archive file (FILE#SESSION picks a session)")
    r.add_argument("--session", type=int, help="session id (default: the newest)")
    r.add_argument("--from", dest="t_from", type=float, help="record from this show time (s)")
    r.add_argument("--to", dest="t_to", type=float, help="stop at this show time (s)")
    r.add_argument("--size", type=size_arg, help="output size WxH (default: the live size)")
    r.add_argument("--fps", type=int, help="frames per second of show time (default: the show's [output] fps)")
    r.add_argument("--live-ticks", action="store_true",
                   help="step through the live show's own tick times instead: the path to the bit, and frame for "
                        "frame with a live --record, stutter included")
    r.add_argument("--record", type=Path, help="write the replay to this video file")
    r.add_argument("--seed", action="append", metavar="[SCENE=]SEED",
                   help="walk every scene from this seed instead, or with SCENE=SEED that scene (repeatable); a "
                        "recorded seed jump is shifted as its scene's start was")
    r.add_argument("--prompt", help="this prompt instead of every prompt of the performance")
    r.add_argument("--scene", help="play this scene throughout (scene changes are left out)")
    r.add_argument("--archive-out", type=Path, help="keep the replay's own archive in this folder")
    r.add_argument("--json", action="store_true", help="also print the figures as one JSON line")


def _map_arguments(m: argparse.ArgumentParser) -> None:
    m.add_argument("archive", type=Path, help="archive file")
    m.add_argument("--session", type=int, help="one session (default: all)")
    m.add_argument("--out", type=Path, required=True, help="PNG to write")
    m.add_argument("--html", type=Path, help="also write a zoomable page with thumbnails on hover")
    m.add_argument("--size", type=size_arg, default="1600x1000", help="image size WxH (default 1600x1000)")
    m.add_argument("--method", choices=["auto", "umap", "pca"], default="auto")
    m.add_argument("--near", metavar="TEXT", help="shade each point by its CLIP similarity to TEXT (the [vision] "
                                                 "model; the best matches ringed and numbered)")
    m.add_argument("--config", type=Path, default=None, help="--near: the config whose [vision] model embeds "
                                                            "TEXT (default: the one the archive was recorded with)")


command("archive", help="list, describe, export, search and embed the show's archive",
        usage="%(prog)s {ls,info,export,embed} [ARCHIVE] | search TEXT [ARCHIVE] | search --image FILE [ARCHIVE]",
        description="ls: sessions, their show time, counts and sizes; info: one file in detail (models, integrity, "
                    "embeddings); export: a session's event log as JSONL; search: the moments most like a text or a "
                    "picture (CLIP, the [vision] model); embed: CLIP embeddings for points recorded without them, by "
                    "replaying them.",
        arguments=_archive_arguments, run=cmd_archive)
command("replay", help="re-render an archived performance offline",
        description="Re-render a stretch of an archived session through the fixed-step clock: the same events at "
                    "the same show times, at a steady frame rate along show time (or the live show's own tick "
                    "times, stutter included, with --live-ticks). Overrides make a counterfactual.",
        arguments=_replay_arguments, run=cmd_replay)
command("map", help="draw a map of the space the show has walked",
        description="Project the archived points to 2-D (UMAP when umap-learn is installed, PCA otherwise; CLIP "
                    "embeddings where every point has one, latents otherwise) and draw thumbnails, the path in time "
                    "and the scenes.",
        arguments=_map_arguments, run=cmd_map, common=False)  # its --config is --near's only


__all__ = ["archive_file", "cmd_archive", "cmd_map", "cmd_replay", "default_folder", "with_replay"]
