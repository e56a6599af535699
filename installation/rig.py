"""``installation bench --rig``: what the performer's rig (the web page with a viewer, OSCQuery with a listening
websocket, a MIDI controller, Ableton Link) costs the render loop: the full headless loop with all of them off, then
on, alternating, in this one process, under the same OSC traffic, with clients really using them."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from dataclasses import replace as dc_replace
from typing import Any, Callable

from .config import ShowSpec
from .decoders.base import resolve_device
from .doctor import jack_running
from .runtime import Runtime

MIDI_PORT = "installation-bench"


def with_rig(spec: ShowSpec, on: bool, midi_api: str) -> ShowSpec:
    """The show with OSC on a free port, the camera and microphone off, and the rig's parts on or off."""
    cfg = spec.config
    off = {"enabled": False}
    inputs = cfg.inputs.model_copy(update={
        "osc": cfg.inputs.osc.model_copy(update={"enabled": True, "port": 0, "host": "127.0.0.1"}),
        "audio": cfg.inputs.audio.model_copy(update=off), "camera": cfg.inputs.camera.model_copy(update=off),
        "midi": cfg.inputs.midi.model_copy(update={"enabled": on, "api": midi_api, "port": MIDI_PORT})})
    update = {"inputs": inputs,
              "web": cfg.web.model_copy(update={"enabled": on, "port": 0, "host": "127.0.0.1", "token": ""}),
              "oscquery": cfg.oscquery.model_copy(update={"enabled": on, "port": 0, "host": "127.0.0.1",
                                                          "advertise": True}),
              "sync": cfg.sync.model_copy(update={"link": on, "clock": "wall"})}
    return dc_replace(spec, config=cfg.model_copy(update=update))


def _clients(rt: Runtime, midi_out: Any) -> Callable[[], None]:
    """Start what a performer's devices would do: OSC at 30 messages a second; and when the rig is on, a phone
    watching the preview and polling the state, a websocket listening to the parameter OSC moves, a controller
    sending 100 CCs a second. Returns the function that stops them."""
    from pythonosc.udp_client import SimpleUDPClient

    stop = threading.Event()
    counts = {"osc": 0, "previews": 0, "states": 0, "ws_messages": 0, "midi": 0}
    threads: list[threading.Thread] = []

    def every(period: float, fn: Callable[[int], None]) -> None:
        def run() -> None:
            i = 0
            while not stop.wait(period):
                i += 1
                try:
                    fn(i)
                except Exception:  # noqa: BLE001 - a client's hiccup is not the bench's concern
                    pass
        threads.append(threading.Thread(target=run, daemon=True))

    osc = SimpleUDPClient(*rt.osc.address)

    def send_osc(i: int) -> None:
        osc.send_message("/param/speed", 1.0 + (i % 20) / 20)
        counts["osc"] += 1

    every(1 / 30, send_osc)
    web = rt.part("web")
    if web is not None:
        frame = {"n": 0}

        def watch(i: int) -> None:
            with urllib.request.urlopen(f"{web.url}preview.jpg?after={frame['n']}", timeout=5) as r:
                frame["n"] = int(r.headers.get("X-Frame", frame["n"]))
                r.read()
            counts["previews"] += 1

        def poll(i: int) -> None:
            with urllib.request.urlopen(f"{web.url}api/state", timeout=5) as r:
                json.loads(r.read())
            counts["states"] += 1

        every(0.001, watch)  # as fast as the preview comes (it waits for a newer frame)
        every(1.0, poll)
    query = rt.part("oscquery")
    if query is not None:
        def listen() -> None:
            from websockets.sync.client import connect

            from websockets.exceptions import ConnectionClosed

            with connect(f"ws://127.0.0.1:{query.port}/") as ws:
                ws.send(json.dumps({"COMMAND": "LISTEN", "DATA": "/param/speed"}))
                while not stop.is_set():
                    try:
                        ws.recv(timeout=0.5)
                        counts["ws_messages"] += 1
                    except TimeoutError:
                        pass
                    except ConnectionClosed:  # the server stopped first
                        return

        threads.append(threading.Thread(target=listen, daemon=True))
    if midi_out is not None and rt.part("midi") is not None:
        def cc(i: int) -> None:
            midi_out.send_message([0xB0, 74, i % 128])
            counts["midi"] += 1

        every(0.01, cc)
    for th in threads:
        th.start()

    def finish() -> None:
        stop.set()
        for th in threads:
            th.join(5)
        rt.bench_clients = dict(counts)  # type: ignore[attr-defined]

    return finish


def rig_bench(spec: ShowSpec, seconds: float = 10.0, rounds: int = 2) -> dict[str, Any]:
    """The loop with the rig off and on, ``rounds`` pairs (off first, then on first, ...): fps, late ticks, tick p99s and their
    on/off ratios (``runtime_fps_on_vs_off``: decoded frames per second in the loop; ``present_fps_on_vs_off``)."""
    from .bench import DISPLAY_HZ, _p99_ms, runtime_fps

    device = resolve_device(spec.config.decoder.device)
    midi_api, midi_out = "", None
    if jack_running():  # a controller on JACK MIDI (here: a virtual port streaming CCs)
        import rtmidi

        midi_api = "UNIX_JACK"
        midi_out = rtmidi.MidiOut(rtapi=rtmidi.API_UNIX_JACK)
        midi_out.open_virtual_port(MIDI_PORT)
    seen: dict[str, dict[str, Any]] = {}

    def load(rt: Runtime) -> Callable[[], None]:
        finish = _clients(rt, midi_out)

        def done() -> None:
            finish()
            seen[str(bool(rt.part("web")))] = {
                "clients": getattr(rt, "bench_clients", {}),
                "parts": {n: rt.part(n).stats() for n in ("web", "oscquery", "midi", "link")
                          if rt.part(n) is not None}}
        return done

    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    try:
        for i in range(max(1, rounds)):
            for mode in (("off", "on") if i % 2 == 0 else ("on", "off")):  # neither always goes first
                runs[mode].append(runtime_fps(with_rig(spec, mode == "on", midi_api), seconds, device,
                                              inputs=True, load=load))
    finally:
        if midi_out is not None:
            midi_out.close_port()
    out: dict[str, Any] = {"scene": spec.scenes[0].name, "device": device,
                           "output_size": str(spec.config.output.size), "display_hz": DISPLAY_HZ,
                           "seconds": seconds, "rounds": max(1, rounds), "midi": midi_api or "no JACK: port idle"}
    for mode, rs in runs.items():
        out[f"{mode}_runtime_fps"] = round(sum(r["runtime_fps"] for r in rs) / len(rs), 2)
        out[f"{mode}_present_fps"] = round(sum(r["present_fps"] for r in rs) / len(rs), 2)
        out[f"{mode}_late_ticks"] = sum(r["late_ticks"] for r in rs)
        out[f"{mode}_present_ms_p99"] = _p99_ms([c for r in rs for c in r["tick_costs_s"]])
        out[f"{mode}_process_cpu_ms_per_tick"] = round(sum(r["process_cpu_ms_per_tick"] for r in rs) / len(rs), 3)
    for key in ("runtime_fps", "present_fps"):
        off = out[f"off_{key}"]
        out[f"{key}_on_vs_off"] = round(out[f"on_{key}"] / off, 3) if off else None
    on = seen.get("True", {})
    out["on_clients"] = on.get("clients", {})
    parts = on.get("parts", {})
    out["on_preview_frames"] = parts.get("web", {}).get("preview_frames")
    out["on_oscquery_sent"] = parts.get("oscquery", {}).get("sent")
    out["on_midi_messages"] = parts.get("midi", {}).get("messages")
    out["on_link"] = {k: parts.get("link", {}).get(k) for k in ("tempo", "peers")}
    return out
