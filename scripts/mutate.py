"""A small mutation check: put chosen bugs into a copy of the tree, one at a time, and see the relevant tests fail.

Each mutant below is one deliberate mistake in code that guards something (the prompt guard, the OSC rate limiter,
the archive writer, the projector geometry, the frame check, ...), with the test files (and ``-k`` selections) that
must catch it. For each, the working tree (tracked and untracked files that git does not ignore, so uncommitted
edits count) is copied into a temporary folder, the one line is changed there, and only those tests run there; the
working tree itself is never touched. A mutant is *caught* when its tests fail, *survived* when they pass, and
*stale* when its line is no longer in the code (edit the mutant then). The score is caught / (caught + survived).

    unshare -n sh -c 'ip link set lo up; python scripts/mutate.py'          # all of them, a few minutes
    python scripts/mutate.py --list                                          # what there is
    python scripts/mutate.py limiter-host-debt archive-tau-zero --json       # some, and one JSON line at the end

Run it inside a network namespace of your own, like the tests (they open ports). Before the mutants, the tests
run once on the unchanged copy (``--no-baseline`` skips that): a test that fails there would "catch" everything.
Exit status: 0 when every mutant that is not stale was caught, 1 otherwise, 2 for a bad argument.

Why a script and not mutmut: mutmut mutates every operator of a module (hundreds of mutants per file here, each
needing the EGL, SQLite or UDP tests that take seconds), which is hours on a small machine; these are the mistakes
that matter, named, each run against its few tests in well under a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutant:
    name: str
    why: str  # what the mistake would do to a show
    path: str
    old: str | tuple[str, ...]  # each must occur exactly once in the file (a tuple: several places, one mistake)
    new: str | tuple[str, ...]
    tests: tuple[str, ...]  # pytest arguments: files, node ids, -k selections

    def apply(self, text: str) -> str | None:
        """The file's text with the mistake made, or None when a line to change is not there exactly once."""
        olds = self.old if isinstance(self.old, tuple) else (self.old,)
        news = self.new if isinstance(self.new, tuple) else (self.new,)
        for old, new in zip(olds, news):
            if text.count(old) != 1:
                return None
            text = text.replace(old, new)
        return text


MUTANTS = (
    # -- the prompt guard
    Mutant("guard-no-nfkc", "full-width or compatibility letters slip past the blocklist",
           "installation/inputs/prompt_guard.py",
           ('clean = _WS.sub(" ", unicodedata.normalize("NFKC", text)).strip()',
            'folded = unicodedata.normalize("NFD", unicodedata.normalize("NFKC", text).casefold())'),
           ('clean = _WS.sub(" ", text).strip()', 'folded = unicodedata.normalize("NFD", text.casefold())'),
           ("tests/inputs", "-k", "guard")),
    Mutant("guard-no-look-alikes", "a blocked word spelt with Cyrillic or Greek look-alike letters passes",
           "installation/inputs/prompt_guard.py",
           "return _WS.sub(\" \", self._checker.getSkeleton(0, bare).casefold())",
           "return _WS.sub(\" \", bare.casefold())",
           ("tests/inputs", "-k", "guard")),
    Mutant("guard-any-chars", "control and invisible characters pass",
           "installation/inputs/prompt_guard.py",
           'return cat[0] in "LN" or cat == "Mn" or cat == "Mc"', 'return cat[0] in "LNC" or cat[0] == "M"',
           ("tests/inputs", "-k", "guard")),
    # -- the OSC rate limiter
    Mutant("limiter-host-debt", "a host that rotates its source port sends far more than its budget",
           "installation/inputs/udp.py",
           "if share[0] >= 1.0 and h.tokens > -self.burst:", "if share[0] >= 1.0:",
           ("tests/inputs/test_osc_flood.py", "-k", "limiter or budget or lone or quiet or ports or hosts")),
    Mutant("limiter-no-host-budget", "a busy sender gets only its share, not what the others leave",
           "installation/inputs/udp.py",
           "        if h.tokens >= 1.0:\n            h.tokens -= 1.0\n",
           "        if False:\n            h.tokens -= 1.0\n",
           ("tests/inputs/test_osc_flood.py", "-k", "limiter or budget or lone or quiet or ports or hosts")),
    Mutant("limiter-loopback-split", "each loopback address gets a budget of its own",
           "installation/inputs/udp.py",
           "    if ip.is_loopback:\n        return _LOOPBACK_KEY\n", "",
           ("tests/inputs/test_osc_flood.py", "-k", "host_key or loopback")),
    Mutant("coalesce-oldest-wins", "a burst of scene changes ends on the first one held, not the last word",
           "installation/inputs/surface.py",
           "            self._held[group] = event\n", "            self._held.setdefault(group, event)\n",
           ("tests/inputs/test_osc_flood.py", "-k", "coalesced")),
    # -- the archive writer
    Mutant("archive-tau-zero", "every archived point says path time 0: /map/goto and replays land elsewhere",
           "installation/archive/writer.py",
           "return (t, plan.scene, seed, plan.part.tau0, latent,", "return (t, plan.scene, seed, 0.0, latent,",
           ("tests/archive/test_archive.py", "-k", "fixed_step or goto")),
    Mutant("archive-latent-late", "each point's latent is taken a point later than its time",
           "installation/archive/writer.py",
           "latent, shape = pack_latent(plan.latent(t))",
           "latent, shape = pack_latent(plan.latent(t + self.settings.point_every))",
           ("tests/archive/test_archive.py", "-k", "fixed_step")),
    Mutant("archive-writer-dies", "a full disk ends the writer: nothing is archived after space comes back",
           "installation/archive/writer.py",
           "                log.error(\"archive %s: a batch was not written (%s); the show goes on\", self.path, e)\n"
           "            return\n",
           "                log.error(\"archive %s: a batch was not written (%s); the show goes on\", self.path, e)\n"
           "            raise SystemExit\n",
           ("tests/archive/test_archive.py", "-k", "full_disk")),
    # -- projector geometry
    Mutant("projection-90-270", "a projector hung one way shows the picture turned the other way",
           "installation/render/projection.py",
           "90: (0, -1, 1, 0), 180: (-1, 0, 0, -1), 270: (0, 1, -1, 0)",
           "90: (0, 1, -1, 0), 180: (-1, 0, 0, -1), 270: (0, -1, 1, 0)",
           ("tests/render/test_projection.py", "-k", "opencv or marked")),
    Mutant("projection-flip-axes", "flip = \"h\" mirrors top and bottom",
           "installation/render/projection.py",
           'fx = -1 if "h" in flip else 1\n    fy = -1 if "v" in flip else 1',
           'fx = -1 if "v" in flip else 1\n    fy = -1 if "h" in flip else 1',
           ("tests/render/test_projection.py", "-k", "opencv or marked")),
    Mutant("projection-pin-order", "the corner pin takes the bottom corners in the wrong order",
           "installation/render/projection.py",
           "return homography(np.array(UNIT_CORNERS), q)", "return homography(np.array(UNIT_CORNERS), q[[0, 1, 3, 2]])",
           ("tests/render/test_projection.py", "-k", "opencv or marked")),
    Mutant("projection-ramp-gamma", "blended overlaps come out too dark: the ramp is not corrected for gamma",
           "installation/render/projection.py",
           "return f ** (1.0 / gamma)", "return f ** (1.0 / 2.2)",
           ("tests/render/test_projection.py", "-k", "ramp or opencv")),
    # -- the frame check
    Mutant("frame-check-ignores-negatives", "a scene's negative concepts never hold a frame",
           "installation/vision/hook.py",
           "return self._blocked.get(scene, self._blocked_all)", "return self._blocked_all",
           ("tests/vision/test_hook.py",)),
    Mutant("frame-check-mean-of-concepts", "a frame matching one blocked concept of several is shown",
           "installation/vision/hook.py",
           "score = float(similarity(emb[None], concepts).max())",
           "score = float(similarity(emb[None], concepts).mean())",
           ("tests/vision/test_hook.py",)),
    # -- the web preview
    Mutant("preview-upside-down", "the phone's preview is upside down",
           "installation/ops/web.py",
           "img = np.frombuffer(rgb, np.uint8).reshape(h, w, 3)[::-1, :, ::-1]",
           "img = np.frombuffer(rgb, np.uint8).reshape(h, w, 3)[:, :, ::-1]",
           ("tests/ops/test_web.py", "-k", "no_viewer")),
)


def _files() -> list[str]:
    """The working tree as git sees it: tracked files and untracked ones that are not ignored."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, check=True).stdout
    return [f for f in out.decode().split("\0") if f and (ROOT / f).is_file()]


def _copy(dest: Path, files: list[str]) -> None:
    for f in files:
        target = dest / f
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, target)


def _pytest(tree: Path, args: tuple[str, ...], timeout: float) -> tuple[int, float, str]:
    """Run pytest in ``tree`` (it imports the copy's package: cwd and PYTHONPATH); (exit code, seconds, tail)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    started = time.monotonic()
    try:
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *args], cwd=tree,
                           env=env, capture_output=True, text=True, timeout=timeout)
        code, tail = r.returncode, (r.stdout + r.stderr).strip().splitlines()[-1:]
    except subprocess.TimeoutExpired:
        code, tail = -1, ["timed out"]
    return code, time.monotonic() - started, tail[0] if tail else ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="mutants to run (default: all)")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--json", action="store_true", help="print one JSON line with the results at the end")
    ap.add_argument("--no-baseline", action="store_true", help="skip running the tests on the unchanged copy")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per pytest run (default 600)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary copy (its path is printed)")
    ap.add_argument("--whole-files", action="store_true",
                    help="run each mutant's whole test files, without its -k selection (slower; to check the choice)")
    a = ap.parse_args(argv)
    known = {m.name: m for m in MUTANTS}
    if a.list:
        for m in MUTANTS:
            print(f"{m.name:32s} {m.path}: {m.why}")
        return 0
    unknown = [n for n in a.names if n not in known]
    if unknown:
        print(f"mutate: no mutant named {', '.join(unknown)} (see --list)", file=sys.stderr)
        return 2
    chosen = [known[n] for n in a.names] if a.names else list(MUTANTS)
    if a.whole_files:
        chosen = [replace(m, tests=tuple(t for i, t in enumerate(m.tests) if t != "-k" and
                                         (i == 0 or m.tests[i - 1] != "-k"))) for m in chosen]
    files = _files()
    tmp = Path(tempfile.mkdtemp(prefix="mutate-"))
    results: list[dict] = []
    try:
        tree = tmp / "tree"
        _copy(tree, files)
        if not a.no_baseline:
            for args in dict.fromkeys(m.tests for m in chosen):
                code, secs, tail = _pytest(tree, args, a.timeout)
                if code != 0:
                    print(f"mutate: the tests fail without any mutant ({' '.join(args)}: {tail}); fix them first",
                          file=sys.stderr)
                    return 1
                print(f"baseline  {' '.join(args)}: passed in {secs:.0f} s", flush=True)
        for m in chosen:
            src = tree / m.path
            original = src.read_text()
            mutated = m.apply(original)
            if mutated is None:
                results.append({"name": m.name, "outcome": "stale", "seconds": 0.0,
                                "detail": f"a line to change is not in {m.path} exactly once"})
            else:
                src.write_text(mutated)
                try:
                    code, secs, tail = _pytest(tree, m.tests, a.timeout)
                finally:
                    src.write_text(original)
                outcome = "survived" if code == 0 else "caught" if code == 1 else "error"
                results.append({"name": m.name, "outcome": outcome, "seconds": round(secs, 1), "detail": tail})
            r = results[-1]
            print(f"{r['outcome']:9s} {m.name:32s} {r['seconds']:6.1f} s  {r['detail']}", flush=True)
    finally:
        if a.keep:
            print(f"mutate: the copy is kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    caught = sum(r["outcome"] == "caught" for r in results)
    scored = sum(r["outcome"] in ("caught", "survived") for r in results)
    stale = [r["name"] for r in results if r["outcome"] == "stale"]
    errors = [r["name"] for r in results if r["outcome"] == "error"]
    print(f"mutation score: {caught}/{scored} caught" + (f"; stale: {', '.join(stale)}" if stale else "")
          + (f"; errors (a crash or time-out, not counted): {', '.join(errors)}" if errors else ""))
    if a.json:
        print(json.dumps({"caught": caught, "scored": scored, "score": round(caught / scored, 3) if scored else None,
                          "mutants": results}))
    return 0 if caught == scored and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
