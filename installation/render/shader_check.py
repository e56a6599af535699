"""A test draw of every shader in a child process with a time limit, so a shader that never finishes (an endless
loop) is refused before the show's own GL context runs it.

Compiling proves little: a fragment shader with ``for (;;)`` or a loop whose bound a uniform sets to zero compiles,
and then one draw holds the loop thread (and on a GPU, the GPU) for as long as it runs: one frame a minute, /health
silent, a stop that cannot happen. Here each shader is drawn at the chain's work size with its uniforms at their defaults,
their minimums and their maximums, in a process of its own with its own headless context; the process reports each
draw as it finishes and is killed when one takes longer than :data:`LIMIT_S`. That shader is refused; the others
are drawn again in a new process. A machine without headless GL skips the check (one warning) rather than refuse
every shader. Results are kept by source, size and limit, in this process and in
``~/.cache/installation/shader-check.json`` (``$XDG_CACHE_HOME``), so a reload or the next start draws only what
changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import select
import subprocess
import sys
import time
from typing import Any, Callable, Iterable

from ..files import ConfigError
from .shaders import ShaderFile

log = logging.getLogger(__name__)

LIMIT_S = 10.0  # one draw; the shipped shaders take 0.01-0.2 s at 320x180 on llvmpipe at a load of 70 on 2 cores
START_S = 60.0  # the child's start (Python, moderngl, an EGL context) on a loaded machine
SIZE = (32, 18)
_checked: dict[str, bool] = {}  # digest of source, size and limit -> whether its draws finished (loop thread only)


def _digest(s: ShaderFile, size: tuple[int, int], limit_s: float) -> str:
    text = json.dumps([s.source, list(size), limit_s, [(u.name, u.type, u.min, u.max, u.default) for u in s.uniforms]])
    return hashlib.sha256(text.encode()).hexdigest()


def _job(s: ShaderFile, size: tuple[int, int]) -> dict[str, Any]:
    return {"name": s.name, "source": s.source, "size": list(size),
            "uniforms": [[u.name.split(".", 1)[1], u.type, u.min, u.max, u.default] for u in s.uniforms]}


def check_draws(shaders: Iterable[ShaderFile], size: tuple[int, int], limit_s: float = LIMIT_S,
                cancel: Callable[[], bool] = lambda: False) -> dict[str, str]:
    """Draw each shader at ``size`` in a child process; {name: one line} for those whose draw did not
    finish within ``limit_s``.

    A shader that does not compile here is not refused here (the presenter reports its compile error as before)."""
    shaders = list(shaders)
    refused: dict[str, str] = {}

    def why(s: ShaderFile) -> str:
        return f"{s.path}: a test draw did not finish in {limit_s:g} s (an endless loop?); not used"

    _checked.update({k: v for k, v in _disk_cache().items() if k not in _checked})
    todo = []
    for s in shaders:
        finished = _checked.get(_digest(s, size, limit_s))
        if finished is None:
            todo.append(s)
        elif not finished:
            refused[s.name] = why(s)
    while todo:
        done, hung, skipped = _run_child(todo, limit_s, size, cancel)
        for s in todo:
            if s.name in done:
                _checked[_digest(s, size, limit_s)] = True
        if skipped:
            log.warning("shader test draws skipped: %s", skipped)
            return refused
        if hung is None:
            break
        _checked[_digest(hung, size, limit_s)] = False
        refused[hung.name] = why(hung)
        todo = [s for s in todo if s.name not in done and s is not hung]
    _save_disk_cache()
    return refused


def _cache_path() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "installation", "shader-check.json")


def _disk_cache() -> dict[str, bool]:
    """Earlier processes' results (a start of the same show draws nothing again); an unusable file is ignored."""
    from .. import files

    try:
        data = files.load_json(_cache_path(), max_depth=2)
    except (FileNotFoundError, files.FileError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, bool)} if isinstance(data, dict) else {}


def _save_disk_cache() -> None:
    path = _cache_path()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        merged = {**_disk_cache(), **_checked}
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(dict(list(merged.items())[-2000:]), f)
        os.replace(tmp, path)
    except OSError as e:  # a read-only home: the check runs again next start, nothing else changes
        log.debug("shader check cache not saved: %s", e)


def work_size(output: tuple[int, int]) -> tuple[int, int]:
    """The size the test draws run at: a quarter of the output's sides, the size the presenter's chain runs at by
    default (see ``Presenter._work_size``). A draw that never ends does not end at any size; a small one keeps the
    check cheap for the shaders that do end."""
    return max(int(output[0]) // 4, 8), max(int(output[1]) // 4, 8)


def refuse_hanging(spec: Any, limit_s: float = LIMIT_S, cancel: Callable[[], bool] = lambda: False) -> None:
    """Test-draw a loaded show's shaders (at start and on reload). One that does not finish and that a scene of the
    show chains is a ConfigError naming the scene (exit 2 at start; a refused reload keeps the running show); one no
    scene chains is left out of ``spec.shaders`` (into ``spec.refused``) with one warning."""
    refused = check_draws(spec.shaders.values(), work_size(tuple(spec.config.output.size)), limit_s, cancel)
    scenes = list(spec.scenes) + ([spec.safe] if spec.safe is not None else [])
    for scene in scenes:
        for i, name in enumerate(scene.shaders):
            if name in refused:
                raise ConfigError(scene.path, f"shaders[{i}]", refused[name])
    for name, why in refused.items():
        log.warning("shader left out: %s", why)
        spec.shaders.pop(name, None)
        spec.refused[name] = why


def _run_child(todo: list[ShaderFile], limit_s: float, size: tuple[int, int],
               cancel: Callable[[], bool]) -> tuple[set[str], ShaderFile | None, str]:
    """(names drawn, the shader that hung or None, why the check could not run at all or "")."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in [_package_root(), os.environ.get("PYTHONPATH")]
                                                        if p)}
    try:
        proc = subprocess.Popen([sys.executable, "-m", "installation.render.shader_check", str(os.getpid())],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    except OSError as e:
        return set(), None, f"cannot start a process ({e})"
    by_name = {s.name: s for s in todo}
    done: set[str] = set()
    current: str | None = None
    buf = b""
    try:
        proc.stdin.write(json.dumps([_job(s, size) for s in todo]).encode())
        proc.stdin.close()
        deadline = time.monotonic() + START_S
        while True:
            wait = deadline - time.monotonic()
            if wait <= 0:
                if current is None:
                    return done, None, f"the check process did not start in {START_S:g} s"
                return done, by_name[current], ""
            if cancel():  # the show is stopping: no answer needed
                return done, None, "the show is stopping"
            ready, _, _ = select.select([proc.stdout], [], [], min(wait, 0.2))
            if not ready:
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:  # the child ended
                proc.wait()
                if current is not None and current not in done:  # it died in a draw: the driver crashed on it
                    return done, by_name[current], ""
                if len(done) < len(todo):
                    return done, None, f"the check process ended early (exit {proc.returncode})"
                return done, None, ""
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                msg = json.loads(line)
                if "skip" in msg:
                    return done, None, msg["skip"]
                if "compile" in msg:  # compiling is not drawing: a slow compiler on a loaded machine is no hang
                    current = msg["compile"]
                    deadline = time.monotonic() + START_S
                elif "draw" in msg:
                    current = msg["draw"]
                    deadline = time.monotonic() + limit_s
                elif "done" in msg:
                    done.add(msg["done"])
                    current = None
                    deadline = time.monotonic() + limit_s
    except (OSError, ValueError) as e:
        return done, None, f"the check process failed ({e})"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _package_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# -- the child --------------------------------------------------------------------------------------------------------

def _child(parent: int) -> int:
    from ..ops.supervise import die_with_parent

    die_with_parent(parent)
    jobs = json.loads(sys.stdin.read())

    def say(**msg: Any) -> None:
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()

    try:
        import moderngl

        from .present import VERTEX

        ctx = moderngl.create_context(standalone=True, backend="egl")
    except Exception as e:  # noqa: BLE001 - no headless GL on this machine: the check cannot run
        say(skip=f"no headless GL context here ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
        return 0
    size = tuple(jobs[0]["size"]) if jobs else SIZE
    grey = ctx.texture(SIZE, 4, data=bytes([128] * SIZE[0] * SIZE[1] * 4))
    target = ctx.texture(size, 4)
    fbo = ctx.framebuffer(color_attachments=[target])
    for job in jobs:
        say(compile=job["name"])
        try:
            prog = ctx.program(vertex_shader=VERTEX, fragment_shader=job["source"])
        except Exception:  # noqa: BLE001 - a compile error is the presenter's to report, with its line
            say(done=job["name"])
            continue
        vao = ctx.vertex_array(prog, [])
        for unit, name in enumerate(("src", "tex_prev", "tex_cur", "tex_hold", "feedback")):
            if name in prog:
                grey.use(unit)
                prog[name].value = unit
        builtins = {"time": 1.0, "frame_mix": 1.0, "hold_mix": 0.0, "resolution": size, "cur_scale": (1.0, 1.0),
                    "prev_scale": (1.0, 1.0), "hold_scale": (1.0, 1.0)}
        for name, value in builtins.items():
            if name in prog:
                prog[name].value = value
        for pick in (4, 2, 3):  # default, min, max
            say(draw=job["name"])
            for u in job["uniforms"]:
                if u[0] in prog:
                    v = u[pick]
                    prog[u[0]].value = int(v) if u[1] in ("int", "bool") else float(v)
            fbo.use()
            vao.render(moderngl.TRIANGLES, vertices=3)
            fbo.read(components=1)  # waits for the draw to finish
        vao.release()
        prog.release()
        say(done=job["name"])
    return 0


if __name__ == "__main__":
    sys.exit(_child(int(sys.argv[1])))
