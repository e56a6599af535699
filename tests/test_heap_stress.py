"""scripts/heap_stress.py (issue 23): its supervisor with real workers, cores read by gdb, hangs detected."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from support import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import heap_stress  # noqa: E402


def test_c_mode_runs_workers_with_the_checks_and_counts_their_lives(tmp_path):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "heap_stress.py"), "--mode", "c", "--procs", "1",
                        "--minutes", "0.3", "--c-frames", "40", "--flushes", "2", "--lp-threads", "0",
                        "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["lives"] >= 1 and summary["ends"] == {"exit 0": summary["lives"]}
    assert summary["malloc_check"] and summary["lp_threads"] == "0" and summary["hangs"] == 0
    log = next(out.glob("life-*/log.txt")).read_text()
    assert "frames 40" in log and "llvmpipe" in log


@pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb reads the hung worker")
def test_a_worker_that_stops_using_cpu_is_a_hang_with_its_threads_read_and_a_core(tmp_path, monkeypatch):
    """A real process that waits forever (sleep) stands for a worker whose threads all wait."""
    monkeypatch.setattr(heap_stress, "worker_cmd", lambda args, index, life: ["sleep", "120"])
    monkeypatch.setattr(heap_stress, "build_c", lambda out: None)
    out = tmp_path / "run"
    code = heap_stress.main(["--mode", "c", "--procs", "1", "--minutes", "0.2", "--hang-s", "3",
                             "--out", str(out)])
    summary = json.loads((out / "summary.json").read_text())
    assert code == 1 and summary["hangs"] >= 1 and set(summary["ends"]) == {"hang"}
    life = out / "life-0001-w0"
    assert "Thread 1" in (life / "hang.txt").read_text()  # gdb read its threads while it hung
    assert (life / "bt.txt").exists()  # and the SIGABRT's core was read too


@pytest.mark.skipif(not __import__("os").path.exists(heap_stress.ASAN), reason="gcc's libasan is not installed")
def test_asan_workers_leave_a_report_that_the_summary_counts(tmp_path, monkeypatch):
    """--asan preloads AddressSanitizer into the workers: a real double free in a worker (through libc, as a native
    library would do it) is reported in its life's folder and counted, and the run fails."""
    code = ("import ctypes; libc = ctypes.CDLL(None); libc.malloc.restype = ctypes.c_void_p; "
            "libc.free.argtypes = [ctypes.c_void_p]; b = libc.malloc(4096); libc.free(b); libc.free(b)")
    monkeypatch.setattr(heap_stress, "worker_cmd", lambda args, index, life: [sys.executable, "-c", code])
    monkeypatch.setattr(heap_stress, "build_c", lambda out: None)
    out = tmp_path / "run"
    assert heap_stress.main(["--mode", "c", "--procs", "1", "--minutes", "0.15", "--asan", "--out", str(out)]) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["asan"] and not summary["malloc_check"]
    assert summary["asan_reports"] >= 1 and summary["asan_reports"] == summary["lives"]
    report = next(out.glob("life-*/asan.*")).read_text()
    assert "attempting double-free" in report


def test_a_show_that_has_ended_is_not_a_hang_while_its_wrapper_finishes(tmp_path, monkeypatch):
    """The watched show's pid is gone while the wrapper still runs (its watcher's last fetch): not a hang, and the
    life ends as the wrapper does. Before, a gone pid read as no CPU used, the hang check tried to abort it, and the
    ProcessLookupError ended that worker slot for the rest of the run (an --asan run did so after 48 minutes)."""
    script = "sleep 0 & echo $! > show.pid; wait; sleep 5"
    monkeypatch.setattr(heap_stress, "worker_cmd", lambda args, index, life: ["sh", "-c", script])
    out = tmp_path / "run"
    assert heap_stress.main(["--mode", "show", "--procs", "1", "--minutes", "0.15", "--hang-s", "2", "--hup-s", "1",
                             "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["lives"] >= 1 and summary["hangs"] == 0 and summary["ends"] == {"exit 0": summary["lives"]}
