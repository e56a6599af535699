"""Show state on real files: atomic save, resume, corrupt/truncated/old files set aside or migrated."""

from __future__ import annotations

import json
import logging
import os

import pytest
from pydantic import ValidationError

from installation.ops.state import (STATE_VERSION, StateKeeper, StateSettings, check_show_state, load_state,
                                    save_state)

STATE = {"scene": "aurora", "position": 2, "scene_time": 12.5, "tau": 40.25, "seed": 7,
         "prompts": [["a quiet sea", 1.0]], "params": {"speed": 0.8, "radius": 0.5}}


def test_save_then_load_round_trip(tmp_path):
    path = tmp_path / "state" / "show.json"
    written = save_state(path, STATE, wall=lambda: 1_700_000_000.0)
    assert written["version"] == STATE_VERSION and written["saved_at"] == 1_700_000_000.0
    got = load_state(path, STATE_VERSION)
    assert got == {**STATE, "version": STATE_VERSION, "saved_at": 1_700_000_000.0}
    assert not list(path.parent.glob(".*.tmp"))  # no temporary file left behind


def test_missing_file_is_none(tmp_path):
    assert load_state(tmp_path / "nope.json", STATE_VERSION) is None


def test_failed_write_leaves_previous_file_intact(tmp_path):
    path = tmp_path / "show.json"
    save_state(path, STATE)
    before = path.read_bytes()
    with pytest.raises(TypeError):
        save_state(path, {**STATE, "params": {"speed": object()}})
    with pytest.raises(ValueError):
        save_state(path, {**STATE, "tau": float("nan")})  # NaN is not JSON; refused instead of written
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["show.json"]


def test_replace_is_a_rename_not_an_overwrite(tmp_path):
    """A reader holding the old file keeps seeing the old content: the new file is a new inode renamed over it."""
    path = tmp_path / "show.json"
    save_state(path, STATE)
    old_inode = path.stat().st_ino
    with path.open() as held:
        save_state(path, {**STATE, "tau": 99.0})
        assert json.load(held)["tau"] == 40.25
    assert path.stat().st_ino != old_inode
    assert load_state(path)["tau"] == 99.0


@pytest.mark.parametrize("content, why", [
    (b"", "not valid JSON"),
    (b'{"scene": "aurora", "position": 2, "sce', "not valid JSON"),  # truncated by a power cut
    (b"\xff\xfe\x00garbage", "not UTF-8 text"),
    (b"[" * 100000, "nested more than 16 levels"),
    (b'{"version": 1, "tau": 1e400}', "too large"),
    (b"[1, 2, 3]", "expected a JSON object"),
    (b'{"scene": "aurora"}', "no usable 'version'"),
    (b'{"version": 1, "tau": "fast"}', "'tau'"),
    (b'{"version": 1, "prompts": [["x"]]}', "'prompts'"),
])
def test_corrupt_file_is_set_aside(tmp_path, caplog, content, why):
    path = tmp_path / "show.json"
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="installation.ops.state"):
        assert load_state(path, STATE_VERSION, wall=lambda: 0.0) is None
    assert not path.exists()
    aside = tmp_path / "show.json.corrupt-19700101T000000Z"
    assert aside.read_bytes() == content  # kept for inspection
    assert why in caplog.text and "moved it to show.json.corrupt-19700101T000000Z" in caplog.text
    # A second corrupt file in the same second does not overwrite the first one set aside.
    path.write_bytes(b"{")
    assert load_state(path, STATE_VERSION, wall=lambda: 0.0) is None
    assert (tmp_path / "show.json.corrupt-19700101T000000Z-2").read_bytes() == b"{"


def test_oversized_file_is_set_aside(tmp_path):
    path = tmp_path / "show.json"
    path.write_bytes(b'{"version": 1, "x": "' + b"a" * (1 << 20) + b'"}')
    assert load_state(path) is None
    assert not path.exists() and len(list(tmp_path.glob("show.json.corrupt-*"))) == 1


def test_older_version_is_migrated(tmp_path, caplog):
    path = tmp_path / "show.json"
    save_state(path, {"scene": "tide", "t": 3.0}, version=1)

    def one_to_two(s):
        s["scene_time"] = s.pop("t")
        return s

    def two_to_three(s):
        s["seed"] = 0
        return s

    with caplog.at_level(logging.INFO, logger="installation.ops.state"):
        got = load_state(path, 3, {1: one_to_two, 2: two_to_three})
    assert got["version"] == 3 and got["scene_time"] == 3.0 and got["seed"] == 0 and "t" not in got
    assert "migrated state file" in caplog.text


def test_older_version_without_migration_is_ignored(tmp_path, caplog):
    path = tmp_path / "show.json"
    save_state(path, STATE, version=1)
    with caplog.at_level(logging.WARNING, logger="installation.ops.state"):
        assert load_state(path, 2, {}) is None
    assert "no migration to 2" in caplog.text
    assert path.exists()  # not corrupt, just old: left in place (the next save replaces it)


def test_failing_migration_and_newer_version_are_ignored(tmp_path, caplog):
    path = tmp_path / "show.json"
    save_state(path, STATE, version=1)
    with caplog.at_level(logging.WARNING, logger="installation.ops.state"):
        assert load_state(path, 2, {1: lambda s: s["missing"]}) is None
        assert load_state(path, 0) is None
    assert "migrating state file" in caplog.text and "newer version" in caplog.text


def test_stale_temp_files_are_removed_on_load(tmp_path):
    path = tmp_path / "show.json"
    save_state(path, STATE)
    stale = tmp_path / ".show.json.abc123.tmp"
    stale.write_bytes(b'{"half')
    assert load_state(path)["scene"] == "aurora"
    assert not stale.exists()


def test_check_show_state():
    assert check_show_state(STATE) is None
    assert check_show_state({}) is None
    assert "position" in check_show_state({"position": True})
    assert "params" in check_show_state({"params": {"speed": float("inf")}})
    assert "seed" in check_show_state({"seed": -1})


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_keeper_saves_on_interval(tmp_path):
    clock = FakeClock()
    keeper = StateKeeper(StateSettings(path="state/show.json", interval_s=5.0), clock, base_dir=tmp_path)
    assert keeper.path == tmp_path / "state" / "show.json"
    assert keeper.load() is None
    calls = []

    def state_fn():
        calls.append(clock.t)
        return {**STATE, "scene_time": clock.t}

    assert keeper.maybe_save(state_fn)  # the first call saves at once
    clock.t += 4.9
    assert not keeper.maybe_save(state_fn)
    clock.t += 0.1
    assert keeper.maybe_save(state_fn)
    assert calls == [100.0, 105.0]  # state_fn is only called when a save is due
    assert keeper.load()["scene_time"] == 105.0
    assert keeper.save_now({**STATE, "scene_time": 106.0})
    assert keeper.load()["scene_time"] == 106.0
    assert keeper.stats() == {"saves": 3, "frames_saved": 0, "failures": 0, "last_error": "", "degraded": ""}


def test_keeper_never_raises(tmp_path, caplog):
    clock = FakeClock()
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    # The state folder is a regular file: mkdir fails with an OSError, even as root.
    keeper = StateKeeper(StateSettings(path=str(blocker / "show.json")), clock)
    with caplog.at_level(logging.DEBUG, logger="installation.ops.state"):
        assert not keeper.maybe_save(lambda: STATE)
        clock.t += 10
        assert not keeper.maybe_save(lambda: STATE)
        clock.t += 10
        assert not keeper.maybe_save(lambda: 1 / 0)  # the state callable failing is counted too
        assert not keeper.save_now({"x": object()})
    assert keeper.failures == 4 and "TypeError" in keeper.last_error
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # one warning per run of failures (then one a minute with a count)
    assert keeper.stats()["degraded"].startswith(f"saving the show state to {blocker / 'show.json'} fails: ")
    good = StateKeeper(StateSettings(path=str(tmp_path / "ok.json")), clock)
    assert good.save_now(STATE)


def test_keeper_disabled(tmp_path):
    keeper = StateKeeper(StateSettings(path=str(tmp_path / "s.json"), enabled=False))
    assert not keeper.maybe_save(lambda: STATE) and not keeper.save_now(STATE)
    assert keeper.load() is None and not (tmp_path / "s.json").exists()


def test_settings_are_strict():
    assert StateSettings() == StateSettings(path="state/show.json", interval_s=5.0, enabled=True)
    with pytest.raises(ValidationError):
        StateSettings(intervall_s=3)
    with pytest.raises(ValidationError):
        StateSettings(interval_s=0)
    s = StateSettings()
    with pytest.raises(ValidationError):
        s.path = "x"  # frozen


def test_save_fsyncs(tmp_path, monkeypatch):
    """The data is fsynced before the rename and the folder after it (order matters for power loss)."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    save_state(tmp_path / "show.json", STATE)
    assert events == ["fsync", "replace", "fsync"]


def test_keeper_background_writes_off_the_calling_thread(tmp_path):
    clock = FakeClock()
    keeper = StateKeeper(StateSettings(path=str(tmp_path / "show.json"), interval_s=5.0), clock)
    assert keeper.maybe_save(lambda: {**STATE, "scene_time": 1.0}, background=True)
    assert keeper.flush(10)
    assert keeper.load()["scene_time"] == 1.0
    clock.t += 5.0
    assert keeper.maybe_save(lambda: {**STATE, "scene_time": 2.0}, background=True)
    assert keeper.flush(10) and keeper.saves == 2
    assert keeper.load()["scene_time"] == 2.0


def test_no_file_descriptors_left_is_a_counted_fault_and_saving_resumes(tmp_path):
    """The fault that stopped state saving for good: with the open-file limit used up, the writer thread's first
    picture imported opencv, which could not open its files; the exception ended the thread, ``saves`` stayed 0
    after the descriptors came back and health said nothing. Now opencv is imported at start, every failure is a
    counted fault that makes the keeper say why it is degraded, and saving resumes by itself. In a process of its
    own: the limit is used up for real, and opencv must not have been imported there yet."""
    script = f"""
import json, os, sys, time
import numpy as np
from installation.ops.state import StateKeeper, StateSettings

assert "cv2" not in sys.modules
keeper = StateKeeper(StateSettings(path={str(tmp_path / "show.json")!r}, interval_s=0.5),
                     state=lambda: {{"scene": "a", "tau": time.monotonic()}})
keeper.start()

def until(pred, what):
    end = time.monotonic() + 60
    while not pred():
        if time.monotonic() > end:
            sys.exit(f"timed out waiting for {{what}}: {{keeper.stats()}}")
        time.sleep(0.01)

fds = []
try:
    while True:  # use up every descriptor the limit allows
        fds.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    pass
keeper.maybe_save(keeper._state, background=True)
keeper.put((np.ones((48, 64, 3), np.uint8) * 128).tobytes(), (64, 48), None)  # a picture goes with it
until(lambda: keeper.failures >= 2, "the state and its picture to fail")
during = keeper.stats()
for fd in fds:
    os.close(fd)
def saved():
    keeper.maybe_save(keeper._state, background=True)  # as the loop does each tick: due every 0.5 s
    return keeper.saves >= 1

until(saved, "a save")
keeper.put((np.ones((48, 64, 3), np.uint8) * 128).tobytes(), (64, 48), None)
until(lambda: keeper.frames_saved >= 1, "the picture")
print(json.dumps({{"during": during, "after": keeper.stats(), "writer": keeper._writer.is_alive()}}))
"""
    import subprocess
    import sys

    from support import ROOT

    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert "Too many open files" in out["during"]["last_error"], out
    assert out["during"]["degraded"].startswith("saving the show state to "), out
    assert out["after"]["saves"] >= 1 and out["after"]["frames_saved"] >= 1 and out["after"]["degraded"] == ""
    assert out["writer"] and "Exception in thread" not in r.stderr and "Traceback" not in r.stderr


def test_a_writer_stuck_on_the_disk_is_reported_as_stalled(tmp_path):
    clock = FakeClock()
    keeper = StateKeeper(StateSettings(path=str(tmp_path / "show.json"), interval_s=5.0), clock)
    with keeper._lock:  # the writer blocks in its save as it would on a hung disk
        assert keeper.maybe_save(lambda: STATE, background=True)
        clock.t += 15.0
        assert keeper.trouble() == ""  # three intervals: not yet
        clock.t += 1.0
        assert keeper.maybe_save(lambda: STATE, background=True)  # handed over again: latest wins
        assert keeper.trouble() == f"no show state written to {tmp_path / 'show.json'} for 16 s"
    assert keeper.flush(10) and keeper.saves >= 1 and keeper.trouble() == ""
