"""The study's report files: ablation.md (every table), ablation.csv (one row per variant), ablation_effects.csv,
ablation_interactions.csv, ablation_runs.csv (one row per run) and ablation.png. The numbers come from
utils/study/analysis.py; here they are only formatted."""
from __future__ import annotations

import csv
import os
from pathlib import Path

from utils.study.analysis import METRICS
from utils.study.factors import FACTOR_TITLES, NOT_APPLICABLE, level_label

DELTA_COLUMNS = tuple(f"{prefix}{key}{suffix}" for key in METRICS
                      for prefix, suffix in (("delta_", ""), ("delta_", "_low"), ("delta_", "_high"),
                                             ("verdict_", ""), ("seeds_needed_", "")))
STAT_COLUMNS = tuple(f"{key}_{stat}" for key in METRICS for stat in ("mean", "std", "min", "max"))
COST_COLUMNS = ("parameters", "gflops", "images_per_s")


def variant_columns(factors: list[str]) -> tuple[str, ...]:
    return (*factors, "seeds", "rank", *STAT_COLUMNS, *COST_COLUMNS, "pairs", *DELTA_COLUMNS)


EFFECT_COLUMNS = ("factor", "level", "baseline", "over", "combinations", "pairs", *DELTA_COLUMNS)
INTERACTION_COLUMNS = ("factor_a", "level_a", "baseline_a", "factor_b", "level_b", "baseline_b", "over", "pairs",
                       *DELTA_COLUMNS)


def run_columns(factors: list[str]) -> tuple[str, ...]:
    return ("run", *factors, "seed", *METRICS, "weights", "split", "device", "train_seconds", "eval_seconds",
            "resumed")


def write_csv(rows: list[dict], path: Path, columns: tuple[str, ...]) -> None:
    """Floats with 6 significant digits, missing values empty; written atomically (a reader never sees half)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else (f"{row[k]:.6g}" if isinstance(row.get(k), float)
                                                                else row[k])) for k in columns})
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------ Markdown tables
def _mean_std_text(row: dict, key: str) -> str:
    std = row.get(f"{key}_std")
    return f"{row[f'{key}_mean']:.4f} ± {std:.4f}" if std is not None else f"{row[f'{key}_mean']:.4f}"


def _delta_text(row: dict, key: str) -> str:
    if f"delta_{key}" not in row:
        return "—"
    low, high = row[f"delta_{key}_low"], row[f"delta_{key}_high"]
    interval = f" [{low:+.4f}, {high:+.4f}]" if low is not None else ""
    return f"{row[f'delta_{key}']:+.4f}{interval}"


def _needed_text(row: dict, key: str) -> str:
    needed = row.get(f"seeds_needed_{key}")
    return "—" if needed is None else str(needed)


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)])


def _delta_headers(against: str, detect: float) -> list[str]:
    headers = []
    for key in METRICS:
        headers += [f"Δ {key.replace('_', '-')} {against} [95% CI]", "verdict", f"seeds for ±{detect:g}"]
    return headers


def _delta_cells(row: dict) -> list[str]:
    cells = []
    for key in METRICS:
        verdict = "(baseline)" if row.get("is_baseline") else row.get(f"verdict_{key}", "—")
        cells += [_delta_text(row, key), verdict, _needed_text(row, key)]
    return cells


def format_variants(rows: list[dict], factors: list[str], metric: str, detect: float) -> str:
    """Every variant ranked by the mean of `metric` over seeds (its spread: std and min-max), its cost, and its
    paired difference to the baseline variant."""
    other = next(k for k in METRICS if k != metric)
    headers = ["rank", *(FACTOR_TITLES.get(f, f) for f in factors), "seeds", metric.replace("_", "-"), "min – max",
               other.replace("_", "-"), "parameters", "GFLOPs", "images/s", *_delta_headers("vs baseline", detect)]
    lines = []
    for row in sorted(rows, key=lambda r: r["rank"]):
        size = [f"{row['parameters']:,}", f"{row['gflops']:.3f}"] if "parameters" in row else ["—", "—"]
        speed = f"{row['images_per_s']:.1f}" if row.get("images_per_s") is not None else "—"
        lines.append([str(row["rank"]), *(row[f] for f in factors), str(row["seeds"]), _mean_std_text(row, metric),
                      f"{row[f'{metric}_min']:.4f} – {row[f'{metric}_max']:.4f}", _mean_std_text(row, other), *size,
                      speed, *_delta_cells(row)])
    return markdown_table(headers, lines)


def format_effects(rows: list[dict], detect: float) -> str:
    headers = ["factor", "level", "baseline", "averaged over", "seeds", *_delta_headers("vs baseline level", detect)]
    return markdown_table(headers, [[row["factor"], row["level"], row["baseline"], row["over"] or "—",
                                     str(row["pairs"]), *_delta_cells(row)] for row in rows])


def format_interactions(rows: list[dict], detect: float) -> str:
    headers = ["interaction", "meaning", "averaged over", "seeds", *_delta_headers("interaction", detect)]
    lines = []
    for row in rows:
        label = f"{row['factor_a']}={row['level_a']} × {row['factor_b']}={row['level_b']}"
        meaning = (f"gain of {row['level_a']} over {row['baseline_a']} with {row['factor_b']}={row['level_b']}, "
                   f"minus with {row['baseline_b']}")
        lines.append([label, meaning, row["over"] or "—", str(row["pairs"]), *_delta_cells(row)])
    return markdown_table(headers, lines)


# ---------------------------------------------------------------------------------------------------- the picture
def _label(row: dict, factors: list[str]) -> str:
    return "\n".join(level_label(f, row[f]) for f in factors if row[f] != NOT_APPLICABLE) or "baseline"


def plot_study(variants: list[dict], effects: list[dict], factors: list[str], metric: str, path: Path) -> None:
    """Left: `metric` per variant (mean +- std over seeds). Middle and right: the paired differences to the baseline
    with their 95% intervals, per variant and per factor level."""
    # local: matplotlib takes 0.7-0.8 s to import on the 2-core CI machine (python -X importtime); only the report at
    # the end of a study needs it, not --help, a bad flag, or the tests of the planning and statistics
    import matplotlib
    matplotlib.use("Agg")  # files only; studies run on machines without a display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(max(14.0, 5 + 1.2 * len(variants)), 4.8), squeeze=False)
    ax = axes[0][0]
    means = [r[f"{metric}_mean"] for r in variants]
    errors = [r[f"{metric}_std"] or 0.0 for r in variants]
    ax.bar(range(len(variants)), means, yerr=errors, capsize=4, color="#4c72b0")
    ax.set_xticks(range(len(variants)), [_label(r, factors) for r in variants], fontsize=7)
    ax.set_title(f"{metric.replace('_', '-')}, mean ± std over seeds", fontsize=10)
    low = min(m - e for m, e in zip(means, errors, strict=True))
    ax.set_ylim(max(0.0, low - 0.1 * (max(means) - low + 1e-9)), None)  # differences are small: zoom in
    ax.grid(axis="y", alpha=0.3)
    compared = [r for r in variants if "delta_mAP50" in r]
    _plot_deltas(axes[0][1], compared, [_label(r, factors).replace("\n", " ") for r in compared],
                 "variant - baseline (paired by seed), 95% CI")
    _plot_deltas(axes[0][2], effects, [f"{r['factor']}={r['level']}" for r in effects],
                 "factor level - baseline level, 95% CI")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_deltas(ax, rows: list[dict], labels: list[str], title: str) -> None:
    if not rows:  # a study of one variant, or no paired seeds yet
        ax.set_axis_off()
        ax.set_title(f"{title}: nothing to compare yet", fontsize=10)
        return
    for offset, key, color in ((-0.15, "mAP50", "#4c72b0"), (0.15, "mAP50_95", "#dd8452")):
        shown = [(i, r) for i, r in enumerate(rows) if f"delta_{key}" in r]
        means = [r[f"delta_{key}"] for _, r in shown]
        low = [r[f"delta_{key}"] - r[f"delta_{key}_low"] if r[f"delta_{key}_low"] is not None else 0 for _, r in shown]
        high = [r[f"delta_{key}_high"] - r[f"delta_{key}"] if r[f"delta_{key}_high"] is not None else 0
                for _, r in shown]
        ax.errorbar(means, [i + offset for i, _ in shown], xerr=[low, high], fmt="o", capsize=4, color=color,
                    label=key.replace("_", "-"))
    ax.axvline(0.0, color="grey", lw=1)
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylim(len(rows) - 0.5, -0.5)  # first row on top
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="x", alpha=0.3)


# ------------------------------------------------------------------------------------------------------- the files
def write_files(folder: Path, header: str, factors: list[str], tables: dict, metric: str, detect: float) -> str:
    """Every report file in `folder`; returns the Markdown body (what the study prints)."""
    variants, effects, interactions, runs = (tables[k] for k in ("variants", "effects", "interactions", "runs"))
    write_csv(variants, folder / "ablation.csv", variant_columns(factors))
    write_csv(effects, folder / "ablation_effects.csv", EFFECT_COLUMNS)
    write_csv(interactions, folder / "ablation_interactions.csv", INTERACTION_COLUMNS)
    write_csv(runs, folder / "ablation_runs.csv", run_columns(factors))
    plot_study(variants, effects, factors, metric, folder / "ablation.png")
    sections = ["## Effect of each factor level (paired by seed, against its baseline level)", "",
                format_effects(effects, detect) if effects else "No factor level has a finished comparison yet.", ""]
    if interactions:
        sections += ["## Interactions of two factors", "", format_interactions(interactions, detect), ""]
    sections += [f"## Variants ranked by {metric.replace('_', '-')} (mean over seeds)", "",
                 format_variants(variants, factors, metric, detect), ""]
    body = "\n".join(sections)
    text = header + "\n" + body + "\n![study](ablation.png)\n"
    tmp = folder / f".ablation.md.{os.getpid()}.tmp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, folder / "ablation.md")
    return body


def run_row(result: dict, variant: tuple, name: str) -> dict:
    """A result.json as a row of ablation_runs.csv (its levels in the factor columns)."""
    return {**result, **dict(variant), "run": name}

