"""What a finished (or partly finished) study says, as rows of numbers (utils/study/report.py writes them out):

- per variant: mean, std, min and max over seeds, and the difference to the baseline variant paired by seed;
- per factor level: its effect against the factor's baseline level, paired by seed and averaged over the other
  factors' levels (a main effect: for seed s, the mean over the other factors' combinations of score(level) -
  score(baseline level));
- per pair of factors: their interaction, (gain of A=a over A's baseline with B=b) - (the same gain with B at its
  baseline), paired by seed likewise;
- with each difference, its 95% Student-t interval over seeds, the verdict, and the seeds a true difference of
  `detect` would need to be told from 0 (utils.study.stats.seeds_needed, at the observed spread).

A contrast counts only the seeds for which every run it needs has finished, so a partial study gives fewer pairs, never
a mix of seeds.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from utils.study.factors import NOT_APPLICABLE, Variant, normalize, plan_variants
from utils.study.stats import mean_interval, mean_std, seeds_needed

METRICS = ("mAP50", "mAP50_95")
Scores = dict[tuple[Variant, int], dict]  # (variant, seed) -> that run's result (mAP50, mAP50_95, ...)
Term = tuple[tuple[Variant, float], ...]  # one contrast per seed: sum of sign x score over its variants


@dataclass
class Design:
    """The study's grid (factor -> levels, in order), its baseline level per factor and the difference the power
    estimate looks for."""

    grid: dict[str, list[str]]
    baseline: dict[str, str]
    detect: float = 0.02
    variants: list[Variant] = field(init=False)

    def __post_init__(self) -> None:
        self.variants = plan_variants(self.grid)

    @property
    def factors(self) -> list[str]:
        return list(self.grid)

    def variant_of(self, levels: dict[str, str]) -> Variant:
        """The planned variant for these levels; a factor at `-` that applies again takes its baseline level."""
        filled = {name: self.baseline[name] if level == NOT_APPLICABLE else level for name, level in levels.items()}
        return normalize(filled, self.factors)

    @property
    def baseline_variant(self) -> Variant:
        return self.variant_of(self.baseline)


def per_seed_contrast(scores: Scores, terms: list[Term], key: str) -> list[float]:
    """For each seed where every run of every term finished: the mean over terms of sum(sign x score)."""
    seeds = sorted({seed for _, seed in scores})
    values = []
    for seed in seeds:
        if all((variant, seed) in scores for term in terms for variant, _ in term):
            values.append(sum(sum(sign * scores[(variant, seed)][key] for variant, sign in term) for term in terms)
                          / len(terms))
    return values


def contrast_fields(scores: Scores, terms: list[Term], detect: float) -> dict:
    """pairs, delta_<metric> with _low/_high (95% interval), verdict_<metric>, seeds_needed_<metric>."""
    row: dict = {}
    for key in METRICS:
        values = per_seed_contrast(scores, terms, key)
        if not values:
            continue
        diff = mean_interval(values)
        row.update({"pairs": len(values), f"delta_{key}": diff.mean, f"delta_{key}_low": diff.low,
                    f"delta_{key}_high": diff.high, f"verdict_{key}": diff.verdict,
                    f"seeds_needed_{key}": seeds_needed(mean_std(values)[1], detect)})
    return row


def variant_rows(design: Design, scores: Scores, measured: dict | None = None, metric: str = "mAP50") -> list[dict]:
    """One row per variant with a finished run, in planned order: levels, seeds, mean/std/min/max per metric, the
    cost (`measured`: parameters, gflops, images_per_s per variant), the paired difference to the baseline variant,
    and `rank` by the mean of `metric` (1 = best)."""
    rows = []
    base = design.baseline_variant
    for variant in design.variants:
        per_seed = [scores[(variant, seed)] for v, seed in sorted(scores, key=lambda k: k[1]) if v == variant]
        if not per_seed:
            continue
        row = {"variant": variant, **dict(variant), "seeds": len(per_seed), **(measured or {}).get(variant, {})}
        for key in METRICS:
            values = [r[key] for r in per_seed]
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std(values)
            row[f"{key}_min"], row[f"{key}_max"] = min(values), max(values)
        if variant == base:
            row["is_baseline"] = True
        else:
            row.update(contrast_fields(scores, [((variant, 1.0), (base, -1.0))], design.detect))
        rows.append(row)
    ranked = sorted(range(len(rows)), key=lambda i: (-rows[i][f"{metric}_mean"], i))
    for rank, index in enumerate(ranked, start=1):
        rows[index]["rank"] = rank
    return rows


def _spread_text(design: Design, variants: list[Variant], exclude: tuple[str, ...]) -> str:
    """'attention_at: neck, backbone' for the other factors that take several levels among `variants`."""
    parts = []
    for position, name in enumerate(design.factors):
        levels = list(dict.fromkeys(v[position][1] for v in variants if v[position][1] != NOT_APPLICABLE))
        if name not in exclude and len(levels) > 1:
            parts.append(f"{name}: {', '.join(levels)}")
    return "; ".join(parts)


def effect_rows(design: Design, scores: Scores) -> list[dict]:
    """Per factor and non-baseline level: the effect against the baseline level, paired by seed and averaged over
    every combination of the other factors where the level applies."""
    rows = []
    for name in design.factors:
        base = design.baseline[name]
        for level in (lv for lv in design.grid[name] if lv != base):
            terms: list[Term] = []
            for variant in design.variants:
                levels = dict(variant)
                counterpart = design.variant_of({**levels, name: base})
                if levels[name] == level and counterpart != variant:
                    terms.append(((variant, 1.0), (counterpart, -1.0)))
            fields = contrast_fields(scores, terms, design.detect) if terms else {}
            if fields:
                rows.append({"factor": name, "level": level, "baseline": base, "combinations": len(terms),
                             "over": _spread_text(design, [t[0][0] for t in terms], (name,)), **fields})
    return rows


def interaction_rows(design: Design, scores: Scores) -> list[dict]:
    """For two factors A, B and non-baseline levels a, b: (A=a minus A's baseline, with B=b) minus (the same with B at
    its baseline), paired by seed and averaged over the other factors. Pairs where the four cells are not four
    distinct runs (a placement with and without attention) have no interaction and are left out."""
    rows = []
    for name_a, name_b in itertools.combinations(design.factors, 2):
        a0, b0 = design.baseline[name_a], design.baseline[name_b]
        for a, b in itertools.product(design.grid[name_a], design.grid[name_b]):
            if a == a0 or b == b0:
                continue
            terms: list[Term] = []
            for variant in design.variants:
                levels = dict(variant)
                if levels[name_a] != a or levels[name_b] != b:
                    continue
                cells = [design.variant_of({**levels, name_a: x, name_b: y})
                         for x, y in ((a, b), (a0, b), (a, b0), (a0, b0))]
                if len(set(cells)) == 4:
                    terms.append(tuple(zip(cells, (1.0, -1.0, -1.0, 1.0), strict=True)))
            fields = contrast_fields(scores, terms, design.detect) if terms else {}
            if fields:
                rows.append({"factor_a": name_a, "level_a": a, "baseline_a": a0, "factor_b": name_b, "level_b": b,
                             "baseline_b": b0, "over": _spread_text(design, [t[0][0] for t in terms],
                                                                    (name_a, name_b)), **fields})
    return rows
