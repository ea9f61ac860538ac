"""``python -m fairseq_kaleidoscope``: one table of commands; --help lists them all and each one's -h works."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fairseq_kaleidoscope.__main__ import COMMANDS, main

EXPECTED = {"convert", "distill", "demo", "layer-demo", "bench-kernels", "bench-decode", "bench-dynconv",
            "fit-transforms", "average-checkpoints", "param-count"}  # fmt: skip


def test_help_lists_every_command() -> None:
    assert set(COMMANDS) == EXPECTED
    out = subprocess.run([sys.executable, "-m", "fairseq_kaleidoscope", "--help"],
                         check=True, capture_output=True, text=True).stdout  # fmt: skip
    for name in (*EXPECTED, "--user-dir", "--version"):
        assert f"  {name} " in out, name


@pytest.mark.parametrize("command", sorted(EXPECTED))
def test_each_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    if command in {"convert", "demo", "bench-decode", "average-checkpoints", "param-count"}:
        pytest.importorskip("fairseq")
    with pytest.raises(SystemExit) as exit_info:
        main([command, "-h"])
    assert exit_info.value.code == 0
    assert f"python -m fairseq_kaleidoscope {command}" in capsys.readouterr().out  # the usage names the command


def test_unknown_command_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench-everything"])
    assert exit_info.value.code == 2
    assert "unknown command 'bench-everything'" in capsys.readouterr().err
