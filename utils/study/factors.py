"""What a study varies: any train.py option (a factor) at a few values (its levels), crossed with every seed.

    --vary phi=none,cbam,ca --vary attention_at=neck,backbone --vary multi_scale=off,on --vary mosaic=0,0.5

A factor is named by its train.py option, with `-` or `_` (`multi-scale`, `multi_scale`); each level is parsed by that
option's own type and choices, switches take on/off (true/false, yes/no, 1/0), so a typo fails before any run starts.
Levels that hold commas themselves (`--input-shape 320,416`, `--multi-scale-range 0.5,1.5`) are separated by `;`.

Combinations that do not exist are planned once: a placement or a block option means nothing without an attention
block, so with `none` (and with blocks lacking that option) the factor's level is `-`, and `none` runs once per seed.
"""
from __future__ import annotations

import argparse
import itertools
import re
from dataclasses import dataclass
from typing import Callable

from nets.attention import ATTENTION_BLOCKS, attention_name, attention_names, block_options
from nets.yolo import attention_place
from utils.common.errors import ConfigError
from utils.model.config import parse_input_shape
from utils.train import cli as train  # train.py's parser defines what a factor can be
from utils.train.config import multi_scale_range
from utils.train.loss_config import parse_loss

NOT_APPLICABLE = "-"
DEFAULT_ATTENTION = "none"  # a run's attention when phi is not a factor (train.py's default, --phi 0)
# train.py options the study sets itself, with the study flag to use instead
STUDY_OWNED = {"seed": "--seeds", "data": "--data", "epochs": "--epochs", "name": "--study", "save_dir": "--study",
               "resume": "the same study command again", "device": "--devices", "verbose": "--verbose"}
SWITCH_WORDS = {"on": True, "off": False, "true": True, "false": False, "yes": True, "no": False, "1": True, "0": False}
# What the report calls the factors whose option names say less; both are also part of every run name unnamed
# (`cbam-neck-s0`), as studies made before --vary existed named them.
FACTOR_TITLES = {"phi": "attention", "attention_at": "placement"}
# Levels whose option type is a plain string but whose value has a form to check before any run starts.
LEVEL_PARSERS: dict[str, Callable[[str], str]] = {
    "phi": attention_name,
    "attention_at": attention_place,
    "input_shape": lambda text: (parse_input_shape(text), text)[1],
    "multi_scale_range": lambda text: (multi_scale_range(text), text)[1],
    "loss": lambda text: (parse_loss(text), text)[1],  # --vary "loss=obj_target=one;obj_target=iou"
}
# train.py options that are a block option under an older flag (--attention-reduction: reduction), as the blocks
# declare them (AttentionBlock.option_flags)
BLOCK_OPTION_NAMES = {flag.lstrip("-").replace("-", "_"): option for block in ATTENTION_BLOCKS.values()
                      if block is not None for option, flag in block.option_flags.items()}


def default_attentions() -> str:
    """The study's default: every registered attention (asked when needed, so later registrations count)."""
    return ",".join(attention_names())


Variant = tuple[tuple[str, str], ...]  # ((factor, level), ...) in the study's factor order


@dataclass(frozen=True)
class Factor:
    """One train.py option the study varies, at `levels` (canonical text: "cbam", "on", "0.5")."""

    name: str  # train.py option dest: "multi_scale"
    levels: tuple[str, ...]
    flag: str  # "--multi-scale"
    switch: str | None = None  # None: takes a value; "store": on -> the flag, off -> nothing; "optional": --no-...

    @property
    def title(self) -> str:
        return FACTOR_TITLES.get(self.name, self.name)

    def train_args(self, level: str) -> list[str]:
        """The train.py arguments that set this factor to `level` ([] for `-`, where it does not apply)."""
        if level == NOT_APPLICABLE:
            return []
        if self.switch == "optional":
            return [self.flag] if level == "on" else ["--no-" + self.flag[2:]]
        if self.switch == "store":
            return [self.flag] if level == "on" else []
        return [self.flag, level]


def train_options(parser: argparse.ArgumentParser | None = None) -> dict[str, argparse.Action]:
    """train.py's options by dest (hidden aliases left out)."""
    parser = parser or train.get_args_parser()
    return {a.dest: a for a in parser._actions if a.option_strings and a.help != argparse.SUPPRESS}


def factor_name(text: str) -> str:
    """`--multi-scale`, `multi-scale` or `multi_scale` -> `multi_scale`."""
    return text.strip().lstrip("-").replace("-", "_")


def canonical_level(action: argparse.Action, text: str) -> str:
    """`text` parsed as train.py would parse it for this option, as canonical text (0.50 and .5 are one level)."""
    where = f"--vary {action.dest}={text}"
    if action.dest in LEVEL_PARSERS:
        try:
            return LEVEL_PARSERS[action.dest](text)
        except ValueError as err:
            raise ConfigError(f"{where}: {err}") from None
    if action.nargs == 0:  # a switch such as --multi-scale or --amp/--no-amp
        word = text.lower()
        if word not in SWITCH_WORDS:
            raise ConfigError(f"{where}: {action.option_strings[0]} is a switch; give on or off")
        return "on" if SWITCH_WORDS[word] else "off"
    try:
        value = action.type(text) if callable(action.type) else text
    except argparse.ArgumentTypeError as err:  # the range types (utils.common.cli.NumberRange) say what is wrong
        raise ConfigError(f"{where}: {err}") from None
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: not a valid {getattr(action.type, '__name__', 'value')}") from None
    if action.choices is not None and value not in action.choices:
        raise ConfigError(f"{where}: choose from {', '.join(map(str, action.choices))}")
    return format(value, ".12g") if isinstance(value, float) else str(value)


def parse_factor(text: str, options: dict[str, argparse.Action]) -> Factor:
    """`NAME=V1,V2,...` (or `NAME=V1;V2` for values holding commas) -> a Factor with its levels checked."""
    name, sep, values = text.partition("=")
    dest = factor_name(name)
    if not sep or not values.strip() or not dest:
        raise ConfigError(f"--vary {text}: give NAME=V1,V2,... (a train.py option and its values, e.g. "
                          "--vary multi_scale=off,on)")
    if dest in STUDY_OWNED:
        raise ConfigError(f"--vary {dest}: the study sets --{dest.replace('_', '-')} itself; use {STUDY_OWNED[dest]}")
    action = options.get(dest)
    if action is None:
        raise ConfigError(f"--vary {text}: train.py has no option --{dest.replace('_', '-')} (python train.py --help "
                          "lists them)")
    separator = ";" if ";" in values else ","
    levels = [canonical_level(action, v.strip()) for v in values.split(separator) if v.strip()]
    long_flag = next(f for f in action.option_strings if f.startswith("--"))
    switch = None
    if action.nargs == 0:
        switch = "optional" if isinstance(action, argparse.BooleanOptionalAction) else "store"
        if switch == "store" and action.const is not True:
            raise ConfigError(f"--vary {dest}: {long_flag} cannot be varied (only switches that turn an option on)")
    return Factor(dest, tuple(dict.fromkeys(levels)), long_flag, switch)


def study_factors(vary: list[str] | None, phi: str | None, at: str | None) -> list[Factor]:
    """The factors of a study command: --phi and --at are shorthands for --vary phi=... and --vary attention_at=...;
    without any of them the study compares every attention (today's ablation). phi and attention_at come first (run
    names start with them), then the --vary factors in the order given."""
    options = train_options()
    varied = [parse_factor(text, options) for text in vary or []]
    given = [f.name for f in varied]
    repeated = sorted({n for n in given if given.count(n) > 1})
    if repeated:
        raise ConfigError(f"--vary {repeated[0]} is given twice; list all its levels in one --vary")
    for shorthand, dest, text in (("--phi", "phi", phi), ("--at", "attention_at", at)):
        if text is not None:
            if dest in given:
                raise ConfigError(f"{shorthand} and --vary {dest} both given; use one of them")
            varied.append(parse_factor(f"{dest}={text}", options))
    names = {f.name for f in varied}
    if "phi" not in names and not vary:
        varied.append(parse_factor(f"phi={default_attentions()}", options))  # the attention ablation
    if "phi" in {f.name for f in varied} and "attention_at" not in {f.name for f in varied}:
        varied.append(parse_factor("attention_at=neck", options))  # named in every run, as before --vary existed
    order = {"phi": 0, "attention_at": 1}
    factors = sorted(varied, key=lambda f: order.get(f.name, 2))  # stable: --vary order kept after those two
    if not any(f.levels for f in factors):
        raise ConfigError("the study varies nothing; give --vary NAME=V1,V2 (or --phi)")
    for factor in factors:
        if not factor.levels:
            raise ConfigError(f"--vary {factor.name}: give at least one level")
    return factors


def applies(factor: str, attention: str) -> bool:
    """Whether `factor` means anything for a run with this attention (placement and block options need a block that
    has them; nets.attention.block_options says which block takes which option)."""
    if factor == "attention_at":
        return attention != "none"
    if factor in BLOCK_OPTION_NAMES:
        return BLOCK_OPTION_NAMES[factor] in block_options(attention)
    return True


def normalize(levels: dict[str, str], factor_names: list[str]) -> Variant:
    """The variant a combination of levels really trains: factors that do not apply get `-`."""
    attention = levels.get("phi", DEFAULT_ATTENTION)
    return tuple((name, levels[name] if applies(name, attention) else NOT_APPLICABLE) for name in factor_names)


def plan_variants(grid: dict[str, list[str]]) -> list[Variant]:
    """Every distinct variant of the grid (factor -> levels, in order), impossible combinations planned once."""
    names = list(grid)
    combos = itertools.product(*(grid[name] for name in names))
    return list(dict.fromkeys(normalize(dict(zip(names, combo, strict=True)), names) for combo in combos))


def check_grid(grid: dict[str, list[str]]) -> None:
    """A factor that never applies (a placement without any attention) varies nothing: say so before any run."""
    variants = plan_variants(grid)
    for position, name in enumerate(grid):
        if len(grid[name]) > 1 and all(v[position][1] == NOT_APPLICABLE for v in variants):
            raise ConfigError(f"--vary {name} changes nothing without an attention block that takes it; add "
                              "--phi (or --vary phi=...) with such blocks")


def level_label(name: str, level: str) -> str:
    """A factor's part of a run folder name: phi and attention_at bare (`cbam`, `neck`), others `name=level`, with
    what no folder name may hold (`/`, `:`, ...) replaced by `_`."""
    text = re.sub(r"[^\w.+-]+", "_", level)
    return text if name in FACTOR_TITLES else f"{name}={text}"


def variant_name(variant: Variant) -> str:
    """`none`, `cbam-neck`, `cbam-backbone-multi_scale=on-mosaic=0.5` (factors that do not apply are left out)."""
    return "-".join(level_label(name, level) for name, level in variant if level != NOT_APPLICABLE) or "baseline"


def variant_text(variant: Variant) -> str:
    """`phi=cbam, attention_at=neck` for messages and tables."""
    return ", ".join(f"{name}={level}" for name, level in variant)


@dataclass(frozen=True)
class Run:
    """One cell of the study: a variant and a seed."""

    variant: Variant
    seed: int

    @property
    def name(self) -> str:
        return f"{variant_name(self.variant)}-s{self.seed}"

    def level(self, factor: str) -> str:
        return dict(self.variant)[factor]


def plan_runs(grid: dict[str, list[str]], seeds: int) -> list[Run]:
    """Seed-major order, so that complete paired comparisons exist as early as possible (and every shard of a
    study gets runs of every seed)."""
    runs = [Run(variant, seed) for seed in range(seeds) for variant in plan_variants(grid)]
    names: dict[str, Run] = {}
    for run in runs:
        other = names.setdefault(run.name.casefold(), run)
        if other is not run:
            raise ConfigError(f"{variant_text(other.variant)} and {variant_text(run.variant)} give the same run folder "
                              f"name {run.name}; use levels that differ in letters or digits")
    return runs


def grid_of(factors: list[Factor]) -> dict[str, list[str]]:
    return {f.name: list(f.levels) for f in factors}


def parse_baseline(texts: list[str] | None, grid: dict[str, list[str]]) -> dict[str, str]:
    """The level each factor is compared against: the first level of each factor, or `--baseline NAME=LEVEL`."""
    baseline = {name: levels[0] for name, levels in grid.items()}
    options = train_options()
    for text in texts or []:
        for part in text.split(";" if ";" in text else ","):
            name, sep, value = part.partition("=")
            dest = factor_name(name)
            if not sep or dest not in grid:
                raise ConfigError(f"--baseline {text}: give NAME=LEVEL for a factor of the study "
                                  f"({', '.join(grid)})")
            level = canonical_level(options[dest], value.strip()) if dest in options else value.strip()
            if level not in grid[dest]:
                raise ConfigError(f"--baseline {part}: {dest} has the levels {', '.join(grid[dest])}")
            baseline[dest] = level
    return baseline
