"""Helpers shared by tests: paths, small show configs written to tmp, running the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def write_show(tmp: Path, scenes: dict[str, str], extra: str = "") -> Path:
    """A config in ``tmp`` playing the given scenes (name -> TOML text), with the shipped shaders."""
    sdir = tmp / "scenes"
    sdir.mkdir(exist_ok=True)
    for name, text in scenes.items():
        (sdir / f"{name}.toml").write_text(text)
    cfg = tmp / "show.toml"
    names = ", ".join(f'"{n}"' for n in scenes)
    cfg.write_text(f'[show]\nscenes = [{names}]\nscenes_dir = "scenes"\nshaders_dir = "{ROOT / "shaders"}"\n'
                   f'[output]\nsize = "160x96"\nfps = 20\n[inputs.osc]\nport = 0\n'
                   + ("" if "[health]" in extra else "[health]\nport = 0\n") + extra)
    return cfg


def scene_toml(decoder: str = 'type = "cppn"\nresolution = "64x40"\nwidth = 16\ndepth = 2', trajectory: str =
               'kind = "loop"\nperiod = 2.0', params: str = "", duration: float = 0.0, shaders: str = "") -> str:
    chain = f"shaders = {shaders}\n" if shaders else ""
    return (f"duration = {duration}\ntransition = 0.5\nseed = 3\n{chain}[decoder]\n{decoder}\n"
            f"[trajectory]\n{trajectory}\n[params]\n{params}\n")


def run_cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``python -m installation ...`` as a user would, capturing its output (``env`` values of None unset)."""
    full_env = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
    cmd = [sys.executable, "-X", "faulthandler", "-m", "installation", *args]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env,
                          cwd=ROOT) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            # a hung command: SIGABRT makes faulthandler print every thread's stack, so the failure says where
            proc.send_signal(signal.SIGABRT)
            try:
                out, err = proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            raise AssertionError(f"{' '.join(args)} did not finish in {timeout} s; its stacks:\n{err[-30000:]}\n"
                                 f"stdout:\n{out[-2000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


_PRINT_ONLY = """
import contextlib, io, sys
from installation.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        code = main(sys.argv[1:])
    except SystemExit as e:  # --help
        code = e.code
heavy = sorted(m for m in ("torch", "moderngl", "diffusers", "transformers", "open_clip", "cv2", "pygame", "glcontext")
               if m in sys.modules)
print(out.getvalue())
print(code, len(out.getvalue().splitlines()), ",".join(heavy) or "-")
"""


def print_only(*args: str, min_lines: int = 6) -> tuple[str, str]:
    """Run the command in a fresh interpreter: (its printed lines, the heavy modules it imported, or "-")."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", _PRINT_ONLY, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-500:]
    code, lines, heavy = proc.stdout.splitlines()[-1].split()
    assert code in ("0", "None") and int(lines) >= min_lines, proc.stdout[-500:]
    return proc.stdout, heavy


def play_while(runtime, target, actor, seconds: float = 60.0) -> None:
    """Run the live loop on this thread (GL contexts are thread-bound) while ``actor()`` plays it from another
    thread, as a performer or a monitoring script would; the loop stops when the actor is done."""
    import threading

    def act():
        try:
            actor()
        finally:
            runtime.request_quit()

    th = threading.Thread(target=act)
    th.start()
    try:
        runtime.run(seconds)
    finally:
        th.join(60)
        target.close()


def wait_until(pred, timeout: float = 5.0, every: float = 0.01):
    """Poll ``pred`` until it is truthy or ``timeout`` seconds pass; returns its last value (falsy on time-out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(every)
    return pred()


def read_all(sock) -> bytes:
    """Everything a socket receives until the other side closes it (or resets it, after an answer)."""
    out = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return out
        if not chunk:
            return out
        out += chunk


def bench_result(r: subprocess.CompletedProcess, keys=()) -> dict:
    """What an ``installation bench ... --json`` run printed, checked for structure: exit status 0, the figures one
    per line (key, then its value), then the same figures as one JSON object on the last line, every number in it
    finite, and ``keys`` among them. Returns the object."""
    import json
    import math

    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert isinstance(result, dict) and set(keys) <= set(result), sorted(set(keys) - set(result))
    printed = {}
    for line in lines[:-1]:
        key, _, value = line.partition(" ")
        printed[key] = value.strip()
    for key, value in result.items():
        assert printed.get(key) == str(value), (key, printed.get(key), value)  # the table says what the JSON says

    def finite(value) -> bool:
        if isinstance(value, float):
            return math.isfinite(value)
        if isinstance(value, dict):
            return all(finite(v) for v in value.values())
        if isinstance(value, list):
            return all(finite(v) for v in value)
        return True

    assert all(finite(v) for v in result.values()), result
    return result


def ratio_of(result: dict, ratio: str, top: str, bottom: str) -> None:
    """``result[ratio]`` is ``result[top] / result[bottom]`` (both rounded for print: within 1 %)."""
    assert result[bottom] > 0 and abs(result[ratio] - result[top] / result[bottom]) <= 0.01 * result[ratio] + 1e-3, \
        (ratio, result[ratio], result[top], result[bottom])
