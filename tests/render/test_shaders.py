"""Shader headers: uniforms declared in JSON, parsed without GL; bad headers name the file and the problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from installation.bus import ParamSpec
from installation.render.shaders import BUILTINS, ShaderError, ShaderFile, load_dir, parse

REPO = Path(__file__).resolve().parents[2]
SHADERS = REPO / "shaders"
BODY = "#version 330\nuniform sampler2D src;\nin vec2 uv;\nout vec4 fragColor;\nvoid main() { fragColor = texture(src, uv); }\n"


def _write(tmp_path: Path, header, name: str = "fx", body: str = BODY) -> Path:
    path = tmp_path / f"{name}.frag"
    text = header if isinstance(header, str) else "/*" + json.dumps(header) + "*/\n"
    path.write_text(text + body)
    return path


# -- the shipped shaders --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", sorted(SHADERS.glob("*.frag")), ids=lambda p: p.stem)
def test_every_shipped_shader_parses(path):
    sh = parse(path)
    assert isinstance(sh, ShaderFile)
    assert sh.name == path.stem and sh.path == path
    assert sh.source.startswith("#version 330")
    assert "/*{" not in sh.source
    assert sh.description
    for spec in sh.uniforms:
        assert spec.name.startswith(f"{sh.name}.")
        uname = spec.name.split(".", 1)[1]
        assert uname not in BUILTINS
        assert f"uniform float {uname};" in sh.source or f"uniform int {uname};" in sh.source \
            or f"uniform bool {uname};" in sh.source, uname
        assert spec.min <= spec.default <= spec.max
        assert spec.doc
    declared = {s.name.split(".", 1)[1]: s for s in sh.uniforms}
    for key, value in sh.identity.items():
        assert key in declared
        assert declared[key].min <= value <= declared[key].max


def test_shipped_shader_details():
    shaders = load_dir(SHADERS)
    assert set(shaders) == {"present", "feedback", "grade", "palette", "detail"}
    assert [n for n, sh in shaders.items() if sh.full_size] == ["detail"]  # detail at the output's size
    assert [n for n, sh in shaders.items() if sh.half_float] == ["palette"]  # a smooth level for its lines
    palette, detail = shaders["palette"], shaders["detail"]
    assert palette.identity == {"amount": 0.0}
    assert {"palette.black", "palette.falloff", "palette.ceiling", "palette.saturation", "palette.a_r",
            "palette.d_b"} <= {s.name for s in palette.uniforms}
    assert {s.name for s in detail.uniforms} == {"detail.lines", "detail.density", "detail.grain", "detail.dither"}
    assert detail.identity == {"lines": 0.0, "grain": 0.0, "dither": 0.0}
    grade = shaders["grade"]
    names = [s.name for s in grade.uniforms]
    assert names == ["grade.exposure", "grade.contrast", "grade.saturation", "grade.hue", "grade.gamma",
                     "grade.vignette"]
    contrast = grade.uniforms[1]
    assert (contrast.type, contrast.min, contrast.max, contrast.default) == ("float", 0.0, 3.0, 1.0)
    assert contrast.attack == 0.05 and contrast.release == 0.05
    assert grade.identity["vignette"] == 0.0 and grade.identity["gamma"] == 1.0
    assert grade.param("hue") == "grade.hue"
    fb = shaders["feedback"]
    assert fb.identity == {"amount": 0.0}
    assert [s.name for s in fb.uniforms] == ["feedback.amount", "feedback.zoom", "feedback.rotate"]
    present = shaders["present"]
    assert present.identity == {}
    assert {s.name for s in present.uniforms} == {"present.zoom", "present.sharpen"}


# -- good headers -------------------------------------------------------------------------------------------------

def test_minimal_header_and_all_types(tmp_path):
    path = _write(tmp_path, {
        "description": "test",
        "uniforms": {
            "amount": {"type": "float", "min": -1, "max": 1, "default": 0.5, "doc": "d", "attack": 0.2, "release": 0},
            "steps": {"type": "int", "min": 1, "max": 8, "default": 4},
            "invert": {"type": "bool", "default": 0},
            "plain": {"min": 0, "max": 2, "default": 1},
        },
        "identity": {"amount": 0, "invert": 0},
    })
    sh = parse(path)
    specs = {s.name: s for s in sh.uniforms}
    assert specs["fx.amount"] == ParamSpec("fx.amount", "float", -1.0, 1.0, 0.5, 0.2, 0.0, "d")
    assert specs["fx.steps"].type == "int" and specs["fx.steps"].max == 8.0
    assert (specs["fx.invert"].type, specs["fx.invert"].min, specs["fx.invert"].max) == ("bool", 0.0, 1.0)
    assert specs["fx.plain"].type == "float"
    assert sh.identity == {"amount": 0.0, "invert": 0.0}
    assert sh.source == BODY
    assert sh.description == "test"


def test_empty_header_and_leading_whitespace(tmp_path):
    sh = parse(_write(tmp_path, "\n  /*{}*/\n"))
    assert sh.uniforms == () and sh.identity == {} and sh.description == ""


def test_multiline_header(tmp_path):
    header = '/*{\n  "description": "x",\n  "uniforms": {\n    "k": {"type": "float", "min": 0, "max": 1, "default": 0}\n  }\n}*/\n'
    sh = parse(_write(tmp_path, header))
    assert [s.name for s in sh.uniforms] == ["fx.k"]


# -- bad headers -------------------------------------------------------------------------------------------------

def U(**decl):
    return {"uniforms": {"k": {"type": "float", "min": 0, "max": 1, "default": 0, **decl}}}


BAD = {
    "missing-header": ("// no header\n", "missing the JSON header"),
    "header-not-first": ("#version 330\n/*{}*/\n", "missing the JSON header"),
    "bad-json": ('/*{"uniforms": {"k": }}*/\n', "not valid JSON"),
    "trailing-comma": ('/*{"description": "x",}*/\n', "not valid JSON"),
    "unknown-header-key": ({"INPUTS": []}, "unknown header key 'INPUTS'; allowed: description, uniforms, identity, size, precision"),
    "reserved-time": ({"uniforms": {"time": {"type": "float", "min": 0, "max": 1, "default": 0}}}, "reserved"),
    "reserved-src": ({"uniforms": {"src": {"type": "float", "min": 0, "max": 1, "default": 0}}}, "reserved"),
    "decl-not-object": ({"uniforms": {"k": 0.5}}, "must be an object"),
    "unknown-decl-key": (U(step=0.1), "unknown key 'step'"),
    "bad-type": (U(type="vec3"), "type must be one of"),
    "min-not-number": (U(min="0"), "must be numbers"),
    "max-bool": (U(max=True), "must be numbers"),
    "missing-default": ({"uniforms": {"k": {"type": "float", "min": 0, "max": 1}}}, "must be numbers"),
    "default-string": (U(default="0.5"), "must be numbers"),
    "default-above": (U(default=2), "outside"),
    "default-below": (U(min=0.5, default=0.1), "outside"),
    "min-above-max": (U(min=2, max=1, default=1.5), "outside"),
    "default-nan": ('/*{"uniforms": {"k": {"type": "float", "min": 0, "max": 1, "default": NaN}}}*/\n',
                    "NaN is not allowed"),
    "max-infinity": ('/*{"uniforms": {"k": {"type": "float", "min": 0, "max": Infinity, "default": 0}}}*/\n',
                     "Infinity is not allowed"),
    "identity-undeclared": ({**U(), "identity": {"amount": 0}}, "identity names 'amount', which is not a declared uniform"),
    "identity-not-number": ({**U(), "identity": {"k": "zero"}}, "identity"),
    "size-unknown": ({"size": "half"}, "'size' must be \"work\" or \"output\""),
    "precision-unknown": ({"precision": "float"}, "'precision' must be \"byte\" or \"half\""),
    "identity-null": ({**U(), "identity": {"k": None}}, "identity"),
    "identity-not-object": ({**U(), "identity": ["k"]}, "identity"),
    "uniforms-not-object": ({"uniforms": [{"name": "k"}]}, "uniforms"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_header_raises_shader_error_naming_the_file(tmp_path, case):
    header, words = BAD[case]
    path = _write(tmp_path, header, name="broken")
    with pytest.raises(ShaderError) as info:
        parse(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: "), msg
    assert words in msg, msg
    assert "\n" not in msg


def test_uniform_errors_name_the_uniform(tmp_path):
    path = _write(tmp_path, U(type="double"))
    with pytest.raises(ShaderError, match="uniform 'k'"):
        parse(path)


def test_unreadable_shader(tmp_path):
    path = tmp_path / "gone.frag"
    with pytest.raises(ShaderError) as info:
        parse(path)
    assert str(info.value).startswith(f"{path}: cannot read shader")


def test_not_utf8_shader(tmp_path):
    path = tmp_path / "latin.frag"
    path.write_bytes(b'/*{"description": "caf\xe9"}*/\n' + BODY.encode())
    with pytest.raises(ShaderError) as info:
        parse(path)
    assert str(info.value).startswith(f"{path}: ")


def test_load_dir(tmp_path):
    _write(tmp_path, U(), name="b")
    _write(tmp_path, {}, name="a")
    (tmp_path / "notes.txt").write_text("not a shader")
    shaders = load_dir(tmp_path)
    assert list(shaders) == ["a", "b"]
    assert shaders["b"].uniforms[0].name == "b.k"


def test_load_dir_missing_folder_and_bad_file(tmp_path):
    with pytest.raises(ShaderError, match="shader folder not found"):
        load_dir(tmp_path / "nope")
    _write(tmp_path, U(default=5), name="bad")
    with pytest.raises(ShaderError, match="bad.frag"):
        load_dir(tmp_path)


def test_a_compile_error_is_one_line_naming_the_file_line_and_first_error(tmp_path, gl_ctx):
    from installation.render.present import Presenter

    header = '/*{\n  "description": "broken on purpose"\n}*/\n\n'
    body = BODY.replace("fragColor = texture(src, uv);", "fragColor = vec4(nothing_here); also_missing();")
    path = _write(tmp_path, header, name="broken", body=body)
    shader = parse(path)
    good = parse(SHADERS / "present.frag")
    with pytest.raises(ShaderError) as info:
        Presenter(gl_ctx, (64, 36), [good, shader])
    msg = str(info.value)
    assert "\n" not in msg
    line = path.read_text().splitlines().index(next(ln for ln in path.read_text().splitlines() if "nothing_here" in ln))
    assert msg.startswith(f"{path}:{line + 1}: does not compile: "), msg
    assert "nothing_here" in msg and "more)" in msg, msg
