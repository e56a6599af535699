"""Prompt weights as pure functions of path time: fixed, tour and drift."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from installation.latent.prompts import PromptMotionSettings, moved_prompts, prompt_shares

PROMPTS = (("fox", 1.0), ("sea", 0.5), ("hill", 2.0))


def test_fixed_keeps_the_weights():
    assert moved_prompts(PROMPTS, PromptMotionSettings(), 123.4, 0) == PROMPTS


def test_tour_holds_then_crossfades_and_closes():
    s = PromptMotionSettings(kind="tour", period=10.0, hold=0.25)
    assert prompt_shares(s, 3, 0.0, 0) == (1.0, 0.0, 0.0)
    assert prompt_shares(s, 3, 2.4, 0) == (1.0, 0.0, 0.0)  # held for the first quarter
    mid = prompt_shares(s, 3, 6.25, 0)  # half way through the crossfade
    assert mid[0] == pytest.approx(0.5) and mid[1] == pytest.approx(0.5) and mid[2] == 0.0
    assert prompt_shares(s, 3, 10.0, 0) == (0.0, 1.0, 0.0)
    assert prompt_shares(s, 3, 29.0, 0)[0] > 0.9  # the last prompt fades back into the first
    assert prompt_shares(s, 3, 30.0, 0) == prompt_shares(s, 3, 0.0, 0)  # closed
    moved = moved_prompts(PROMPTS, s, 10.0, 0)
    assert [w for _, w in moved] == [0.0, 0.5, 0.0] and [t for t, _ in moved] == ["fox", "sea", "hill"]


@pytest.mark.parametrize("kind", ["tour", "drift"])
def test_motion_is_continuous_and_deterministic(kind):
    s = PromptMotionSettings(kind=kind, period=5.0, hold=0.2)
    taus = np.linspace(0.0, 60.0, 6001)
    shares = np.array([prompt_shares(s, 4, float(t), 7) for t in taus])
    assert np.abs(np.diff(shares, axis=0)).max() < 0.02  # no jumps at 0.01 path-second steps
    assert np.array_equal(shares, np.array([prompt_shares(s, 4, float(t), 7) for t in taus]))
    assert (shares.sum(axis=1) > 0).all()  # never all zero


def test_drift_wanders_inside_floor_and_one_and_depends_on_the_seed():
    s = PromptMotionSettings(kind="drift", period=4.0, floor=0.1)
    taus = np.linspace(0.0, 200.0, 4001)
    a = np.array([prompt_shares(s, 3, float(t), 1) for t in taus])
    b = np.array([prompt_shares(s, 3, float(t), 2) for t in taus])
    assert a.min() >= 0.1 - 1e-9 and a.max() <= 1.0 + 1e-9
    assert (a.max(axis=0) - a.min(axis=0) > 0.5).all()  # every weight really moves
    assert not np.allclose(a, b)


def test_settings_are_checked():
    with pytest.raises(ValidationError):
        PromptMotionSettings(kind="spiral")
    with pytest.raises(ValidationError):
        PromptMotionSettings(period=0)
    with pytest.raises(ValidationError):
        PromptMotionSettings(bogus=1)
    assert prompt_shares(PromptMotionSettings(kind="tour"), 1, 3.0, 0) == (1.0,)


def test_adding_a_prompt_leaves_the_others_drift_alone():
    s = PromptMotionSettings(kind="drift", period=4.0)
    for tau in (0.0, 3.3, 55.0):
        assert prompt_shares(s, 4, tau, 9)[:3] == prompt_shares(s, 3, tau, 9)
