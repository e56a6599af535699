"""The prompt audit log: append-only JSONL by a writer thread, rotated by size, valid after a kill -9 mid-write."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

from installation.vision.audit import AuditLog
from support import ROOT, wait_until


def _lines(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_records_are_appended_and_rotated_by_size(tmp_path):
    path = tmp_path / "logs" / "audit.jsonl"
    audit = AuditLog(path, max_bytes=2000, backups=2)
    audit.start()
    for i in range(100):
        assert audit.write({"id": i, "text": "ünïcode prompt " + "x" * 40})
    audit.stop()
    audit.stop()
    files = [path, path.with_name("audit.jsonl.1"), path.with_name("audit.jsonl.2")]
    assert all(f.exists() for f in files) and not path.with_name("audit.jsonl.3").exists()
    assert all(f.stat().st_size <= 2000 for f in files)
    kept = _lines(files[2]) + _lines(files[1]) + _lines(files[0])
    ids = [r["id"] for r in kept]
    assert ids == list(range(ids[0], 100))  # the newest, in order, nothing lost within the kept files
    assert audit.stats()["written"] == 100 and audit.stats()["dropped"] == 0
    assert not audit.write({"id": "late"})  # stopped: refused and counted, never raised
    assert audit.dropped == 1


def test_the_writer_thread_comes_back_after_a_fault_in_its_loop(tmp_path):
    audit = AuditLog(tmp_path / "audit.jsonl")
    audit.start()
    try:
        assert audit.write({"id": 1}) and wait_until(lambda: audit.written == 1, 10)
        assert audit._thread.inject()  # raised when the idle writer next wakes
        audit.write({"id": 2})  # wakes it: that run ends (this record may be lost with it)
        assert wait_until(lambda: audit._thread.restarts == 1, 10)
        assert audit.write({"id": 3}) and wait_until(lambda: 3 in [r["id"] for r in _lines(audit.path)], 10)
    finally:
        audit.stop()


def test_a_process_killed_mid_write_leaves_valid_jsonl(tmp_path):
    path = tmp_path / "audit.jsonl"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from installation.vision.audit import AuditLog
        audit = AuditLog({str(path)!r}, max_bytes=1 << 30, queue_size=100000)
        audit.start()
        i = 0
        while True:
            i += 1
            if not audit.write({{"id": i, "text": "prompt %d " % i + "y" * (i % 300)}}):
                import time; time.sleep(0.001)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        assert wait_until(lambda: path.exists() and path.stat().st_size > 200_000, timeout=60)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    data = path.read_bytes()
    assert data.endswith(b"\n")  # no half record at the end
    records = [json.loads(line) for line in data.decode("utf-8").splitlines()]
    assert [r["id"] for r in records] == list(range(1, len(records) + 1))
    # the writer can carry on appending to it after a restart
    audit = AuditLog(path)
    audit.start()
    audit.write({"id": len(records) + 1})
    audit.stop()
    assert _lines(path)[-1]["id"] == len(records) + 1
