"""The benchmark report: a markdown table, the JSON record and a PNG plot."""

from __future__ import annotations

import json
from pathlib import Path

from ..bench.output import pyplot, save_figure


def markdown_table(report: dict) -> str:
    lines = [
        "| setting | model | params | K-matrix params | seconds | sentences/s | tokens/s | speed-up "
        "| CPU s | CPU speed-up | decoder calls | hypothesis-steps | BLEU (tokenized) | sacreBLEU (detok.) "
        "| length / ref | same output as |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    def count(n: int | None) -> str:
        return "–" if n is None else f"{n:,}"

    for r in report["rows"]:
        lines.append(
            f"| {r['setting']} | {r['model']} | {r['params']:,} | {r['kmatrix_params']:,} | {r['seconds']:.2f} "
            f"| {r['sentences_per_s']:.2f} | {r['tokens_per_s']:.1f} | {r['speedup']:.2f}× "
            f"| {r['cpu_seconds']:.2f} | {r['cpu_speedup']:.2f}× | {count(r['decoder_calls'])} "
            f"| {count(r['decoder_hypothesis_steps'])} | {r['bleu_tokenized']:.2f} | {r['bleu_sacrebleu_detok']:.2f} "
            f"| {r['length_ratio']:.3f} | {r.get('same_hyps_as') or '–'} |"
        )
    trained = {name: m["training"] for name, m in report.get("models", {}).items() if m.get("training")}
    if trained:
        lines += ["", "| model | epochs | updates | training minutes | valid loss (base 2) |", "|---|---|---|---|---|"]
        for name, t in trained.items():
            minutes, loss = t.get("training_minutes"), t.get("valid_loss")
            lines.append(
                f"| {name} | {t.get('epoch', '–')} | {t.get('updates', '–')} "
                f"| {'–' if minutes is None else f'{minutes:.1f}'} | {'–' if loss is None else f'{loss:.3f}'} |"
            )
    notes = [
        "",
        f"- machine: {report['machine']}; intra-op threads: {report['threads']}",
        f"- data: {report['data']} ({report['subset']}: {report['sentence_selection']})",
        f"- decoding: {report['decoding']}",
        f"- timed: {report['timed']}",
        "- seconds: wall-clock; CPU s: CPU time of the process, all its threads, over the same calls (less "
        "sensitive to other processes on a shared machine)",
        f"- speed-up: seconds of `{report['baseline']}` / seconds of the model, same setting, same process"
        + (f"; median of {report['repeats']} interleaved runs" if report["repeats"] > 1 else "; one run each"),
        "- BLEU (tokenized): de-BPE'd hypotheses vs tokenized lower-cased references, sacrebleu tokenize=none; "
        "sacreBLEU (detok.): both sides Moses-detokenized, sacrebleu 13a",
        "- length / ref: words of all hypotheses / words of all references (BPE removed)",
        "- same output as: the first model above whose hypotheses are identical to this one's",
        *(f"- {name}: {m['source']}" for name, m in report.get("models", {}).items()),
        f"- command: `{report['command']}`",
    ]
    return "\n".join(lines + notes) + "\n"


def plot(report: dict, path: Path, title: str) -> None:
    settings = list(dict.fromkeys(r["setting"] for r in report["rows"]))
    fig, axes = pyplot().subplots(1, len(settings), figsize=(4.5 * len(settings), 4), squeeze=False)
    for ax, setting in zip(axes[0], settings, strict=True):
        rows = [r for r in report["rows"] if r["setting"] == setting]
        colors = [f"C{i}" for i in range(len(rows))]
        bars = ax.bar([r["model"] for r in rows], [r["sentences_per_s"] for r in rows], color=colors)
        for bar, r in zip(bars, rows, strict=True):
            ax.annotate(
                f"{r['speedup']:.2f}× wall\n{r['cpu_speedup']:.2f}× CPU\nBLEU {r['bleu_tokenized']:.1f}",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_title(setting)
        ax.set_ylabel("sentences / s")
        ax.margins(y=0.25)
    fig.suptitle(f"{title}\n{report['machine']}", fontsize=9)
    save_figure(fig, path)


def write_reports(report: dict, out_dir: Path, stem: str, title: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out_dir / f"{stem}.md").write_text(f"### {title}\n\n" + markdown_table(report), encoding="utf-8")
    plot(report, out_dir / f"{stem}.png", title)
