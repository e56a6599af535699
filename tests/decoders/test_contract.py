"""The contract every decoder keeps, checked the same way for each registered backend on its tiny fixture.

A new backend gets this for free: add its name and a small settings builder to BACKENDS. What is checked is what the
runtime relies on (render/worker.py, the show, the bus): settings are strict and immutable, the latent shape is
declared, prepare/render/close work, a frame is an HxWx3 image the guard accepts, a fixed request renders the same
frame twice and another latent a different one, live parameters are well-formed and accepted at their defaults,
and a NaN never reaches the screen.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from installation.bus import ParamSpec
from installation.decoders import DecoderSettings, DecoderSpec, LatentRequest, create, decoder_class, names
from installation.decoders import param_specs as decoder_param_specs
from installation.render.worker import DecoderGuard, to_rgb8


def _cppn(tmp: Path, models) -> dict:
    return {"resolution": "24x16", "width": 8, "depth": 2}


def _diffusion(tmp: Path, models) -> dict:
    return {"model": str(models["sd-turbo"]), "taesd": str(models["taesd"]), "width": 64, "height": 64,
            "prompts": [["a lighthouse", 1.0], ["fog", 0.5]]}


def _gan(tmp: Path, models) -> dict:
    import torch

    from installation.decoders.gan import save_generator
    from test_gan import TinyGenerator

    torch.manual_seed(0)
    return {"path": str(save_generator(TinyGenerator(classes=3), tmp / "g.safetensors", (16,), class_dim=3))}


def _atlas(tmp: Path, models) -> dict:
    """An archive of 40 points of two scenes with real thumbnails (coloured squares), written by the store."""
    import cv2

    from installation.archive.store import Store, pack_latent

    store = Store(tmp / "show.sqlite")
    sid = store.new_session("2026-01-01T00:00:00", "show.toml", ["a", "b"], (64, 36), {})
    rng = np.random.default_rng(0)
    points = []
    for i in range(40):
        z = rng.standard_normal(6 if i % 2 else 8).astype(np.float32)
        ok, jpeg = cv2.imencode(".jpg", np.full((18, 32, 3), (40 + 5 * i, 200 - 4 * i, 90), np.uint8))
        points.append((i * 0.5, "ab"[i % 2], 1, i * 0.5, *pack_latent(z), jpeg.tobytes(), None, "[]"))
    store.write_batch(sid, points=points)
    store.close()
    return {"archive": str(tmp / "show.sqlite"), "resolution": "48x27", "min_points": 10, "span": 2.0, "thumb": 0.3}


BACKENDS = {"atlas": _atlas, "cppn": _cppn, "faulty": _cppn, "diffusion": _diffusion, "gan": _gan}


def test_every_registered_backend_is_under_contract():
    assert set(names()) == set(BACKENDS)


@pytest.fixture(params=sorted(BACKENDS))
def backend(request, tmp_path, tiny_models):
    name = request.param
    cls = decoder_class(name)
    settings = cls.Settings.model_validate(BACKENDS[name](tmp_path, tiny_models))
    return name, cls, settings


def _request(name: str, settings, z: np.ndarray, params=None, seq: int = 0) -> LatentRequest:
    spec = DecoderSpec(name, settings)
    defaults = {p.name: p.default for p in decoder_param_specs(spec)}
    return LatentRequest(z=z.astype(np.float32), t=seq / 30.0, seq=seq, decoder=spec,
                         params={**defaults, **(params or {})})


def _z(shape, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_settings_are_strict_immutable_and_hashable(backend):
    name, cls, settings = backend
    assert cls.name == name and issubclass(cls.Settings, DecoderSettings)
    with pytest.raises(ValidationError):
        cls.Settings.model_validate({**settings.model_dump(), "no_such_key": 1})
    with pytest.raises(ValidationError):
        settings.__setattr__(next(iter(cls.Settings.model_fields)), None)
    assert hash(settings) == hash(cls.Settings.model_validate(settings.model_dump()))


def test_latent_shape_and_live_parameters_are_declared(backend):
    name, cls, settings = backend
    shape = cls.latent_shape(settings)
    assert isinstance(shape, tuple) and shape and all(isinstance(n, int) and n > 0 for n in shape)
    specs = decoder_param_specs(DecoderSpec(name, settings))
    assert all(isinstance(p, ParamSpec) for p in specs)
    assert len({p.name for p in specs}) == len(specs)
    for p in specs:
        assert p.min <= p.default <= p.max and "." in p.name, p


def test_prepare_render_close_gives_a_deterministic_image(backend):
    name, cls, settings = backend
    shape = cls.latent_shape(settings)
    decoder = create(DecoderSpec(name, settings))
    decoder.prepare()
    try:
        first = to_rgb8(decoder.render(_request(name, settings, _z(shape, 1))))
        again = to_rgb8(decoder.render(_request(name, settings, _z(shape, 1), seq=1)))
        other = to_rgb8(decoder.render(_request(name, settings, _z(shape, 2), seq=2)))
    finally:
        decoder.close()
    assert first.ndim == 3 and first.shape[2] == 3 and first.dtype == np.uint8 and min(first.shape[:2]) >= 8
    assert np.array_equal(first, again)  # a fixed request is a fixed frame: replays and offline renders rely on it
    assert other.shape == first.shape and not np.array_equal(first, other)


def test_a_nan_latent_never_reaches_the_screen(backend):
    name, cls, settings = backend
    shape = cls.latent_shape(settings)
    guard = DecoderGuard("cpu", backoff=0.0, backoff_max=0.0)
    try:
        good = guard.render(_request(name, settings, _z(shape, 1)))
        bad_z = _z(shape, 1)
        bad_z.flat[::3] = np.nan
        bad = guard.render(_request(name, settings, bad_z, seq=1))
        stats = guard.stats()
    finally:
        guard.close()
    assert good is not None and np.isfinite(good).all()
    assert bad is None and sum(stats["faults"].values()) >= 1
