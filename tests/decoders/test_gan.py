"""The GAN decoder on a tiny generator of a declared architecture saved to a .safetensors file and loaded back, and
every other generator file refused without running anything from it (crafted payloads that would create a marker)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from installation.decoders import DecoderSpec, NonFiniteFrame, create, decoder_class
from installation.decoders.gan import UnsafeModelFile, load_generator, read_metadata, save_generator
from installation.decoders.gan_nets import Dcgan, DcganConfig
from payloads import pt2_with_pickled_weight, torch_saved
from support import ROOT, run_cli, scene_toml, write_show


def TinyGenerator(latent: int = 16, classes: int = 0) -> Dcgan:
    """z [B,16] (+ class [B,3]) -> [B,3,16,16] in -1..1: the declared dcgan architecture at a tiny size."""
    return Dcgan(DcganConfig(z_dim=latent, class_dim=classes, width=8, size=16)).eval()


@pytest.fixture
def Gan():
    return decoder_class("gan")


def _expected(gen, z, c=None):
    with torch.no_grad():
        img = gen(torch.from_numpy(z)[None], c)
    return ((img[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()


def test_round_trip_renders_the_generator(Gan, tmp_path, make_request, unit_z):
    torch.manual_seed(0)
    gen = TinyGenerator()
    path = save_generator(gen, tmp_path / "g.safetensors", (16,))
    meta = read_metadata(path)
    assert meta["latent_shape"] == [16] and meta["architecture"] == "dcgan" and meta["config"]["width"] == 8
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
    path = save_generator(gen, tmp_path / "cond.safetensors", (16,), class_dim=3)
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
    s = Gan.Settings(path=str(tmp_path / "none.safetensors"), latent_shape=(8,))
    with pytest.raises(FileNotFoundError, match="none.safetensors"):
        create(DecoderSpec("gan", s)).prepare()
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"  # weights without the metadata that names their architecture
    save_file({k: v.contiguous() for k, v in TinyGenerator().state_dict().items()}, str(plain))
    with pytest.raises(ValueError, match="latent_shape"):
        Gan.latent_shape(Gan.Settings(path=str(plain)))
    with pytest.raises(UnsafeModelFile, match="plain.safetensors.*architecture"):
        Gan.check(Gan.Settings(path=str(plain), latent_shape=(16,)))


def test_the_file_fills_a_network_built_here(tmp_path, unit_z):
    """The network is the declared class, built in this program and filled with the file's tensors."""
    torch.manual_seed(0)
    gen = TinyGenerator()
    net, meta = load_generator(save_generator(gen, tmp_path / "g.safetensors", (16,)))
    assert type(net) is Dcgan and meta["output_range"] == "tanh"
    z = torch.from_numpy(unit_z((16,)))[None]
    got, want = net.state_dict(), gen.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)  # the file's tensors, exactly
    with torch.no_grad():  # the same sums; a kernel may order them differently for a tensor at another address
        torch.testing.assert_close(net(z), gen(z), rtol=1e-6, atol=1e-6)
    with pytest.raises(TypeError, match="not a declared architecture"):
        save_generator(torch.nn.Linear(16, 16), tmp_path / "x.safetensors", (16,))


def test_tensors_that_do_not_fit_the_declared_architecture_are_refused(Gan, tmp_path):
    torch.manual_seed(0)
    path = save_generator(TinyGenerator(), tmp_path / "g.safetensors", (16,))
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["installation"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    wide = tmp_path / "wide.safetensors"  # claims width 9: every shape is off
    save_file(tensors, str(wide), metadata={"installation": json.dumps({**meta, "config": {**meta["config"],
                                                                                            "width": 9}})})
    with pytest.raises(UnsafeModelFile, match="wide.safetensors.*do not fit"):
        load_generator(wide)
    huge = tmp_path / "huge.safetensors"  # an absurd network is refused from the header, before anything is built
    save_file(tensors, str(huge), metadata={"installation": json.dumps({**meta, "config": {**meta["config"],
                                                                                            "width": 1 << 40}})})
    with pytest.raises(UnsafeModelFile, match="whole number"):
        Gan.check(Gan.Settings(path=str(huge)))
    other = tmp_path / "other.safetensors"  # an architecture this program does not declare
    save_file(tensors, str(other), metadata={"installation": json.dumps({**meta, "architecture": "os.system"})})
    with pytest.raises(UnsafeModelFile, match="os.system.*allowed: dcgan, stylegan-lite"):
        Gan.check(Gan.Settings(path=str(other)))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    with pytest.raises(UnsafeModelFile, match="garbage.safetensors"):
        Gan.check(Gan.Settings(path=str(garbage), latent_shape=(16,)))


# -- crafted files whose payload would create a marker: none may run -----------------------------------------------


def _export_legacy(path, cfg_kw=None, module_cls=None):
    """A .pt2 as an earlier `installation train` wrote it: torch.export of the EMA generator plus its metadata."""
    from dataclasses import asdict

    from installation.spaces.train import ExportedGenerator, GanConfig

    cfg = GanConfig(**(cfg_kw or dict(size=8, z_dim=8, w_dim=8, mapping_layers=1, base=4, cap=8)))
    torch.manual_seed(3)
    gen = (module_cls or ExportedGenerator)(cfg).eval()
    gen.w_avg.normal_()
    meta = {"trained_by": "installation train", "config": asdict(cfg), "latent_shape": [cfg.z_dim], "class_dim": 0,
            "output_range": "tanh"}
    ep = torch.export.export(gen, (torch.zeros(1, cfg.z_dim),))
    torch.export.save(ep, str(path), extra_files={"installation.json": json.dumps(meta)})
    return gen, path


def test_a_legacy_train_pt2_still_loads_as_weights_only(Gan, tmp_path, make_request, unit_z):
    """Users' existing `installation train` .pt2 files keep working: the raw weights are read and built as
    stylegan-lite; neither torch.export.load nor the archive's graph is used."""
    from installation.spaces.train import ExportedGenerator

    gen, path = _export_legacy(tmp_path / "old.pt2")
    s = Gan.Settings(path=str(path))
    Gan.check(s)
    d = create(DecoderSpec("gan", s))
    d.prepare()
    assert type(d.gen) is ExportedGenerator
    z = unit_z((8,), 5)
    f = d.render(make_request(s, z, kind="gan"))
    with torch.no_grad():
        want = gen(torch.from_numpy(z)[None])
    want = ((want[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    assert np.abs(f.astype(int) - want.astype(int)).max() <= 1
    d.close()


def test_the_reviews_pt2_with_a_pickled_weight_is_refused_before_loading(Gan, tmp_path):
    """The review's exploit (use_pickle: true and a pickle whose __reduce__ runs) is refused at start, and prepare
    refuses it too (no retry runs it); torch.export.load would have run it."""
    marker = tmp_path / "pwned"
    _, good = _export_legacy(tmp_path / "good.pt2")
    evil = pt2_with_pickled_weight(good, tmp_path / "evil.pt2", marker)
    s = Gan.Settings(path=str(evil))
    with pytest.raises(UnsafeModelFile, match=r"evil.pt2: weight .* is a pickle"):
        Gan.check(s)
    for _ in range(2):
        with pytest.raises(UnsafeModelFile):
            create(DecoderSpec("gan", s)).prepare()
    assert not marker.exists()
    with pytest.raises(Exception):
        torch.export.load(str(evil))
    assert marker.exists(), "the fixture is live: torch.export.load unpickled the weight"


def test_other_exports_torchscript_and_pickles_are_refused(Gan, tmp_path):
    marker = tmp_path / "pwned"
    export = tmp_path / "mine.pt2"  # a torch.export program not written by `installation train`
    torch.export.save(torch.export.export(TinyGenerator(), (torch.zeros(1, 16),)), str(export))
    script = tmp_path / "g.pt"  # TorchScript: its code runs when called (here it creates a file)

    class Trap(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.marker = str(marker)

        def forward(self, z):
            t = torch.from_file(self.marker, shared=True, size=1, dtype=torch.uint8)
            return z.reshape(1, 1, 4, 4).expand(1, 3, 4, 4) + t.float().sum() * 0

    torch.jit.save(torch.jit.script(Trap()), str(script))
    pickle_file = tmp_path / "g.pth"
    pickle_file.write_bytes(torch_saved(marker, w=torch.zeros(2)))
    for path, why in [(export, "not written by `installation train`"), (script, "TorchScript"),
                      (pickle_file, "TorchScript and pickled")]:
        s = Gan.Settings(path=str(path), latent_shape=(16,))
        with pytest.raises(UnsafeModelFile, match=why):
            Gan.check(s)
        with pytest.raises(UnsafeModelFile):
            create(DecoderSpec("gan", s)).prepare()
    assert not marker.exists()
    torch.jit.load(str(script))(torch.zeros(1, 16))
    assert marker.exists(), "the fixture is live: TorchScript ran its code"


def test_run_refuses_an_unsafe_generator_with_one_line_and_exit_2(tmp_path):
    marker = tmp_path / "pwned"
    _, good = _export_legacy(tmp_path / "good.pt2")
    evil = pt2_with_pickled_weight(good, tmp_path / "evil.pt2", marker)
    cfg = write_show(tmp_path, {"g": scene_toml(f'type = "gan"\npath = "{evil}"', 'kind = "walk"')})
    r = run_cli("run", "--config", str(cfg), "--headless", "--fixed-step", "--duration", "1")
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "evil.pt2" in ln]
    assert len(lines) == 1 and "is a pickle" in lines[0], r.stderr
    assert not marker.exists()


class _Last:
    """A presented-frame sink keeping the newest frame."""

    def __init__(self) -> None:
        self.rgb: np.ndarray | None = None

    def wants(self, t):
        return True

    def put(self, rgb, size, t):
        self.rgb = np.frombuffer(rgb, np.uint8).reshape(size[1], size[0], 3) / 255.0


def _render_scene(tmp_path, text: str, ticks: int = 30) -> np.ndarray:
    """The scene played fixed-step at 160x96 through the real chain (EGL): the presented frames, stacked."""
    from installation.clock import FixedClock
    from installation.config import load_show
    from installation.render.targets import HeadlessTarget
    from installation.runtime import Runtime

    tmp_path.mkdir()
    spec = load_show(write_show(tmp_path, {"mine": text}, extra="[archive]\nenabled = false\n"))
    target = HeadlessTarget(spec.config.output.size)
    rt = Runtime(spec, target, FixedClock(20), fps=20, inputs=False)
    sink, frames = _Last(), []
    rt.tap.add(sink)
    try:
        rt.start()
        for n in range(ticks):
            rt.step()
            if n >= ticks - 5:
                frames.append(sink.rgb)
    finally:
        rt.close()
        target.close()
    return np.stack(frames)


def test_the_gan_scene_template_loads_and_gives_the_shipped_look(tmp_path):
    """docs/gan-scene.toml with a generator file of its own loads as a scene, and plays as the shipped scenes look:
    the generator's bright full frame becomes a dark wall with the
    brightest forms lit, where the same scene without the passes fills the frame."""
    from installation.config import load_scene

    torch.manual_seed(0)
    gen = TinyGenerator()
    with torch.no_grad():  # the contrast of a trained generator's frames (luma 0.07..0.8, median 0.43), not grey
        [m for m in gen.modules() if isinstance(m, torch.nn.ConvTranspose2d)][-1].weight.mul_(30)
    path = save_generator(gen, tmp_path / "mine.safetensors", (16,))
    template = (ROOT / "docs" / "gan-scene.toml").read_text()
    text = template.replace('"../models/mine.safetensors"', f'"{path}"')
    assert text != template
    (tmp_path / "mine.toml").write_text(text)
    scene = load_scene(tmp_path / "mine.toml")
    assert scene.decoder.type == "gan" and list(scene.shaders) == ["present", "feedback", "palette", "detail"]
    assert decoder_class("gan").latent_shape(scene.decoder.settings) == (16,)

    raw = _render_scene(tmp_path / "raw", text.replace('shaders = ["present", "feedback", "palette", "detail"]',
                                                       'shaders = ["present"]'))
    looked = _render_scene(tmp_path / "look", text)
    luma = lambda f: f @ np.array([0.2126, 0.7152, 0.0722])  # noqa: E731
    assert np.median(luma(raw)) > 0.25 and (luma(raw) < 0.08).mean() < 0.05  # lit all over
    assert np.median(luma(looked)) < 0.08 and (luma(looked) < 0.08).mean() > 0.5  # mostly the wall
    assert np.percentile(luma(looked), 99) > 0.1 and luma(looked).std() > 0.01  # with forms lit out of it


def test_a_gan_show_lists_its_scenes_and_parameters_without_importing_torch(tmp_path):
    """A GAN scene is checked from its generator file's header (the architecture's config from
    decoders/gan_configs.py, no network built): `scenes` and `params` import no torch."""
    from support import print_only

    torch.manual_seed(0)
    path = save_generator(TinyGenerator(classes=3), tmp_path / "mine.safetensors", (16,), class_dim=3)
    text = (ROOT / "docs" / "gan-scene.toml").read_text().replace('"../models/mine.safetensors"', f'"{path}"')
    cfg = write_show(tmp_path, {"mine": text, "plain": scene_toml()})
    out, heavy = print_only("scenes", "--config", str(cfg), min_lines=3)
    assert heavy == "-", f"imported {heavy}"
    assert "mine" in out and "gan" in out and "INVALID" not in out and "needs files" not in out
    out, heavy = print_only("params", "--config", str(cfg))
    assert heavy == "-", f"imported {heavy}"
    assert "gan.truncation" in out and "gan.class.2.weight" in out


def test_a_reload_into_an_unsafe_generator_is_a_counted_fault_and_runs_nothing(tmp_path, caplog):
    """SIGHUP after a scene was pointed at a received generator carrying a pickle: one line naming the file, a
    counted reload fault, the running scene plays on, and the payload never runs."""
    import logging

    from installation.clock import FixedClock
    from installation.config import load_show
    from installation.render.targets import HeadlessTarget
    from installation.runtime import Runtime

    marker = tmp_path / "pwned"
    _, good = _export_legacy(tmp_path / "good.pt2")
    evil = pt2_with_pickled_weight(good, tmp_path / "evil.pt2", marker)
    cfg = write_show(tmp_path, {"a": scene_toml()})
    spec = load_show(cfg)
    target = HeadlessTarget(spec.config.output.size)
    rt = Runtime(spec, target, FixedClock(20), fps=20, inputs=False)
    try:
        for _ in range(3):
            rt.step()
        (tmp_path / "scenes" / "a.toml").write_text(scene_toml(f'type = "gan"\npath = "{evil}"', 'kind = "walk"'))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="installation"):
            rt.request_reload()
            for _ in range(3):
                rt.step()
        assert rt.faults["reload"] == 1 and rt.show.scene.decoder.type == "cppn"
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and str(evil) in errors[0] and "is a pickle" in errors[0], errors
        assert not marker.exists()
    finally:
        rt.close()
        target.close()
