"""docs/fairseq.md's walkthrough runs as written, from the repository root, and translates its sample sentence."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fairseq")

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "fairseq.md"


def walkthrough_block() -> str:
    text = DOC.read_text(encoding="utf-8")
    match = re.search(r"<!-- walkthrough:start -->\n```bash\n(.*?)```\n<!-- walkthrough:end -->", text, flags=re.S)
    assert match, "docs/fairseq.md has no walkthrough block between its markers"
    return match.group(1)


@pytest.mark.slow
def test_walkthrough_runs_as_written() -> None:
    work = ROOT / "walkthrough"
    shutil.rmtree(work, ignore_errors=True)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    try:
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", walkthrough_block()],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, output[-4000:]
        groups = r"parameter groups: \d+ params lr x1 wd 0\.0001, \d+ params lr x3 wd 0"
        assert re.search(groups, output), output[-3000:]
        assert re.search(r"BLEU4 = \d", output), output[-3000:]
        hypothesis = re.search(r"^H-0\t\S+\t(.*)$", proc.stdout, flags=re.M)
        assert hypothesis, output[-3000:]
        assert hypothesis.group(1).strip() and "<unk>" not in hypothesis.group(1)
        source = re.search(r"^S-0\t(.*)$", proc.stdout, flags=re.M)
        assert source and "<unk>" not in source.group(1), "the sample sentence is not in the vocabulary"
    finally:
        shutil.rmtree(work, ignore_errors=True)
