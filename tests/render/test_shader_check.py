"""A shader with an endless loop compiled and then hung the loop: one frame a minute, /health silent, a stop that
took 48 s (issue 25). Each shader is now drawn once in a child process with a time limit, at start and on reload,
and one whose draw does not finish is refused. These tests use a real endless loop on the real GL driver."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from installation.config import ConfigError, load_show
from installation.render import shader_check
from installation.render.shader_check import check_draws, refuse_hanging
from installation.render.shaders import parse
from support import ROOT, run_cli, scene_toml, write_show

# The loop's condition depends on a texture read, so no compiler can prove it and remove it; x only grows.
ENDLESS = """/*{"description": "an endless loop"}*/
#version 330
uniform sampler2D src;
in vec2 uv;
out vec4 color;
void main() {
    float x = texture(src, uv).r;
    while (x >= 0.0) { x += texture(src, uv * x).r + 1.0; }
    color = vec4(x, 0.0, 0.0, 1.0);
}
"""

# Ends at the default step and never at the minimum (0): found by the draws at each uniform's range ends.
ZERO_STEP = """/*{"uniforms": {"step": {"type": "float", "min": 0, "max": 1, "default": 0.5}}}*/
#version 330
uniform sampler2D src;
uniform float step;
in vec2 uv;
out vec4 color;
void main() {
    float x = 0.0;
    for (float i = 0.0; i < 1.0; i += step) { x += texture(src, uv).r * 0.1; }
    color = vec4(x, 0.0, 0.0, 1.0);
}
"""


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path, monkeypatch):
    """Each test draws for real: no results from earlier processes (the cache on disk) or tests (in memory)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(shader_check, "_checked", {})


def _shaders(tmp_path, **extra):
    d = tmp_path / "shaders"
    shutil.copytree(ROOT / "shaders", d)
    for name, text in extra.items():
        (d / f"{name}.frag").write_text(text)
    return d


def test_an_endless_loop_is_refused_and_finished_shaders_pass(tmp_path):
    d = _shaders(tmp_path, endless=ENDLESS, zerostep=ZERO_STEP)
    shaders = [parse(d / f"{n}.frag") for n in ("present", "endless", "grade", "zerostep")]
    refused = check_draws(shaders, (1280, 720))
    assert sorted(refused) == ["endless", "zerostep"], refused
    assert refused["endless"].startswith(f"{d / 'endless.frag'}: a test draw did not finish in 10 s")
    # Kept by source: asked again, nothing is drawn again (no new process) and the answer is the same.
    assert check_draws(shaders, (1280, 720)) == refused
    assert [shader_check._checked.get(shader_check._digest(s, (1280, 720), 10.0)) for s in shaders] == \
        [True, False, True, False]
    # And on disk, for the next start: a new process draws nothing again.
    shader_check._checked.clear()
    assert check_draws(shaders, (1280, 720)) == refused
    assert len(json.loads((tmp_path / "cache" / "installation" / "shader-check.json").read_text())) == 4


def test_a_show_chaining_an_endless_shader_does_not_start_and_one_left_unchained_is_left_out(tmp_path, caplog):
    d = _shaders(tmp_path, endless=ENDLESS)
    cfg = write_show(tmp_path, {"a": scene_toml(shaders='["present", "grade"]')})
    # At a real output size: the draw of a capped loop (llvmpipe bounds loops) still takes far longer than the limit.
    cfg.write_text(cfg.read_text().replace(f'shaders_dir = "{ROOT / "shaders"}"', f'shaders_dir = "{d}"')
                   .replace('size = "160x96"', 'size = "1280x720"'))
    spec = load_show(cfg)  # parsing alone cannot see it
    assert "endless" in spec.shaders
    with caplog.at_level(logging.WARNING, logger="installation"):
        refuse_hanging(spec)
    assert "endless" not in spec.shaders and "endless" in spec.refused
    assert [r.getMessage() for r in caplog.records if "endless" in r.getMessage()] == \
        [f"shader left out: {d / 'endless.frag'}: a test draw did not finish in 10 s (an endless loop?); not used"]
    (tmp_path / "scenes" / "a.toml").write_text(scene_toml(shaders='["present", "endless"]'))
    with pytest.raises(ConfigError) as info:
        refuse_hanging(load_show(cfg))
    assert str(info.value).startswith(f"{tmp_path / 'scenes' / 'a.toml'}: key 'shaders[1]': ")
    # The real command: exit 2 with one line, before any window or decoder. It finds the draws above in the cache on
    # disk (a fresh check at a load of 80 took longer than the whole command may here); the draws are above.
    r = run_cli("run", "--config", str(cfg), "--headless", "--duration", "5", timeout=300,
                env={"PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "endless.frag: a test draw did not finish" in r.stderr, r.stderr
