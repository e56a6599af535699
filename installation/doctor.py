"""``installation doctor``: what this machine offers, each line a finding or a clear "not found"."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Iterator


def _python() -> str:
    return f"{platform.python_version()} ({platform.machine()})"


def _torch() -> str:
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        return f"{torch.__version__}; decoder device: cuda ({name})"
    return f"{torch.__version__}; decoder device: cpu (CUDA not found), {torch.get_num_threads()} threads"


def _gl() -> str:
    import moderngl

    from .render.glenv import prepare_gl_env

    prepare_gl_env()  # the same Mesa settings as the show's own contexts
    ctx = moderngl.create_context(standalone=True, backend="egl")
    try:
        info = ctx.info
        return f"{info['GL_RENDERER']}, OpenGL {info['GL_VERSION']} (headless EGL; " \
               f"LP_NUM_THREADS={os.environ.get('LP_NUM_THREADS')})"
    finally:
        ctx.release()


def _displays() -> str:
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    import pygame

    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY") and \
            not os.environ.get("SDL_VIDEODRIVER"):
        return "not found (DISPLAY is not set; use --headless, or start Xvfb / set SDL_VIDEODRIVER=offscreen)"
    try:
        pygame.display.init()
        sizes = pygame.display.get_desktop_sizes()
        driver = pygame.display.get_driver()
    except pygame.error as e:
        return f"not found ({e})"
    finally:
        pygame.display.quit()
    return f"{len(sizes)} via {driver}: " + ", ".join(f"#{i} {w}x{h}" for i, (w, h) in enumerate(sizes))


def _cores() -> str:
    """Whether a native crash of this process would leave a core dump, and where (README: Troubleshooting)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    try:
        pattern = Path("/proc/sys/kernel/core_pattern").read_text().strip()
    except OSError:
        pattern = "?"
    where = "systemd-coredump (coredumpctl list)" if "systemd-coredump" in pattern else \
        f"a pipe to {pattern[1:].split()[0]}" if pattern.startswith("|") else \
        f"{pattern} (a relative name is in the crashing process's working directory)"

    def limit(v: int) -> str:
        return "unlimited" if v == resource.RLIM_INFINITY else f"{v} bytes"

    if soft == 0:
        how = "LimitCORE=infinity in the service unit" if hard != 0 else "ulimit -c unlimited (hard limit is 0)"
        return f"off (ulimit -c is 0; {how}); would go to {where}"
    return f"on (limit {limit(soft)}), to {where}"


def _ffmpeg() -> str:
    exe = shutil.which("ffmpeg")
    if exe is None:
        return "not found (recording needs it: sudo apt-get install ffmpeg)"
    out = subprocess.run([exe, "-version"], capture_output=True, text=True, timeout=10).stdout.splitlines()
    return f"{exe} ({out[0] if out else '?'})"


def _audio() -> str:
    from .inputs.audio import probe_devices

    devices, reason = probe_devices()
    return "; ".join(devices) if devices else f"not found ({reason})"


def _cameras() -> str:
    from .inputs.camera import probe_cameras

    cams, reason = probe_cameras()
    return ", ".join(map(str, cams)) if cams else f"not found ({reason})"


def jack_running() -> bool | None:
    """Whether a JACK server runs (``jack_wait -c``), None when JACK's tools are not installed; a server that does
    not answer within 10 s counts as not running (a wedged server is not one to open clients on)."""
    exe = shutil.which("jack_wait")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "-c"], capture_output=True, text=True, timeout=10).stdout.strip()
    except subprocess.TimeoutExpired:
        return False
    return out == "running"


def _midi() -> str:
    """MIDI input ports on ALSA and JACK (what ``[inputs.midi] port`` and ``api`` can name), without the ALSA
    library's error text on a machine with no sequencer device, and a hint when there is none."""
    import rtmidi

    apis = rtmidi.get_compiled_api()
    found: list[str] = []
    why: list[str] = []
    if rtmidi.API_LINUX_ALSA in apis:
        if not os.path.exists("/dev/snd/seq"):
            why.append("ALSA: no /dev/snd/seq (no sound hardware, or load the sequencer: sudo modprobe snd-seq)")
        else:
            ports = rtmidi.MidiIn(rtapi=rtmidi.API_LINUX_ALSA, name="installation-doctor").get_ports()
            found += [f"ALSA: {p}" for p in ports] or []
            if not ports:
                why.append("ALSA: no input port (plug the controller in)")
    if rtmidi.API_UNIX_JACK in apis:
        running = jack_running()
        if not running:
            why.append("JACK: no server running" if running is False else "JACK: jackd2 not installed")
        else:
            probe = rtmidi.MidiIn(rtapi=rtmidi.API_UNIX_JACK, name="installation-doctor")
            try:
                ports = [p for p in probe.get_ports() if "installation-doctor" not in p]
            finally:
                probe.delete()
            found += [f"JACK: {p}" for p in ports]
            if not ports:
                why.append("JACK: no MIDI output port to read from")
    if found:
        return "; ".join(found) + '  (set [inputs.midi] port = "<part of a name>", api = "UNIX_JACK" for JACK)'
    return "not found (" + "; ".join(why or ["rtmidi has neither ALSA nor JACK"]) + ")"


def _config(path: Path | None) -> str:
    from .config import DEFAULT_CONFIG, load_show

    spec = load_show(path)
    return f"ok: {path or DEFAULT_CONFIG} ({len(spec.scenes)} scenes, {len(spec.shaders)} shaders)"


CHECKS: list[tuple[str, Callable[..., str]]] = [
    ("python", _python), ("torch", _torch), ("gl", _gl), ("displays", _displays), ("cores", _cores), ("ffmpeg", _ffmpeg),
    ("audio", _audio), ("cameras", _cameras), ("midi", _midi),
]


def _vision(path: Path | None) -> str:
    """Whether the [vision] CLIP model loads and embeds (it is loaded for real: a few seconds)."""
    from .config import DEFAULT_CONFIG, load_config
    from .vision.clip import WeightsMissing, vision_summary

    path = Path(path) if path else DEFAULT_CONFIG
    settings = load_config(path).vision
    if not settings.enabled:
        return "off ([vision] enabled = false)"
    try:
        return "usable: " + vision_summary(settings.resolved(path.resolve().parent))
    except WeightsMissing as e:
        return f"not usable ({e})"


def report(config: Path | None = None) -> Iterator[tuple[str, str]]:
    try:  # the vision check imports open_clip (and so Triton's LLVM): it must load before the GL check's llvmpipe
        from .render.targets import preload_decoders

        preload_decoders(["vision"])
    except Exception:  # noqa: BLE001 - the torch line reports what is wrong
        pass
    for name, check in CHECKS:
        try:
            yield name, check()
        except Exception as e:  # noqa: BLE001 - doctor reports, it never crashes
            yield name, f"not found ({type(e).__name__}: {e})"
    try:
        yield "config", _config(config)
    except Exception as e:  # noqa: BLE001
        yield "config", f"invalid: {e}"
    try:
        yield "vision", _vision(config)
    except Exception as e:  # noqa: BLE001
        yield "vision", f"not usable ({type(e).__name__}: {e})"
