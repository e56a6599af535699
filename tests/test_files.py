"""Every file the show reads at start or reload, fed generated bad inputs (issue 25): truncations, deep nesting, wrong
types, huge numbers, NaN, invalid UTF-8, an empty file, flipped bytes. Each must end as the one-line error that
stops a start (exit 2) or be set aside with one warning; never a traceback, never exit 1.

Most cases call the loaders in this process (hundreds of files in seconds); a few run the real command line."""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from installation import files
from installation.archive.commands import cmd_archive
from installation.archive.store import CorruptArchive, Store
from installation.bus import ParamBus, ParamSpec
from installation.config import ConfigError, load_show
from installation.inputs.midi import MidiInput, MidiSettings, midi_specs
from installation.ops.state import load_state, save_state
from installation.spaces.space import load_space, space_meta
from support import ROOT, run_cli, scene_toml, write_show

DEEP = 5000  # far past Python's recursion limit: what ended in RecursionError before


def mutations(good: bytes, seed: int = 25) -> dict[str, bytes]:
    """Bad versions of a good file: generated, deterministic (a fixed seed)."""
    rng = random.Random(seed)
    text = good.decode("utf-8", "replace")
    out = {"empty": b"", "whitespace": b"\n  \n", "nul": b"\0" * 64, "utf8-bom-garbage": b"\xef\xbb\xbf\xff\xfe"}
    for frac in (0.1, 0.33, 0.5, 0.9, 0.99):
        out[f"truncated-{frac}"] = good[:max(1, int(len(good) * frac))]
    out["invalid-utf8-start"] = b"\xff" + good
    out["invalid-utf8-middle"] = good[:len(good) // 2] + b"\xc3\x28" + good[len(good) // 2:]
    for i in range(6):
        b = bytearray(good)
        for _ in range(3):
            b[rng.randrange(len(b))] = rng.randrange(256)
        out[f"flipped-{i}"] = bytes(b)
    # Values swapped for others of the wrong kind, a huge number, NaN, deep nesting: wherever a number or a
    # string stands, one at a time (the first few of each).
    import re

    numbers = [m for m in re.finditer(r"(?<![\w.\"])-?\d+(\.\d+)?(?![\w.\"])", text)][:4]
    strings = [m for m in re.finditer(r'"[^"\n]*"', text)][:4]
    for label, matches in (("number", numbers), ("string", strings)):
        for i, m in enumerate(matches):
            for kind, value in (("list", "[1]"), ("object", "{}" if good.lstrip()[:1] in (b"{", b"[") else "{ }"),
                                ("string", '"abc"'), ("bool", "true"), ("huge", "1e400"), ("digits", "9" * 5000),
                                ("nan", "NaN" if good.lstrip()[:1] in (b"{", b"[") else "nan"),
                                ("deep", "[" * DEEP + "]" * DEEP), ("deep-33", "[" * 33 + "]" * 33),
                                ("negative", "-1"), ("null", "null")):
                out[f"{label}{i}-{kind}"] = (text[:m.start()] + value + text[m.end():]).encode()
    out["deep-prefix"] = b"[" * DEEP + good
    return out


def one_line(e: BaseException, path: Path) -> None:
    msg = str(e)
    assert "\n" not in msg and str(path) in msg, msg


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# -- config, scenes, shader headers: a ConfigError of one line (exit 2), or a show that loads ------------------------

@pytest.fixture(scope="module")
def show_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("show")
    shutil.copytree(ROOT / "shaders", d / "shaders")
    cfg = write_show(d, {"a": scene_toml(shaders='["present", "grade"]'), "b": scene_toml()})
    cfg.write_text(cfg.read_text().replace(f'shaders_dir = "{ROOT / "shaders"}"', 'shaders_dir = "shaders"'))
    return d


def _loads_or_config_error(cfg: Path, bad: Path) -> str:
    try:
        load_show(cfg)
    except ConfigError as e:
        one_line(e, bad)
        return "refused"
    return "loaded"


@pytest.mark.parametrize("which", ["config", "scene", "shader"])
def test_config_scene_and_shader_files_are_a_one_line_error_or_load(show_dir, which, tmp_path):
    d = tmp_path / "show"
    shutil.copytree(show_dir, d)
    cfg = d / "show.toml"
    target = {"config": cfg, "scene": d / "scenes" / "a.toml", "shader": d / "shaders" / "grade.frag"}[which]
    good = target.read_bytes()
    seen = {"refused": 0, "loaded": 0}
    for name, content in mutations(good).items():
        target.write_bytes(content)
        try:
            seen[_loads_or_config_error(cfg, target)] += 1
        except Exception as e:  # noqa: BLE001 - what the test is for: the case and what escaped
            raise AssertionError(f"{which} {name}: {type(e).__name__}: {e}"[:500]) from None
    assert seen["refused"] >= 20, seen  # most of them are refused; a flipped comment byte may still load


# -- calibration: ignored whole with one warning, never half-applied -----------------------------------------------

TWO = ('[canvas]\nsize = "128x48"\n'
       '[[outputs]]\nname = "left"\nregion = [0, 0, 72, 48]\nsize = "64x48"\nblend = { right = 0.12 }\n'
       '[[outputs]]\nname = "right"\nregion = [56, 0, 72, 48]\nsize = "64x48"\nblend = { left = 0.12 }\n'
       'mesh = { cols = 2, rows = 2 }\n')


def test_calibration_files_are_ignored_whole_with_one_warning(gl_ctx, tmp_path, caplog):
    from installation.render.calibration import Calibration, calibration_path
    from installation.render.projection import Projection, canvas_size, place, window_size

    cfg = load_show(write_show(tmp_path, {"a": scene_toml()}, extra=TWO)).config
    size, _ = window_size(cfg)
    colour = gl_ctx.texture(size, 3)
    fbo = gl_ctx.framebuffer(color_attachments=[colour])
    proj = Projection(gl_ctx, fbo, size, canvas_size(cfg), place(cfg), ROOT)
    path = calibration_path(tmp_path / "show.toml")
    config_warps = [w.copy() for w in proj.warps]
    try:
        saved = {"version": 1, "saved_at": 0.0, **Calibration(proj, None).snapshot()}  # as the show writes it
        saved["outputs"][0]["corners"] = [[0.1, 0.1], [0.9, 0.0], [1.0, 1.0], [0.0, 1.0]]
        good = json.dumps(saved, indent=1).encode()
        path.write_bytes(good)
        assert Calibration(proj, path).load()  # the good file is a good file
        applied = 0
        for name, content in mutations(good).items():
            for out, w in zip(proj.outputs, config_warps):
                out.warp = w.copy()
            path.write_bytes(content)
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="installation"):
                try:
                    ok = Calibration(proj, path).load()
                except Exception as e:  # noqa: BLE001
                    raise AssertionError(f"calibration {name}: {type(e).__name__}: {e}"[:500]) from None
            if ok:
                applied += 1
                continue
            warnings = _warnings(caplog)
            assert len(warnings) == 1 and str(path) in warnings[0] and "\n" not in warnings[0], (name, warnings)
            assert [w.corners for w in proj.warps] == [w.corners for w in config_warps], name  # none of it applied
            assert path.read_bytes() == content  # left for the technician, overwritten only by the next save
        assert applied <= 12
    finally:
        proj.release()
        fbo.release()
        colour.release()


# -- MIDI learn, state: set aside (.corrupt-<time>) with one warning -------------------------------------------------

def test_midi_learn_files_are_set_aside_or_trimmed_with_one_warning(tmp_path, caplog):
    settings = MidiSettings(enabled=True)
    bus = ParamBus([ParamSpec("speed", max=10.0), *midi_specs(settings)])
    good = json.dumps({"bindings": {"speed": {"kind": "cc", "channel": 1, "number": 7},
                                    "midi.cc.1.7": {"kind": "cc14", "channel": 2, "number": 1}}}, indent=1).encode()
    path = tmp_path / "midi-learn.json"
    for n, (name, content) in enumerate(mutations(good).items()):
        folder = tmp_path / str(n)
        folder.mkdir()
        path = folder / "midi-learn.json"
        path.write_bytes(content)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="installation"):
            try:
                midi = MidiInput(settings, bus, folder)
            except Exception as e:  # noqa: BLE001
                raise AssertionError(f"learn {name}: {type(e).__name__}: {e}"[:500]) from None
        warnings = _warnings(caplog)
        assert len(warnings) <= 1 and all(str(path) in w and "\n" not in w for w in warnings), (name, warnings)
        aside = list(folder.glob("midi-learn.json.corrupt-*"))
        assert len(aside) == (0 if path.exists() else 1), name
        assert all(b["kind"] in ("cc", "cc14", "bend", "note") and 1 <= b["channel"] <= 16 and
                   0 <= b["number"] <= 127 for b in midi.bindings.values()), (name, midi.bindings)
        assert bool(warnings) or midi.bindings == {"speed": {"kind": "cc", "channel": 1, "number": 7},
                                                   "midi.cc.1.7": {"kind": "cc14", "channel": 2, "number": 1}}, name


def test_state_files_are_set_aside_with_one_warning_or_load(tmp_path, caplog):
    good_path = tmp_path / "good.json"
    save_state(good_path, {"scene": "a", "position": 1, "scene_time": 2.5, "tau": 3.0, "seed": 7,
                           "prompts": [["a sea", 1.0]], "params": {"speed": 1.0},
                           "show": {"config": "show.toml", "scenes": ["a", "b"]}}, wall=lambda: 0.0)
    good = json.dumps(json.loads(good_path.read_bytes()), indent=1).encode()
    for n, (name, content) in enumerate(mutations(good).items()):
        path = tmp_path / f"show{n}.json"
        path.write_bytes(content)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="installation"):
            try:
                state = load_state(path)
            except Exception as e:  # noqa: BLE001
                raise AssertionError(f"state {name}: {type(e).__name__}: {e}"[:500]) from None
        warnings = _warnings(caplog)
        if state is not None:
            assert isinstance(state, dict) and not warnings, name
            continue
        assert len(warnings) == 1 and "\n" not in warnings[0], (name, warnings)


# -- the archive: a damaged file is refused in one line (set aside by the show: tests/archive) ---------------------

def test_archive_files_are_one_line_errors(tmp_path, capsys):
    good_path = tmp_path / "good.sqlite"
    store = Store(good_path)
    sid = store.new_session("2026-01-01T00:00:00+00:00", "show.toml", ["a"], (64, 40), {"scene": "a"})
    for i in range(20):
        store.write_batch(sid, events=[(i + j / 100, "set", "speed", "1.0", "osc") for j in range(100)],
                          ticks=np.arange(50.0), last_t=float(i))
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    good = good_path.read_bytes()
    rng = random.Random(25)
    cases = {"empty": b"", "header-only": good[:100], "text": b"SQLite format 3\0" + b"x" * 5000}
    for frac in (0.05, 0.3, 0.5, 0.8, 0.999):
        cases[f"truncated-{frac}"] = good[:int(len(good) * frac)]
    for i in range(8):
        b = bytearray(good)
        at = rng.randrange(4096, len(b) - 4096)
        b[at:at + 4096] = bytes(rng.randrange(256) for _ in range(4096))
        cases[f"page-overwritten-{i}"] = bytes(b)
    cases["header-flipped"] = good[:20] + b"\xff" + good[21:]
    for name, content in cases.items():
        path = tmp_path / f"{name}.sqlite"
        path.write_bytes(content)
        try:
            code = cmd_archive(argparse.Namespace(action="info", what=[str(path)], config=None, session=None, json=False))
            try:
                Store(path).close()
            except (CorruptArchive, ValueError) as e:  # what the show's archive part sets aside
                one_line(e, path)
        except Exception as e:  # noqa: BLE001
            raise AssertionError(f"archive {name}: {type(e).__name__}: {e}"[:500]) from None
        err = capsys.readouterr().err
        assert code in (0, 2), name
        if code == 2:
            assert err.count("\n") == 1 and str(path) in err, (name, err)


# -- space files: one ValueError line (a scene that names one is exit 2) ----------------------------------------------

def test_space_files_are_one_line_errors(tmp_path):
    good_path = tmp_path / "good.npz"
    meta = {"latent_shape": [4, 8, 8], "images": 2, "skipped": 0, "model": "x"}
    np.savez_compressed(good_path, latents=np.zeros((2, 4, 8, 8), np.float32), embeddings=np.zeros((2, 16), np.float32),
                        thumbnails=np.zeros((2, 8, 8, 3), np.uint8), names=np.array(["a", "b"]),
                        skipped=np.zeros((0, 2), dtype=str), meta=np.array(json.dumps(meta)))
    assert load_space(good_path).latent_shape == (4, 8, 8)
    good = good_path.read_bytes()
    cases = {f"bytes-{k}": v for k, v in mutations(good).items() if not k.startswith(("number", "string"))}
    for label, value in (("deep", {"latent_shape": json.loads("[" * 40 + "]" * 40)}), ("shape-string", {
            "latent_shape": "4x8x8"}), ("no-shape", {}), ("list", [1]), ("huge", {"latent_shape": [10 ** 30]}),
            ("negative", {"latent_shape": [-4, 8, 8]}), ("bool", {"latent_shape": [True, 8, 8]})):
        p = tmp_path / f"meta-{label}.npz"
        np.savez(p, latents=np.zeros((1, 4, 8, 8), np.float32), embeddings=np.zeros((1, 16), np.float32),
                 thumbnails=np.zeros((1, 8, 8, 3), np.uint8), names=np.array(["a"]),
                 skipped=np.zeros((0, 2), dtype=str), meta=np.array(json.dumps(value)))
        cases[f"meta-{label}"] = p.read_bytes()
    cases["meta-deep-text"] = cases["meta-deep"]
    for name, content in cases.items():
        path = tmp_path / f"{name}.npz"
        path.write_bytes(content)
        for read in (space_meta, load_space):
            try:
                read(path)
            except ValueError as e:
                one_line(e, path)
            except Exception as e:  # noqa: BLE001
                raise AssertionError(f"space {name} {read.__name__}: {type(e).__name__}: {e}"[:500]) from None


# -- the shared reader -----------------------------------------------------------------------------------------------

def test_the_reader_caps_size_and_depth_and_names_the_file(tmp_path):
    path = tmp_path / "x.json"
    path.write_bytes(b"[" * 100 + b"]" * 100)
    with pytest.raises(files.FileError, match="nested more than 32 levels"):
        files.load_json(path)
    assert files.load_json(path, max_depth=100) is not None
    path.write_bytes(b" " * 2000)
    with pytest.raises(files.FileError, match="larger than 1000 bytes") as info:
        files.read_bytes(path, 1000)
    assert str(info.value).startswith(f"{path}: ")
    with pytest.raises(FileNotFoundError):
        files.read_bytes(tmp_path / "none")
    with pytest.raises(files.FileError, match="not a regular file"):
        files.read_bytes(tmp_path)
    for text, why in (("1e400", "too large"), ("NaN", "not allowed"), ("-Infinity", "not allowed"),
                      ("9" * 5000, "not usable JSON")):
        with pytest.raises(files.FileError, match=why):
            files.parse_json(text, path)
    with pytest.raises(files.FileError) as info:
        files.parse_toml("a = nan\n", path)
    assert info.value.key == "a" and str(info.value) == f"{path}: key 'a': must be a finite number (TOML's inf and " \
        "nan are not allowed)"
    assert files.depth({"a": [1, {"b": []}]}) == 4 and files.depth({"a": 1}) == 1 and files.depth(5) == 0


# -- the real command line, a few cases ----------------------------------------------------------------------------

def test_the_command_line_gives_exit_2_and_one_line_for_bad_files(tmp_path):
    cfg = write_show(tmp_path, {"a": scene_toml(), "b": scene_toml()})
    env = {"PYTHONPATH": str(ROOT)}
    (tmp_path / "scenes" / "b.toml").write_text("x = " + "[" * DEEP + "]" * DEEP + "\n")
    r = run_cli("run", "--config", str(cfg), "--headless", "--duration", "1", env=env)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "b.toml" in r.stderr, r.stderr
    assert "nested more than 32 levels" in r.stderr
    (tmp_path / "scenes" / "b.toml").write_text(scene_toml())
    (tmp_path / "scenes" / "c.toml").write_text("")  # not in the play list: `scenes` still refuses it
    r = run_cli("scenes", "--config", str(cfg), env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert [line for line in r.stdout.splitlines() if "INVALID" in line] == [
        f"  INVALID  {tmp_path / 'scenes' / 'c.toml'}: empty: a scene sets at least its [decoder] or [trajectory] "
        "(see scenes/*.toml)"], r.stdout
    cfg.write_bytes(cfg.read_bytes()[:-7] + b"\xff\xfe")
    r = run_cli("params", "--config", str(cfg), env=env)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not UTF-8 text" in r.stderr, r.stderr


def test_a_file_rewritten_while_it_is_read_is_read_again_and_one_that_never_settles_is_refused(tmp_path, monkeypatch):
    """An editor that truncates and rewrites a scene while the show reads it: the read is torn (half the old file),
    the file's size and time change on disk, and the reader reads it again and gets the new file whole. One that is
    rewritten during every read is refused with one line after ``STABLE_TRIES``. The rewrite is real (on disk);
    only its moment is pinned, by doing it from inside the read."""
    path = tmp_path / "scene.toml"
    old, new = b'title = "old"\n' * 40, b'title = "new, longer"\n' * 40
    path.write_bytes(old)
    real_open = open
    rewrites = {"left": 1, "done": 0}

    class TornRead:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def read(self, n=-1):
            data = self.f.read(len(old) // 2)  # the first half, then the editor writes the file anew
            if rewrites["left"] > 0:
                rewrites["left"] -= 1
                rewrites["done"] += 1
                with real_open(path, "wb") as w:
                    w.write(new if rewrites["done"] % 2 else old)
            else:
                data += self.f.read()
            return data

    monkeypatch.setattr(files, "open", lambda p, mode="r", *a, **k: TornRead(real_open(p, mode, *a, **k)),
                        raising=False)
    assert files.read_bytes(path) == new  # torn once, read again whole
    assert rewrites["done"] == 1
    rewrites["left"] = 100  # rewritten during every read
    with pytest.raises(files.FileError) as e:
        files.read_bytes(path)
    assert str(e.value) == (f"{path}: kept changing while it was read ({files.STABLE_TRIES} tries); "
                            "try again when it is written")
    assert rewrites["done"] == 1 + files.STABLE_TRIES
