"""Config, scene and shader loading: the shipped files all load; bad ones fail with file, key and what is allowed."""

from __future__ import annotations

import os
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from installation import decoders
from installation.config import (CORE_PARAMS, DEFAULT_CONFIG, Config, ConfigError, ShowSpec, all_scene_files,
                                 check_decoder_files, check_params, load_config, load_scene, load_show)
from installation.latent import TRAJECTORIES
from installation.sizes import SizeT, parse_size
from support import print_only

REPO = Path(__file__).resolve().parent.parent
SCENES = REPO / "scenes"
SHADERS = REPO / "shaders"
SCENE_FILES = sorted(SCENES.glob("*.toml"))
SHADER_FILES = sorted(SHADERS.glob("*.frag"))
CORE = {p.name for p in CORE_PARAMS}


# -- the shipped files -------------------------------------------------------------------------------------------

def test_shipped_files_exist():
    assert DEFAULT_CONFIG == REPO / "config" / "default.toml"
    assert {p.stem for p in SCENE_FILES} >= {"aurora", "halo", "lattice", "tide", "nocturne", "vigil", "voyage"}
    assert {p.stem for p in SHADER_FILES} >= {"present", "feedback", "grade"}


def test_load_show_default_config_loads_every_scene_and_shader():
    spec = load_show()
    assert isinstance(spec, ShowSpec)
    assert spec.path == DEFAULT_CONFIG
    assert [s.name for s in spec.scenes] == list(spec.config.show.scenes) == ["aurora", "halo", "tide", "lattice", "nocturne", "voyage",
                                                                         "vigil"]
    assert set(spec.shaders) == {p.stem for p in SHADER_FILES}
    assert spec.config.output.size == SizeT(1280, 720) and spec.config.output.fps == 60
    assert spec.config.show.order == "sequence"
    # every parameter a scene may set: the core ones plus each shader uniform
    assert CORE <= set(spec.params)
    for shader in spec.shaders.values():
        for u in shader.uniforms:
            assert spec.params[u.name] is u
    assert {"feedback.amount", "grade.contrast", "present.sharpen"} <= set(spec.params)
    # every scene's chain and params are valid against them
    for scene in spec.scenes:
        assert scene.shaders[0] == "present"
        assert set(scene.shaders) <= set(spec.shaders)
        check_params(scene.params, spec.params, scene.path, "params")
    assert [p.stem for p in all_scene_files(spec)] == [p.stem for p in SCENE_FILES]
    assert spec.scene("tide").trajectory.kind == "walk"
    with pytest.raises(KeyError):
        spec.scene("nope")


def test_load_show_without_a_path_is_the_default_config():
    a, b = load_show(), load_show(DEFAULT_CONFIG)
    assert a.config == b.config and [s.name for s in a.scenes] == [s.name for s in b.scenes]
    assert load_config() == load_config(str(DEFAULT_CONFIG))


@pytest.mark.parametrize("path", SCENE_FILES, ids=lambda p: p.stem)
def test_every_shipped_scene_loads(path):
    spec = load_show()
    scene = load_scene(path)
    assert scene.name == path.stem and scene.path == path
    assert scene.trajectory.kind in TRAJECTORIES
    assert scene.decoder.type in decoders.names()
    assert scene.description
    assert scene.duration > 0
    assert scene.shaders[0] == "present" and set(scene.shaders) <= set(spec.shaders)
    check_params(scene.params, spec.params, path, "params")
    # and it plays alone, as `run --scene NAME` would, or says which model files it needs first
    try:
        check_decoder_files(scene)
    except ConfigError as e:
        assert scene.decoder.type != "cppn" and "huggingface-cli download" in str(e)
        return
    only = load_show(only_scene=path.stem)
    assert [s.name for s in only.scenes] == [path.stem]


def test_shipped_scene_values_are_read():
    aurora = load_scene(SCENES / "aurora.toml")
    assert aurora.seed == 11 and aurora.trajectory.period == 40.0 and aurora.trajectory.harmonics == 3
    assert aurora.decoder.settings.latent_dim == 8 and aurora.decoder.settings.resolution == SizeT(320, 180)
    assert aurora.params["feedback.amount"] == 0.35


def test_every_default_key_is_spelled_out_in_the_default_config():
    """The shipped config lists every key with its default (its header says so)."""
    import tomllib

    data = tomllib.loads(DEFAULT_CONFIG.read_text())
    for section, model in Config.model_fields.items():
        if section == "params":
            continue
        if isinstance(data[section], list):  # arrays of tables ([[outputs]], [[sinks]]): empty by default
            assert data[section] == [], section
            continue
        sub = model.annotation
        assert set(data[section]) == set(sub.model_fields), section
    # and the values written there are the defaults (the play list aside: the file adds the newer scenes)
    written = Config.model_validate(data)
    assert written.model_copy(update={"show": written.show.model_copy(update={"scenes": Config().show.scenes})}) \
        == Config()


# -- sizes -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [("1280x720", (1280, 720)), (" 64 X 48 ", (64, 48)), ([320, 180], (320, 180)),
                                            ("8x8192", (8, 8192))])
def test_parse_size(text, expected):
    size = parse_size(text)
    assert size == expected and str(size) == f"{expected[0]}x{expected[1]}"


@pytest.mark.parametrize("bad", ["big", "1280*720", "1280x", "-5x5", "4x4", "9000x10", "1280.5x720", [1, 2, 3],
                                 [64.0, 64], None, 1280])
def test_parse_size_rejects(bad):
    with pytest.raises(ValueError, match="WxH|within 8"):
        parse_size(bad)


# -- bad files -----------------------------------------------------------------------------------------------------

def _config(tmp_path: Path, body: str, *, scenes_dir: Path | str = SCENES, shaders_dir: Path | str = SHADERS,
            scenes: str = '["aurora", "tide"]') -> Path:
    path = tmp_path / "show.toml"
    show = f'[show]\nscenes = {scenes}\nscenes_dir = "{scenes_dir}"\nshaders_dir = "{shaders_dir}"\n'
    if "[show]" in body:
        show = ""
    path.write_text(body + "\n" + show)  # body first: its top-level keys must precede any table
    return path


def _scene_dir(tmp_path: Path, name: str, text: str) -> Path:
    """A copy of the shipped scenes plus one more."""
    d = tmp_path / "scenes"
    shutil.copytree(SCENES, d)
    (d / f"{name}.toml").write_text(text)
    return d


def _expect(exc: ConfigError, file: Path, key: str, *words: str) -> None:
    msg = str(exc)
    assert "\n" not in msg
    assert exc.file == str(file), msg
    assert exc.key == key, msg
    assert msg.startswith(f"{file}: key '{key}': ") if key else msg.startswith(f"{file}: "), msg
    for w in words:
        assert w in msg, (w, msg)


CONFIG_CASES = {
    # id: (toml body, key, words the message must contain)
    "unknown-top-level-key": ('colour = 3\n', "colour",
                              ["unknown key", "allowed: " + ", ".join(sorted(Config.model_fields))]),
    "unknown-nested-key": ('[output]\nframerate = 30\n', "output.framerate",
                           ["unknown key", "allowed:", "display", "fps", "fullscreen", "size", "vsync"]),
    "wrong-type": ('[output]\nfps = "fast"\n', "output.fps", ["integer", "'fast'"]),
    "out-of-range": ('[output]\nfps = 0\n', "output.fps", ["greater than or equal to 1", "got 0"]),
    "too-high": ('[record]\ncrf = 52\n', "record.crf", ["less than or equal to 51"]),
    "bad-size": ('[output]\nsize = "huge"\n', "output.size", ["WxH", "1280x720", "'huge'"]),
    "size-too-small": ('[output]\nsize = "4x4"\n', "output.size", ["8..8192"]),
    "bad-literal": ('[output]\nfit = "zoom"\n', "output.fit", ["cover", "contain", "stretch"]),
    "bad-order": ('[show]\nscenes = ["aurora"]\norder = "random"\n', "show.order", ["sequence", "shuffle"]),
    "empty-scene-list": ('[show]\nscenes = []\n', "show.scenes", ["at least 1"]),
    "unknown-show-key": ('[show]\nscene = ["aurora"]\n', "show.scene", ["unknown key", "scenes", "scenes_dir"]),
    "unknown-param": ('[params]\nwarp = 1.0\n', "params.warp",
                      ["unknown parameter", "allowed:", "speed", "radius", "feedback.amount", "grade.contrast"]),
    "param-out-of-range": ('[params]\nspeed = 50\n', "params.speed", ["outside [0.0, 10.0]"]),
    "param-nan": ('[params]\nradius = nan\n', "params.radius", ["must be a finite number"]),
    "infinite-fade": ('[schedule]\nfade_s = inf\n', "schedule.fade_s", ["must be a finite number", "inf"]),
    "infinite-in-a-list": ('[modulation]\nlfos = [{ name = "a", rate = -inf }]\n', "modulation.lfos[0].rate",
                           ["must be a finite number"]),
    "param-wrong-type": ('[params]\nspeed = "fast"\n', "params.speed", ["number", "'fast'"]),
    "deeply-nested": ("x = " + "[" * 5000 + "]" * 5000 + "\n", "", ["nested more than 32 levels"]),
    "missing-scene": ('', "show.scenes", ["no scene 'nowhere'", "available: aurora, halo, lattice, nocturne, tide"]),
}


@pytest.mark.parametrize("case", CONFIG_CASES, ids=list(CONFIG_CASES))
def test_bad_config_names_file_key_and_what_is_allowed(tmp_path, case):
    body, key, words = CONFIG_CASES[case]
    scenes = '["aurora", "nowhere"]' if case == "missing-scene" else '["aurora", "tide"]'
    path = _config(tmp_path, body, scenes=scenes)
    with pytest.raises(ConfigError) as info:
        load_show(path)
    _expect(info.value, path, key, *words)


SCENE_CASES = {
    "unknown-decoder": ('[decoder]\ntype = "vae"\n', "decoder.type",
                        ["unknown decoder 'vae'", "allowed:", "cppn", "diffusion", "gan"]),
    "missing-decoder-type": ('[decoder]\nwidth = 8\n', "decoder.type", ["missing", "cppn"]),
    "decoder-not-a-table": ('decoder = "cppn"\n', "decoder", ["table"]),
    "decoder-out-of-range": ('[decoder]\ntype = "cppn"\nwidth = 1000\n', "decoder.width",
                             ["less than or equal to 256", "1000"]),
    "decoder-unknown-key": ('[decoder]\ntype = "cppn"\nwidht = 16\n', "decoder.widht", ["unknown key", "width"]),
    "decoder-bad-size": ('[decoder]\ntype = "cppn"\nresolution = "320by180"\n', "decoder.resolution", ["WxH"]),
    "unknown-trajectory-kind": ('[trajectory]\nkind = "spiral"\n', "trajectory.kind",
                                ["unknown kind 'spiral'", "loop", "orbit", "walk", "tour", "slerp", "still"]),
    "missing-trajectory-kind": ('[trajectory]\nperiod = 3.0\n', "trajectory.kind", ["missing", "kind"]),
    "unknown-trajectory-key": ('[trajectory]\nkind = "loop"\nspin = 2\n', "trajectory.spin",
                               ["unknown key", "allowed: harmonics, kind, period"]),
    "trajectory-out-of-range": ('[trajectory]\nkind = "tour"\nkeyframes = 1\n', "trajectory.keyframes",
                                ["greater than or equal to 2"]),
    "unknown-scene-key": ('colour = "red"\n', "colour", ["unknown key", "allowed:", "duration", "trajectory"]),
    "negative-duration": ('duration = -1.0\n', "duration", ["greater than or equal to 0"]),
    "infinite-period": ('[trajectory]\nkind = "loop"\nperiod = inf\n', "trajectory.period",
                        ["must be a finite number"]),  # accepted before: it stopped the walk for good
    "unknown-param": ('[params]\nspeeed = 1.0\n', "params.speeed", ["unknown parameter", "allowed:", "speed"]),
    "param-out-of-range": ('[params]\n"grade.contrast" = 9.0\n', "params.grade.contrast", ["outside [0.0, 3.0]"]),
    "chain-not-present-first": ('shaders = ["grade", "present"]\n', "shaders[0]", ["must start with 'present'"]),
    "unknown-shader": ('shaders = ["present", "blur"]\n', "shaders[1]",
                       ["no shader 'blur'", "available: detail, feedback, grade, palette, present"]),
    "empty-chain": ('shaders = []\n', "shaders", ["at least 1"]),
    "bad-prompt": ('[[prompts]]\ntext = ""\n', "prompts.0.text", ["at least 1"]),
    "deeply-nested": ("x = " + "[" * 5000 + "]" * 5000 + "\n", "", ["nested more than 32 levels"]),  # RecursionError
    "nested-40": ("x = " + "[" * 40 + "]" * 40 + "\n", "", ["nested more than 32 levels"]),
    "huge-integer": ("seed = " + "9" * 5000 + "\n", "", ["not valid TOML"]),
    "empty": ("", "", ["empty"]),
}


@pytest.mark.parametrize("case", SCENE_CASES, ids=list(SCENE_CASES))
def test_bad_scene_names_scene_file_key_and_what_is_allowed(tmp_path, case):
    text, key, words = SCENE_CASES[case]
    scenes_dir = _scene_dir(tmp_path, "broken", text)
    path = _config(tmp_path, "", scenes_dir=scenes_dir, scenes='["aurora", "broken"]')
    with pytest.raises(ConfigError) as info:
        load_show(path)
    _expect(info.value, scenes_dir / "broken.toml", key, *words)


def test_scene_errors_come_from_load_scene_too(tmp_path):
    scene = tmp_path / "s.toml"
    scene.write_text('[decoder]\ntype = "cppn"\nwidth = 1000\n')
    with pytest.raises(ConfigError) as info:
        load_scene(scene)
    _expect(info.value, scene, "decoder.width", "256")


def test_scene_name_key_is_ignored_and_defaults_apply(tmp_path):
    scene = tmp_path / "minimal.toml"
    scene.write_text('name = "whatever"\n')
    s = load_scene(scene)
    assert s.name == "minimal"
    assert s.decoder.type == "cppn" and s.trajectory.kind == "loop"
    assert s.shaders == ["present", "feedback", "grade"]


def test_invalid_toml_syntax(tmp_path):
    path = tmp_path / "show.toml"
    path.write_text('[output\nfps = 30\n')
    with pytest.raises(ConfigError) as info:
        load_show(path)
    _expect(info.value, path, "", "not valid TOML")


def test_invalid_toml_in_a_scene(tmp_path):
    scenes_dir = _scene_dir(tmp_path, "broken", 'duration = = 3\n')
    path = _config(tmp_path, "", scenes_dir=scenes_dir, scenes='["broken"]')
    with pytest.raises(ConfigError) as info:
        load_show(path)
    _expect(info.value, scenes_dir / "broken.toml", "", "not valid TOML")


def test_non_utf8_config_is_a_config_error(tmp_path):
    """TOML must be UTF-8; a Latin-1 file (an easy mistake in a text editor) is a start-up error, not a crash."""
    path = tmp_path / "show.toml"
    path.write_bytes(b'[output]\ntitle = "caf\xe9"\n')
    with pytest.raises(ConfigError) as info:
        load_show(path)
    _expect(info.value, path, "")


def test_non_utf8_scene_is_a_config_error(tmp_path):
    scenes_dir = _scene_dir(tmp_path, "broken", "")
    (scenes_dir / "broken.toml").write_bytes(b'description = "caf\xe9"\n')
    path = _config(tmp_path, "", scenes_dir=scenes_dir, scenes='["broken"]')
    with pytest.raises(ConfigError) as info:
        load_show(path)
    _expect(info.value, scenes_dir / "broken.toml", "")


def test_missing_config_file(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_show(path)
    _expect(info.value, path, "", "file not found")


def test_missing_scenes_dir(tmp_path):
    path = _config(tmp_path, "", scenes_dir=tmp_path / "no-scenes")
    with pytest.raises(ConfigError) as info:
        load_show(path)
    _expect(info.value, path, "show.scenes_dir", "not found")


def test_missing_shaders_dir(tmp_path):
    path = _config(tmp_path, "", shaders_dir=tmp_path / "no-shaders")
    with pytest.raises(ConfigError) as info:
        load_show(path)
    _expect(info.value, path, "show.shaders_dir", "not found")


def test_a_bad_shader_in_the_folder_is_left_out_and_stops_only_the_scenes_that_chain_it(tmp_path, caplog):
    """One bad file in shaders/ used to stop every scene (issue 25): now it is left out with one warning, and a scene
    that chains it is the one-line ConfigError naming the scene, the shader and why."""
    shaders = tmp_path / "shaders"
    shutil.copytree(SHADERS, shaders)
    (shaders / "bad.frag").write_text('/*{"uniforms": {"time": {"type": "float", "min": 0, "max": 1, "default": 0}}}*/\n')
    path = _config(tmp_path, "", shaders_dir=shaders)
    with caplog.at_level(logging.WARNING, logger="installation.config"):
        spec = load_show(path)
    assert "bad" not in spec.shaders and "reserved" in spec.refused["bad"] and "present" in spec.shaders
    assert [r.getMessage() for r in caplog.records if "bad.frag" in r.getMessage()] == \
        [f"shader left out: {shaders / 'bad.frag'}: uniform 'time': name is reserved for a built-in"]
    scenes = _scene_dir(tmp_path, "uses", 'shaders = ["present", "bad"]\n')
    path = _config(tmp_path, "", scenes_dir=scenes, shaders_dir=shaders, scenes='["aurora", "uses"]')
    with pytest.raises(ConfigError) as info:
        load_show(path)
    _expect(info.value, scenes / "uses.toml", "shaders[1]", "shader 'bad' cannot be used", "bad.frag", "reserved")


@pytest.mark.parametrize("content, why", [
    (b'/*{"uniforms": {"k": {"type": "float", "min": 0, "max": 1, "default": 0}}, "identity": {"k": "off"}}*/\n',
     "identity"),
    (b'/*{"uniforms": [{"name": "k"}]}*/\n', "uniforms"),
    (b'/*{"description": "caf\xe9"}*/\n', "not UTF-8"),
    (b'/*{"description": ' + b"[" * 5000 + b"]" * 5000 + b"}*/\n", "nested more than 8 levels"),  # RecursionError
    (b'/*{"uniforms": {"k": {"type": "float", "min": 0, "max": 1e400, "default": 0}}}*/\n', "too large"),
], ids=["identity-not-number", "uniforms-not-object", "not-utf8", "deeply-nested", "huge-number"])
def test_malformed_shader_chained_by_a_scene_is_a_config_error_not_a_crash(tmp_path, content, why):
    """Shader files are untrusted input: any malformed header a scene needs ends as the one-line ConfigError (exit 2)."""
    shaders = tmp_path / "shaders"
    shutil.copytree(SHADERS, shaders)
    (shaders / "odd.frag").write_bytes(content + b"#version 330\nvoid main() {}\n")
    scenes = _scene_dir(tmp_path, "uses", 'shaders = ["present", "odd"]\n')
    path = _config(tmp_path, "", scenes_dir=scenes, shaders_dir=shaders, scenes='["uses"]')
    with pytest.raises(ConfigError) as info:
        load_show(path)
    _expect(info.value, scenes / "uses.toml", "shaders[1]", "odd.frag", why)


def test_an_empty_or_keyless_scene_is_refused(tmp_path):
    """An empty scene used to be a valid scene of defaults (cppn, loop, seed 0): what a reload installed when it read
    a file an editor had just truncated (issue 25)."""
    for text in ("", "\n\n# only a comment\n"):
        scenes = _scene_dir(tmp_path / text.count("#").__str__(), "halo", text)
        path = _config(tmp_path, "", scenes_dir=scenes, scenes='["aurora", "halo"]')
        with pytest.raises(ConfigError) as info:
            load_show(path)
        _expect(info.value, scenes / "halo.toml", "", "empty")


def test_relative_dirs_resolve_from_the_config_file(tmp_path):
    shutil.copytree(SCENES, tmp_path / "my-scenes")
    shutil.copytree(SHADERS, tmp_path / "my-shaders")
    sub = tmp_path / "conf"
    sub.mkdir()
    path = sub / "show.toml"
    path.write_text('[show]\nscenes = ["halo"]\nscenes_dir = "../my-scenes"\nshaders_dir = "../my-shaders"\n')
    spec = load_show(path)
    assert [s.path for s in spec.scenes] == [tmp_path / "my-scenes" / "halo.toml"]


def test_only_scene_that_does_not_exist(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_show(DEFAULT_CONFIG, only_scene="nowhere")
    _expect(info.value, DEFAULT_CONFIG, "--scene", "no scene 'nowhere'", "available: aurora, halo, lattice, nocturne, tide")


def test_config_params_override_defaults(tmp_path):
    path = _config(tmp_path, '[params]\nspeed = 2.5\n"grade.vignette" = 0.0\n')
    spec = load_show(path)
    assert spec.config.params == {"speed": 2.5, "grade.vignette": 0.0}


# -- the command line ------------------------------------------------------------------------------------------

CLI_CASES = {
    "unknown-top-level-key": ('colour = 3\n', None, "key 'colour': unknown key; allowed:"),
    "out-of-range": ('[output]\nfps = 0\n', None, "key 'output.fps': Input should be greater than or equal to 1"),
    "invalid-toml": ('[output\n', None, "not valid TOML"),
    "missing-scene": ('', '["nowhere", "aurora"]', "key 'show.scenes': no scene 'nowhere'"),
    "bad-choice": ('[decoder]\ndevice = "tpu"\n', None, "key 'decoder.device': Input should be 'auto', 'cpu'"),
}  # (cases that fail before a scene loads: each run then takes a fraction of a second)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "installation", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("case", CLI_CASES, ids=list(CLI_CASES))
def test_cli_run_with_a_bad_config_exits_2_with_one_line(tmp_path, case):
    body, scenes, fragment = CLI_CASES[case]
    path = _config(tmp_path, body, scenes=scenes or '["aurora"]')
    proc = _cli("run", "--config", str(path), "--headless", "--duration", "1")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"installation: {path}"), lines[0]
    assert fragment in lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_cli_non_utf8_config_exits_2_without_a_traceback(tmp_path):
    path = tmp_path / "latin.toml"
    path.write_bytes(b'[output]\ntitle = "caf\xe9"\n')
    proc = _cli("run", "--config", str(path), "--headless", "--duration", "1")
    assert "Traceback" not in proc.stderr, proc.stderr[-300:]
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith(f"installation: {path}: ")


def test_cli_missing_config_file_exits_2(tmp_path):
    path = tmp_path / "absent.toml"
    proc = _cli("run", "--config", str(path), "--headless", "--duration", "1")
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"installation: {path}: file not found"


def test_a_listing_piped_into_a_reader_that_stops_early_ends_quietly():
    """`installation scenes | head -0`: the reader has closed the pipe; no BrokenPipeError traceback, exit 0."""
    read, write = os.pipe()
    os.close(read)  # the reader has gone before the command prints its first line
    proc = subprocess.Popen([sys.executable, "-m", "installation", "scenes"], stdout=write,
                            stderr=subprocess.PIPE, cwd=REPO)
    os.close(write)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and b"Traceback" not in err, err.decode()


def test_the_default_show_lives_in_one_place():
    """A config without [show] scenes plays what config/default.toml lists (issue 27: it played three of seven)."""
    import tomllib

    from installation.config import DEFAULT_SCENES, ShowConfig

    listed = tomllib.loads((REPO / "config" / "default.toml").read_text())["show"]["scenes"]
    assert ShowConfig().scenes == list(DEFAULT_SCENES) == listed



@pytest.mark.parametrize("args", [["params"], ["osc-map"], ["scenes"], ["--help"]])
def test_a_command_that_only_prints_imports_neither_torch_nor_gl(args):
    """`params`, `osc-map`, `scenes` (the diffusion scene's file included) and `--help` print from the config and
    the scene files alone: importing torch and moderngl had made them take 7-26 s at load (issue 27)."""
    _, heavy = print_only(*args)
    assert heavy == "-", f"{args}: imported {heavy}"
