"""The CLIP worker as a post-render hook: the frame check holds frames (the last safe one stays), the reader never
makes the decoder wait (latest wins, skips counted), similarities to the prompt slots land on the bus."""

from __future__ import annotations

import time

import numpy as np
import pytest

from installation.bus import ParamBus
from installation.render.hooks import HookRunner, apply_result
from installation.render.slot import Frame
from installation.vision.clip import similarity
from installation.vision.hook import VisionHook, VisionHookOptions
from installation.vision.part import vision_params
from support import wait_until


def _frame(seed: int, seq: int, prompts=(), scene="a") -> Frame:
    rgb = np.random.default_rng(seed).integers(0, 256, (40, 64, 3), dtype=np.uint8)
    return Frame(rgb, seq, seq / 20, time.monotonic(), scene, 0, tuple(prompts))


CONCEPTS = ("a cat", "a dog", "a red circle", "a storm at sea", "a lighthouse", "a forest", "a city at night",
            "a weapon", "a face", "fire", "snow", "a green field", "the moon", "a blue square", "smoke", "a crowd")


def _pictures() -> dict[str, np.ndarray]:
    yy, xx = np.indices((40, 64))
    solid = lambda r, g, b: np.dstack([np.full((40, 64), v, np.uint8) for v in (r, g, b)])  # noqa: E731
    return {"noise": np.random.default_rng(1).integers(0, 256, (40, 64, 3), dtype=np.uint8),
            "black": solid(0, 0, 0), "white": solid(255, 255, 255), "red": solid(255, 0, 0),
            "stripes": (xx // 4 % 2 * 255).astype(np.uint8)[:, :, None].repeat(3, 2),
            "ramp": np.dstack([xx * 4, yy * 6, 255 - xx * 4]).astype(np.uint8)}


def _a_match(clip_model):
    """A blocked concept made to match one picture and not another, through the concept's text alone: of a few
    texts and pictures, the text whose similarity to its most and least similar picture lies furthest apart, and a
    threshold halfway. Returns (text, matching picture, other picture, threshold, a text matching neither)."""
    pics = _pictures()
    sims = similarity(clip_model.embed_texts(list(CONCEPTS)), clip_model.embed_frames(list(pics.values())))
    gaps = sims.max(1) - sims.min(1)
    best = int(gaps.argmax())
    bad, good = list(pics.values())[int(sims[best].argmax())], list(pics.values())[int(sims[best].argmin())]
    threshold = float(sims[best].max() + sims[best].min()) / 2
    assert gaps[best] > 0.08, gaps  # a clear margin on both sides of the threshold (seen: 0.12)
    decoy = CONCEPTS[int(sims.max(1).argmin())]  # below the threshold for every picture
    assert sims.max(1).min() < threshold - 0.04
    return CONCEPTS[best], bad, good, threshold, float(sims[best].max()), decoy


def _picture_frame(rgb: np.ndarray, seq: int, scene: str = "a") -> Frame:
    return Frame(rgb, seq, seq / 20, time.monotonic(), scene, 0, ())


def test_a_blocked_concept_made_to_match_holds_the_frame(tiny_clip, clip_model):
    text, bad, good, threshold, score, decoy = _a_match(clip_model)
    hook = VisionHook(VisionHookOptions(tiny_clip.settings(blocked=(decoy, text), threshold=threshold)), clip_model)
    try:
        results = []
        hook.bind(results.append)
        assert not hook.admit(_picture_frame(bad, 1))  # the concept's text matches it: held
        assert hook.admit(_picture_frame(good, 2))
        assert not hook.admit(_picture_frame(bad, 3)) and hook.blocked == 2 and hook.checked == 3
        verdicts = [r["notes"]["vision.frame_check"]["verdict"] for r in results if "notes" in r]
        assert verdicts[0] == "blocked" and "passed" not in verdicts[:1]
        assert any(r["params"]["vision.blocked"] == 1.0 for r in results)
    finally:
        hook.close()
    # the same pictures with only the decoy concept, or with the threshold just over the match: nothing is held
    for blocked, over in (((decoy,), threshold), ((decoy, text), score + 0.005)):
        hook = VisionHook(VisionHookOptions(tiny_clip.settings(blocked=blocked, threshold=over)), clip_model)
        try:
            assert hook.admit(_picture_frame(bad, 1)) and hook.admit(_picture_frame(good, 2)) and hook.blocked == 0
        finally:
            hook.close()


def test_a_scenes_negative_concepts_apply_to_its_frames_only(tiny_clip, clip_model):
    text, bad, good, threshold, _, _ = _a_match(clip_model)
    hook = VisionHook(VisionHookOptions(tiny_clip.settings(threshold=threshold), {"b": (text,)}), clip_model)
    try:
        assert hook.concepts_for("a") is None and hook.concepts_for("b").shape[0] == 1
        assert not hook.admit(_picture_frame(bad, 1, scene="b"))  # scene b's negative concept matches it
        assert hook.admit(_picture_frame(good, 2, scene="b"))
        assert hook.admit(_picture_frame(bad, 3, scene="a"))  # scene a has no negative concepts
        assert hook.blocked == 1
    finally:
        hook.close()


def test_similarity_to_each_prompt_slot_lands_on_the_bus(tiny_clip, clip_model):
    settings = tiny_clip.settings()
    bus = ParamBus(vision_params(settings))
    journal = bus.subscribe()
    runner = HookRunner([("vision", VisionHookOptions(settings))], lambda r: apply_result(bus, r))
    hook = runner.hooks[0]
    try:
        frame = _frame(4, 1, prompts=("a lighthouse", "a storm"))
        assert runner.admit(frame)  # no concepts: no check, and no wait for the model
        runner(frame)
        assert hook.loading_skipped == 1 or hook.embedded == 1  # offered while the model loads: skipped
        assert hook.wait_ready(60)
        runner(frame)
        assert wait_until(lambda: bus.notes().get("vision.description"), timeout=30)
        emb = clip_model.embed_frames([frame.rgb])[0].astype(np.float32)
        texts = clip_model.embed_texts(["a lighthouse", "a storm"]).astype(np.float32)
        assert wait_until(lambda: bus.targets()["vision.similarity.1"] != 0.0, timeout=10)
        for i in range(2):
            assert bus.targets()[f"vision.similarity.{i}"] == pytest.approx(float(texts[i] @ emb), abs=5e-3)
        assert bus.targets()["vision.similarity.2"] == 0.0
        notes = [c for c in journal.drain() if c.kind == "note"]
        assert {"vision.description", "vision.reading", "vision.stats"} <= {c.name for c in notes}
        assert all(c.source == "hook:vision" for c in notes)
        description = bus.notes()["vision.description"]
        assert len(description.split(", ")) == 4  # subject, material, style, mood from the shipped vocabulary
    finally:
        runner.close()
    assert not hook._thread.is_alive()


def test_the_reader_thread_comes_back_after_a_fault_in_its_loop(tiny_clip, clip_model):
    hook = VisionHook(VisionHookOptions(tiny_clip.settings()), clip_model)
    try:
        hook(_frame(1, 1))
        assert wait_until(lambda: hook.embedded == 1, timeout=30)
        assert hook._thread.inject()  # raised when the idle reader next wakes
        hook(_frame(2, 2))  # wakes it: that run ends, the frame stays pending
        assert wait_until(lambda: hook._thread.restarts == 1, timeout=10)
        assert wait_until(lambda: hook.embedded == 2, timeout=30) and hook._thread.is_alive()
    finally:
        hook.close()


def test_the_reader_never_waits_latest_wins_and_counts_skips(tiny_clip, clip_model):
    hook = VisionHook(VisionHookOptions(tiny_clip.settings(every_n=2)), clip_model)
    got = []
    hook.bind(got.append)
    try:
        t0 = time.perf_counter()
        for i in range(1, 201):
            hook(_frame(i % 7, i))
        handed = time.perf_counter() - t0
        # every 2nd frame sampled; each one embedded or skipped (a newer one arrived before the worker took it)
        assert wait_until(lambda: hook.embedded + hook.skipped == 100, timeout=30)
        assert hook.offered == 200 and hook._pending is None
        assert hook.skipped > 0
        assert handed < 1.0  # 200 hand-overs; the embeddings themselves ran on the vision thread
    finally:
        hook.close()


def test_a_frame_check_that_cannot_start_holds_every_frame(tiny_clip, tmp_path):
    settings = tiny_clip.settings(blocked=("x",)).model_copy(update={"vocabulary": str(tmp_path / "none.txt")})
    runner = HookRunner([("vision", VisionHookOptions(settings))], lambda r: None)
    assert runner.faults == 1 and not runner.admit(_frame(1, 1))
    open_runner = HookRunner([("vision", VisionHookOptions(settings.model_copy(update={"blocked": ()})))],
                             lambda r: None)
    try:  # no check configured: the model loads on the vision thread, fails there, and frames go on
        assert open_runner.admit(_frame(1, 1))
        assert wait_until(lambda: open_runner.hooks[0].faults == 1, timeout=60)
        open_runner(_frame(1, 2))
        assert open_runner.admit(_frame(1, 3)) and open_runner.hooks[0].loading_skipped == 1
    finally:
        open_runner.close()


def test_kept_frames_are_embedded_in_order_and_never_replaced(tiny_clip, clip_model):
    hook = VisionHook(VisionHookOptions(tiny_clip.settings()), clip_model)
    got = []
    hook.bind(got.append)
    try:
        for i in range(1, 11):
            hook.keep(_frame(i, i))
        assert hook.drain(60) and hook.kept == 10 and hook.keep_dropped == 0
    finally:
        hook.close()
    events = [value for r in got for kind, value in r.get("events", ()) if kind == "vision.embedding"]
    assert [e["t"] for e in events] == [i / 20 for i in range(1, 11)]
    want = clip_model.embed_frames([_frame(3, 3).rgb])[0].astype(np.float32)
    assert np.allclose(events[2]["embedding"], want, atol=1e-3)


def test_a_reader_whose_model_cannot_load_drops_kept_frames_at_once(tiny_clip, tmp_path):
    settings = tiny_clip.settings().model_copy(update={"vocabulary": str(tmp_path / "none.txt")})
    hook = VisionHook(VisionHookOptions(settings))
    hook.wait_for_room = True  # an offline render: it would wait for room, but nothing will ever take them
    try:
        assert wait_until(lambda: hook.faults == 1, timeout=60)
        started = time.perf_counter()
        for i in range(100):
            hook.keep(_frame(1, i))
        assert hook.keep_dropped == 100 and hook.drain(1.0)
        assert time.perf_counter() - started < 5.0  # no wait per frame
    finally:
        hook.close()
