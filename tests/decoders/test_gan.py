"""The GAN decoder on a tiny generator scripted (or exported) to a file and loaded back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from installation.decoders import DecoderSpec, NonFiniteFrame, create, decoder_class
from installation.decoders.gan import read_metadata, save_generator


class TinyGenerator(nn.Module):
    """z [B,16] (+ class [B,3]) -> [B,3,16,16] in -1..1."""

    def __init__(self, latent: int = 16, classes: int = 0) -> None:
        super().__init__()
        self.classes = classes
        self.embed = nn.Linear(max(classes, 1), latent)
        self.fc = nn.Linear(latent, 8 * 4 * 4)
        self.up = nn.Sequential(nn.ConvTranspose2d(8, 8, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(8, 3, 4, 2, 1))

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        if c is not None:
            z = z + self.embed(c)
        x = self.fc(z).reshape(z.shape[0], 8, 4, 4)
        return torch.tanh(self.up(x))


@pytest.fixture
def Gan():
    return decoder_class("gan")


def _expected(gen, z, c=None):
    with torch.no_grad():
        img = gen(torch.from_numpy(z)[None], c)
    return ((img[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()


@pytest.mark.parametrize("export", [False, True])
def test_round_trip_renders_the_generator(Gan, tmp_path, make_request, unit_z, export):
    torch.manual_seed(0)
    gen = TinyGenerator().eval()
    path = save_generator(gen, tmp_path / ("g.pt2" if export else "g.pt"), (16,), export=export)
    assert read_metadata(path)["latent_shape"] == [16]
    s = Gan.Settings(path=str(path))
    assert Gan.latent_shape(s) == (16,)
    d = create(DecoderSpec("gan", s))
    d.prepare()
    z = unit_z((16,), 3)
    f = d.render(make_request(s, z, kind="gan"))
    assert f.shape == (16, 16, 3) and f.dtype == np.uint8
    assert np.abs(f.astype(int) - _expected(gen, z).astype(int)).max() <= 1
    assert not np.array_equal(f, d.render(make_request(s, unit_z((16,), 4), kind="gan")))
    # Truncation on the bus: psi 0 is the image of z = 0.
    f0 = d.render(make_request(s, z, params={"gan.truncation": 0.0}, kind="gan"))
    assert np.abs(f0.astype(int) - _expected(gen, np.zeros(16, np.float32)).astype(int)).max() <= 1
    d.close()


def test_class_conditional_and_nan_guard(Gan, tmp_path, make_request, unit_z):
    torch.manual_seed(1)
    gen = TinyGenerator(classes=3).eval()
    path = save_generator(gen, tmp_path / "cond.pt", (16,), class_dim=3)
    s = Gan.Settings(path=str(path), class_index=1)
    d = create(DecoderSpec("gan", s))
    d.prepare()
    z = unit_z((16,))
    f1 = d.render(make_request(s, z, kind="gan"))
    c1 = torch.tensor([[0.0, 1.0, 0.0]])
    assert np.abs(f1.astype(int) - _expected(gen, z, c1).astype(int)).max() <= 1
    f2 = d.render(make_request(s, z, extras={"class_vector": [0.0, 0.0, 1.0]}, kind="gan"))
    assert not np.array_equal(f1, f2)
    bad = z.copy()
    bad[0] = np.nan
    with pytest.raises(NonFiniteFrame):
        d.render(make_request(s, bad, kind="gan"))
    assert np.array_equal(d.render(make_request(s, z, kind="gan")), f1)
    assert d.stats()["nonfinite"] == 1
    # The bus parameters it declares (class_dim read from the file) start at the settings' class.
    from installation.decoders import param_specs

    specs = {p.name: p for p in param_specs(DecoderSpec("gan", s))}
    assert sorted(specs) == ["gan.class.0.weight", "gan.class.1.weight", "gan.class.2.weight", "gan.truncation"]
    defaults = {name: p.default for name, p in specs.items()}
    assert [defaults[f"gan.class.{i}.weight"] for i in range(3)] == [0.0, 1.0, 0.0]
    assert np.array_equal(d.render(make_request(s, z, params=defaults, kind="gan")), f1)
    mixed = {**defaults, "gan.class.2.weight": 1.0}
    c12 = torch.tensor([[0.0, 1.0, 1.0]])
    f3 = d.render(make_request(s, z, params=mixed, kind="gan"))
    assert np.abs(f3.astype(int) - _expected(gen, z, c12).astype(int)).max() <= 1


def test_missing_file_and_missing_metadata(Gan, tmp_path):
    s = Gan.Settings(path=str(tmp_path / "none.pt"), latent_shape=(8,))
    with pytest.raises(FileNotFoundError, match="none.pt"):
        create(DecoderSpec("gan", s)).prepare()
    plain = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(TinyGenerator()), str(plain))
    with pytest.raises(ValueError, match="latent_shape"):
        Gan.latent_shape(Gan.Settings(path=str(plain)))
    assert Gan.latent_shape(Gan.Settings(path=str(plain), latent_shape=(16,))) == (16,)


def test_compile_on_a_torchscript_file_runs_it_as_it_is(Gan, tmp_path, make_request, unit_z, caplog):
    """torch.compile refuses TorchScript: the decoder says so and renders uncompiled instead of failing to start."""
    torch.manual_seed(0)
    gen = TinyGenerator().eval()
    path = save_generator(gen, tmp_path / "g.pt", (16,), export=False)
    s = Gan.Settings(path=str(path), compile=True)
    d = create(DecoderSpec("gan", s))
    d.prepare()
    z = unit_z((16,))
    assert np.array_equal(d.render(make_request(s, z, kind="gan")), _expected(gen, z))
    assert "TorchScript" in caplog.text
