"""The prompt guard: prompts from the network are untrusted text, checked before they reach the decoder.

Checks, in order: NFKC normalisation and whitespace collapse, length limit, allowed characters (letters and digits
of any script, spaces, and a configurable punctuation set; control and format characters never pass), and a
blocklist file (one word or phrase per line, ``#`` comments, matched on word boundaries).

The blocklist is matched on a key of the text, not its letters: NFKC (full-width and compatibility letters become
plain ones), case folding, combining marks and invisible characters dropped, then the Unicode TR39 skeleton
(confusables.txt: a Cyrillic "о" or a Greek "ο" becomes "o", "rn" and "m" meet) from ICU's spoof checker, the
reference implementation (PyICU), and case folding again. Entries get the same key, so "ＢＡＤＷＯＲＤ", "𝐛𝐚𝐝𝐰𝐨𝐫𝐝" and
"bаdwоrd" (Cyrillic а, о) all match "badword". Look-alikes can also collide with innocent words ("burn" blocks "bum").

What the audit keeps of a refused prompt (:meth:`PromptGuard.audit_text`): the text as it arrived (the default: the
archive and the audit log are the record of what visitors sent), or with ``refused = "hash"`` only its HMAC-SHA256
under a secret key kept beside the config (``refused_key_file``): the same text gives the same hash, so repeats and
a suspected text can be checked by whoever holds the key, but a copy of the archive cannot be read back by guessing
texts and hashing them, as an unsalted hash of short prompts could.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)


class PromptGuardSettings(BaseModel):
    """Limits for prompts received from outside (OSC)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_length: int = Field(default=200, ge=1, le=4000, description="characters, after normalisation")
    allowed_punctuation: str = Field(default=" .,;:!?'\"()-&/+#%*", description="besides letters and digits")
    ascii_only: bool = Field(default=False, description="restrict letters/digits to ASCII")
    blocklist: str | None = Field(default=None, description="path of a blocklist file (relative to base_dir)")
    refused: Literal["text", "hash"] = Field(default="text", description="what the archive and the audit log keep of "
                                             "a refused prompt: its text, or only a keyed hash (HMAC-SHA256)")
    refused_key_file: str = Field(default="prompt-hash.key", description="the hash's secret key (relative to "
                                  "base_dir), created with 32 random bytes on first use; keep it to check a text")


@dataclass(frozen=True)
class GuardResult:
    """The outcome: ``ok`` with the cleaned ``text``, or not ok with a short ``reason``."""

    ok: bool
    text: str = ""
    reason: str = ""


_WS = re.compile(r"\s+")


_DROPPED = frozenset(("Mn", "Me", "Cf"))  # combining marks and invisible format characters: not part of the key


def load_blocklist(path: Path) -> tuple[str, ...]:
    """Read a blocklist file: one entry per line, blank lines and ``#`` comments ignored, casefolded."""
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            entries.append(_WS.sub(" ", unicodedata.normalize("NFKC", line)).casefold())
    return tuple(dict.fromkeys(entries))


class _Skeleton:
    """The blocklist's match key of a text (see the module docstring); ICU's checker is safe to share by threads."""

    def __init__(self) -> None:
        import icu  # PyICU

        self._checker = icu.SpoofChecker()

    def __call__(self, text: str) -> str:
        folded = unicodedata.normalize("NFD", unicodedata.normalize("NFKC", text).casefold())
        bare = "".join(c for c in folded if unicodedata.category(c) not in _DROPPED)
        return _WS.sub(" ", self._checker.getSkeleton(0, bare).casefold())


def _hash_key(path: Path) -> bytes:
    """The secret of ``refused = "hash"``: read, or created (32 random bytes, owner-only) when absent."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_bytes()
        if len(key) < 16:
            raise ValueError(f"prompt guard: hash key file {str(path)!r} holds {len(key)} bytes; 16 or more needed "
                             f"(delete it to have a new one made)") from None
        return key
    key = secrets.token_bytes(32)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
    log.info("prompt guard: made the key for hashed refused prompts, %s (keep it to check a text later)", path)
    return key


class PromptGuard:
    """Validate and clean prompt text; immutable after construction, so any thread may call :meth:`check`."""

    def __init__(self, settings: PromptGuardSettings | None = None, base_dir: str | Path | None = None) -> None:
        self.settings = settings or PromptGuardSettings()
        self._punct = frozenset(self.settings.allowed_punctuation)
        self.blocked: tuple[str, ...] = ()
        if self.settings.blocklist:
            path = self._path(self.settings.blocklist, base_dir)
            try:
                self.blocked = load_blocklist(path)
            except (OSError, UnicodeDecodeError) as exc:
                # Fail fast at start-up: a configured blocklist that cannot be read is a config error.
                raise ValueError(f"prompt guard: cannot read blocklist file {str(path)!r}: {exc}") from exc
        self._key = _Skeleton() if self.blocked else None
        keys = sorted({self._key(b) for b in self.blocked} - {""}, key=len, reverse=True) if self._key else []
        self._block_re = re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, keys)) + r")(?!\w)") if keys else None
        self._hash_key: bytes | None = None
        if self.settings.refused == "hash":
            path = self._path(self.settings.refused_key_file, base_dir)
            try:
                self._hash_key = _hash_key(path)
            except OSError as exc:
                raise ValueError(f"prompt guard: cannot read or make the hash key file {str(path)!r}: {exc}") from exc

    @staticmethod
    def _path(value: str, base_dir: str | Path | None) -> Path:
        path = Path(value).expanduser()
        return Path(base_dir) / path if base_dir is not None and not path.is_absolute() else path

    def _char_ok(self, ch: str) -> bool:
        if ch in self._punct:
            return True
        if self.settings.ascii_only and not ch.isascii():
            return False
        cat = unicodedata.category(ch)
        return cat[0] in "LN" or cat == "Mn" or cat == "Mc"

    def check(self, text: object) -> GuardResult:
        """Return the cleaned prompt or why it was refused (``type``, ``empty``, ``length``, ``chars``, ``blocked``)."""
        if not isinstance(text, str):
            return GuardResult(False, reason="type")
        # Refuse absurd input before doing any work proportional to it.
        if len(text) > 4 * self.settings.max_length + 64:
            return GuardResult(False, reason="length")
        clean = _WS.sub(" ", unicodedata.normalize("NFKC", text)).strip()
        if not clean:
            return GuardResult(False, reason="empty")
        if len(clean) > self.settings.max_length:
            return GuardResult(False, reason="length")
        if not all(self._char_ok(c) for c in clean):
            return GuardResult(False, reason="chars")
        if self._block_re is not None and self._block_re.search(self._key(clean)):
            return GuardResult(False, reason="blocked")
        return GuardResult(True, text=clean)

    def audit_text(self, text: str, result: GuardResult) -> str:
        """What the audit (the archive's journal, the audit log) keeps of a prompt: the text as it arrived, or for a
        refused one with ``refused = "hash"``, ``hmac-sha256:<hex>`` of its UTF-8 bytes under the secret key."""
        if result.ok or self._hash_key is None:
            return text
        digest = hmac.new(self._hash_key, text.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
        return f"hmac-sha256:{digest}"
