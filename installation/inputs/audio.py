"""Microphone features: level, bands, centroid, onsets, beat phase and tempo, written to the bus as ``audio.*``.

The PortAudio callback only copies the block (mixed to mono) into a bounded queue; a worker thread does the numpy
work, smooths each feature with an attack/release :class:`~installation.bus.Follower` and writes it to the bus.
The same worker owns the device: if it is missing, fails to open or stops delivering blocks, the features decay to
zero at their release rate, a warning is logged and the stream is reopened with exponential backoff.
``sounddevice`` is imported lazily, in the worker, so a machine without PortAudio still runs the show.
"""

from __future__ import annotations

import logging
import math
import queue
import time
from collections import deque
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from installation.inputs.base import ThreadedInput
from installation.bus import Event, Follower, ParamBus, ParamSpec
from installation.parts import PartContext, register

log = logging.getLogger(__name__)

FEATURES = (
    "audio.rms", "audio.peak", "audio.low", "audio.mid", "audio.high", "audio.centroid", "audio.onset",
    "audio.beat_phase", "audio.bpm",
)
_CENTROID_MAX = 24000.0
_BPM_MAX = 300.0
_LEVELS = ("audio.rms", "audio.peak", "audio.low", "audio.mid", "audio.high")


class Envelope(BaseModel):
    """Follower settings of one feature: attack and release time constants (seconds) and a gain."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    attack: float = Field(default=0.01, ge=0.0)
    release: float = Field(default=0.25, ge=0.0)
    gain: float = Field(default=1.0, ge=0.0)


class AudioSettings(BaseModel):
    """``[inputs.audio]``: which device, the analysis sizes, band edges, smoothing and onset/tempo tuning."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(default=False, description="off unless asked for: no microphone is opened by default")
    device: str | int | None = Field(default=None, description="name (substring) or index; None = default input")
    samplerate: int | None = Field(default=None, ge=8000, le=384000, description="None = the device's default")
    blocksize: int = Field(default=512, ge=32, le=8192, description="frames per callback (the analysis hop)")
    channels: int = Field(default=1, ge=1, le=64, description="first N input channels, mixed to mono")
    fft_size: int = Field(default=1024, ge=128, le=16384, description="analysis window (samples)")
    band_edges: tuple[float, float, float, float] = Field(
        default=(20.0, 250.0, 2000.0, 16000.0), description="Hz: low = [e0, e1), mid = [e1, e2), high = [e2, e3)"
    )
    gain: float = Field(default=1.0, ge=0.0, description="applied to the level features (rms, peak, bands)")
    attack: float = Field(default=0.01, ge=0.0, description="default follower attack, seconds")
    release: float = Field(default=0.25, ge=0.0, description="default follower release, seconds")
    envelopes: dict[str, Envelope] = Field(default_factory=dict, description="per-feature overrides, by name")
    onset_threshold: float = Field(default=2.0, ge=1.0, description="times the recent mean spectral flux")
    onset_floor: float = Field(default=0.02, ge=0.0, description="absolute minimum flux for an onset")
    onset_window: float = Field(default=1.0, gt=0.0, description="seconds of flux history for the threshold")
    onset_min_interval: float = Field(default=0.1, ge=0.0, description="seconds between two onsets, at least")
    bpm_range: tuple[float, float] = Field(default=(60.0, 200.0), description="tempo search range")
    bpm_hold: float = Field(default=8.0, gt=0.0, description="seconds without onsets before the tempo resets")
    stall_timeout: float = Field(default=1.0, gt=0.0, description="seconds without a block = device vanished")
    reopen_min: float = Field(default=0.5, gt=0.0, description="first reopen delay, doubling up to reopen_max")
    reopen_max: float = Field(default=10.0, gt=0.0)

    @model_validator(mode="after")
    def _check(self) -> "AudioSettings":
        e = self.band_edges
        if not all(a < b for a, b in zip(e, e[1:])) or e[0] < 0:
            raise ValueError(f"band_edges must increase from >= 0, got {e}")
        lo, hi = self.bpm_range
        if not 20.0 <= lo < hi / 2 + 1e-9 or hi > _BPM_MAX:
            raise ValueError(f"bpm_range {self.bpm_range} must span an octave within 20..{_BPM_MAX:g}")
        if self.fft_size & (self.fft_size - 1):
            raise ValueError(f"fft_size must be a power of two, got {self.fft_size}")
        unknown = set(self.envelopes) - set(FEATURES)
        if unknown:
            raise ValueError(f"envelopes: unknown features {sorted(unknown)} (known: {FEATURES})")
        return self


def feature_specs(settings: AudioSettings | None = None) -> list[ParamSpec]:
    """The bus parameters this input writes (unsmoothed on the bus: the input smooths them itself)."""
    return [
        ParamSpec("audio.rms", min=0.0, max=1.0, doc="RMS level of the block, 0..1 (a 0.5 sine reads 0.354) x gain"),
        ParamSpec("audio.peak", min=0.0, max=1.0, doc="absolute peak of the block, 0..1 x gain"),
        ParamSpec("audio.low", min=0.0, max=1.0, doc="RMS level in the low band (band_edges[0:2]) x gain"),
        ParamSpec("audio.mid", min=0.0, max=1.0, doc="RMS level in the mid band (band_edges[1:3]) x gain"),
        ParamSpec("audio.high", min=0.0, max=1.0, doc="RMS level in the high band (band_edges[2:4]) x gain"),
        ParamSpec("audio.centroid", min=0.0, max=_CENTROID_MAX, doc="spectral centroid in Hz (0 in silence)"),
        ParamSpec("audio.onset", min=0.0, max=1.0, doc="onset envelope: jumps to the onset strength, decays"),
        ParamSpec("audio.beat_phase", min=0.0, max=1.0, doc="position in the current beat, 0 at the beat"),
        ParamSpec("audio.bpm", min=0.0, max=_BPM_MAX, doc="tempo estimate from onset intervals, 0 = unknown"),
    ]


def _import_sounddevice() -> Any:
    """Import sounddevice, turning a missing PortAudio into a clear RuntimeError."""
    try:
        import sounddevice as sd
    except OSError as exc:
        raise RuntimeError(f"PortAudio library not found (install libportaudio2): {exc}") from exc
    except ImportError as exc:
        raise RuntimeError(f"python package sounddevice not installed: {exc}") from exc
    return sd


def probe_devices() -> tuple[list[str], str]:
    """(input device descriptions, "") or ([], why not) — for ``installation doctor``."""
    try:
        sd = _import_sounddevice()
        devices = sd.query_devices()
        hostapis = sd.query_hostapis()
    except Exception as exc:  # noqa: BLE001 - doctor must report, never raise
        return [], str(exc)
    out = []
    for i, d in enumerate(devices):
        if d.get("max_input_channels", 0) > 0:
            api = hostapis[d["hostapi"]]["name"] if 0 <= d.get("hostapi", -1) < len(hostapis) else "?"
            out.append(f"{i}: {d['name']} ({api}, {d['max_input_channels']} in, {d['default_samplerate']:g} Hz)")
    return out, "" if out else "no input devices found"


def list_devices() -> list[str]:
    """Input device descriptions; an empty list (reason logged as a warning) when there are none or no PortAudio."""
    devices, why = probe_devices()
    if why:
        log.warning("audio devices: %s", why)
    return devices


class _Analyzer:
    """Block-by-block feature extraction with its own state; pure numpy, no threads, deterministic."""

    def __init__(self, s: AudioSettings, samplerate: float) -> None:
        self.s = s
        self.sr = float(samplerate)
        n = s.fft_size
        self.window = np.hanning(n).astype(np.float64)
        self.wnorm = float(np.sum(self.window**2)) * n
        self.mag_scale = 2.0 / float(np.sum(self.window))
        self.freqs = np.fft.rfftfreq(n, 1.0 / self.sr)
        e = s.band_edges
        self.bands = [(self.freqs >= a) & (self.freqs < b) for a, b in zip(e, e[1:])]
        self.ring = np.zeros(n, dtype=np.float64)
        self.prev_logmag: np.ndarray | None = None
        hist = max(4, int(round(s.onset_window * self.sr / s.blocksize)))
        self.flux_hist: deque[float] = deque(maxlen=hist)
        self.t = 0.0  # audio time at the end of the last block, seconds
        self.last_onset = -math.inf
        self.onsets: deque[float] = deque(maxlen=64)
        self.period = 0.0
        self.anchor = 0.0

    def process(self, block: np.ndarray) -> tuple[dict[str, float], float | None]:
        """Raw (unsmoothed) features of one mono block, and the onset strength if an onset ends in it."""
        x = np.asarray(block, dtype=np.float64)
        x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        self.t += len(x) / self.sr
        n = len(self.ring)
        if len(x) >= n:
            self.ring[:] = x[-n:]
        else:
            self.ring[:-len(x)] = self.ring[len(x):]
            self.ring[-len(x):] = x
        rms = float(np.sqrt(np.mean(x * x))) if len(x) else 0.0
        peak = float(np.max(np.abs(x))) if len(x) else 0.0
        spec = np.fft.rfft(self.ring * self.window)
        power = spec.real**2 + spec.imag**2
        bands = [math.sqrt(2.0 * float(np.sum(power[m])) / self.wnorm) for m in self.bands]
        mag = np.sqrt(power) * self.mag_scale
        total = float(np.sum(mag[1:]))
        centroid = float(np.sum(self.freqs[1:] * mag[1:]) / total) if total > 1e-6 else 0.0
        logmag = np.log1p(100.0 * mag)
        flux = 0.0 if self.prev_logmag is None else float(np.mean(np.maximum(logmag - self.prev_logmag, 0.0)))
        self.prev_logmag = logmag
        mean_flux = sum(self.flux_hist) / len(self.flux_hist) if self.flux_hist else 0.0
        threshold = max(self.s.onset_floor, self.s.onset_threshold * mean_flux)
        self.flux_hist.append(flux)
        onset: float | None = None
        if flux > threshold and self.t - self.last_onset >= self.s.onset_min_interval:
            onset = min(max((flux - threshold) / flux, 0.0), 1.0)
            self.last_onset = self.t
            self.onsets.append(self.t)
            self._tempo()
        if self.onsets and self.t - self.onsets[-1] > self.s.bpm_hold:
            self.onsets.clear()
            self.period = 0.0
        phase = ((self.t - self.anchor) / self.period) % 1.0 if self.period > 0 else 0.0
        feats = {
            "audio.rms": rms,
            "audio.peak": peak,
            "audio.low": bands[0],
            "audio.mid": bands[1],
            "audio.high": bands[2],
            "audio.centroid": centroid,
            "audio.beat_phase": phase,
            "audio.bpm": 60.0 / self.period if self.period > 0 else 0.0,
        }
        return feats, onset

    def _tempo(self) -> None:
        """Tempo from onset intervals: fold into the BPM range, take the median, refine by least squares."""
        times = [t for t in self.onsets if self.t - t <= self.s.bpm_hold]
        if len(times) < 4:
            return
        lo_p, hi_p = 60.0 / self.s.bpm_range[1], 60.0 / self.s.bpm_range[0]
        folded = []
        for ioi in np.diff(times):
            if ioi <= 0:
                continue
            while ioi < lo_p:
                ioi *= 2.0
            while ioi >= hi_p:
                ioi /= 2.0
            folded.append(ioi)
        if len(folded) < 3:
            return
        p0 = float(np.median(folded))
        t = np.asarray(times)
        k = np.round((t - t[-1]) / p0)
        if np.ptp(k) < 2:
            return
        slope, intercept = np.polyfit(k, t, 1)
        p = float(slope) if lo_p * 0.9 <= slope <= hi_p * 1.1 else p0
        self.period = p
        self.anchor = float(intercept)


class AudioInput(ThreadedInput):
    """Microphone input: ``start()`` launches the worker that owns the stream; features land on the bus."""

    thread_name = "audio-input"

    def __init__(self, settings: AudioSettings, bus: ParamBus) -> None:
        super().__init__({"blocks": 0, "onsets": 0, "opens": 0, "open_failures": 0, "reopens": 0,
                          "overflows": 0, "device": None, "samplerate": None, "error": ""})
        self.settings = settings
        self.bus = bus
        self._specs = {spec.name: spec for spec in feature_specs(settings)}
        for spec in self._specs.values():
            bus.declare(spec)
        self._envs = {
            name: settings.envelopes.get(name)
            or Envelope(
                attack=0.0 if name == "audio.onset" else settings.attack,
                release=settings.release,
                gain=settings.gain if name in _LEVELS else 1.0,
            )
            for name in FEATURES
        }
        self._followers = {n: Follower(0.0, e.attack, e.release) for n, e in self._envs.items()}
        self._q: queue.Queue[np.ndarray] = queue.Queue(maxsize=64)
        self._stream: Any = None  # owned by the worker; exposed only for fault-injection tests
        self._values = {n: 0.0 for n in FEATURES}

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def _stopped(self) -> None:
        self._set_state("stopped")

    def values(self) -> dict[str, float]:
        """The latest smoothed features (the same values written to the bus)."""
        with self._lock:
            return dict(self._values)

    def _set_state(self, state: str, error: str | None = None) -> None:
        with self._lock:
            self._stats["state"] = state
            if error is not None:
                self._stats["error"] = error

    def _bump(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._stats[key] += n

    # -- worker ------------------------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            sd = _import_sounddevice()
        except RuntimeError as exc:
            log.error("audio input disabled: %s", exc)
            self._set_state("unavailable", str(exc))
            return
        backoff = self.settings.reopen_min
        first = True
        while not self._stop.is_set():
            stream, analyzer = self._open(sd, rescan=not first)
            first = False
            if stream is None:
                self._idle(backoff)
                backoff = min(backoff * 2.0, self.settings.reopen_max)
                continue
            backoff = self.settings.reopen_min
            self._stream = stream
            try:
                self._pump(stream, analyzer)
            except Exception as exc:  # noqa: BLE001 - the show goes on
                log.warning("audio analysis failed: %s", exc, exc_info=True)
            finally:
                self._stream = None
                self._close(stream)
            if not self._stop.is_set():
                self._bump("reopens")
                log.warning("audio input stopped delivering; reopening")
                self._idle(self.settings.reopen_min)
        self._decay(math.inf)

    def _open(self, sd: Any, rescan: bool) -> tuple[Any, _Analyzer | None]:
        s = self.settings
        try:
            try:
                info = sd.query_devices(s.device, "input")
            except (ValueError, sd.PortAudioError):
                if not rescan:
                    raise
                sd._terminate()  # PortAudio lists devices once: rescan so a replugged device is found
                sd._initialize()
                info = sd.query_devices(s.device, "input")
            index = info["index"] if "index" in info else s.device
            sr = float(s.samplerate or info["default_samplerate"])
            channels = max(1, min(s.channels, int(info["max_input_channels"])))
            while not self._q.empty():
                self._q.get_nowait()
            stream = sd.InputStream(
                device=index, channels=channels, samplerate=sr, blocksize=s.blocksize, dtype="float32",
                callback=self._callback,
            )
            stream.start()
        except Exception as exc:  # noqa: BLE001 - any device error: warn, decay, retry later
            self._bump("open_failures")
            self._set_state("waiting", f"cannot open audio device {s.device!r}: {exc}")
            log.warning("audio: cannot open device %r: %s (retrying)", s.device, exc)
            return None, None
        with self._lock:
            self._stats.update(opens=self._stats["opens"] + 1, device=info["name"], samplerate=sr, error="")
        self._set_state("running")
        log.info("audio: listening on %r at %g Hz", info["name"], sr)
        return stream, _Analyzer(s, sr)

    @staticmethod
    def _close(stream: Any) -> None:
        try:
            stream.abort()
        except Exception:  # noqa: BLE001
            pass
        try:
            stream.close()
        except Exception:  # noqa: BLE001
            pass

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        """PortAudio thread: copy the mono mix into the queue, nothing else."""
        if status:
            self._bump("overflows")
        try:
            self._q.put_nowait(indata.mean(axis=1) if indata.shape[1] > 1 else indata[:, 0].copy())
        except queue.Full:
            self._bump("overflows")

    def _pump(self, stream: Any, analyzer: _Analyzer | None) -> None:
        """Process blocks until stop, or until the stream stalls (device gone)."""
        assert analyzer is not None
        last = decayed = time.monotonic()
        while not self._stop.is_set():
            try:
                block = self._q.get(timeout=0.05)
            except queue.Empty:
                now = time.monotonic()
                if now - last > self.settings.stall_timeout or not stream.active:
                    return
                if now - last > 0.2:  # a gap: let the features fall while we wait
                    self._decay(now - max(decayed, last))
                    decayed = now
                continue
            last = decayed = time.monotonic()
            feats, onset = analyzer.process(block)
            self._emit(feats, onset, len(block) / analyzer.sr)

    def _emit(self, raw: dict[str, float], onset: float | None, dt: float) -> None:
        specs = self._specs
        out: dict[str, float] = {}
        for name in FEATURES:
            if name in ("audio.beat_phase", "audio.bpm"):
                v = raw[name]  # a phase ramp must not be smoothed
            elif name == "audio.onset":
                v = self._followers[name].step(onset * self._envs[name].gain if onset else 0.0, dt)
            else:
                v = self._followers[name].step(raw[name] * self._envs[name].gain, dt)
            spec = specs[name]
            # float32: plenty for a feature, and the archive keeps exactly what the show used in 4 bytes
            out[name] = float(np.float32(min(max(v, spec.min), spec.max)))
        with self._lock:
            self._values = out
            self._stats["blocks"] += 1
            if onset is not None:
                self._stats["onsets"] += 1
        for name, v in out.items():  # continuous: journaled as the loop consumes them (bus.set(sampled=True))
            self.bus.set(name, v, source="audio", sampled=True)
        if onset is not None:
            self.bus.post(Event("onset", float(onset), "audio"))

    def _decay(self, dt: float) -> None:
        """No audio: every smoothed feature falls towards zero at its release rate; tempo resets."""
        out = {n: float(np.float32(f.step(0.0, dt))) for n, f in self._followers.items()}
        out["audio.beat_phase"] = 0.0
        out["audio.bpm"] = 0.0
        with self._lock:
            self._values = out
        for name, v in out.items():
            self.bus.set(name, v, source="audio", sampled=True)

    def _idle(self, seconds: float) -> None:
        """Wait (interruptibly) while letting the features decay."""
        end = time.monotonic() + seconds
        last = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= end:
                break
            self._stop.wait(min(0.05, end - now))
            now2 = time.monotonic()
            self._decay(now2 - last)
            last = now2


@register("audio", table="inputs.audio", settings=AudioSettings, params=feature_specs, order=11)
def build(settings: AudioSettings, ctx: PartContext) -> AudioInput | None:
    """The microphone part: off unless ``[inputs.audio] enabled = true`` (a missing device is retried, not fatal)."""
    return AudioInput(settings, ctx.bus) if settings.enabled else None
