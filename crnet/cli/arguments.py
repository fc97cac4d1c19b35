"""The options that several `crnet` commands share, each defined once.

A command's ``add_arguments`` calls these instead of spelling a shared option itself, so an
option means the same thing, has the same type and the same help everywhere; what may
differ per command (a default, whether it is required, a sentence of help) is a parameter.
tests/crnet/cli/test_arguments.py checks that no option used by two commands is defined
anywhere else.

Building a parser stays cheap: nothing here imports torch or onnxruntime, so
`crnet <command> --help` works in the plain install.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

# a parser or one of its argument groups: where an option is added
Container = argparse._ActionsContainer

# ----------------------------------------------------------------------- data group


def add_data_group(parser: argparse.ArgumentParser, *, fold: int | None = 0,
                   fold_help: str | None = None, seed: int | None = 0,
                   seed_help: str | None = None, dataset_help: str | None = None,
                   sampler: bool = False) -> argparse._ArgumentGroup:
    """--dataset, --data-root, --fold, --seed (and --sampler): which episodes a stage reads.

    ``fold``/``seed`` are the defaults (None for fold: the checkpoint's training fold);
    ``seed=None`` leaves --seed out.
    """
    group = parser.add_argument_group("data", "which episodes the command reads")
    add_dataset(group, help=dataset_help)
    add_data_root(group)
    if sampler:
        add_sampler(group)
    add_fold(group, default=fold, help=fold_help)
    if seed is not None:
        add_seed(group, default=seed, help=seed_help)
    return group


def add_dataset(parser: Container, *, help: str | None = None) -> None:
    """--dataset: synthetic-5i (generated), pascal-5i or folder (read from --data-root)."""
    from crnet.data.evaluation import DATASETS
    from crnet.data.options import DEFAULT_DATASET

    parser.add_argument("--dataset", default=DEFAULT_DATASET, choices=DATASETS,
                        help=help or f"episodes to read (default {DEFAULT_DATASET})")


def add_data_root(parser: Container) -> None:
    """--data-root: the dataset's directory."""
    parser.add_argument("--data-root", type=Path, default=None, metavar="DIR",
                        help="dataset directory (pascal-5i: the VOC2012 root with "
                             "SegmentationClassAug; folder: a folder of class directories)")


def add_fold(parser: Container, *, default: int | None = 0, help: str | None = None) -> None:
    """--fold 0..3: its base classes train and calibrate, its novel classes test."""
    from crnet.data.options import FOLDS

    parser.add_argument("--fold", type=int, default=default, choices=FOLDS,
                        help=help or ("default: the checkpoint's training fold" if default
                                      is None else f"fold 0-3 (default {default})"))


def add_seed(parser: Container, *, default: int = 0, help: str | None = None) -> None:
    """--seed: the same seed always draws the same episodes (and weights)."""
    parser.add_argument("--seed", type=int, default=default,
                        help=help or f"seed of the episode draw (default {default})")


def add_sampler(parser: Container) -> None:
    """--sampler: how PASCAL-5i queries are drawn."""
    from crnet.data.evaluation import SAMPLER_HELP, SAMPLERS

    parser.add_argument("--sampler", default="uniform", choices=SAMPLERS, help=SAMPLER_HELP)


def batch_sizes(text: str) -> tuple[int, ...]:
    """``1,4,8`` as (1, 4, 8); argparse reports a bad value as a usage error."""
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected batch sizes like 1,4,8, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be at least 1, got {text!r}")
    return sizes


def add_batch(parser: Container, *, sizes: bool = False, help: str) -> None:
    """--batch: how many episodes or queries go through the network at once (``sizes``: a
    comma-separated list of batch sizes to measure, e.g. 1,4,8)."""
    if sizes:
        parser.add_argument("--batch", type=batch_sizes, default=(), metavar="N[,N...]",
                            help=help)
    else:
        parser.add_argument("--batch", type=int, default=None, help=help)


def add_shots(parser: Container, *, default: int = 1) -> None:
    """--shots: support images per episode."""
    parser.add_argument("--shots", type=int, default=default,
                        help=f"support images per episode (default {default})")


def add_episodes(parser: Container, *, default: int, help: str | None = None) -> None:
    """--episodes: how many episodes the command's check or evaluation runs."""
    parser.add_argument("--episodes", type=int, default=default,
                        help=help or f"episodes to run (default {default})")


def add_quantize_counts(parser: Container, *, calibration: int | None = None,
                        sensitivity: int | None = None, check: int | None = None,
                        default_note: str = "") -> None:
    """--calibration-episodes, --sensitivity-episodes, --check-episodes of the int8 and fp16
    variants (`crnet quantize` and `crnet deploy`)."""
    note = f" ({default_note})" if default_note else ""
    parser.add_argument("--calibration-episodes", type=int, default=calibration,
                        help=f"int8 calibration episodes{note}")
    parser.add_argument("--sensitivity-episodes", type=int, default=sensitivity,
                        help=f"int8 sensitivity episodes{note}")
    parser.add_argument("--check-episodes", type=int, default=check,
                        help=f"fp16: base-class episodes to measure the variant on{note}")


# -------------------------------------------------------------------- model inputs


def add_checkpoint(parser: Container, *, required: bool = False, help: str | None = None) -> None:
    """--checkpoint: a trained checkpoint (.safetensors beside its .json)."""
    parser.add_argument("--checkpoint", type=Path, default=None, required=required,
                        help=help or "checkpoint .safetensors (default: the bundled trained "
                                     "crnet-lite)")


def add_preset(parser: Container, *, default: str | None = None, help: str | None = None) -> None:
    """--preset: a model size from models.config.PRESETS."""
    parser.add_argument("--preset", default=default, help=help or "model preset")


def add_bundle(parser: Container, *, positional: bool = True, help: str | None = None) -> None:
    """The bundle directory (from `crnet export`): positional BUNDLE, or --bundle DIR."""
    text = help or "bundle directory (from crnet export)"
    if positional:
        parser.add_argument("bundle", type=Path, metavar="BUNDLE", help=text)
    else:
        parser.add_argument("--bundle", type=Path, default=None, metavar="DIR", help=text)


# -------------------------------------------------------------------- runtime group


def backend_choices() -> list[str]:
    """``auto`` and every backend the registry knows (built-in and entry-point ones)."""
    from crnet.runtime.backends.base import backend_names

    return ["auto", *backend_names()]


def add_runtime_group(parser: argparse.ArgumentParser, *, backend: str = "auto",
                      backends: Sequence[str] | None = None,
                      precision: str = "fp32", precision_choices: Sequence[str] | None = None,
                      precision_help: str | None = None, threads: bool = True,
                      threads_help: str | None = None) -> argparse._ArgumentGroup:
    """--backend, --precision, --threads: which engine runs the bundle, and how."""
    group = parser.add_argument_group("runtime", "which engine runs the bundle")
    add_backend(group, default=backend, choices=backends)
    add_precision(group, default=precision, choices=precision_choices, help=precision_help)
    if threads:
        add_threads(group, help=threads_help)
    return group


def add_backend(parser: Container, *, default: str | None = "auto",
                choices: Sequence[str] | None = None, help: str | None = None) -> None:
    """--backend: a registered runtime backend or auto (choices from the registry); a
    ``default`` of None lets the command choose (e.g. every installed backend)."""
    parser.add_argument("--backend", default=default,
                        choices=list(choices) if choices is not None else backend_choices(),
                        help=help or f"runtime backend (default {default})")


def add_precision(parser: Container, *, default: str | None = "fp32",
                  choices: Sequence[str] | None = None, required: bool = False,
                  help: str | None = None) -> None:
    """--precision: which variant of the bundle; ``choices`` narrows or widens the
    precisions (fp32, fp16, int8), an empty ``choices`` takes free text (a comma list)."""
    from crnet.runtime.layout import PRECISIONS

    names = list(PRECISIONS if choices is None else choices)
    parser.add_argument("--precision", default=None if required else default,
                        required=required, choices=names or None,
                        help=help or f"the bundle's variant (default {default})")


def add_threads(parser: Container, *, default: int | None = None, help: str | None = None) -> None:
    """--threads: intra-op threads (default: the engine's own choice)."""
    parser.add_argument("--threads", type=int, default=default,
                        help=help or "intra-op threads (default: the engine's own)")


# --------------------------------------------------------------------- output group


def add_force(parser: Container, *, help: str) -> None:
    """--force: replace what the command would otherwise refuse to overwrite."""
    parser.add_argument("--force", action="store_true", help=help)


def add_out(parser: Container, *, default: Path | None = None, required: bool = False,
            help: str) -> None:
    """--out: the directory the command writes."""
    parser.add_argument("--out", type=Path, default=default, required=required, help=help)


def add_json(parser: Container, *, flag: bool = False, help: str | None = None) -> None:
    """--json: write the result as JSON to a file (``flag``: print JSON instead of text)."""
    if flag:
        parser.add_argument("--json", action="store_true",
                            help=help or "print JSON instead of text")
    else:
        parser.add_argument("--json", type=Path, default=None, metavar="OUT",
                            help=help or "also write the result as JSON here")


def add_no_progress(parser: Container) -> None:
    """--no-progress: no progress bars (logs, CI)."""
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_warmup(parser: Container, *, default: int | None, help: str) -> None:
    """--warmup: steps or calls before the measured part starts."""
    parser.add_argument("--warmup", type=int, default=default, help=help)


# ---------------------------------------------------------------------- serving


def add_store_arguments(parser: Container, *, instances: int, instances_help: str) -> None:
    """--instances, --store-max-entries, --store-max-mb of the served support store."""
    from crnet.serve.support_store import DEFAULT_MAX_BYTES, DEFAULT_MAX_ENTRIES

    parser.add_argument("--instances", type=int, default=instances, help=instances_help)
    parser.add_argument("--store-max-entries", type=int, default=DEFAULT_MAX_ENTRIES,
                        help="support sets held at most (least recently used out)")
    parser.add_argument("--store-max-mb", type=float, default=DEFAULT_MAX_BYTES / 2**20,
                        help="MiB of support features held at most")


# ------------------------------------------------------------------------- checks


def at_least(flag: str, value: int | float | None, low: int | float) -> None:
    """UsageError unless ``value`` (when given) is at least ``low``."""
    from crnet.runtime.errors import UsageError

    if value is not None and value < low:
        raise UsageError(f"{flag} must be >= {low}, got {value}")


def check_data_root(dataset: str, data_root: Path | None) -> None:
    """UsageError when a dataset that is read from disk has no usable --data-root."""
    from crnet.data.evaluation import missing_data_root
    from crnet.runtime.errors import UsageError

    if (problem := missing_data_root(dataset, data_root)) is not None:
        raise UsageError(problem)


# ------------------------------------------------------------------- finetune group


FINETUNE_FLAGS = {"finetune_steps": "steps", "finetune_lr": "lr", "finetune_parts": "parts",
                  "finetune_optimizer": "optimizer", "pairs_per_step": "pairs_per_step",
                  "finetune_device": "device"}
"""dest of each finetune flag -> the crnet.models.finetune option it sets (prefixed: `crnet
train` has its own --steps, --lr, --optimizer and --device)."""


def add_finetune_group(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """--finetune-steps, --finetune-lr, --finetune-parts, --finetune-optimizer,
    --pairs-per-step, --finetune-device: a k-shot finetune (crnet.models.finetune); a flag
    left out takes the finetune's default."""
    group = parser.add_argument_group(
        "finetune", "k-shot finetuning of the parts after the encoder (defaults: "
                    "crnet.models.finetune.DEFAULTS, chosen in docs/finetuning.md)")
    group.add_argument("--finetune-steps", type=int, default=None, help="optimiser steps")
    group.add_argument("--finetune-lr", type=float, default=None, help="learning rate")
    group.add_argument("--finetune-parts", default=None,
                       help="comma list of cross_reference, condition, refinement")
    group.add_argument("--finetune-optimizer", default=None, choices=("adam", "sgd"))
    group.add_argument("--pairs-per-step", type=int, default=None,
                       help="support/query pairs per step, drawn by the seed (0: all)")
    group.add_argument("--finetune-device", default=None, choices=("cpu", "cuda"),
                       help="where the finetune runs (default cpu)")
    return group


def finetune_overrides(args: argparse.Namespace) -> dict[str, object]:
    """The finetune flags that were given, as keyword overrides of the defaults."""
    return {option: getattr(args, dest) for dest, option in FINETUNE_FLAGS.items()
            if getattr(args, dest) is not None}
