"""Run the README's shell blocks marked runnable, in order, and check what each one prints.

A runnable block is a ```bash fence right after a marker comment, which GitHub does not render:

    <!-- check {"expect": ["regex", ...], "capture": {"tk_…": "regex(with one group)"}, "skip": {"text": "why"}} -->

- every line of the block (backslash continuations joined) runs in one `bash -e -o pipefail` from the
  project's root, so the block fails at its first failing command, with that command's output shown;
  the blocks are one shell session, as a reader types them: what a block exports, the next ones see;
- ``expect``: regexes that must all match the block's output (stdout and stderr together);
- ``capture``: a placeholder the README writes (a key, a job id) and the regex whose group gives its
  value in this block's output; later blocks run with the placeholder replaced by the value;
- ``skip``: lines containing ``text`` are not run (a server that never returns), and the reason is printed;
- a line ending in ``&`` runs in the background, in the block's process group, which is ended when the
  whole check is done.

    .venv/bin/python .ci/check_readme.py [README.md] [--timeout-s 900]

Exit 0 when every marked block passed, 1 at the first that did not (its output is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^<!-- check(?P<spec>.*?)-->\s*$")


@dataclass
class Block:
    line: int  # of the fence in the README, 1-based
    commands: list[str]
    expect: list[str] = field(default_factory=list)
    capture: dict[str, str] = field(default_factory=dict)
    skip: dict[str, str] = field(default_factory=dict)


def blocks(readme: Path) -> list[Block]:
    """The marked blocks, in the README's order; a marker not followed by a bash fence is an error."""
    lines = readme.read_text().splitlines()
    out = []
    for i, text in enumerate(lines):
        m = MARKER.match(text.strip())
        if not m:
            continue
        spec = json.loads(m["spec"]) if m["spec"].strip() else {}
        unknown = set(spec) - {"expect", "capture", "skip"}
        if unknown or i + 1 >= len(lines) or lines[i + 1].strip() != "```bash":
            raise SystemExit(f"{readme}:{i + 1}: a check marker takes expect, capture, skip and comes right "
                             f"before a ```bash fence ({', '.join(sorted(unknown)) or 'no fence follows'})")
        body = []
        for j in range(i + 2, len(lines)):
            if lines[j].strip() == "```":
                break
            body.append(lines[j])
        commands = " \n".join(body).replace("\\ \n", " ").splitlines()
        out.append(Block(i + 2, [c.strip() for c in commands if c.strip()], spec.get("expect", []),
                         spec.get("capture", {}), spec.get("skip", {})))
    return out


def run(block: Block, values: dict[str, str], env: dict[str, str], timeout_s: float,
        groups: list[int]) -> tuple[bool, str]:
    script = ["set -eo pipefail"]
    for cmd in block.commands:
        why = next((w for text, w in block.skip.items() if text in cmd), None)
        if why:
            print(f"  skipped: {cmd}  ({why})")
            continue
        for placeholder, value in values.items():
            cmd = cmd.replace(placeholder, value)
        print(f"  $ {cmd}")
        script.append(cmd)
    env_file = ROOT / ".readme-check.env"
    script.append(f"env -0 > {env_file}")
    # Output to a file, not a pipe: a background command keeps the pipe open long after the block ends.
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(["bash", "-c", "\n".join(script)], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        groups.append(proc.pid)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        out.seek(0)
        output = out.read()
    if proc.returncode < 0:
        return False, f"{output}\n(still running after {timeout_s:g} s)"
    if proc.returncode != 0:
        return False, f"{output}\n(exit {proc.returncode})"
    env.clear()
    env.update(kv.split("=", 1) for kv in env_file.read_text().split("\0") if "=" in kv)
    env_file.unlink()
    missing = [e for e in block.expect if not re.search(e, output, re.MULTILINE)]
    if missing:
        return False, f"{output}\n(expected in the output, not found: {missing})"
    for placeholder, pattern in block.capture.items():
        m = re.search(pattern, output, re.MULTILINE)
        if not m:
            return False, f"{output}\n(nothing in the output for {placeholder}: {pattern})"
        values[placeholder] = m.group(1)
    return True, output


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("readme", nargs="?", default=str(ROOT / "README.md"))
    ap.add_argument("--timeout-s", type=float, default=900, help="per block")
    ap.add_argument("--from-block", type=int, default=1, help="start at this block (1-based), on a stack that "
                    "the blocks before it left")
    args = ap.parse_args()
    marked = blocks(Path(args.readme))
    todo = marked[args.from_block - 1:]
    if not todo:
        print(f"{args.readme}: no block is marked runnable", file=sys.stderr)
        return 1
    values: dict[str, str] = {}
    env = dict(os.environ)
    groups: list[int] = []
    try:
        for n, block in enumerate(todo, args.from_block):
            print(f"README block {n}/{len(marked)} (line {block.line}):", flush=True)
            t = time.monotonic()
            ok, output = run(block, values, env, args.timeout_s, groups)
            if not ok:
                print(output, f"\nREADME block at line {block.line}: FAILED", file=sys.stderr, sep="")
                return 1
            tail = [ln for ln in output.splitlines() if ln.strip()][-6:]
            print("".join(f"  | {ln[:160]}\n" for ln in tail) + f"  ok in {time.monotonic() - t:.0f} s", flush=True)
    finally:
        for pgid in groups:  # background commands (a replay venue) end with the check
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    print(f"README: {len(todo)} blocks ran as written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
