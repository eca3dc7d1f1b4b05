"""The README's shell examples run as written (issue 16 item 1).

Every ```bash, ```sh and ```console block of README.md runs, in the README's order, with
`bash -e` in one empty temporary folder that holds a copy of `data_samples/` (as the
README says), with this environment's `mstools` first on PATH. A block preceded by
`<!-- not-run: reason -->` is skipped, and must say why. A failing block fails the test
with its text, its exit code and its stderr.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SHELLS = ("bash", "sh", "shell", "console")
NOT_RUN = re.compile(r"^<!--\s*not-run:(.*?)-->$")
#: A block's own time limit: the slowest (register with ITK's start-up) takes about a minute.
BLOCK_TIMEOUT_S = 600


@dataclass
class Block:
    line: int          # 1-based line of the opening fence
    language: str
    text: str
    not_run: str | None   # the reason, when marked


def readme_blocks(text: str) -> list[Block]:
    """The fenced code blocks of a Markdown text, in order, with their not-run markers."""
    blocks, lines = [], text.splitlines()
    n = 0
    while n < len(lines):
        opening = re.match(r"^(```+|~~~+)\s*([\w+-]*)", lines[n])
        if not opening:
            n += 1
            continue
        fence, language, start = opening.group(1), opening.group(2).lower(), n
        n += 1
        body = []
        while n < len(lines) and not lines[n].startswith(fence):
            body.append(lines[n])
            n += 1
        before = lines[start - 1].strip() if start > 0 else ""
        marker = NOT_RUN.match(before)
        blocks.append(Block(start + 1, language, "\n".join(body) + "\n",
                            marker.group(1).strip() if marker else None))
        n += 1
    return blocks


def commands(block: Block) -> str:
    """A console block keeps its `$ ` lines (the rest is shown output); others run whole."""
    if block.language != "console":
        return block.text
    return "\n".join(line[2:] for line in block.text.splitlines() if line.startswith("$ ")) + "\n"


def test_blocks_are_found_and_every_skipped_block_says_why():
    blocks = readme_blocks(README.read_text())
    shell = [b for b in blocks if b.language in SHELLS]
    assert len([b for b in shell if b.not_run is None]) >= 10
    for block in shell:
        assert block.not_run is None or len(block.not_run) > 10, f"README.md:{block.line}: say why it cannot run"
    # a marker must sit right above a shell block, or it marks nothing
    lines = README.read_text().splitlines()
    marked = {b.line - 1 for b in shell if b.not_run is not None}
    for number, line in enumerate(lines, 1):
        if NOT_RUN.match(line.strip()):
            assert number in marked, f"README.md:{number}: a not-run marker not right above a shell block"


def test_the_first_block_is_the_install_and_demo_command_and_the_test_command_ci_runs():
    first = [b for b in readme_blocks(README.read_text()) if b.language in SHELLS][0]
    lines = [line for line in first.text.splitlines() if line and not line.startswith("#")]
    assert lines == ['python3 -m venv .venv && .venv/bin/pip install -e ".[all,test]" && '
                     'PATH="$PWD/.venv/bin:$PATH" bash data_samples/demo.sh',
                     ".venv/bin/python -m pytest -q"]
    # pip is not silenced: a first install takes minutes, and the user sees what it fetches
    assert " -q " not in lines[0] and "--quiet" not in lines[0]
    assert (ROOT / "data_samples" / "demo.sh").is_file()
    assert lines[1] in (ROOT / ".ci" / "run").read_text()


def test_block_parsing_and_markers():
    text = ("intro\n<!-- not-run: needs a cluster somewhere -->\n```bash\nmstools batch x\n```\n"
            "```python\nprint(1)\n```\n\n```console\n$ mstools --version\nmstools 0.1.0\n```\n")
    marked, python, console = readme_blocks(text)
    assert (marked.line, marked.not_run, marked.text) == (3, "needs a cluster somewhere", "mstools batch x\n")
    assert python.language == "python" and python.not_run is None
    assert commands(console) == "mstools --version\n"


@pytest.mark.slow
def test_every_readme_shell_block_runs_in_order_in_an_empty_folder(tmp_path):
    blocks = [b for b in readme_blocks(README.read_text()) if b.language in SHELLS and b.not_run is None]
    shutil.copytree(ROOT / "data_samples", tmp_path / "data_samples")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "NO_COLOR": "1"}
    env.pop("PYTHONPATH", None)
    seconds = []
    for block in blocks:
        start = time.perf_counter()
        try:
            done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", commands(block)], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"README.md:{block.line}: block still running after {BLOCK_TIMEOUT_S} s\n{block.text}\n"
                        f"stderr:\n{exc.stderr}")
        seconds.append((block.line, time.perf_counter() - start))
        if done.returncode != 0:
            pytest.fail(f"README.md:{block.line}: block failed (exit {done.returncode}):\n{block.text}\n"
                        f"stderr:\n{done.stderr[-4000:]}")
    print("\n".join(f"README.md:{line}: {s:.1f} s" for line, s in seconds))
