"""Mesa's environment (issue 23): llvmpipe rasterises on the drawing thread (``LP_NUM_THREADS=0``) in the show's
process and in every child it starts, set before any GL context exists; a user's own value is kept.

The evidence is what Mesa did, not what a variable says: llvmpipe names its rasteriser threads ``llvmpipe-N``, so a
process whose GL context was made with worker threads has them in ``/proc/<pid>/task/*/comm``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from installation.render.glenv import GL_ENV, prepare_gl_env
from support import ROOT, scene_toml, wait_until, write_show


def test_sets_zero_where_unset_or_empty_and_keeps_the_users_value():
    env: dict[str, str] = {}
    assert prepare_gl_env(env) == {"LP_NUM_THREADS": "0"} and env == {"LP_NUM_THREADS": "0"}
    env = {"LP_NUM_THREADS": " "}  # Mesa reads an empty value as its default (worker threads)
    assert prepare_gl_env(env)["LP_NUM_THREADS"] == "0"
    env = {"LP_NUM_THREADS": "3", "OTHER": "x"}
    assert prepare_gl_env(env) == {"LP_NUM_THREADS": "3"} and env == {"LP_NUM_THREADS": "3", "OTHER": "x"}
    assert GL_ENV == {"LP_NUM_THREADS": "0"}


def _llvmpipe_threads(pid: int | str = "self") -> list[str]:
    names = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            names.append(Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip())
        except OSError:
            continue  # a thread that ended meanwhile
    return sorted(n for n in names if n.startswith("llvmpipe-"))


def _env_without_lp(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "LP_NUM_THREADS"}
    env.update(PYTHONPATH=str(ROOT), **extra)
    return env


TARGET_THREADS = """
import os, sys
from installation.render.targets import HeadlessTarget
t = HeadlessTarget((64, 36))
names = [open(f"/proc/self/task/{x}/comm").read().strip() for x in os.listdir("/proc/self/task")]
print(os.environ.get("LP_NUM_THREADS"), sorted(n for n in names if n.startswith("llvmpipe-")))
t.close()
"""


def test_a_headless_target_rasterises_on_the_drawing_thread_unless_the_user_says_otherwise():
    """A fresh process (Mesa reads the variable once per process): no llvmpipe worker thread by default; the number
    the user asked for when they set one. Before the fix the first run had one worker (``llvmpipe-0``)."""
    out = subprocess.run([sys.executable, "-c", TARGET_THREADS], env=_env_without_lp(), capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == "0 []"
    out = subprocess.run([sys.executable, "-c", TARGET_THREADS], env=_env_without_lp(LP_NUM_THREADS="2"),
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == "2 ['llvmpipe-0', 'llvmpipe-1']"


def _children(pid: int) -> list[int]:
    kids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(d))
    return kids


def _decoder_child(pid: int) -> int | None:
    for kid in _children(pid):
        try:
            if b"spawn_main" in Path(f"/proc/{kid}/cmdline").read_bytes():
                return kid
        except OSError:
            continue
    return None


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


def test_the_show_and_its_decoder_process_get_it_before_gl_and_keep_a_users_value(tmp_path):
    """Two real shows (process isolation), one with LP_NUM_THREADS unset and one with the user's 2: the show's GL
    (made before the decoder process is started) has no llvmpipe worker thread, resp. two; the decoder process was
    started with the same value in its environment (what it inherits, whatever it makes with GL)."""
    shows = {}
    for name, extra in (("default", {}), ("user", {"LP_NUM_THREADS": "2"})):
        folder = tmp_path / name
        folder.mkdir()
        cfg = write_show(folder, {"a": scene_toml()}, '[decoder]\nisolation = "process"\n[state]\nenabled = false\n'
                                                      "[archive]\nenabled = false\n")
        log = (folder / "log.txt").open("w")
        proc = subprocess.Popen([sys.executable, "-m", "installation", "run", "--headless", "--duration", "600",
                                 "--config", str(cfg)], stdout=subprocess.DEVNULL, stderr=log, cwd=ROOT,
                                env=_env_without_lp(**extra))
        shows[name] = (proc, folder / "log.txt")
    try:
        seen = {}
        for name, (proc, log) in shows.items():
            # The decoder process starts after the show's GL context exists (cmd_run makes the target first).
            kid = wait_until(lambda: proc.poll() is None and _decoder_child(proc.pid), timeout=300, every=0.2)
            assert kid, f"{name}: no decoder process (exit {proc.poll()}): {log.read_text()[-2000:]}"
            seen[name] = (_llvmpipe_threads(proc.pid), _environ(kid).get("LP_NUM_THREADS"))
        assert seen["default"] == ([], "0")
        assert seen["user"] == (["llvmpipe-0", "llvmpipe-1"], "2")
    finally:
        for proc, _ in shows.values():
            proc.terminate()
        for proc, _ in shows.values():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
