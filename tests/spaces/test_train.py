"""Training the compact GAN on a procedurally drawn set: a few real steps on the CPU, checkpoints that resume to the
same state, and the exported file loaded and rendered through the GAN decoder as a scene would."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from installation.cli import main as cli_main
from installation.decoders import DecoderSpec, LatentRequest, create, decoder_class
from installation.decoders.gan import read_metadata
from installation.spaces.folder import draw_shapes
from installation.spaces.train import (ExportedGenerator, GanConfig, Generator, Trainer, TrainOptions, diff_augment,
                                       kid)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    return draw_shapes(tmp_path_factory.mktemp("set") / "shapes", n=24, size=64, seed=1)


def _opts(shapes, tmp_path, **kw) -> TrainOptions:
    base = dict(folder=str(shapes), out=str(tmp_path / "g.safetensors"), size=64, minutes=0, batch=4, kid_samples=0,
                preview_minutes=0, checkpoint_minutes=1e9, progress=False, work=str(tmp_path / "run"))
    return TrainOptions(**{**base, **kw})


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def test_steps_move_the_losses_and_the_weights(shapes, tmp_path):
    t = Trainer(_opts(shapes, tmp_path))
    assert len(t.data) == 24 and t.data.shape[1:] == (3, 64, 64)
    g0, d0 = _params(t.G), _params(t.D)
    losses = [t.train_step() for _ in range(4)]
    assert all(np.isfinite(v) for row in losses for v in row.values())
    assert len({round(r["loss_d"], 6) for r in losses}) > 1 and len({round(r["loss_g"], 6) for r in losses}) > 1
    assert any(not torch.equal(a, b) for a, b in zip(g0, t.G.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(d0, t.D.parameters()))
    assert losses[0]["r1"] > 0 and losses[1]["r1"] == 0  # lazy R1: every 4th step


def test_checkpoint_resumes_to_the_same_step_and_state(shapes, tmp_path):
    straight = Trainer(_opts(shapes, tmp_path / "a", steps=4))
    for _ in range(4):
        straight.train_step()
    first = Trainer(_opts(shapes, tmp_path / "b", steps=2))
    first.run()
    assert (tmp_path / "b" / "run" / "checkpoint.safetensors").is_file() and first.step == 2
    resumed = Trainer(_opts(shapes, tmp_path / "b", steps=4))
    assert resumed.resumed and resumed.step == 2
    for a, b in zip(first.G_ema.state_dict().values(), resumed.G_ema.state_dict().values()):
        assert torch.equal(a, b)
    resumed.run()
    assert resumed.step == 4
    # Optimiser moments and random streams came back too: 2 + 2 steps are the 4 straight ones.
    for a, b in zip(straight.G.state_dict().values(), resumed.G.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6)
    with pytest.raises(ValueError, match="--fresh"):
        Trainer(_opts(shapes, tmp_path / "b", size=128))


def _legacy_state(t: Trainer) -> dict:
    """The checkpoint dict an earlier version wrote with torch.save."""
    from dataclasses import asdict

    return {"config": asdict(t.cfg), "step": t.step, "seconds": t.seconds, "next_preview": t.next_preview,
            "aug_p": t.aug_p, "rt": list(t._rt), "G": t.G.state_dict(), "D": t.D.state_dict(),
            "G_ema": t.G_ema.state_dict(), "opt_g": t.opt_g.state_dict(), "opt_d": t.opt_d.state_dict(),
            "torch_rng": torch.get_rng_state(), "np_rng": t.rng.bit_generator.state, "folder": str(t.opts.folder)}


def test_an_earlier_checkpoint_pt_resumes_and_a_crafted_one_runs_nothing(shapes, tmp_path):
    from payloads import Payload

    first = Trainer(_opts(shapes, tmp_path / "a", steps=2))
    for _ in range(2):
        first.train_step()
    torch.save(_legacy_state(first), tmp_path / "a" / "run" / "checkpoint.pt")
    resumed = Trainer(_opts(shapes, tmp_path / "a", steps=4))
    assert resumed.resumed and resumed.step == 2
    for a, b in zip(first.G_ema.state_dict().values(), resumed.G_ema.state_dict().values()):
        assert torch.equal(a, b)
    resumed.save_checkpoint()  # from now on the run's checkpoint is tensors plus JSON
    assert Trainer(_opts(shapes, tmp_path / "a", steps=4)).step == 2
    marker = tmp_path / "pwned"
    evil = tmp_path / "b" / "run" / "checkpoint.pt"
    evil.parent.mkdir(parents=True)
    torch.save({**_legacy_state(first), "np_rng": Payload(marker)}, evil)
    with pytest.raises(ValueError, match=r"checkpoint.pt: not loaded.*--fresh"):
        Trainer(_opts(shapes, tmp_path / "b", steps=4))
    assert not marker.exists()
    torch.load(evil, weights_only=False)
    assert marker.exists(), "the fixture is live: an unrestricted torch.load runs it"


def test_export_loads_and_renders_through_the_gan_decoder(shapes, tmp_path):
    t = Trainer(_opts(shapes, tmp_path, steps=2, kid_samples=16, preview_minutes=1e9))
    path = t.run()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 2] and all(r["kid_x1000"] > 0 for r in rows)
    assert all((tmp_path / "run" / r["preview"]).is_file() for r in rows)
    meta = read_metadata(path)
    assert meta["latent_shape"] == [128] and meta["size"] == 64 and meta["steps"] == 2 and meta["images"] == 24
    Gan = decoder_class("gan")
    s = Gan.Settings(path=str(path))
    d = create(DecoderSpec("gan", s))
    d.prepare()
    z = np.random.default_rng(0).standard_normal(128).astype(np.float32)

    def frame(z, psi=1.0):
        return d.render(LatentRequest(z=z, t=0, seq=0, decoder=DecoderSpec("gan", s),
                                      params={"gan.truncation": psi}, extras={}))

    f = frame(z)
    assert f.shape == (64, 64, 3) and f.dtype == np.uint8
    with torch.no_grad():
        img = ExportedGenerator(t.cfg, t.G_ema)(torch.from_numpy(z)[None])[0]
    want = ((img.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    assert np.abs(f.astype(int) - want.astype(int)).max() <= 1, "the file is the EMA generator"
    mean_image = frame(z, 0.0)
    assert np.array_equal(mean_image, frame(-z, 0.0)), "psi 0: every z gives the mean (w_avg) image"
    assert not np.array_equal(f, mean_image)
    d.close()


def test_truncation_pulls_toward_w_avg():
    g = Generator(GanConfig(size=64)).eval()
    g.w_avg.normal_()
    e = ExportedGenerator(GanConfig(size=64), g)
    z = torch.randn(2, 128)
    z = z / z.norm(dim=1, keepdim=True) * 128 ** 0.5  # length sqrt(dim): the trained model itself
    with torch.no_grad():
        assert torch.allclose(e(z), g.synthesis(g.mapping(z)), atol=1e-4)
        assert torch.allclose(e(z * 0), g.synthesis(g.w_avg[None].expand(2, -1)), atol=1e-5)
        half = g.synthesis(g.w_avg + 0.5 * (g.mapping(z) - g.w_avg))
        assert torch.allclose(e(z * 0.5), half, atol=1e-4)


def test_diff_augment_keeps_shape_and_changes_the_batch():
    x = torch.rand(6, 3, 32, 32) * 2 - 1
    y = diff_augment(x)
    assert y.shape == x.shape and torch.isfinite(y).all() and not torch.equal(x, y)
    assert torch.equal(diff_augment(x, 0.0), x)
    assert torch.allclose(diff_augment(x, 1e-9), x), "no image picked: every transform is the identity"


def test_kid_separates_sets():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 16)), rng.normal(size=(200, 16))
    far = rng.normal(loc=0.8, size=(200, 16))
    assert abs(kid(a, b)) < kid(a, far) / 10


def test_cli_train_end_to_end_and_bad_input(shapes, tmp_path, capfd):
    out = tmp_path / "cli.safetensors"
    assert cli_main(["train", str(shapes), "--out", str(out), "--steps", "1", "--batch", "4", "--kid-samples", "0",
                     "--preview-minutes", "0"]) == 0
    assert out.is_file() and read_metadata(out)["steps"] == 1
    assert cli_main(["train", str(tmp_path / "none"), "--out", str(out)]) == 2
    assert cli_main(["train", str(shapes), "--out", str(tmp_path / "g.pt2")]) == 2  # programs are not written
    assert cli_main(["train", str(shapes), "--out", str(tmp_path / "g.onnx")]) == 2
    assert cli_main(["train", str(shapes), "--out", str(out), "--minutes", "0"]) == 2
    err = capfd.readouterr().err
    assert "not found" in err and "--out must end in .safetensors" in err and "g.safetensors" in err
