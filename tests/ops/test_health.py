"""Health endpoint over real HTTP on loopback, memory trends on an injected clock, memory limits from fake trees."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from pydantic import ValidationError

from installation.ops.health import (HealthServer, HealthSettings, MemoryWatch, Trend, eta_to_limit_s,
                                     memory_limit_mb, rss_mb, vram_mb)
from support import ROOT, read_all, wait_until


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture
def server():
    state = {"fail": False, "calls": 0}
    lock = threading.Lock()

    def snapshot():
        with lock:
            state["calls"] += 1
            if state["fail"]:
                raise RuntimeError("decoder stats unavailable")
            return {"status": "ok", "frames_presented": state["calls"], "vram_mb": None, "nan": float("nan")}

    srv = HealthServer(HealthSettings(port=0), snapshot)
    srv.start()
    yield srv, state
    srv.stop()


def test_health_returns_snapshot_json(server):
    srv, state = server
    assert srv.port != 0 and srv.running
    code, body = get(srv.url)
    assert code == 200
    assert body == {"status": "ok", "frames_presented": 1, "vram_mb": None, "nan": None}  # NaN -> null
    code, body = get(srv.url + "?x=1")
    assert code == 200 and body["frames_presented"] == 2  # a fresh snapshot per request


def test_other_paths_are_404(server):
    srv, state = server
    code, body = get(f"http://127.0.0.1:{srv.port}/")
    assert code == 404 and body["error"] == "not found"
    code, _ = get(f"http://127.0.0.1:{srv.port}/health/../etc")
    assert code == 404
    assert state["calls"] == 0  # the snapshot is not taken for other paths


def test_snapshot_error_is_500_and_server_keeps_serving(server):
    srv, state = server
    state["fail"] = True
    code, body = get(srv.url)
    assert code == 500 and body == {"status": "error", "error": "RuntimeError: decoder stats unavailable"}
    state["fail"] = False
    code, body = get(srv.url)
    assert code == 200 and body["status"] == "ok"


def test_head_request(server):
    srv, _ = server
    req = urllib.request.Request(srv.url, method="HEAD")
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 200 and r.headers["Content-Type"] == "application/json" and r.read() == b""


def test_port_taken_names_host_and_port():
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        srv = HealthServer(HealthSettings(port=port), dict)
        with pytest.raises(OSError, match=f"127.0.0.1:{port}"):
            srv.start()
        assert not srv.running
        srv.stop()  # harmless after a failed start


def test_stop_is_idempotent_and_frees_the_port():
    srv = HealthServer(HealthSettings(port=0), lambda: {"ok": True})
    srv.stop()  # before start
    srv.start()
    port = srv.port
    srv.stop()
    srv.stop()
    assert not srv.running
    again = HealthServer(HealthSettings(port=port), lambda: {"ok": True})
    with again:  # the same port can be bound again right away
        assert get(again.url) == (200, {"ok": True})


def test_a_silent_client_does_not_block_others(server):
    srv, _ = server
    with socket.create_connection(("127.0.0.1", srv.port)):  # connects, never sends a request
        assert get(srv.url)[0] == 200


def test_settings():
    assert HealthSettings() == HealthSettings(enabled=True, host="127.0.0.1", port=9080)
    with pytest.raises(ValidationError):
        HealthSettings(port=70000)
    with pytest.raises(ValidationError):
        HealthSettings(bind="0.0.0.0")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_trend_slope_least_squares():
    clock = Clock()
    trend = Trend(window_s=3600, now=clock)
    assert trend.slope_per_hour() is None
    # 100 MiB growing by 12 MiB per hour, with +-1 alternating noise, one sample a minute for 30 minutes.
    for i in range(31):
        assert trend.add(100 + 12 * (i / 60) + (1 if i % 2 else -1))
        clock.t += 60
    assert trend.slope_per_hour() == pytest.approx(12, abs=0.5)


def test_trend_needs_enough_samples_and_span():
    clock = Clock()
    trend = Trend(window_s=3600, now=clock, min_samples=5)
    for _ in range(4):
        trend.add(1.0)
        clock.t += 10
    assert trend.slope_per_hour() is None  # 4 samples
    trend.add(2.0)
    assert trend.slope_per_hour() is None  # 5 samples but only 40 s: too short to extrapolate to hours
    clock.t += 60
    trend.add(2.0)
    assert trend.slope_per_hour() is not None


def test_trend_window_drops_old_samples_and_bounds_memory():
    clock = Clock()
    trend = Trend(window_s=600, now=clock)  # min interval 600 / 720 s
    for i in range(10_000):  # called far more often than needed
        trend.add(5.0 if clock.t < 1300 else 5.0 + (clock.t - 1300) / 3600 * 100)
        clock.t += 0.1
    assert len(trend) <= 721
    # Only the last 600 s count: they grow at 100 per hour; the flat start is out of the window.
    assert trend.slope_per_hour() == pytest.approx(100, rel=0.01)
    assert not trend.add(float("nan")) and not trend.add(None)


def test_eta_to_limit():
    assert eta_to_limit_s(1000, 100, 2000) == pytest.approx(36000)
    assert eta_to_limit_s(1000, 0, 2000) is None
    assert eta_to_limit_s(1000, -5, 2000) is None
    assert eta_to_limit_s(None, 5, 2000) is None
    assert eta_to_limit_s(1000, 5, None) is None
    assert eta_to_limit_s(2500, 5, 2000) == 0.0


def test_memory_watch_report():
    clock = Clock()
    rss = {"v": 500.0}
    watch = MemoryWatch(3600, clock, limit_mb=1500, rss=lambda: rss["v"], vram=lambda: None)
    assert watch.sample()
    assert not watch.sample()  # rate-limited: same instant
    for _ in range(60):
        clock.t += 60
        rss["v"] += 1.0  # 60 MiB per hour
        watch.sample()
    rep = watch.report()
    assert rep["rss_mb"] == 560.0 and rep["rss_mb_per_h"] == pytest.approx(60, abs=0.01)
    assert rep["memory_limit_mb"] == 1500
    assert rep["rss_eta_to_limit_s"] == pytest.approx((1500 - 560) / 60 * 3600, abs=1)
    assert rep["oom_eta_s"] == rep["rss_eta_to_limit_s"]
    assert rep["vram_mb"] is None and rep["vram_mb_per_h"] is None and rep["vram_eta_to_limit_s"] is None
    json.dumps(rep)


def _fake_tree(tmp_path, cgroup_lines, files, meminfo="MemTotal:       16384000 kB\n"):
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text(cgroup_lines)
    (proc / "meminfo").write_text(meminfo)
    root = tmp_path / "cg"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return proc, root


def test_memory_limit_cgroup_v2(tmp_path):
    proc, root = _fake_tree(tmp_path, "0::/system.slice/installation.service\n",
                            {"system.slice/installation.service/memory.max": f"{4 * 2**30}\n",
                             "system.slice/memory.max": "max\n"})
    assert memory_limit_mb(proc, root) == 4096


def test_memory_limit_parent_group_is_tighter(tmp_path):
    proc, root = _fake_tree(tmp_path, "0::/a/b\n", {"a/b/memory.max": "max\n", "a/memory.max": f"{2**30}\n"})
    assert memory_limit_mb(proc, root) == 1024


def test_memory_limit_cgroup_v1_and_unlimited(tmp_path):
    proc, root = _fake_tree(tmp_path, "4:memory:/docker/abc\n",
                            {"memory/memory.limit_in_bytes": "9223372036854771712\n"})
    assert memory_limit_mb(proc, root) == pytest.approx(16000)  # unlimited cgroup: MemTotal
    proc2, root2 = _fake_tree(tmp_path / "x", "4:memory:/docker/abc\n",
                              {"memory/memory.limit_in_bytes": f"{512 * 2**20}\n"})
    assert memory_limit_mb(proc2, root2) == 512


def test_memory_limit_nothing_readable(tmp_path):
    assert memory_limit_mb(tmp_path / "none", tmp_path / "none") is None


def test_memory_on_this_machine():
    limit = memory_limit_mb()
    assert limit is not None and limit > 0
    assert rss_mb() > 1
    v = vram_mb()
    assert v is None or v >= 0


def test_memory_watch_vram_limit_from_the_gpu():
    clock = Clock()
    vram = {"v": 1000.0}
    watch = MemoryWatch(3600, clock, limit_mb=64000, rss=lambda: 100.0, vram=lambda: vram["v"],
                        vram_total=lambda: 8000.0)
    for _ in range(30):
        watch.sample()
        clock.t += 60
        vram["v"] += 10.0  # 600 MiB per hour
    rep = watch.report()
    assert rep["vram_limit_mb"] == 8000 and rep["vram_mb_per_h"] == pytest.approx(600, abs=0.01)
    assert rep["rss_eta_to_limit_s"] is None  # flat RSS: no estimate
    assert rep["oom_eta_s"] == rep["vram_eta_to_limit_s"] == pytest.approx((8000 - 1290) / 600 * 3600, abs=1)


def test_client_hanging_up_is_quiet(server, capfd):
    srv, _ = server
    with socket.create_connection(("127.0.0.1", srv.port)) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        s.shutdown(socket.SHUT_RDWR)
    assert get(srv.url)[0] == 200
    assert "Traceback" not in capfd.readouterr().err


# -- connection cap, whole-request deadline, JSON errors, descriptors -------------------------------------------------

def raw_request(port: int, data: bytes, timeout: float = 10) -> tuple[int, dict]:
    """Send ``data`` on a fresh connection and read the whole answer: (status, JSON body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        return parse_answer(read_all(s))


def parse_answer(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"application/json" in head, raw[:300]
    return int(head.split()[1]), json.loads(body)


@pytest.mark.parametrize("request_bytes, code", [
    (b"BREW /health HTTP/1.0\r\n\r\n", 501),  # unsupported method
    (b"garbage\r\n\r\n", 400),
    (b"GET /health HTTP/9.9\r\n\r\n", 505),
    (b"GET /" + b"x" * 70000 + b" HTTP/1.0\r\n\r\n", 414),
    (b"GET /health HTTP/1.0\r\n" + b"X-A: b\r\n" * 120 + b"\r\n", 431),  # too many headers
])
def test_error_answers_are_json(server, request_bytes, code):
    srv, _ = server
    status, body = raw_request(srv.port, request_bytes)
    assert status == code and body["code"] == code and isinstance(body["error"], str)


def test_a_trickling_request_is_cut_off_at_the_deadline():
    """Slowloris: one byte every 0.2 s, each read well within any per-read timeout; the whole request must fit 1 s."""
    srv = HealthServer(HealthSettings(port=0, request_timeout_s=1.0), lambda: {"status": "ok"})
    with srv:
        request = b"GET /health HTTP/1.0\r\nHost: x\r\nUser-Agent: slow\r\n\r\n"  # 52 bytes: 10 s at this pace
        with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as s:
            t0 = time.monotonic()
            answer = b""
            for byte in request:
                try:
                    s.sendall(bytes([byte]))
                except OSError:  # the server has closed it: fine
                    break
                s.settimeout(0.2)
                try:
                    answer = s.recv(65536)
                except TimeoutError:
                    continue
                break
            s.settimeout(10)
            answer += read_all(s)
            elapsed = time.monotonic() - t0
        assert elapsed < 8, f"the connection was held for {elapsed:.1f} s"
        status, body = parse_answer(answer)
        assert status == 408 and body["code"] == 408
        assert srv.stats()["timed_out"] == 1
        assert get(srv.url)[0] == 200  # and the server goes on


def test_connections_are_capped_and_slow_ones_make_room():
    """More idle connections than the cap: the server holds at most the cap, and /health still answers."""
    srv = HealthServer(HealthSettings(port=0, max_connections=4, request_timeout_s=5.0), lambda: {"status": "ok"})
    threads_before = threading.active_count()
    with srv:
        idle = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(12)]
        try:
            assert wait_until(lambda: srv.stats()["accepted"] >= 12, timeout=10)
            # a newcomer is accepted before the oldest silent one is closed: on a busy machine the count can read
            # cap + 1 for a moment; it settles at the cap, and no thread is left behind for the evicted ones
            assert wait_until(lambda: srv.stats()["open"] <= 4 and srv.stats()["evicted"] == 8, timeout=10), \
                srv.stats()
            assert wait_until(lambda: threading.active_count() - threads_before <= 4 + 1, timeout=10)
            assert srv.stats()["evicted"] == 8  # each newcomer took the place of the oldest one still silent
            assert idle[0].recv(100) == b""  # the first ones were closed
            assert get(srv.url) == (200, {"status": "ok"})  # takes the place of the oldest silent one
            assert srv.stats()["evicted"] == 9 and srv.stats()["open"] <= 4
        finally:
            for s in idle:
                s.close()


def test_busy_answers_503_when_every_slot_is_answering():
    gate = threading.Event()
    answering = []

    def snapshot():
        answering.append(1)
        gate.wait(10)
        return {"status": "ok"}

    srv = HealthServer(HealthSettings(port=0, max_connections=2), snapshot)
    with srv:
        results = []
        workers = [threading.Thread(target=lambda: results.append(get(srv.url))) for _ in range(2)]
        for w in workers:
            w.start()
        try:
            # both requests in their snapshot (an open connection whose request has not come yet is idle: evictable)
            assert wait_until(lambda: srv.stats()["open"] == 2 and len(answering) == 2, timeout=5)
            code, body = get(srv.url)  # both slots are answering (their snapshot waits): no one to evict
            assert code == 503 and body["error"] == "busy"
        finally:
            gate.set()
            for w in workers:
                w.join(10)
        assert results == [(200, {"status": "ok"})] * 2
        assert srv.stats()["refused_busy"] == 1 and srv.stats()["evicted"] == 0


SERVE_WITH_FEW_DESCRIPTORS = r"""
import json, resource, sys, time
from installation.ops.health import HealthServer, HealthSettings
from installation.ops.state import StateKeeper, StateSettings
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))  # the 1024 of a systemd service, scaled down
srv = HealthServer(HealthSettings(port=0, max_connections=16, request_timeout_s=2.0), lambda: {"status": "ok"})
srv.start()
keeper = StateKeeper(StateSettings(path=sys.argv[1]))
print(srv.port, flush=True)
sys.stdin.readline()  # the test's slow clients are connected and trickling
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    keeper.save_now({"scene": "a", "position": 1})
    time.sleep(0.05)
print(json.dumps({"state": keeper.stats(), "http": srv.stats()}), flush=True)
"""


def test_slow_clients_cannot_starve_the_process_of_descriptors(tmp_path):
    """100 slow connections against a process allowed 64 descriptors: state saves and /health keep working."""
    proc = subprocess.Popen([sys.executable, "-c", SERVE_WITH_FEW_DESCRIPTORS, str(tmp_path / "show.json"), "4"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    slow: list[socket.socket] = []
    try:
        port = int(proc.stdout.readline())
        for _ in range(100):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            slow.append(s)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        answers = []
        end = time.monotonic() + 3.5
        while time.monotonic() < end:
            for s in slow:
                try:
                    s.send(b"G")  # one byte now and then: each read is quick, the request never completes
                except OSError:
                    pass
            try:
                answers.append(get(f"http://127.0.0.1:{port}/health")[0])
            except OSError:
                answers.append(None)
            time.sleep(0.3)
        out, _ = proc.communicate(timeout=30)
    finally:
        for s in slow:
            s.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    report = json.loads(out.strip().splitlines()[-1])
    assert report["state"]["failures"] == 0 and report["state"]["saves"] > 10, report
    assert report["http"]["open"] <= 16 and report["http"]["accept_errors"] == 0, report
    assert answers.count(200) >= len(answers) - 1, answers  # slow clients make room for a quick one
