"""Executable documentation: the ```bash blocks of a Markdown file, run in order, as written.

A block is tagged by the HTML comment on the line before it (invisible when the Markdown is rendered):

    <!-- docs-test: quick -->     run by the default `pytest` (CI): seconds to a minute of CPU
    <!-- docs-test: slow -->      run by `pytest -m slow` (minutes)
    <!-- docs-test: long -->      run only with OFFMARL_DOCS_LONG=1 (an hour or a GPU's budget)
    <!-- docs-test: skip -->      never run (install lines, the test suite itself)

Every ```bash block in a documented file carries a tag (``untagged_blocks`` finds the ones that do
not), so a new block cannot escape the test by accident.

A command states what it prints in its trailing comment, with the tolerance the reader may expect:

    offmarl train --dataset X --algo ma-iql    # expect "normalised score" 0.51 ± 0.05

The number printed right after the last occurrence of the quoted text in the command's output
(stdout and stderr; ``*`` in the text stands for any run of non-blank characters, e.g. a run
directory's time stamp; a colon, ``=`` or a table's cell border may stand between text and number)
must lie within the tolerance. Several ``expect`` clauses may follow each other.
A comment line that starts with ``#`` under a command continues its comment. ``export NAME=VALUE``
lines set the variable for the commands after them. Commands run with bash (globs as a user's
shell expands them) in a fresh working folder with a fresh ``OFFMARL_DATA_DIR`` and ``HOME`` (so
that nothing the docs run reads or writes the tester's own files).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

TIERS = ("quick", "slow", "long", "skip")
_TAG = re.compile(r"<!--\s*docs-test:\s*(\w+)\s*-->")
_EXPECT = re.compile(r'expect\s+"([^"]+)"\s+(-?\d+(?:\.\d+)?)\s*±\s*(\d+(?:\.\d+)?)')
_NUMBER = r"[\s:=│|]*(-?\d+(?:\.\d+)?)"  # "score 0.5", "score: 0.5", a table cell "│ 0.5"


@dataclass
class Expect:
    label: str
    value: float
    tol: float

    def check(self, output: str) -> str | None:
        """None when the printed number is within the tolerance, else what went wrong."""
        pattern = r"\S*".join(re.escape(part) for part in self.label.split("*"))
        hits = re.findall(pattern + _NUMBER, output)
        if not hits:
            return f'"{self.label}" followed by a number is not in the output'
        got = float(hits[-1])
        if abs(got - self.value) > self.tol + 1e-12:
            return f'"{self.label}" printed {got}, the doc says {self.value} ± {self.tol}'
        return None


@dataclass
class Command:
    text: str
    expects: list[Expect] = field(default_factory=list)
    line: int = 0


@dataclass
class Block:
    path: Path
    line: int
    tier: str | None
    commands: list[Command]


def parse(path: Path, section: str | None = None) -> list[Block]:
    """The ```bash blocks of ``path`` (only under the ``## section`` heading when given)."""
    lines = Path(path).read_text().splitlines()
    blocks, in_section, i = [], section is None, 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            in_section = section is None or line[3:].strip() == section
        if line.strip() == "```bash" and in_section:
            tag = None
            j = i - 1
            while j >= 0 and not lines[j].strip():
                j -= 1
            if j >= 0 and (m := _TAG.search(lines[j])):
                tag = m.group(1)
            start, body = i + 1, []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            blocks.append(Block(Path(path), start, tag, _commands(body, start)))
        i += 1
    return blocks


def _commands(body: list[str], first_line: int) -> list[Command]:
    cmds: list[Command] = []
    for k, raw in enumerate(body):
        stripped = raw.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):  # a continuation of the previous command's comment
            if cmds:
                cmds[-1].expects += _expects(stripped)
            continue
        code, comment = _split_comment(raw)
        cmds.append(Command(code.strip(), _expects(comment), first_line + k + 1))
    return cmds


def _split_comment(line: str) -> tuple[str, str]:
    """Code and trailing comment: the first ``#`` after whitespace and outside quotes."""
    quote = None
    for k, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (k == 0 or line[k - 1].isspace()):
            return line[:k], line[k + 1:]
    return line, ""


def _expects(comment: str) -> list[Expect]:
    return [Expect(m.group(1), float(m.group(2)), float(m.group(3))) for m in _EXPECT.finditer(comment)]


def untagged_blocks(path: Path, section: str | None = None) -> list[int]:
    """Line numbers of the bash blocks without a valid ``docs-test`` tag."""
    return [b.line for b in parse(path, section) if b.tier not in TIERS]


def run_blocks(blocks: list[Block], tiers: set[str], workdir: Path, timeout: float = 3600.0,
               prepare=None) -> list[tuple[Command, str]]:
    """Run the commands of the blocks whose tier is in ``tiers``, in order, in ``workdir``; fail
    (AssertionError) on the first non-zero exit or unmet expectation. ``prepare(command, workdir)``
    is called before each command (to create a file the doc says the user brings). Returns each
    command with its output."""
    workdir = Path(workdir)
    for sub in ("data", "home"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OFFMARL_", "MINARI_", "D4RL_"))}
    env.update(OFFMARL_DATA_DIR=str(workdir / "data"), HOME=str(workdir / "home"), OFFMARL_NUM_THREADS="1",
               PATH=str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""))
    done = []
    for block in blocks:
        if block.tier not in tiers:
            continue
        for cmd in block.commands:
            where = f"{block.path.name}:{cmd.line}: {cmd.text}"
            if m := re.fullmatch(r"export\s+(\w+)=(\S*)", cmd.text):
                env[m.group(1)] = m.group(2)
                continue
            if prepare is not None:
                prepare(cmd, workdir)
            proc = subprocess.run(["bash", "-c", cmd.text], cwd=workdir, env=env, capture_output=True, text=True,
                                  timeout=timeout)
            out = proc.stdout + proc.stderr
            assert proc.returncode == 0, f"{where}\nexit {proc.returncode}:\n{out[-3000:]}"
            problems = [p for e in cmd.expects if (p := e.check(out))]
            assert not problems, f"{where}\n" + "\n".join(problems) + f"\noutput:\n{out[-3000:]}"
            done.append((cmd, out))
    return done
