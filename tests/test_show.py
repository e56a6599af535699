"""The show: scene order, scene events, path time, the immutable PathPlan, seed blends, defaults and freeze."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from installation.bus import Event, ParamBus
from installation.config import load_show
from installation.latent import build, slerp
from installation.show import SEED_BLEND, PathPlan, Show

REPO = Path(__file__).resolve().parent.parent
DT = 1 / 20  # fixed step; frame n is at t = n * DT


def _scene(kind: str, duration: float, seed: int, latent_dim: int = 8, params: str = "", transition: float = 1.0,
           model_seed: int = 0) -> str:
    return (f'description = "test"\nduration = {duration}\ntransition = {transition}\nseed = {seed}\n'
            f'[decoder]\ntype = "cppn"\nmodel_seed = {model_seed}\nresolution = "32x32"\nwidth = 8\ndepth = 2\n'
            f'latent_dim = {latent_dim}\n'
            f'[trajectory]\n{kind}\n[params]\n{params}\n')


SCENES = {
    # alpha and beta share a decoder (so changing between them blends paths); gamma is a cut to another one
    "alpha": _scene('kind = "loop"\nperiod = 10.0', 2.0, 1, params="speed = 1.0"),
    "beta": _scene('kind = "orbit"\nperiod = 6.0', 3.0, 2, params='radius = 1.2\n"grade.contrast" = 1.5',
                   transition=0.5),
    "gamma": _scene('kind = "walk"', 1.0, 3, latent_dim=12, model_seed=5, params="speed = 0.5"),
    "still": _scene('kind = "loop"\nperiod = 10.0', 0.0, 4),  # duration 0: stays until told
}


def _spec(tmp_path: Path, scenes: list[str], order: str = "sequence", shuffle_seed: int = 0, params: str = ""):
    d = tmp_path / "scenes"
    d.mkdir(exist_ok=True)
    for name, text in SCENES.items():
        (d / f"{name}.toml").write_text(text)
    cfg = tmp_path / "show.toml"
    cfg.write_text(f'[show]\nscenes = {scenes!r}\norder = "{order}"\nshuffle_seed = {shuffle_seed}\n'
                   f'scenes_dir = "{d}"\nshaders_dir = "{REPO / "shaders"}"\n'
                   f'[params]\n{params}\n'.replace("'", '"'))
    return load_show(cfg)


def _show(spec, **kw) -> tuple[Show, ParamBus]:
    bus = ParamBus(spec.params.values())
    return Show(spec, bus, **kw), bus


class Runner:
    """Drives a show with a fixed step, as the runtime does: tick the bus, update the show."""

    def __init__(self, show: Show, bus: ParamBus):
        self.show, self.bus, self.n = show, bus, 0
        self.plan: PathPlan | None = None
        self.rest: list[Event] = []

    @property
    def t(self) -> float:
        return self.n * DT

    def step(self, frozen: bool = False) -> PathPlan:
        tick = self.bus.tick(DT if self.n else 0.0)
        self.plan, self.rest = self.show.update(self.t, DT if self.n else 0.0, tick, frozen=frozen)
        self.n += 1
        return self.plan

    def run(self, seconds: float, frozen: bool = False) -> list[PathPlan]:
        return [self.step(frozen) for _ in range(int(round(seconds / DT)))]


@pytest.fixture
def spec3(tmp_path):
    return _spec(tmp_path, ["alpha", "beta", "gamma"], params='radius = 0.3\n"grade.contrast" = 0.8')


@pytest.fixture
def still_spec(tmp_path):
    return _spec(tmp_path, ["still", "alpha"])


# -- scene order ---------------------------------------------------------------------------------------------------

def test_scenes_play_in_order_when_their_duration_elapses(spec3):
    show, bus = _show(spec3)
    r = Runner(show, bus)
    changes = []
    last = None
    for _ in range(int(16 / DT)):
        plan = r.step()
        if plan.scene != last:
            changes.append((round(r.t - DT, 6), plan.scene))
            last = plan.scene
    # alpha 2 s, beta 3 s, gamma 1 s, then round again
    assert changes == [(0.0, "alpha"), (2.0, "beta"), (5.0, "gamma"), (6.0, "alpha"), (8.0, "beta"),
                       (11.0, "gamma"), (12.0, "alpha"), (14.0, "beta")]
    assert show.position == 7
    assert show.state(r.t)["scene"] == "beta"


def test_cut_counts_decoder_changes_only(spec3):
    show, bus = _show(spec3)
    r = Runner(show, bus)
    cuts = {}
    for _ in range(int(6.5 / DT)):
        plan = r.step()
        cuts.setdefault(plan.scene, plan.cut)
    # alpha -> beta share a decoder (a path blend, no cut); beta -> gamma changes decoder (a cut)
    assert cuts == {"alpha": 0, "beta": 0, "gamma": 1}
    assert r.plan.cut == 2  # gamma -> alpha is another cut
    assert r.plan.decoder == spec3.scene("alpha").decoder


def test_scene_with_zero_duration_stays(still_spec):
    show, bus = _show(still_spec)
    r = Runner(show, bus)
    r.run(30.0)
    assert r.plan.scene == "still"


def test_plan_carries_the_scene_decoder_params_and_prompts(spec3):
    show, bus = _show(spec3)
    plan = Runner(show, bus).step()
    assert plan.scene == "alpha" and plan.decoder == spec3.scene("alpha").decoder
    assert plan.params["radius"] == 0.3 and plan.params["speed"] == 1.0
    assert plan.extras["prompts"] == ()
    with pytest.raises(TypeError):
        plan.params["radius"] = 2.0  # read-only view: the decoder thread cannot change the show's params
    req = plan.request(plan.t0, 7)
    assert req.seq == 7 and req.t == plan.t0 and req.scene == "alpha" and req.decoder == plan.decoder
    assert req.z.dtype == np.float32 and req.z.shape == (8,)


# -- scene events ------------------------------------------------------------------------------------------------

def _post_and_step(r: Runner, *events: Event) -> PathPlan:
    for ev in events:
        assert r.bus.post(ev)
    return r.step()


def test_scene_next_and_prev_events(spec3):
    show, bus = _show(spec3)
    r = Runner(show, bus)
    r.step()
    assert _post_and_step(r, Event("scene.next")).scene == "beta"
    assert _post_and_step(r, Event("scene.next")).scene == "gamma"
    assert _post_and_step(r, Event("scene.next")).scene == "alpha"  # wraps round
    assert _post_and_step(r, Event("scene.prev")).scene == "gamma"
    assert _post_and_step(r, Event("scene.prev"), Event("scene.prev")).scene == "alpha"
    assert show.started == pytest.approx(r.t - DT)  # the scene's clock restarts on a change


def test_scene_prev_at_the_start_stays_on_the_first_scene(spec3):
    show, bus = _show(spec3)
    r = Runner(show, bus)
    r.step()
    assert _post_and_step(r, Event("scene.prev")).scene == "alpha"
    assert show.position == 0


@pytest.mark.parametrize("target, expected", [("gamma", "gamma"), ("beta", "beta"), (2, "gamma"), (1, "beta"),
                                              (0, "alpha"), ("alpha", "alpha")])
def test_scene_goto_by_name_and_index(spec3, target, expected):
    show, bus = _show(spec3)
    r = Runner(show, bus)
    r.run(0.5)
    plan = _post_and_step(r, Event("scene.goto", target))
    assert plan.scene == expected
    assert show.started == pytest.approx(r.t - DT)
    assert not bus.rejects


@pytest.mark.parametrize("target", ["nowhere", 3, -1, True, None, 1.0, ["beta"], ""])
def test_bad_scene_goto_is_counted_and_ignored(spec3, target):
    show, bus = _show(spec3)
    r = Runner(show, bus)
    r.run(0.5)
    before = (show.position, show.started)
    plan = _post_and_step(r, Event("scene.goto", target))
    assert plan.scene == "alpha"
    assert (show.position, show.started) == before
    assert bus.rejects["scene"] == 1


def test_goto_keeps_the_cycle(spec3):
    show, bus = _show(spec3)
    r = Runner(show, bus)
    r.step()
    for _ in range(4):
        _post_and_step(r, Event("scene.next"))
    assert show.position == 4  # second cycle, beta
    _post_and_step(r, Event("scene.goto", "gamma"))
    assert show.position == 5
    _post_and_step(r, Event("scene.goto", "alpha"))
    assert show.position == 3


def test_other_events_are_returned_in_order(spec3):
    show, bus = _show(spec3)
    r = Runner(show, bus)
    evs = [Event("freeze", True), Event("scene.next"), Event("onset", 0.5), Event("blackout", False)]
    _post_and_step(r, *evs)
    assert r.rest == [evs[0], evs[2], evs[3]]
    assert r.plan.scene == "beta"


def test_prompt_events_set_the_plan_prompts(spec3):
    show, bus = _show(spec3)
    r = Runner(show, bus)
    plan = _post_and_step(r, Event("prompt", (None, "a forest", None)))
    assert plan.extras["prompts"] == (("a forest", 1.0),)
    plan = _post_and_step(r, Event("prompt", (1, "fog", 0.5)), Event("prompt", (0, "a lake", None)))
    assert plan.extras["prompts"] == (("a lake", 1.0), ("fog", 0.5))
    plan = _post_and_step(r, Event("prompt", (5, "nope", None)))
    assert plan.extras["prompts"] == (("a lake", 1.0), ("fog", 0.5))
    assert bus.rejects["prompt_slot"] == 1


def test_a_prompt_slot_edits_the_decoders_own_prompts_and_the_tour_follows_path_time(tmp_path):
    from installation.decoders.random_models import make_sd21

    model = make_sd21(tmp_path / "sd")
    SCENES["diff"] = (f'duration = 0\nseed = 1\n[decoder]\ntype = "diffusion"\nmodel = "{model}"\nwidth = 64\n'
                      f'height = 64\nprompts = [["fox", 1.0], ["sea", 0.5]]\n[trajectory]\nkind = "still"\n'
                      f'[prompt_motion]\nkind = "tour"\nperiod = 2.0\nhold = 0.5\n')
    try:
        show, bus = _show(_spec(tmp_path, ["diff"]))
    finally:
        del SCENES["diff"]
    r = Runner(show, bus)
    plan = _post_and_step(r, Event("prompt", (1, "fog", None)))
    assert plan.extras["prompts"] == (("fox", 1.0), ("fog", 0.5))  # slot 1 of what is on screen, weight kept
    assert plan.request(plan.t0, 0).extras["prompts"] == (("fox", 1.0), ("fog", 0.0))  # the tour starts on fox
    # 2 path seconds later the tour has reached fog: in wall time that is 2 s at speed 1, 4 s at speed 0.5.
    assert plan.request(plan.t0 + 2.0, 0).extras["prompts"] == (("fox", 0.0), ("fog", 0.5))
    bus.set("speed", 0.5)
    plan = r.run(1.0)[-1]
    assert plan.part.rate < 0.9 and plan.part.tau0 < 1.0
    later = plan.request(plan.t0 + (2.0 - plan.part.tau0) / plan.part.rate, 0).extras["prompts"]
    assert later[0][1] == pytest.approx(0.0, abs=1e-6) and later[1][1] == pytest.approx(0.5)
    frozen = r.step(frozen=True)
    assert frozen.request(frozen.t0 + 10.0, 0).extras == frozen.request(frozen.t0, 0).extras
    assert show.state(r.t)["prompts"] == [["fox", 1.0], ["fog", 0.5]]  # set live: saved for a restart
    plan = _post_and_step(r, Event("seed", 99))
    assert plan.prompt_motion[1] == 1  # the scene's seed: a seed jump glides the noise, the prompts keep moving
    _post_and_step(r, Event("prompt", (1, "sea", None)))
    assert show.state(r.t)["prompts"] == []  # back to the scene's own: nothing to save
    # The plan crosses to the decoder process by pickle and moves the prompts there exactly as here.
    import pickle

    from installation.show import TrajectoryCache

    plan = r.step()
    there = TrajectoryCache().attach(pickle.loads(pickle.dumps(plan)))
    for dt in (0.0, 0.7, 3.1):
        assert there.request(plan.t0 + dt, 0).extras == plan.request(plan.t0 + dt, 0).extras


def test_each_scene_starts_from_its_own_decoder_settings(tmp_path):
    """Two diffusion scenes with different img2img strengths: the bus's diffusion.strength follows the scene."""
    from installation.decoders.random_models import make_sd21

    model = make_sd21(tmp_path / "sd")
    body = f'duration = 1\n[decoder]\ntype = "diffusion"\nmodel = "{model}"\nwidth = 64\nheight = 64\n'
    SCENES.update(soft=body + "strength = 0.2\n", hard=body + "strength = 0.8\n")
    try:
        show, bus = _show(_spec(tmp_path, ["soft", "hard"], params='"prompt.0.gain" = 0.25'))
    finally:
        del SCENES["soft"], SCENES["hard"]
    r = Runner(show, bus)
    plan = r.step()
    assert plan.params["diffusion.strength"] == 0.2 and plan.params["prompt.0.gain"] == 0.25  # the show's [params]
    plan = _post_and_step(r, Event("scene.next"))
    assert plan.scene == "hard" and bus.targets()["diffusion.strength"] == 0.8
    assert bus.targets()["prompt.0.gain"] == 0.25


# -- shuffle -------------------------------------------------------------------------------------------------------

def _order(show: Show, cycles: int) -> list[list[int]]:
    n = len(show.scenes)
    return [[show.scene_index(c * n + k) for k in range(n)] for c in range(cycles)]


@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_shuffle_plays_a_permutation_each_cycle_deterministic_per_seed(seed):
    spec = load_show()
    n = len(spec.scenes)
    a, _ = _show(spec, order="shuffle", shuffle_seed=seed)
    b, _ = _show(spec, order="shuffle", shuffle_seed=seed)
    orders = _order(a, 12)
    assert orders == _order(b, 12)
    for cycle in orders:
        assert sorted(cycle) == list(range(n))
    assert len({tuple(c) for c in orders}) > 1  # a new order each cycle, not one order repeated
    assert a.scene is spec.scenes[orders[0][0]]  # the show opens on the shuffled first scene


def test_shuffle_orders_differ_between_seeds_and_from_sequence():
    spec = load_show()
    seqs = {s: _order(_show(spec, order="shuffle", shuffle_seed=s)[0], 6) for s in (0, 1, 2)}
    assert seqs[0] != seqs[1] != seqs[2] != seqs[0]
    assert _order(_show(spec, order="sequence")[0], 2) == [list(range(len(spec.scenes)))] * 2


def test_shuffle_from_config_and_playing_through(tmp_path):
    spec = _spec(tmp_path, ["alpha", "beta", "gamma", "still"], order="shuffle", shuffle_seed=7)
    show, bus = _show(spec)
    assert show.order == "shuffle" and show.shuffle_seed == 7
    r = Runner(show, bus)
    played = [r.step().scene]
    for _ in range(11):
        played.append(_post_and_step(r, Event("scene.next")).scene)
    names = [s.name for s in spec.scenes]
    expected = [names[i] for cycle in _order(show, 3) for i in cycle]
    assert played == expected


# -- the path plan -------------------------------------------------------------------------------------------------

def test_plan_is_pure(spec3):
    show, bus = _show(spec3)
    r = Runner(show, bus)
    r.run(0.5)
    plan = r.plan
    for t in (plan.t0, plan.t0 + 0.01, plan.t0 + 0.3):
        a, b = plan.request(t, 1), plan.request(t, 2)
        assert np.array_equal(a.z, b.z)
        assert np.array_equal(plan.latent(t), a.z)
    # a later update does not touch an earlier plan (the decoder thread may still hold it)
    before = plan.latent(plan.t0 + 0.2)
    r.run(1.0)
    assert np.array_equal(plan.latent(plan.t0 + 0.2), before)


def test_plan_latents_follow_the_trajectory(spec3):
    show, bus = _show(spec3)
    r = Runner(show, bus)
    r.run(1.0)
    plan = r.plan
    assert plan.part.tau0 == show.tau and plan.part.rate == 1.0
    for h in (0.0, 0.05, 0.5):
        assert np.array_equal(plan.latent(plan.t0 + h), show.trajectory(show.tau + h, plan.params))
    # before the plan's time the path is not run backwards
    assert np.array_equal(plan.latent(plan.t0 - 1.0), plan.latent(plan.t0))


def test_latents_change_as_time_advances(spec3):
    show, bus = _show(spec3)
    r = Runner(show, bus)
    plans = r.run(1.0)
    zs = [p.latent(p.t0) for p in plans]
    for a, b in zip(zs, zs[1:]):
        assert not np.array_equal(a, b)
        assert np.linalg.norm(b - a) < 0.1 * np.linalg.norm(a)  # and smoothly
    p = plans[-1]
    assert not np.array_equal(p.latent(p.t0), p.latent(p.t0 + 0.1))


def test_consecutive_plans_agree_at_constant_speed(spec3):
    """The decoder may render from the previous plan: at the next tick's time it must give the same latent."""
    show, bus = _show(spec3)
    r = Runner(show, bus)
    plans = r.run(1.5)
    for old, new in zip(plans, plans[1:]):
        assert np.allclose(old.latent(new.t0), new.latent(new.t0), atol=1e-5)


def test_speed_integrates_path_time(still_spec):
    show, bus = _show(still_spec)
    r = Runner(show, bus)
    r.step()
    tau = show.tau
    r.run(1.0)
    assert show.tau - tau == pytest.approx(1.0, abs=1e-9)  # speed 1: one path second per second

    bus.reset({"speed": 2.0}, snap=True)
    r.step()  # the tick that sees the new speed still closes the interval walked at the old one
    tau = show.tau
    r.run(1.0)
    assert show.tau - tau == pytest.approx(2.0, abs=1e-9)  # doubling speed doubles the advance
    assert r.plan.part.rate == 2.0
    p = r.plan
    assert np.array_equal(p.latent(p.t0 + 0.25), show.trajectory(show.tau + 0.5, p.params))

    bus.reset({"speed": 0.0}, snap=True)
    r.step()
    r.step()
    tau, frozen_z = show.tau, r.plan.latent(r.plan.t0)
    plans = r.run(2.0)
    assert show.tau == tau  # speed 0 freezes the path
    for p in plans:
        assert np.array_equal(p.latent(p.t0), frozen_z)
        assert np.array_equal(p.latent(p.t0 + 3.0), frozen_z)


def test_speed_changes_never_make_the_path_jump(still_spec):
    show, bus = _show(still_spec)
    r = Runner(show, bus)
    r.run(1.0)
    bus.set("speed", 10.0)  # smoothed by the speed follower, integrated by the show
    taus = []
    for _ in range(int(2.0 / DT)):
        r.step()
        taus.append(show.tau)
    steps = [b - a for a, b in zip(taus, taus[1:])]
    assert steps[-1] > 8 * DT  # it did speed up (to nearly 10 path seconds per second)
    assert steps[0] < 3 * DT
    # gradually: the speed follower (attack 0.6 s) moves at most this much per tick, so tau's step does too
    most = (10.0 - 1.0) * (1.0 - math.exp(-DT / 0.6)) * DT
    assert all(0 < b - a <= most + 1e-9 for a, b in zip(steps, steps[1:]))


# -- seed jumps ------------------------------------------------------------------------------------------------------

def test_seed_event_blends_to_the_new_seeds_path(still_spec):
    ref_show, ref_bus = _show(still_spec)
    show, bus = _show(still_spec)
    ref, r = Runner(ref_show, ref_bus), Runner(show, bus)
    ref.run(1.0)
    r.run(1.0)
    t_e = r.t
    plan = _post_and_step(r, Event("seed", 99))
    ref_plan = ref.step()
    assert show.seed == 99
    # at the event the latent is still the old path's
    assert np.allclose(plan.latent(t_e), ref_plan.latent(t_e), atol=1e-5)
    new = build(still_spec.scene("still").trajectory, (8,), 99)
    mid = None
    for _ in range(int(round(SEED_BLEND / DT))):
        plan, ref_plan = r.step(), ref.step()
        t = plan.t0
        if mid is None and t - t_e >= SEED_BLEND / 2:
            mid = (plan.latent(t), ref_plan.latent(t), new(show.tau, plan.params))
    # half way it is neither path
    z, old_z, new_z = mid
    assert not np.allclose(z, old_z, atol=1e-3) and not np.allclose(z, new_z, atol=1e-3)
    # after the blend it is the new seed's path exactly
    assert plan.t0 - t_e >= SEED_BLEND
    assert plan.prior is None
    assert np.array_equal(plan.latent(plan.t0), new(show.tau, plan.params))
    assert not np.allclose(plan.latent(plan.t0), ref_plan.latent(plan.t0), atol=1e-3)


def test_seed_blend_is_smooth(still_spec):
    show, bus = _show(still_spec)
    r = Runner(show, bus)
    r.run(1.0)
    bus.reset({"speed": 0.0}, snap=True)  # hold both paths still: only the blend moves
    r.step()
    z0 = r.plan.latent(r.plan.t0)
    _post_and_step(r, Event("seed", 1234))
    zs = [p.latent(p.t0) for p in r.run(SEED_BLEND + 0.5)]
    total = float(np.linalg.norm(zs[-1] - z0))
    assert total > 0.5
    steps = [float(np.linalg.norm(b - a)) for a, b in zip([z0] + zs, zs)]
    assert max(steps) < 0.1 * total
    assert steps[-1] == 0.0  # done blending


def test_scene_change_on_the_same_decoder_blends_paths(spec3):
    ref_show, ref_bus = _show(spec3)
    show, bus = _show(spec3)
    ref, r = Runner(ref_show, ref_bus), Runner(show, bus)
    ref.run(1.0)
    r.run(1.0)
    ref.bus.reset({"speed": 1.0}, snap=True)
    t_e = r.t
    plan = _post_and_step(r, Event("scene.next"))
    ref_plan = ref.step()
    assert plan.scene == "beta" and ref_plan.scene == "alpha"
    assert plan.prior is not None and plan.blend_len == spec3.scene("beta").transition
    assert np.allclose(plan.latent(t_e), ref_plan.latent(t_e), atol=1e-5)  # continuous at the change
    plans = r.run(spec3.scene("beta").transition + 0.1)
    assert plans[-1].prior is None
    assert np.array_equal(plans[-1].latent(plans[-1].t0), show.trajectory(show.tau, plans[-1].params))


def test_scene_change_to_another_decoder_is_a_cut_without_blend(spec3):
    show, bus = _show(spec3)
    r = Runner(show, bus)
    r.step()
    plan = _post_and_step(r, Event("scene.goto", "gamma"))
    assert plan.prior is None and plan.cut == 1
    assert plan.latent(plan.t0).shape == (12,)


# -- defaults and freeze -------------------------------------------------------------------------------------------

def test_first_scene_defaults_are_snapped_onto_the_bus(spec3):
    show, bus = _show(spec3)
    expected = show.defaults()
    values = bus.tick(0.0).values
    assert {k: values[k] for k in expected} == expected
    assert expected["radius"] == 0.3  # the config's [params]
    assert expected["grade.contrast"] == 0.8
    assert expected["speed"] == 1.0  # alpha's [params]
    assert expected["feedback.zoom"] == spec3.params["feedback.zoom"].default  # the shader's declared default


def test_scene_defaults_are_applied_to_the_bus_on_scene_change(spec3):
    show, bus = _show(spec3)
    r = Runner(show, bus)
    r.step()
    bus.set("radius", 1.9)  # a live change in alpha
    bus.set("grade.gamma", 2.0)
    r.run(0.5)
    _post_and_step(r, Event("scene.next"))
    beta = show.defaults()
    assert beta["radius"] == 1.2 and beta["grade.contrast"] == 1.5  # beta's own [params] win over the config's
    assert beta["grade.gamma"] == spec3.params["grade.gamma"].default
    assert bus.targets() == pytest.approx(beta)
    # not snapped: the followers glide there
    r.step()
    assert r.plan.params["radius"] != 1.2
    radii = [p.params["radius"] for p in r.run(2.8)]  # beta lasts 3 s
    assert r.plan.scene == "beta"
    assert all(a >= b >= 1.2 for a, b in zip(radii, radii[1:]))  # released from 1.9 down to beta's 1.2
    assert radii[-1] == pytest.approx(1.2, abs=0.02)  # ~4.7 attack time constants (0.6 s)
    assert r.plan.params["grade.contrast"] == pytest.approx(1.5, abs=0.03)


def test_seed_jump_keeps_live_params(still_spec):
    show, bus = _show(still_spec)
    r = Runner(show, bus)
    r.step()
    bus.set("radius", 1.7)
    _post_and_step(r, Event("seed", 5))
    assert bus.targets()["radius"] == 1.7


def test_frozen_holds_the_latent(still_spec):
    show, bus = _show(still_spec)
    r = Runner(show, bus)
    r.run(1.0)
    held_tau = show.tau
    r.step(frozen=True)
    z = r.plan.latent(r.plan.t0)
    plans = r.run(3.0, frozen=True)
    assert show.tau == held_tau
    for p in plans:
        assert p.frozen
        for h in (0.0, 0.5, 10.0):
            assert np.array_equal(p.latent(p.t0 + h), z)
    # unfrozen, the path goes on from where it was held (no jump: the held interval was walked at rate 0)
    p = r.step()
    assert show.tau == pytest.approx(held_tau)
    assert np.array_equal(p.latent(p.t0), z) and not np.array_equal(p.latent(p.t0 + DT), z)
    r.step()
    assert show.tau == pytest.approx(held_tau + DT)


def test_frozen_holds_the_latent_during_a_seed_blend(still_spec):
    """Freeze mid-blend: a frozen plan's latent must not depend on the time it is asked for."""
    show, bus = _show(still_spec)
    r = Runner(show, bus)
    r.run(1.0)
    _post_and_step(r, Event("seed", 77))
    r.run(0.5)
    p = r.step(frozen=True)
    z = p.latent(p.t0)
    for h in (0.1, 0.5, 1.0, 5.0):
        assert np.array_equal(p.latent(p.t0 + h), z), h
    later = r.run(1.0, frozen=True)[-1]
    assert np.array_equal(later.latent(later.t0), z)


# -- untrusted event values ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["abc", None, -1, math.nan])
def test_bad_seed_event_is_counted_not_raised(still_spec, value):
    """Events come from outside (OSC, modulation, plugins); a bad value must be rejected and counted, and the
    other events drained in the same tick must still be handled."""
    show, bus = _show(still_spec)
    r = Runner(show, bus)
    r.step()
    seed = show.seed
    plan = _post_and_step(r, Event("seed", value), Event("scene.next"))
    assert show.seed == still_spec.scene("alpha").seed and show.seed != seed  # the bad seed changed nothing
    assert sum(bus.rejects.values()) == 1
    assert plan.scene == "alpha"


def test_a_second_seed_jump_mid_blend_starts_from_what_is_on_screen(still_spec):
    show, bus = _show(still_spec)
    r = Runner(show, bus)
    r.run(1.0)
    _post_and_step(r, Event("seed", 77))
    r.run(1.0)  # half way through the 2 s blend towards seed 77
    before = r.plan.latent(r.plan.t0)
    plan = _post_and_step(r, Event("seed", 78))
    after = plan.latent(plan.t0)
    # The screen moves on smoothly: one tick's change, not a jump to the unblended seed-77 path.
    step = np.linalg.norm(after - before)
    unblended = np.linalg.norm(show.trajectory(show.tau, plan.params) - before)
    assert step < 0.2 * unblended
    r.run(3.0)
    assert np.allclose(r.plan.latent(r.plan.t0), show.trajectory(show.tau, r.plan.params), atol=1e-6)
