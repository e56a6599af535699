"""The embedded CPPN's own settings: the size it renders on each device, and the geometry that gives a scene its form."""

from __future__ import annotations

import numpy as np

from installation.decoders import DecoderSpec
from installation.decoders.base import LatentRequest
from installation.decoders.cppn import CPPN, CPPNSettings
from installation.sizes import SizeT


def test_cuda_resolution_is_used_on_a_cuda_device_only():
    s = CPPNSettings(resolution=SizeT(48, 32), cuda_resolution=SizeT(192, 128), width=8, depth=1)
    assert CPPN(s, device="cuda").size == (192, 128)  # (not prepared: no GPU needed to ask)
    cpu = CPPN(s)
    assert cpu.size == (48, 32)
    cpu.prepare()
    rgb = cpu.render(LatentRequest(z=np.zeros(s.latent_dim, np.float32), t=0.0, seq=0, decoder=DecoderSpec("cppn", s)))
    assert rgb.shape == (32, 48, 3)
    assert CPPN(CPPNSettings(resolution=SizeT(48, 32)), device="cuda").size == (48, 32)  # unset: the same everywhere


def _frame(size=(96, 54), **geometry) -> np.ndarray:
    s = CPPNSettings(resolution=SizeT(*size), width=16, depth=3, model_seed=3, geometry=geometry)
    d = CPPN(s)
    d.prepare()
    z = np.linspace(-1, 1, s.latent_dim).astype(np.float32)
    return d.render(LatentRequest(z=z, t=0.0, seq=0, decoder=DecoderSpec("cppn", s)))


def test_the_default_geometry_is_the_plain_cppn_and_the_same_seed_draws_the_same_form():
    """No [decoder.geometry] draws exactly the network and picture it drew before the tables existed (x, y, r
    inputs from the same seed), and a geometry is as deterministic as the rest."""
    plain = _frame()
    assert np.array_equal(plain, _frame(coords="cartesian", stretch=(1.0, 1.0)))
    import torch
    g = torch.Generator().manual_seed(3)  # the pre-geometry inputs, drawn the old way
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, 54), torch.linspace(-96 / 54, 96 / 54, 96), indexing="ij")
    xs, ys = xs * 1.8, ys * 1.8
    old = torch.stack([xs, ys, torch.sqrt(xs * xs + ys * ys)]).reshape(3, -1)
    w_xy, b0 = torch.randn(16, 3, generator=g), torch.randn(16, 1, generator=g) * 0.5
    d = CPPN(CPPNSettings(resolution=SizeT(96, 54), width=16, depth=3, model_seed=3))
    d.prepare()
    assert torch.allclose(d._coord_term, w_xy @ old + b0, atol=1e-4)
    warped = dict(warp=0.5, folds=5, tile=0.3)
    assert np.array_equal(_frame(**warped), _frame(**warped))


def test_symmetries_are_exact_in_the_picture():
    y = _frame(mirror="x").mean(axis=2)
    assert np.abs(y - y[:, ::-1]).max() < 1e-5  # mirror x: the left half is the right half
    assert np.abs(y - y[::-1]).max() > 0.05  # ...and only that axis
    y = _frame(mirror="y").mean(axis=2)
    assert np.abs(y - y[::-1]).max() < 1e-5
    y = _frame((64, 64), folds=4).mean(axis=2)  # four mirrored wedges on a square: a quarter turn is the same
    assert np.abs(y - np.rot90(y)).max() < 1e-4
    y = _frame((64, 64), coords="polar").mean(axis=2)  # polar: the angle mirrored about the x axis
    assert np.abs(y - y[::-1]).max() < 1e-5


def test_tiling_repeats_and_the_envelope_fades_to_black():
    # A period of 0.25 screen units on a 64-pixel-high picture (2 units): mirrored cells, so the picture repeats
    # every 2 periods = 16 pixels.
    y = _frame((64, 64), tile=0.25).mean(axis=2)
    assert np.abs(y[:, 8:40] - y[:, 24:56]).mean() < 0.02 and np.abs(y[:, 8:40] - y[:, 12:44]).mean() > 0.02
    lit = _frame((64, 64)).mean(axis=2)
    faded = _frame((64, 64), envelope=0.5).mean(axis=2)
    assert faded[:6, :6].max() < 0.02 < lit[:6, :6].mean()  # the corners, far outside the envelope: black
    assert np.allclose(faded[30:34, 30:34], lit[30:34, 30:34], atol=0.05)  # the centre: as it was


def test_stretch_and_warp_change_the_structure():
    vertical = _frame(stretch=(4.0, 0.25)).mean(axis=2)
    gx, gy = np.abs(np.diff(vertical, axis=1)).mean(), np.abs(np.diff(vertical, axis=0)).mean()
    assert gx > 4 * gy  # long vertical forms: change across them, little along them
    assert np.abs(_frame(warp=0.4) - _frame()).mean() > 0.02


def test_hidden_layers_reuse_two_buffers_and_draw_what_the_plain_network_draws():
    """A frame allocates only its output: the hidden layers ping-pong between two buffers made at prepare (issue 33:
    a (units x pixels) block per layer per frame churned the decoder process's heap). The picture is the one the
    network computed layer by layer with fresh tensors draws, for an odd and an even depth, frame after frame."""
    import torch

    from installation.decoders.cppn import _act_

    for depth in (1, 2, 3):
        s = CPPNSettings(resolution=SizeT(40, 24), width=12, depth=depth, model_seed=5,
                         activations=("sin", "tanh", "gauss"))
        d = CPPN(s)
        d.prepare()
        ptrs = [b.data_ptr() for b in d._bufs]

        def plain(z):
            def mixed(x):
                for name, a, b in d._groups:
                    _act_(name, x[a:b])
                return x
            h = mixed(d._coord_term + (d._wz @ torch.as_tensor(z))[:, None])
            for wgt, bias in d._layers:
                h = mixed(bias + wgt @ h)
            w_out, b_out = d._out
            return torch.sigmoid(torch.clamp(b_out + w_out @ h, -30, 30)).reshape(3, 24, 40).permute(1, 2, 0).numpy()

        for k in range(3):
            z = np.random.default_rng(k).standard_normal(s.latent_dim).astype(np.float32)
            got = d.render(LatentRequest(z=z, t=0.0, seq=k, decoder=DecoderSpec("cppn", s)))
            assert np.allclose(got, plain(z), atol=1e-5), (depth, k)
        assert [b.data_ptr() for b in d._bufs] == ptrs
