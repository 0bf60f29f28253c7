"""The README's commands and code blocks run as written, like doctests, against the emulator.

(``docs/getting-started.md``, which walks the same path in more words, runs the same way in
a ``slow`` test.)

Every fenced ``bash`` and ``python`` block of README.md runs, in README order, in one
temporary directory: bash blocks with ``bash -euo pipefail`` and this venv's ``bin`` first on
PATH (as after ``source .venv/bin/activate``), python blocks saved as a script and run with
this interpreter (so a script that starts a local cluster needs its ``__main__`` guard, as the
README says). A block preceded by ``<!-- not-tested: REASON -->`` (blank lines between are
allowed) is skipped; those are few (set-up, Earth Engine). After the blocks, the cubes they
wrote are checked.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
BLOCK_TIMEOUT_S = 600
MAX_LINES = 200
MAX_NOT_TESTED = 3

_FENCE = re.compile(r"^```(\w*)\s*$")
_NOT_TESTED = re.compile(r"^<!--\s*not-tested:\s*(.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    lang: str
    code: str
    line: int  # 1-based line of the opening fence
    not_tested: str | None  # the reason, when marked

    @property
    def name(self) -> str:
        return f"{self.lang}@L{self.line}"


def read_blocks(text: str) -> list[Block]:
    """The fenced code blocks of a Markdown text, with their not-tested marks."""
    lines = text.split("\n")
    blocks, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1)
        j = i + 1
        while not lines[j].startswith("```"):
            j += 1
        k = start - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        mark = _NOT_TESTED.match(lines[k]) if k >= 0 else None
        blocks.append(Block(lang, "\n".join(lines[start + 1:j]) + "\n", start + 1, mark.group(1) if mark else None))
        i = j + 1
    return blocks


BLOCKS = read_blocks(README.read_text())
RUN = [b for b in BLOCKS if b.lang in ("bash", "python") and b.not_tested is None]
GETTING_STARTED = [b for b in read_blocks((REPO / "docs" / "getting-started.md").read_text())
                   if b.lang in ("bash", "python") and b.not_tested is None]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("readme")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.pop("RS_EMBED_SCALEMAE_ID", None)  # the README's defaults, not the caller's
    return env


def test_readme_is_short_and_marks_few_blocks():
    text = README.read_text()
    assert len(text.splitlines()) <= MAX_LINES
    skipped = [b for b in BLOCKS if b.not_tested is not None]
    assert all(b.not_tested for b in skipped), "a not-tested mark gives its reason"
    assert len(skipped) <= MAX_NOT_TESTED, [b.name for b in skipped]
    assert {b.lang for b in BLOCKS} <= {"bash", "python"}, "every block is bash or python"
    assert len(RUN) >= 3


def test_readme_links_point_at_files():
    text = README.read_text()
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (REPO / target).exists(), target


def test_marks_are_read():
    text = "a\n<!-- not-tested: needs Earth Engine -->\n\n```bash\nfalse\n```\n```python\nprint(1)\n```\n"
    blocks = read_blocks(text)
    assert [(b.lang, b.not_tested) for b in blocks] == [("bash", "needs Earth Engine"), ("python", None)]


def run_block(block: Block, workdir: Path) -> None:
    """Run one block in ``workdir`` (see the module docstring); fail with its output."""
    if block.lang == "bash":
        cmd = ["bash", "-euo", "pipefail", "-c", block.code]
    else:
        script = workdir / f"readme_L{block.line}.py"
        script.write_text(block.code)
        cmd = [sys.executable, script.name]
    done = subprocess.run(cmd, cwd=workdir, env=_env(), capture_output=True, text=True,
                          timeout=BLOCK_TIMEOUT_S, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"block at line {block.line} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


@pytest.mark.timeout(BLOCK_TIMEOUT_S + 60)
@pytest.mark.parametrize("block", RUN, ids=[b.name for b in RUN])
def test_block_runs(block: Block, workdir: Path):
    run_block(block, workdir)


@pytest.fixture(scope="module")
def getting_started_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("getting_started")


@pytest.mark.slow
@pytest.mark.timeout(BLOCK_TIMEOUT_S + 60)
@pytest.mark.parametrize("block", GETTING_STARTED, ids=[b.name for b in GETTING_STARTED])
def test_getting_started_block_runs(block: Block, getting_started_dir: Path):
    run_block(block, getting_started_dir)


def test_what_the_blocks_wrote(workdir: Path):
    """After the blocks: both cubes hold every sample at both scales, all ok."""
    from rsembed_dask import open_cube
    from rsembed_dask.store import OK

    if not all((workdir / name).exists() for name in ("samples.gpkg", "cube.zarr", "campaign.zarr")):
        pytest.fail(f"the README blocks did not write their files in {workdir}: {sorted(os.listdir(workdir))}")
    for name in ("cube.zarr", "campaign.zarr"):
        cube = open_cube(workdir / name)
        assert cube.sizes["sample"] == 16 and cube.scale.values.tolist() == [10.0, 20.0]
        assert (cube.status.values == OK).all()
        assert np.isfinite(cube.embedding.values).all() and cube.sizes["feature"] == 64
    series = open_cube(workdir / "series.zarr")  # the time block: two windows, one chunk each
    assert series.sizes["time"] == 2 and series.time.dt.year.values.tolist() == [2019, 2020]
    assert (series.status.values == OK).all() and series.attrs["completed_windows"] == ["2019-01-01", "2020-01-01"]
    changed = sorted(p.suffix for p in (workdir / "change").iterdir())
    assert ".parquet" in changed and ".png" in changed
