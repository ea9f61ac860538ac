"""What the benchmarks record beside their tables: the run's circumstances, the JSON, the figures."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from ..timing import machine_description


def run_meta(command: str, argv: Sequence[str] | None) -> dict:
    """Machine, date, command line (``command`` and its arguments) and load average at the start of a run."""
    return {
        "machine": machine_description(),
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join([command, *(sys.argv[1:] if argv is None else argv)]),
        "loadavg_start": os.getloadavg(),
    }


def fmt_load(load: Sequence[float]) -> str:
    return "/".join(f"{v:.1f}" for v in load)


def write_json(path: Path, meta: dict, rows: list[dict]) -> None:
    """``{"meta": ..., "rows": ...}``, with the load average at the end of the run added to ``meta``."""
    meta["loadavg_end"] = os.getloadavg()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` drawing to files (Agg backend), without matplotlib's debug log lines
    (a root logger left at DEBUG, as fairseq's import sets it, would print its font search)."""
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: object, path: Path, dpi: int = 120) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
