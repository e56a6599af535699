"""The prompt guard's block list against look-alike letters (NFKC, TR39 skeletons), and what the audit keeps of a
refused prompt: its text (the default) or only a keyed hash, through the real control surface and the real archive."""

from __future__ import annotations

import hashlib
import hmac
import json
import stat

import pytest

from installation.bus import ParamBus, ParamSpec
from installation.inputs.osc import OscSettings
from installation.inputs.prompt_guard import PromptGuard, PromptGuardSettings
from installation.inputs.surface import ControlSurface, Sender


@pytest.fixture
def guard(tmp_path):
    (tmp_path / "block.txt").write_text("# comment\nbadword\nvery bad phrase\nfire\n")
    return PromptGuard(PromptGuardSettings(blocklist="block.txt"), base_dir=tmp_path)


@pytest.mark.parametrize("text", [
    "a BADWORD here",
    "ＢＡＤＷＯＲＤ",  # full-width letters
    "a ｂａｄｗｏｒｄ in full width lower case",
    "𝐛𝐚𝐝𝐰𝐨𝐫𝐝",  # mathematical bold: compatibility letters
    "ℬ𝒶𝒹𝓌ℴ𝓇𝒹",  # script letters
    "bаdwоrd",  # Cyrillic а and о
    "BАDWОRD",  # Cyrillic А and О among Latin capitals
    "badwοrd",  # Greek omicron
    "b\u0430dw\u043erd and more",
    "bad\u0301word",  # a combining accent does not hide the word
    "bad\u034fword",  # nor an invisible combining grapheme joiner
    "very  bаd   phrase",  # a phrase, Cyrillic а, extra spaces
    "a ﬁre",  # the fi ligature
])
def test_look_alike_letters_do_not_pass_the_block_list(guard, text):
    assert guard.check(text).reason == "blocked", text


@pytest.mark.parametrize("text", ["badwords are words", "a bad word", "Ein Wald im Nebel, früh", "海の上の月",
                                  "фонарь над водой", "a firework", "Вадим"])
def test_innocent_text_still_passes(guard, text):
    assert guard.check(text).ok, text


def test_a_block_list_entry_written_with_look_alikes_blocks_the_plain_word(tmp_path):
    (tmp_path / "block.txt").write_text("ѕресіаl\n")  # Cyrillic letters that look like "special"
    g = PromptGuard(PromptGuardSettings(blocklist="block.txt"), base_dir=tmp_path)
    assert g.check("something special").reason == "blocked"
    assert g.check("Something SPECIAL").reason == "blocked"


def test_the_audit_keeps_refused_prompts_in_full_by_default(guard):
    result = guard.check("ＢＡＤＷＯＲＤ")
    assert guard.audit_text("ＢＡＤＷＯＲＤ", result) == "ＢＡＤＷＯＲＤ"


def test_hash_mode_keeps_a_keyed_hash_of_refused_prompts_only(tmp_path):
    (tmp_path / "block.txt").write_text("badword\n")
    settings = PromptGuardSettings(blocklist="block.txt", refused="hash")
    g = PromptGuard(settings, base_dir=tmp_path)
    key_file = tmp_path / "prompt-hash.key"
    key = key_file.read_bytes()
    assert len(key) == 32 and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    text = "a bаdword"
    kept = g.audit_text(text, g.check(text))
    assert kept == "hmac-sha256:" + hmac.new(key, text.encode(), hashlib.sha256).hexdigest()
    assert text not in kept
    ok = "a lighthouse"
    assert g.audit_text(ok, g.check(ok)) == ok  # accepted prompts are the show's content: kept as they are
    again = PromptGuard(settings, base_dir=tmp_path)  # the key is kept: the same text hashes the same
    assert again.audit_text(text, again.check(text)) == kept and key_file.read_bytes() == key
    key_file.write_bytes(b"short")
    with pytest.raises(ValueError, match="prompt-hash.key"):
        PromptGuard(settings, base_dir=tmp_path)


def _surface(tmp_path, bus, refused):
    (tmp_path / "block.txt").write_text("badword\n")
    guard = PromptGuardSettings(blocklist="block.txt", refused=refused)
    return ControlSurface(OscSettings(prompt=guard, prompt_slots=2), bus, ["a"], base_dir=tmp_path)


@pytest.mark.parametrize("refused", ["text", "hash"])
def test_the_control_surface_notes_what_the_setting_keeps(tmp_path, refused):
    bus = ParamBus([ParamSpec("speed", "float", 0.0, 4.0, 1.0)])
    journal = bus.subscribe()
    surface = _surface(tmp_path, bus, refused)
    surface.apply("/prompt/0", ["ＢＡＤＷＯＲＤ"], Sender("osc", "127.0.0.1"))
    assert surface.stats()["rejects"]["guard"] == 1
    notes = [c.value for c in journal.drain() if c.kind == "note" and c.name == "prompt.audit"]
    assert len(notes) == 1 and notes[0]["verdict"] == "blocked"
    assert (notes[0]["text"] == "ＢＡＤＷＯＲＤ") == (refused == "text")
    assert notes[0]["text"].startswith("hmac-sha256:") == (refused == "hash")


def test_the_archive_and_its_export_keep_only_the_hash(tmp_path):
    """A real run with the archive on: a refused prompt sent through the control surface is archived, and the
    archive file and `installation archive export` hold its hash, never its text."""
    from support import run_cli, scene_toml, write_show

    from installation.clock import FixedClock
    from installation.config import load_show
    from installation.render.targets import HeadlessTarget
    from installation.runtime import Runtime

    (tmp_path / "block.txt").write_text("badword\n")
    cfg = write_show(tmp_path, {"a": scene_toml()},
                     extra='[archive]\npoint_every = 0.5\n[inputs.osc.prompt]\nblocklist = "block.txt"\n'
                           'refused = "hash"\n')
    secret = "a secret bаdword"

    spec = load_show(cfg)
    target = HeadlessTarget(spec.config.output.size)
    rt = Runtime(spec, target, FixedClock(20), fps=20, inputs=False)
    try:
        rt.start()
        surface = _surface(tmp_path, rt.bus, "hash")
        for n in range(30):
            if n == 5:
                for slot, text in enumerate((secret, "a lighthouse")):
                    surface.apply(f"/prompt/{slot}", [text], Sender("osc", "127.0.0.1"))
            rt.step()
    finally:
        rt.close()
        target.close()
    path = rt.part("archive").path
    assert secret.encode() not in path.read_bytes()
    out = tmp_path / "log.jsonl"
    r = run_cli("archive", "export", str(path), "--out", str(out))
    assert r.returncode == 0, r.stderr
    audits = [row for row in map(json.loads, out.read_text().splitlines()) if row.get("name") == "prompt.audit"]
    texts = {row["value"]["verdict"]: row["value"]["text"] for row in audits}
    key = (tmp_path / "prompt-hash.key").read_bytes()
    assert texts["blocked"] == "hmac-sha256:" + hmac.new(key, secret.encode(), hashlib.sha256).hexdigest()
    assert texts["ok"] == "a lighthouse"
    assert secret not in out.read_text()
