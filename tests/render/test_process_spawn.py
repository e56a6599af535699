"""The decoder process starts whatever the parent has imported: opencv's loader puts its own package folder on
``sys.path`` while ``import cv2`` runs (on the camera's side), and a child spawned in that moment used to import
``cv2/typing`` as ``typing`` and die (``ImportError: cannot import name 'Any' from partially initialized module``).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from support import ROOT

# A parent as the runtime is one: a thread imports cv2 (as the camera did), and while opencv's loader has its folder
# on sys.path (held there by a finder that stalls the loader's native import, as a slow disk would), the decoder
# process is started, killed and restarted three times. Each must deliver frames. Then the import finishes.
SCRIPT = textwrap.dedent('''
    import importlib.machinery, os, signal, sys, threading, time

    import numpy as np


    class Plan:
        """The minimal plan of test_worker.py: a fixed decoder, a latent that moves with time."""

        frozen = False
        scene = "test"
        cut = 0

        def __init__(self, spec):
            self.spec = spec

        def request(self, t, seq):
            from installation.decoders import LatentRequest

            return LatentRequest(z=np.full(8, np.sin(t), np.float32), t=t, seq=seq, decoder=self.spec)


    def cv2_folder_on_path():
        return [p for p in sys.path if os.path.isfile(os.path.join(p, "typing", "__init__.py"))]


    def main():
        from installation.decoders import DecoderSpec
        from installation.decoders.cppn import CPPNSettings
        from installation.render.process import ProcessWorker
        from installation.render.slot import FrameSlot
        from installation.sizes import SizeT

        entered, release = threading.Event(), threading.Event()

        class SlowLoad:
            """Loads the native module after a pause (outside the import lock, as a slow disk would)."""

            def __init__(self, loader):
                self.loader = loader

            def create_module(self, spec):
                entered.set()
                release.wait(200)
                return self.loader.create_module(spec)

            def exec_module(self, module):
                self.loader.exec_module(module)

        class SlowCv2Native:
            def find_spec(self, name, path=None, target=None):
                if name != "cv2" or not getattr(sys, "OpenCV_LOADER", False):  # only the loader's native import
                    return None
                spec = importlib.machinery.PathFinder.find_spec(name, path)
                spec.loader = SlowLoad(spec.loader)
                return spec

        sys.meta_path.insert(0, SlowCv2Native())
        importer = threading.Thread(target=lambda: __import__("cv2"), daemon=True)
        importer.start()
        assert entered.wait(60), "cv2's loader did not start"
        assert cv2_folder_on_path(), sys.path  # the moment the issue is about

        plan = Plan(DecoderSpec("cppn", CPPNSettings(resolution=SizeT(32, 20), width=8, depth=2)))
        slot = FrameSlot()
        worker = ProcessWorker(slot, "cpu", time.perf_counter(), max_fps=20, threads=1, backoff=(0.1, 0.5))
        worker.submit(plan)
        worker.start()
        try:
            for n in range(4):  # the first start and three restarts
                seen = slot.latest().seq if slot.latest() is not None else -1
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    worker.submit(plan)  # as the loop does every tick; this is what restarts a dead process
                    latest = slot.latest()
                    if worker.alive and latest is not None and latest.seq != seen and worker.crashes == n:
                        break
                    if worker.crashes > n:
                        print(f"FAIL: decoder process {n} died before its first frame", flush=True)
                        sys.exit(1)
                    time.sleep(0.02)
                else:
                    print(f"FAIL: no frame from decoder process {n} within 120 s", flush=True)
                    sys.exit(1)
                print(f"decoder process {n} (pid {worker.pid}) delivered frame {slot.latest().seq}", flush=True)
                assert cv2_folder_on_path()  # still there: every start happened inside the window
                if n < 3:
                    os.kill(worker.pid, signal.SIGKILL)
                    deadline = time.monotonic() + 60
                    while worker.crashes <= n and time.monotonic() < deadline:
                        time.sleep(0.02)
                    assert worker.crashes == n + 1, worker.crashes
        finally:
            worker.stop()
            release.set()
        importer.join(60)
        import cv2  # the camera's import finished normally too, and left the path as it was

        assert cv2.VideoCapture is not None and not cv2_folder_on_path()
        print("OK", flush=True)


    if __name__ == "__main__":
        main()
''')


def test_decoder_process_starts_and_restarts_while_cv2_is_importing(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(SCRIPT)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), (r.stdout + r.stderr)[-4000:]
    assert r.stdout.count("delivered frame") == 4


def test_child_path_drops_only_package_folders_of_other_entries(tmp_path):
    from installation.render.process import child_sys_path

    site = tmp_path / "site-packages"
    (site / "cv2" / "typing").mkdir(parents=True)
    (site / "cv2" / "__init__.py").write_text("")
    lone = tmp_path / "elsewhere" / "pkg"  # a package folder whose parent is not on the path: kept
    lone.mkdir(parents=True)
    (lone / "__init__.py").write_text("")
    plain = tmp_path / "src"
    plain.mkdir()
    path = ["", str(site / "cv2"), str(site), str(plain), str(lone)]
    assert child_sys_path(path) == ["", str(site), str(plain), str(lone)]
