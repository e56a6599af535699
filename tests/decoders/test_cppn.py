"""The embedded CPPN's own settings: the size it renders on each device."""

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
