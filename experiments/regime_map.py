"""The regime map: which method wins on each kind of (θ_A, θ_B) pair, and by how much.

Reads ``real_weights.py`` reports (run with ``--fair``, so that the fair baselines are in them) and writes one table
(test accuracy at one N, mean over seeds) and one figure (each method's score per pair, the pairs ordered by
drift ‖θ_B − θ_A‖/‖θ_A‖ in θ_B's coordinates):

    python experiments/regime_map.py --n 8 --markdown experiments/results/regime-map.md \\
        --plot docs/images/regime-map.png close=experiments/results/bbc-news-sre-fair.json ...
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

#: (summary key, column label); the practical methods compete, the references do not
PRACTICAL = [("naive", "naive θ_B + α·τ_A"), ("gradfix-validation-chosen", "GradFix (variant chosen on val.)"),
             ("few-shot", "few-shot FT, 1 pass"), ("few-shot-10x", "few-shot FT, 10 passes"),
             ("gradfix+few-shot", "GradFix + few-shot FT")]
OTHERS = [("zero-shot", "θ_B zero-shot"), ("auto-all", "method: auto (all)")]


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("pairs", nargs="+", metavar="NAME=REPORT", help="a pair's name and its real_weights.py JSON")
    p.add_argument("--n", default="8", help="vote samples per class of the column read")
    p.add_argument("--markdown", type=Path)
    p.add_argument("--json", type=Path)
    p.add_argument("--plot", type=Path)
    return p.parse_args(argv)


def pair_row(name: str, report: dict, n: str) -> dict:
    """The scores of one pair at N = n (means over seeds), its winner and margin."""
    summary = report["summary"][n]
    scores = {key: summary[key]["mean"] for key, _ in PRACTICAL + OTHERS if key in summary}
    if "naive" not in scores:  # naive is scored once, with the first run
        scores["naive"] = report["summary"][min(report["summary"], key=int)]["naive"]["mean"]
    ranked = sorted((k for k, _ in PRACTICAL if k in scores), key=lambda k: -scores[k])
    row = {"pair": name, "drift": report.get("drift"), "scores": scores, "winner": ranked[0],
           "margin": scores[ranked[0]] - scores[ranked[1]] if len(ranked) > 1 else None,
           "runner_up": ranked[1] if len(ranked) > 1 else None,
           "auto_chose": summary.get("auto-all", {}).get("chose"),
           "sign_oracle": report["reference"].get("sign_oracle", {}).get("test"),
           "oracle_finetuned": report["reference"]["oracle_finetuned"]["test"],
           "source_finetuned": report["reference"]["source_finetuned"]["test"]}
    return row


def to_markdown(rows: list[dict], n: str) -> str:
    labels = dict(PRACTICAL + OTHERS)
    keys = [k for k, _ in OTHERS[:1] + PRACTICAL + OTHERS[1:]]
    lines = [f"Test accuracy at N = {n} per class (mean over seeds; α and lr chosen on validation). Bold: the best "
             "practical method.", "",
             "| pair | drift | " + " | ".join(labels[k] for k in keys) + " | winner (margin) | sign oracle | θ_B^ft |",
             "|---|---|" + "---|" * len(keys) + "---|---|---|"]
    for row in rows:
        cells = []
        for key in keys:
            value = row["scores"].get(key)
            text = "–" if value is None else f"{value:.3f}"
            cells.append(f"**{text}**" if key == row["winner"] else text)
        drift = "–" if row["drift"] is None else f"{row['drift']:.1%}"
        margin = "" if row["margin"] is None else f" (+{row['margin']:.3f} over {labels[row['runner_up']]})"
        sign = "–" if row["sign_oracle"] is None else f"{row['sign_oracle']:.3f}"
        lines.append(f"| {row['pair']} | {drift} | " + " | ".join(cells)
                     + f" | {labels[row['winner']]}{margin} | {sign} | {row['oracle_finetuned']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, n: str) -> None:
    """Grouped bars: each pair (ordered as given, its drift under its name), each method's test accuracy."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = [k for k, _ in OTHERS[:1] + PRACTICAL]
    labels = dict(PRACTICAL + OTHERS)
    fig = Figure(figsize=(9, 4.2))
    ax = fig.add_subplot()
    width = 0.8 / len(keys)
    for i, key in enumerate(keys):
        xs = [j + (i - (len(keys) - 1) / 2) * width for j in range(len(rows))]
        ax.bar(xs, [row["scores"].get(key, 0.0) for row in rows], width, label=labels[key])
    ax.scatter(range(len(rows)), [row["oracle_finetuned"] for row in rows], marker="_", s=400, color="black",
               label="θ_B^ft (oracle)", zorder=3)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([f"{row['pair']}\n" + ("" if row["drift"] is None else f"drift {row['drift']:.1%}")
                        for row in rows], fontsize=8)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.25)
    ax.set_title(f"Which method wins, by pair (bbc-news, N = {n} per class)")
    ax.legend(fontsize=7, ncol=4, loc="upper center")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig).print_png(str(path))


def main(argv: Optional[list[str]] = None) -> list[dict]:
    args = parse_args(argv)
    rows = []
    for item in args.pairs:
        name, _, file = item.partition("=")
        if not file:
            raise SystemExit(f"{item!r}: expected NAME=REPORT.json")
        rows.append(pair_row(name, json.loads(Path(file).read_text()), args.n))
    table = to_markdown(rows, args.n)
    print(table)
    if args.markdown:
        args.markdown.write_text(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, ensure_ascii=False))
    if args.plot:
        plot(rows, args.plot, args.n)
        print(f"wrote {args.plot}")
    return rows


if __name__ == "__main__":
    main()
