"""Space files: a folder of real image files (png, jpg with EXIF rotation, webp, RGBA, a broken one) encoded by tiny
random diffusers models loaded from disk, walked by the images trajectory and rendered by the diffusion decoder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from installation.cli import main as cli_main
from installation.config import ConfigError, load_scene
from installation.decoders import DecoderSpec, LatentRequest, create, decoder_class
from installation.latent.trajectories import ImagesSettings, build
from installation.spaces.folder import draw_shapes, load_square, read_folder
from installation.spaces.space import build_space, load_space, similarity_order

SIZE = 64


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    from installation.decoders.random_models import make_sd21, make_taesd

    root = tmp_path_factory.mktemp("models")
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    return {"sd": make_sd21(root / "sd-turbo"), "taesd": make_taesd(root / "taesd")}


def _exif_rotated(path: Path) -> None:
    """40 wide x 20 tall, left half red, right half blue, tagged 'rotate 90 CW to view' (orientation 6)."""
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr).save(path, exif=exif.tobytes(), quality=95)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    draw_shapes(root / "shapes", n=10, size=80, seed=3)
    _exif_rotated(root / "phone.jpg")
    Image.fromarray(np.full((30, 50, 3), 200, np.uint8)).save(root / "wide.webp")
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 1] = 255
    rgba[..., 3] = 128
    Image.fromarray(rgba, "RGBA").save(root / "alpha.png")
    (root / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "notes.txt").write_text("not an image")
    return root


def test_folder_reading_exif_crop_and_skips(folder):
    img = load_square(folder / "phone.jpg", 32)
    assert img.shape == (32, 32, 3)
    top, bottom = img[:8].mean(axis=(0, 1)), img[-8:].mean(axis=(0, 1))
    assert top[0] > 200 and top[2] < 60, "EXIF orientation 6: the left (red) half is on top once turned"
    assert bottom[2] > 200 and bottom[0] < 60
    images, names, skipped = read_folder(folder, 16)
    assert images.shape == (13, 16, 16, 3) and "phone.jpg" in names and "wide.webp" in names
    assert [s[0] for s in skipped] == ["broken.png"] and "notes.txt" not in names


@pytest.fixture(scope="module")
def space(models, folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("space") / "mine.npz"
    meta = build_space(folder, out, model=str(models["sd"]), size=SIZE, batch=4, progress=False)
    assert meta["images"] == 13 and meta["skipped"] == 1 and meta["images_per_s"] > 0
    return out


def test_space_file_contents(space, folder):
    s = load_space(space)
    assert s.latents.shape == (13, 4, SIZE // 8, SIZE // 8) and s.latents.dtype == np.float16
    assert s.thumbnails.shape == (13, 64, 64, 3) and s.thumbnails.dtype == np.uint8
    assert s.skipped[0][0] == "broken.png" and "cannot identify" in s.skipped[0][1]
    assert np.allclose(np.linalg.norm(s.embeddings, axis=1), 1.0, atol=1e-5)
    assert s.meta["embedding"] == "pooled-latents" and s.meta["latent_shape"] == [4, 8, 8]
    assert not Path(str(space) + ".parts").exists(), "the resume folder is removed once the file is written"
    # The thumbnail is the image: the green RGBA square over black is green.
    g = s.thumbnails[s.names.index("alpha.png")].mean(axis=(0, 1))
    assert g[1] > 100 and g[0] < 10 and g[2] < 10


def test_interrupted_build_resumes_and_matches(models, folder, space, tmp_path):
    out = tmp_path / "again.npz"
    seen = []

    def stop_after_two(done):
        seen.append(done)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_space(folder, out, model=str(models["sd"]), size=SIZE, batch=4, progress=False, on_batch=stop_after_two)
    assert not out.exists() and len(list(Path(str(out) + ".parts").glob("part_*.npz"))) == 2
    resumed = []
    meta = build_space(folder, out, model=str(models["sd"]), size=SIZE, batch=4, progress=False,
                       on_batch=resumed.append)
    assert resumed[0] == 8 + 4 and meta["encoded_now"] == 14 - 8  # continued after the two stored batches (14 files)
    a, b = load_space(space), load_space(out)
    assert a.names == b.names and np.array_equal(a.latents, b.latents)


def test_taesd_and_clip_embeddings(models, folder, tmp_path):
    cfg = tmp_path / "tiny-clip.json"
    cfg.write_text(json.dumps({"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32,
                                                                "patch_size": 16, "head_width": 16},
                               "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
                                            "layers": 1}}))
    meta = build_space(folder, tmp_path / "t.npz", taesd=str(models["taesd"]), size=SIZE, clip="tiny-clip",
                       clip_config=str(cfg), progress=False)
    s = load_space(tmp_path / "t.npz")
    assert meta["encoder"] == "taesd" and s.meta["embedding"] == "clip:tiny-clip"
    assert s.embeddings.shape == (13, 32) and np.allclose(np.linalg.norm(s.embeddings, axis=1), 1.0, atol=1e-5)


def test_similarity_order_is_a_nearest_neighbour_chain():
    e = np.array([[1, 0], [0, 1], [0.9, 0.1], [0.1, 0.9]], np.float32)
    assert similarity_order(e) == [0, 2, 3, 1]
    assert sorted(similarity_order(np.random.default_rng(0).normal(size=(50, 8)), start=7)) == list(range(50))


def test_images_trajectory_visits_every_image(space):
    s = load_space(space)
    settings = ImagesSettings(space=str(space), step=4.0, hold=0.25)
    traj = build(settings, s.latent_shape, seed=0)
    assert traj.period == 13 * 4.0 and sorted(traj.order) == list(range(13)) and traj.order[0] == 0
    for k, idx in enumerate(traj.order):
        assert np.allclose(traj(k * 4.0 + 0.5), s.latents[idx], atol=1e-3), "rests on each image"
    mid = traj(1.0 * 4.0 - 1.5)
    assert not np.allclose(mid, s.latents[traj.order[0]], atol=1e-2) and np.isfinite(mid).all()
    assert np.allclose(traj(5.3), traj(5.3 + traj.period))
    given = build(ImagesSettings(space=str(space), order="given"), s.latent_shape, seed=3)
    assert given.order[:3] == [3, 4, 5]
    with pytest.raises(ValueError, match="space build --size"):
        build(settings, (4, 16, 16), seed=0)


def _scene(tmp_path: Path, models, space: Path, size: int) -> Path:
    rel = Path("..") / Path(space).parent.name / Path(space).name
    (tmp_path / "s").mkdir(exist_ok=True)
    p = tmp_path / "s" / "mine.toml"
    p.write_text(f'[decoder]\ntype = "diffusion"\nmodel = "{models["sd"]}"\nwidth = {size}\nheight = {size}\n'
                 f'latent_source = true\nstrength = 0.0\n\n[trajectory]\nkind = "images"\nspace = "{rel}"\n')
    return p


def test_scene_resolves_the_space_beside_it_and_checks_the_shape(space, models):
    root = Path(space).parent.parent
    scene = load_scene(_scene(root, models, space, SIZE))
    assert scene.body.trajectory.space == str(Path(space).resolve())
    with pytest.raises(ConfigError, match="latents of shape"):
        load_scene(_scene(root, models, space, 128))


def test_diffusion_renders_the_walk_by_img2img(space, models, folder):
    s = load_space(space)
    Diffusion = decoder_class("diffusion")
    settings = Diffusion.Settings(model=str(models["sd"]), width=SIZE, height=SIZE, latent_source=True,
                                  strength=0.0, prompts=(("a shape", 1.0),))
    d = create(DecoderSpec("diffusion", settings))
    d.prepare()
    traj = build(ImagesSettings(space=str(space), step=4.0), s.latent_shape, seed=0)

    def frame(tau, strength):
        return d.render(LatentRequest(z=traj(tau), t=tau, seq=0, decoder=DecoderSpec("diffusion", settings),
                                      params={"diffusion.strength": strength}, extras={}))

    # Strength 0 is the image decoded: the same frame as the decoder's own encode + reconstruction of that file.
    ref_settings = settings.model_copy(update={"latent_source": False,
                                               "source": str(folder / s.names[traj.order[1]])})
    ref = create(DecoderSpec("diffusion", ref_settings))
    ref.prepare()
    want = ref.render(LatentRequest(z=np.zeros(s.latent_shape, np.float32), t=0, seq=0,
                                    decoder=DecoderSpec("diffusion", ref_settings),
                                    params={"diffusion.strength": 0.0}, extras={}))
    got = frame(4.0 + 0.1, 0.0)
    assert np.abs(got.astype(int) - want.astype(int)).mean() < 2.0  # float16 latents in the file
    dreamed = frame(4.0 + 0.1, 0.6)
    assert dreamed.shape == (SIZE, SIZE, 3) and np.abs(dreamed.astype(int) - got.astype(int)).mean() > 1.0
    assert not np.array_equal(frame(4.0 + 0.1, 0.6), frame(4.0 + 3.0, 0.6)), "the walk moves the frame"
    d.close()
    ref.close()


def test_cli_space_build(models, folder, tmp_path, capfd):
    out = tmp_path / "c.npz"
    assert cli_main(["space", "build", str(folder), "--model", str(models["sd"]), "--out", str(out),
                     "--size", str(SIZE), "--json"]) == 0
    summary = json.loads(capfd.readouterr().out.strip().splitlines()[-1])
    assert summary["images"] == 13 and load_space(out).latents.shape[0] == 13
    assert cli_main(["space", "build", str(tmp_path / "nope"), "--model", str(models["sd"]),
                     "--out", str(out)]) == 2
    assert "not found" in capfd.readouterr().err


def test_the_map_command_draws_a_space_file_with_its_tour(space, tmp_path, capfd):
    from installation.archive.maps import space_points

    points = space_points(space)
    loaded = load_space(space)
    assert [p.id for p in points] == similarity_order(loaded.embeddings.astype(np.float64))
    assert all(p.thumb for p in points) and points[0].prompts in loaded.names
    out, page = tmp_path / "map.png", tmp_path / "map.html"
    assert cli_main(["map", str(space), "--out", str(out), "--html", str(page), "--size", "640x400"]) == 0
    assert "points       13" in capfd.readouterr().out
    img = np.asarray(Image.open(out))
    assert img.shape == (400, 640, 3) and img.std() > 10  # thumbnails and a path on the dark ground
    assert page.read_text().count("data:image/jpeg;base64") >= 13


def test_a_space_file_with_a_pickled_array_runs_nothing(space, tmp_path):
    """np.load(allow_pickle=False): an object array (a pickle, here with a payload that would create a marker) in a
    space file is refused with one line; the payload never runs."""
    from payloads import Payload

    marker = tmp_path / "pwned"
    with np.load(space, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["names"] = np.array([Payload(marker)], dtype=object)
    evil = tmp_path / "evil.npz"
    np.savez(evil, **arrays)
    with pytest.raises(ValueError, match=r"evil.npz is not a space file"):
        load_space(evil)
    assert not marker.exists()
    with np.load(evil, allow_pickle=True) as z:
        z["names"]
    assert marker.exists(), "the fixture is live: np.load with allow_pickle runs it"
