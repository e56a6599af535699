"""The decoder guard, thread and process: faults never reach the slot, and the decoder comes back."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from installation.decoders import DecoderSpec, LatentRequest
from installation.decoders.cppn import CPPNSettings
from installation.decoders.faulty import FaultySettings
from installation.render.process import ProcessWorker, _PipeSlot
from installation.render.slot import Frame, FrameSlot
from installation.render.worker import DecoderGuard, DecoderWorker, to_rgb8
from installation.sizes import SizeT
from support import wait_until

SMALL = dict(resolution=SizeT(32, 20), width=8, depth=2)


def request(spec: DecoderSpec, seq: int, z=None) -> LatentRequest:
    z = np.full(8, 0.1 * seq, np.float32) if z is None else z
    return LatentRequest(z=z, t=seq / 10, seq=seq, decoder=spec)


class Plan:
    """A minimal plan: a fixed decoder, a latent that moves with time."""

    frozen = False
    scene = "test"
    cut = 0

    def __init__(self, spec):
        self.spec = spec

    def request(self, t, seq):
        return LatentRequest(z=np.full(8, np.sin(t), np.float32), t=t, seq=seq, decoder=self.spec)


def test_to_rgb8_checks_shape_and_finiteness():
    assert to_rgb8(np.ones((2, 3, 3), np.float32)).tolist() == [[[255] * 3] * 3] * 2
    with pytest.raises(RuntimeError):
        to_rgb8(np.ones((2, 3), np.float32))
    bad = np.zeros((2, 2, 3), np.float32)
    bad[0, 0, 0] = np.inf
    with pytest.raises(RuntimeError):
        to_rgb8(bad)


@pytest.mark.parametrize("fault,kind", [("raise_every", "exception"), ("nan_every", "nonfinite")])
def test_guard_contains_exceptions_and_nans_and_restarts(fault, kind):
    spec = DecoderSpec("faulty", FaultySettings(**{fault: 4}, **SMALL))
    guard = DecoderGuard(backoff=0.0)
    results = [guard.render(request(spec, i)) for i in range(1, 41)]
    bad = [r is None for r in results]
    assert bad == [i % 4 == 0 for i in range(1, 41)]  # every 4th frame of each fresh decoder
    assert guard.faults[kind] == 10
    # An exception throws the decoder away; a lone NaN frame does not (it is dropped, the model stays loaded).
    assert guard.restarts == (10 if kind == "exception" else 0)
    good = [r for r in results if r is not None]
    assert all(r.dtype == np.uint8 and r.shape == (20, 32, 3) for r in good)
    assert len({r.tobytes() for r in good}) > 5  # the frames move with the latent


def test_repeated_nan_frames_rebuild_the_decoder():
    spec = DecoderSpec("faulty", FaultySettings(nan_every=1, **SMALL))
    guard = DecoderGuard(backoff=0.0)
    assert all(guard.render(request(spec, i)) is None for i in range(1, 7))
    assert guard.faults["nonfinite"] == 6 and guard.restarts >= 1


def test_guard_reports_a_decoder_that_cannot_prepare():
    spec = DecoderSpec("cppn", CPPNSettings(latent_dim=4, **SMALL))
    guard = DecoderGuard(backoff=0.0)
    assert guard.render(request(spec, 1)) is None  # z of the wrong size: a render fault, not a crash
    assert guard.faults["exception"] == 1
    assert guard.render(request(spec, 2, z=np.zeros(4, np.float32))) is not None


def test_thread_worker_publishes_frames():
    slot = FrameSlot()
    worker = DecoderWorker(DecoderGuard(), slot, time.monotonic, max_fps=100)
    worker.submit(Plan(DecoderSpec("cppn", CPPNSettings(**SMALL))))
    worker.start()
    try:
        first = slot.wait_newer(-1, 30)
        assert first is not None
        second = slot.wait_newer(first.seq, 10)
        assert second is not None and second.seq > first.seq
    finally:
        worker.stop()
    assert not worker.alive


def test_the_decoder_thread_comes_back_after_a_fault_in_its_loop():
    slot = FrameSlot()
    worker = DecoderWorker(DecoderGuard(), slot, time.monotonic, max_fps=100)
    worker.submit(Plan(DecoderSpec("cppn", CPPNSettings(**SMALL))))
    worker.start()
    try:
        assert slot.wait_newer(-1, 30) is not None
        assert worker._thread.inject()  # an exception nobody expected, raised inside the loop
        assert wait_until(lambda: worker.crashes == 1, 10)
        seen = slot.latest().seq
        assert slot.wait_newer(seen, 30) is not None and worker.alive  # frames again, from the same worker
    finally:
        worker.stop()
    assert not worker.alive


def test_a_stop_during_a_long_prepare_leaves_no_decoder_behind():
    """Thread isolation: stop() does not wait out a slow model load, and the load that finishes later is released."""
    slot = FrameSlot()
    guard = DecoderGuard()
    worker = DecoderWorker(guard, slot, time.monotonic, max_fps=100)
    worker.submit(Plan(DecoderSpec("faulty", FaultySettings(**SMALL, prepare_s=1.0))))
    worker.start()
    assert wait_until(lambda: guard.stats()["busy_s"] > 0.1, 10)
    worker.stop(timeout=0.1)
    assert worker.alive  # still inside prepare()
    assert wait_until(lambda: not worker.alive, 10)
    assert guard._decoder is None and slot.latest() is None
    worker.start()  # the worker is usable again afterwards (opening hours reopen it)
    try:
        assert slot.wait_newer(-1, 30) is not None and guard._decoder is not None
    finally:
        worker.stop()


def test_the_decoder_process_sends_frames_from_its_own_thread_newest_first():
    """publish() hands over and returns; a reader slower than the decoder gets the newest frame, never a backlog."""
    import multiprocessing as mp
    import threading

    reader, writer = mp.Pipe(duplex=False)
    gate = threading.Event()
    got = []

    def read():
        gate.wait(10)
        while True:
            kind, frame, stats = reader.recv()
            if kind == "stats":
                got.append(stats)
                return
            got.append(frame.seq)

    th = threading.Thread(target=read)
    th.start()
    slot = _PipeSlot(writer, DecoderGuard("cpu"))
    rgb = np.zeros((256, 256, 3), np.uint8)  # over the pipe's buffer: a send blocks until the reader drains it
    t0 = time.perf_counter()
    for seq in range(50):
        slot.publish(Frame(rgb, seq, 0.0, 0.0))
    handed_over = time.perf_counter() - t0
    gate.set()  # the reader wakes only now: every frame but the one in the pipe and the newest was superseded
    slot.close()
    slot.send("stats", None, {"superseded": slot.superseded})
    th.join(10)
    assert handed_over < 1.0  # never waited for the reader
    assert got[-2] == 49 and len(got) - 1 + got[-1]["superseded"] == 50
    assert got[-1]["superseded"] >= 47


def test_a_frame_that_cannot_be_sent_is_dropped_and_counted_not_the_sender():
    import multiprocessing as mp

    reader, writer = mp.Pipe(duplex=False)
    slot = _PipeSlot(writer, DecoderGuard("cpu"))
    slot.publish(Frame(np.zeros((4, 4, 3), np.uint8), 1, 0.0, 0.0, scene=lambda: None))  # cannot be pickled
    assert wait_until(lambda: slot.send_errors == 1, 5)
    slot.publish(Frame(np.zeros((4, 4, 3), np.uint8), 2, 0.0, 0.0))
    assert reader.poll(5)
    kind, frame, _ = reader.recv()
    assert kind == "frame" and frame.seq == 2 and slot.stats()["send_errors"] == 1
    slot.close()


def test_process_worker_survives_its_process_being_killed():
    slot = FrameSlot()
    worker = ProcessWorker(slot, "cpu", time.perf_counter(), max_fps=50, threads=1, backoff=(0.1, 1.0))
    worker.submit(Plan(DecoderSpec("cppn", CPPNSettings(**SMALL))))
    worker.start()
    try:
        first = slot.wait_newer(-1, 60)
        assert first is not None and first.rgb.shape == (20, 32, 3)
        os.kill(worker.pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while worker.crashes == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert worker.crashes == 1
        assert slot.latest() is not None  # the last good frame is still there meanwhile
        # The runtime keeps submitting each tick; that is what brings the decoder back.
        seen = slot.latest().seq
        while time.monotonic() < deadline:
            worker.submit(Plan(DecoderSpec("cppn", CPPNSettings(**SMALL))))
            f = slot.wait_newer(seen, 0.1)
            if f is not None and worker.alive:
                break
        assert worker.alive and slot.latest().seq != seen
        assert wait_until(lambda: worker.remote["frames"] > 0, 10, every=0.05)  # stats from the new process arrive too
    finally:
        worker.stop()
    assert not worker.alive


def test_process_restarts_wait_at_most_the_backoff_setting_and_reset_on_a_process_that_started():
    """``[decoder] restart_backoff_max_s`` bounds the wait between decoder process restarts (30 s was hard-coded),
    and a process that started resets it, not only one that made a frame: at a load of 15-20 a new process took
    20-45 s to its first frame and the waits climbed while processes were still starting."""
    slot = FrameSlot()
    spec = DecoderSpec("cppn", CPPNSettings(**SMALL))
    worker = ProcessWorker(slot, "cpu", time.perf_counter(), max_fps=50, threads=1, backoff=(0.2, 0.5))
    worker.submit(Plan(spec))
    worker.start()
    try:
        delays = []
        for _ in range(4):  # each process killed at once, long before it could start (import torch, say hello)
            crashes = worker.crashes
            assert not worker.started
            os.kill(worker.pid, signal.SIGKILL)
            assert wait_until(lambda: worker.crashes == crashes + 1, 30)
            delays.append(worker.last_delay)
            assert wait_until(lambda: (worker.submit(Plan(spec)), worker.alive)[1], 30, every=0.01)
        assert delays == [0.2, 0.4, 0.5, 0.5]
        assert wait_until(lambda: worker.started, 120)  # this one runs
        os.kill(worker.pid, signal.SIGKILL)
        assert wait_until(lambda: worker.crashes == 5, 30)
        assert worker.last_delay == 0.2  # back to the shortest wait
    finally:
        worker.stop()


def test_process_worker_reports_a_decoder_that_never_renders(tmp_path):
    from installation.decoders.diffusion import DiffusionSettings

    slot = FrameSlot()
    worker = ProcessWorker(slot, "cpu", time.perf_counter(), threads=1, backoff=(0.1, 0.5))
    plan = Plan(DecoderSpec("diffusion", DiffusionSettings(model=str(tmp_path / "missing"), width=64, height=64)))
    worker.submit(plan)
    worker.start()
    try:
        # No frame ever comes, but the faults still reach the parent (stats on a timer, not only with frames).
        assert wait_until(lambda: worker.remote.get("faults", {}).get("prepare", 0) >= 2, 90, every=0.05)
        assert slot.latest() is None
    finally:
        worker.stop()


def test_process_worker_kills_a_hung_decoder():
    slot = FrameSlot()
    spec = DecoderSpec("faulty", FaultySettings(stall_every=5, stall_s=600, **SMALL))
    worker = ProcessWorker(slot, "cpu", time.perf_counter(), max_fps=50, threads=1, backoff=(0.1, 0.5), hang_s=1.0)
    worker.submit(Plan(spec))
    worker.start()
    try:
        assert wait_until(lambda: (worker.submit(Plan(spec)), worker.hangs >= 1)[1], 90, every=0.05)
        assert wait_until(lambda: worker.crashes >= 1, 30, every=0.05)
        seen = slot.latest().seq
        assert wait_until(lambda: (worker.submit(Plan(spec)), worker.alive and slot.latest().seq != seen)[1], 90,
                          every=0.05)
    finally:
        worker.stop()


def test_out_of_memory_frees_and_retries_at_a_lower_resolution():
    # The real fault (CUDA running out of memory) cannot happen on a CPU machine; the faulty decoder raises the same
    # torch.cuda.OutOfMemoryError while its frames are wider than 20 pixels.
    spec = DecoderSpec("faulty", FaultySettings(oom_above=20, resolution=SizeT(64, 40), width=8, depth=2))
    guard = DecoderGuard(backoff=0.0)
    frames = [guard.render(request(spec, i)) for i in range(1, 6)]
    good = [f for f in frames if f is not None]
    assert guard.faults["oom"] == 2  # 64 -> 32 -> 16 wide
    assert good and good[-1].shape[1] == 16


def test_the_frame_sender_comes_back_after_a_fault_in_its_loop():
    import multiprocessing as mp

    reader, writer = mp.Pipe(duplex=False)
    slot = _PipeSlot(writer, DecoderGuard("cpu"))
    try:
        slot.publish(Frame(np.zeros((4, 4, 3), np.uint8), 1, 0.0, 0.0))
        assert reader.poll(10) and reader.recv()[1].seq == 1
        assert wait_until(lambda: slot._pending is None, 5)
        assert slot._sender.inject()  # raised when the idle sender next wakes
        slot.publish(Frame(np.zeros((4, 4, 3), np.uint8), 2, 0.0, 0.0))  # wakes it: that run ends
        assert wait_until(lambda: slot._sender.restarts == 1, 10)
        assert reader.poll(10) and reader.recv()[1].seq == 2  # the frame it held is sent by the next run
        assert slot._sender.is_alive()
    finally:
        slot.close()
