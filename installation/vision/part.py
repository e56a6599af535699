"""The ``[vision]`` part, in the show's process: what the CLIP worker learns, put to use.

The reader (:class:`~installation.vision.hook.VisionHook`) runs here, on its own thread, on presented frames (this
part is a presented-frame sink: the canvas after the shader chain, what the wall shows): every ``every_n``-th tick's
frame is described and compared with the prompt slots (latest wins), and the frame of every archived point
(``[archive] point_every``) is embedded without fail and posted as ``vision.embedding`` for the archive to store on
that point. Its model loads when the part starts and is shared with steering. The frame check stays a post-render
hook in the decoder's process (it must see each frame before it is published). Results arrive on the bus
(``vision.similarity.<i>``, ``vision.blocked``) and as notes on the journal (the description, the top terms, the
frame-check verdicts, the counters), which this part drains once per tick. From them it:

- keeps ``/health``'s ``vision`` section (model, counters, description, ``refused_count``);
- writes the prompt audit log: every prompt that arrived from a public input (its ``prompt.audit`` note, refused
  ones too) with time, sender, text, the prompt guard's verdict and the scene, then the frame check's verdict on the
  first checked frame after it (a second record with the same ``id``);
- runs a scene's describe loop: every ``period`` path seconds the current description (drift-guarded, through the
  prompt guard) becomes the prompt; the chain is logged;
- adds a scene's hidden prompts to the decoder's plan (never to the show's prompts, parameters, feedback or state);
- with ``show_refusals``, publishes the refusals (``/vision/refused`` feedback).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..bus import Event, ParamSpec
from ..inputs.prompt_guard import PromptGuard
from ..ops.logs import RepeatLog
from ..ops.supervise import SupervisedThread, supervised
from ..parts import Moment, PartContext, register
from .audit import AuditLog
from .describe import DriftGuard, load_vocabulary
from .settings import VisionSettings

log = logging.getLogger(__name__)

CHAIN_KEPT = 8  # descriptions of the describe loop shown in /health


def vision_params(settings: VisionSettings) -> list[ParamSpec]:
    """``vision.similarity.<i>`` per prompt slot and ``vision.blocked``, while [vision] is enabled."""
    if not settings.enabled:
        return []
    out = [ParamSpec(f"vision.similarity.{i}", "float", -1.0, 1.0, 0.0, 0.0, 0.0,
                     f"CLIP similarity of the decoded frame to prompt slot {i} (cosine, -1..1)")
           for i in range(settings.prompt_slots)]
    out.append(ParamSpec("vision.blocked", "bool", 0.0, 1.0, 0.0, 0.0, 0.0,
                         "1 while the newest checked frame was held by the frame check"))
    return out


def vision_hooks(settings: VisionSettings, show: Any) -> list[tuple[str, Any]]:
    """The CLIP worker in the decoder process, with each scene's negative concepts (never shown)."""
    if not settings.enabled:
        return []
    from .hook import VisionHookOptions

    scenes = list(show.scenes) + ([show.safe] if show.safe is not None else [])
    negative = {sc.name: tuple(sc.vision.negative) for sc in scenes if sc.vision.negative}
    return [("vision", VisionHookOptions(settings.resolved(show.path.resolve().parent), negative, read=False))]


def check_vision(settings: VisionSettings, base_dir: Path) -> None:
    """At start-up: the checkpoint (one line naming the path and the download command) and the vocabulary."""
    if not settings.enabled:
        return
    from .clip import check_weights

    s = settings.resolved(base_dir)
    check_weights(s)
    # open_clip (in this process for steering, or for hooks in thread isolation) imports Triton, whose LLVM must load
    # before a GL context's llvmpipe or the process segfaults; every command loads the show before it opens GL.
    from ..render.targets import preload_decoders

    preload_decoders(["vision"])
    try:
        load_vocabulary(s.vocabulary)
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"vocabulary {s.vocabulary}: cannot read ({e})") from None


class VisionPart:
    """Drains the CLIP worker's results from the journal; audit log, describe loop, hidden prompts, health."""

    def __init__(self, settings: VisionSettings, ctx: PartContext) -> None:
        self.settings = settings.resolved(ctx.base_dir)
        self.bus = ctx.bus
        self.audit = AuditLog(self.settings.audit_log, self.settings.audit_max_bytes, self.settings.audit_backups) \
            if self.settings.audit_log else None
        self._guard = PromptGuard(self.settings.prompt)
        self._sub = None
        self._started = False
        self.description = ""
        self.reading: dict[str, Any] | None = None
        self.worker: dict[str, Any] = {}
        self.blocked = 0
        self._blocked_seen = 0
        self.refused_prompts = 0
        self._refused_sent = -1
        self._record = 0
        self._pending: list[tuple[float, int]] = []  # (show time, audit id) awaiting a frame-check verdict
        self._pending_blocked = 0
        self.chain: deque[str] = deque(maxlen=CHAIN_KEPT)
        self._loop_scene: str | None = None
        self._drift = DriftGuard(0)
        self._path = 0.0
        self.loop_prompts = 0
        self.loop_refused = 0
        self.dropped = 0
        self._state = ctx.state  # the show position (seed, path time) that steering starts from
        self._steer_live: tuple[str, float | None] | None = None  # /steer's override until the scene changes
        self._steer_scene: str | None = None
        self._steer_path = 0.0
        self.reader: Any = None  # the CLIP reader of presented frames (started with the part)
        self._fixed = bool(getattr(ctx.clock, "fixed", False))  # an offline render: kept embeddings are waited for
        archive = getattr(ctx.config, "archive", None)
        from ..archive.writer import PointClock

        self._points = PointClock(archive.point_every) if archive is not None and archive.enabled else None
        self._tick_no = 0
        self._frame_info: tuple | None = None  # (t, scene, prompt texts, point due, sampled) of this tick's frame
        self._checked = 0
        self.steer = SteerWorker(self.settings, ctx.bus, self._model)
        if ctx.presented is not None:
            ctx.presented.add(self)

    # -- part protocol -----------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._started:
            return
        self._sub = self.bus.subscribe(maxlen=8192)
        if self.audit is not None:
            self.audit.start()
        if self.reader is None:
            from ..render.hooks import apply_result
            from .hook import VisionHook, VisionHookOptions

            # the reader samples itself through wants(): its own every_n is 1
            self.reader = VisionHook(VisionHookOptions(self.settings.model_copy(update={"every_n": 1})))
            self.reader.wait_for_room = self._fixed
            self.reader.bind(lambda result: apply_result(self.bus, {"hook": "vision", **result}))
        self._started = True

    def stop(self) -> None:
        if self._sub is not None:
            self._sub.close()
            self._sub = None
        if self.audit is not None:
            self.audit.stop()
        self.steer.stop()
        if self.reader is not None:
            wait = 60.0 if self._fixed else 5.0  # the points' embeddings go to the archive (it stops after this part)
            if not self.reader.drain(wait):
                log.warning("vision: points' embeddings still pending after %.0f s; the archive goes without them",
                            wait)
            self.reader.close()
            self.worker = self.reader.stats()  # its last counters stay in stats()
            self.reader = None
        self._started = False

    def _model(self, timeout: float = 120.0) -> Any:
        """The reader's CLIP model, once loaded (steering shares it); None when it did not load."""
        reader = self.reader
        return reader.model if reader is not None and reader.wait_ready(timeout) else None

    # -- the presented-frame sink (loop thread) ------------------------------------------------------------------
    def wants(self, t: float | None) -> bool:
        """An archived point's frame always; a sampled frame only while the reader is free (else it is counted as
        skipped without a read-back: reading back frames the reader would drop costs the loop for nothing)."""
        info = self._frame_info
        if info is None:
            return False
        if info[4] and not info[3] and self.reader is not None and not self.reader.idle():
            self.reader.pass_over()
            self._frame_info = None
            return False
        return info[3] or info[4]

    def put(self, rgb: bytes, size: tuple[int, int], t: float | None) -> None:
        """A presented frame (RGB, bottom row first): to the reader; an archived point's is kept."""
        info, self._frame_info = self._frame_info, None
        reader = self.reader
        if info is None or reader is None:
            return
        from ..render.slot import Frame

        w, h = size
        image = np.frombuffer(rgb, np.uint8).reshape(h, w, 3)[::-1]
        frame = Frame(image, self._tick_no, info[0], time.monotonic(), info[1], 0, info[2])
        if info[3]:
            reader.keep(frame)
        if info[4]:
            reader(frame)

    @property
    def alive(self) -> bool:
        return self._started and (self.audit is None or self.audit._thread is not None)

    @property
    def refused_count(self) -> int:
        """int: prompts refused by the guard plus frames held by the frame check."""
        return self.refused_prompts + self.blocked

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": Path(self.settings.model_config_file).stem if self.settings.model_config_file else
            self.settings.model, "weights": Path(self.settings.weights).name or self.settings.weights,
            "description": self.description,
            "top": [[term, score] for term, score in (self.reading or {}).get("top", ())],
            "blocked": self.blocked, "refused_prompts": self.refused_prompts, "refused_count": self.refused_count,
            "frame_check": bool(self.settings.blocked), "describe_chain": list(self.chain),
            "loop_prompts": self.loop_prompts, "journal_dropped": self.dropped + (self._sub.dropped if self._sub else 0),
            "worker": {**{k: v for k, v in (self.reader.stats() if self.reader is not None else self.worker).items()
                          if k not in ("blocked", "checked")}, "every_n": self.settings.every_n,
                       "checked": self._checked},
            "steer": self.steer.stats(),
        }
        if self.audit is not None:
            out["audit"] = self.audit.stats()
            out["failures"] = self.audit.errors
        return out

    # -- per tick (loop thread) --------------------------------------------------------------------------------
    def tick(self, moment: Moment) -> None:
        if self._sub is None:
            return
        if self._steer_scene != moment.scene.name:  # a new scene: its own [steer] table, /steer's override dropped
            self._steer_scene, self._steer_live, self._steer_path = moment.scene.name, None, math.inf
        for change in self._sub.drain():
            if change.kind == "note":
                self._note(change, moment)
        self._describe_loop(moment)
        self._steer(moment)
        if self.settings.show_refusals and self.refused_count != self._refused_sent:
            self._refused_sent = self.refused_count
            self.bus.note("vision.refused", self.refused_count, "vision")

    def plan(self, plan: Any, moment: Moment) -> Any:
        """Notes what this tick's presented frame is (for the reader); hidden prompts join the decoder's prompts
        (appended after the visible ones, after prompt motion)."""
        from ..render.worker import visible_prompts

        self._tick_no += 1
        point = self._points is not None and self._points.due(moment.t)
        sampled = (self._tick_no - 1) % self.settings.every_n == 0
        self._frame_info = (moment.t, plan.scene, visible_prompts(plan.extras or {}), point, sampled)
        hidden = moment.scene.vision.hidden_prompts
        if not hidden:
            return plan
        return replace(plan, extras={**plan.extras, "hidden": tuple((p.text, p.weight) for p in hidden)})

    def _note(self, change: Any, moment: Moment) -> None:
        name, value = change.name, change.value
        if name == "vision.description":
            self.description = str(value)
        elif name == "vision.reading":
            self.reading = value
        elif name == "vision.stats":
            self.worker = dict(value)
        elif name == "vision.frame_check":
            self._frame_check(value)
        elif name == "prompt.audit":
            self._audit_prompt(change, moment)
        elif name == "steer" and isinstance(value, dict):
            self._steer_live = (str(value.get("text", "")), value.get("strength"))
            self._steer_path = math.inf  # a new request is evaluated at once
            log.info("steer: %s", f"towards {self._steer_live[0]!r}" if self._steer_live[0] else "released")

    def _steer(self, moment: Moment) -> None:
        """Every ``period`` path seconds, hand the steer worker a round (it posts a seed jump when one wins)."""
        scene = moment.scene
        text, strength = scene.steer.text, scene.steer.strength
        if self._steer_live is not None:
            text = self._steer_live[0]
            strength = strength if self._steer_live[1] is None else float(self._steer_live[1])
        self.steer.text = text
        if not text or strength <= 0.0:
            self.steer.released()
            return
        self._steer_path += moment.dt * float(self.bus.targets().get("speed", 1.0))
        if self._steer_path < scene.steer.period:
            return
        state = self._state()
        if "tau" not in state or not self.steer.offer(scene, int(state["seed"]), float(state["tau"]),
                                                      self.bus.targets(), text, strength, moment.t):
            return
        self._steer_path = 0.0

    def _frame_check(self, check: dict[str, Any]) -> None:
        count = int(check.get("blocked", 0))
        self._checked = int(check.get("checked", self._checked))
        # The worker counts from zero again after a decoder process restart: add what is new since its last note.
        self.blocked += count - self._blocked_seen if count >= self._blocked_seen else count
        new_blocks = self.blocked - self._pending_blocked
        self._blocked_seen = count
        t = float(check.get("t", 0.0))
        ready = [p for p in self._pending if p[0] <= t]
        if not ready:
            return
        self._pending = [p for p in self._pending if p[0] > t]
        verdict = "blocked" if new_blocks > 0 or check.get("verdict") == "blocked" else "passed"
        for _, rid in ready:
            self._write({"kind": "frame_check", "id": rid, "verdict": verdict, "scene": check.get("scene", "")})
        self._pending_blocked = self.blocked

    def _audit_prompt(self, change: Any, moment: Moment) -> None:
        value = change.value if isinstance(change.value, dict) else {}
        verdict = str(value.get("verdict", "?"))
        if verdict != "ok":
            self.refused_prompts += 1
        self._record += 1
        frame_check = "off" if not self.settings.blocked and not moment.scene.vision.negative else \
            "not_applied" if verdict != "ok" else "pending"
        if frame_check == "pending":
            if not self._pending:
                self._pending_blocked = self.blocked
            self._pending.append((change.t, self._record))
            del self._pending[:-256]  # bounded while no frame is checked (decoder released)
        self._write({"kind": "prompt", "id": self._record, "show_t": round(change.t, 3), "sender": change.source,
                     "slot": value.get("slot"), "text": value.get("text", ""), "guard": verdict,
                     "frame_check": frame_check, "scene": moment.scene.name})

    def _write(self, record: dict[str, Any]) -> None:
        if self.audit is not None:
            self.audit.write({"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), **record})

    def _describe_loop(self, moment: Moment) -> None:
        sv = moment.scene.vision
        if not sv.describe_loop:
            self._loop_scene = None
            return
        if self._loop_scene != moment.scene.name:
            self._loop_scene = moment.scene.name
            self._drift = DriftGuard(sv.drift_guard)
            self._path = 0.0
        self._path += moment.dt * float(self.bus.targets().get("speed", 1.0))
        if self._path < sv.period or not self.reading:
            return
        self._path = 0.0
        line = self._drift.next(self.reading.get("ranked", {}))
        result = self._guard.check(line)
        if not result.ok:
            self.loop_refused += 1
            log.warning("describe loop: description refused by the prompt guard (%s)", result.reason)
            return
        self.bus.post(Event("prompt", (None, result.text, None), "vision"))
        self.loop_prompts += 1
        self.chain.append(result.text)
        log.info("describe loop: %s", " -> ".join(self.chain))


class SteerWorker:
    """Runs steering rounds on its own thread, with the part's CLIP model (loaded when the part starts) and its own
    low-resolution decoder; one round at a time, a round offered while one runs is refused (the next tick offers it
    again). Keeps the show time between round starts: ``/health`` reports the achieved period."""

    def __init__(self, settings: VisionSettings, bus: Any, model: Any) -> None:
        self.settings = settings
        self.bus = bus
        self._model = model
        self._starts: deque[float] = deque(maxlen=8)  # show times of the newest rounds' starts
        self.round_ms = 0.0
        self.period_target: float | None = None  # the playing scene's [steer] period (path seconds)
        self.period_s: float | None = None  # achieved: mean show seconds between the newest rounds' starts
        self.text = ""
        self._job: tuple | None = None
        self._cond = threading.Condition()
        self._thread: SupervisedThread | None = None
        self._closed = False
        self._steerer = None
        self.rounds = self.jumps = self.faults = 0
        self._repeats = RepeatLog(log, interval=60.0)
        self.last_scores: list[float] = []

    def offer(self, scene: Any, seed: int, tau: float, params: dict, text: str, strength: float,
              t: float | None = None) -> bool:
        with self._cond:
            if self._job is not None or self._closed:
                return False
            self._job = (scene, seed, tau, params, text, strength)
            if t is not None:
                self._starts.append(t)
                starts = self._starts
                if len(starts) > 1:
                    self.period_s = (starts[-1] - starts[0]) / (len(starts) - 1)
            self.period_target = float(scene.steer.period)
            if self._thread is None:
                self._thread = supervised("vision-steer", self._run)
            self._cond.notify()
        return True

    def released(self) -> None:
        """Steering is off: the achieved period counts again from the next round."""
        self._starts.clear()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._job is not None or self._closed)
                if self._closed:
                    break
                scene, seed, tau, params, text, strength = self._job
            try:
                self._round(scene, seed, tau, params, text, strength)
            except Exception as e:  # noqa: BLE001 - steering never stops the show
                self.faults += 1
                self._repeats.warning("round", "steering round failed (%s), %d so far", e, self.faults)
            with self._cond:
                self._job = None
        if self._steerer is not None:
            self._steerer.close()

    def _round(self, scene: Any, seed: int, tau: float, params: dict, text: str, strength: float) -> None:
        started = time.perf_counter()
        if self._steerer is None:
            from .steer import Steerer

            clip = self._model()
            if clip is None:
                raise RuntimeError("the CLIP model did not load")
            self._steerer = Steerer(clip, clip.device)
        prompts = tuple((p.text, p.weight) for p in scene.prompts)
        verdict = self._steerer.evaluate(scene, seed, tau, params, text, strength, scene.steer, prompts)
        self.rounds += 1
        self.last_scores = [round(s, 4) for s in verdict.scores]
        if verdict.jump is not None:
            self.jumps += 1
            self.bus.post(Event("seed", verdict.jump, "vision.steer"))
        self.round_ms = (time.perf_counter() - started) * 1000.0

    def stop(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(60)  # a round (or the first model load) in progress is let finish
            if self._thread.is_alive():
                log.warning("a steering round is still running after 60 s; leaving it")
        self._thread = None
        self._closed = False
        self._job = None

    def stats(self) -> dict[str, Any]:
        period = self.period_s
        return {"text": self.text, "rounds": self.rounds, "jumps": self.jumps, "faults": self.faults,
                "last_scores": self.last_scores, "period": self.period_target,
                "period_s": None if period is None else round(period, 3), "round_ms": round(self.round_ms, 1)}


@register("vision", table="vision", settings=VisionSettings, params=vision_params, order=50, hooks=vision_hooks,
          check=check_vision)
def build(settings: VisionSettings, ctx: PartContext) -> VisionPart | None:
    """The vision part: only with ``[vision] enabled = true`` (the CLIP worker runs in the decoder's process)."""
    return VisionPart(settings, ctx) if settings.enabled else None
