"""`crnet train`: episodic training of CRNet on the base classes of a fold.

The loop is models.training; this module turns the options into a TrainConfig. The recipe
(``--recipe``) defaults by ``--init-trunk``: with an ImageNet ResNet-50 file it is ``canet``
(the paper's way: frozen trunk, SGD lr 0.0025 momentum 0.9 weight decay 5e-4, batch 4,
321x321), without one ``scratch`` (the shipped crnet-lite's: AdamW from random weights).
Each recipe setting has its own flag; a flag left out takes the recipe's value. Training
needs the `[export]` extra (torch, safetensors); `--help` does not.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from crnet.cli.arguments import (
    add_batch,
    add_data_group,
    add_preset,
    add_threads,
    add_warmup,
    at_least,
    check_data_root,
)
from crnet.runtime.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `crnet train`, with TrainConfig's defaults."""
    from crnet.models.config import RECIPES, TrainConfig

    parser.description = "Episodic training of CRNet on the base classes of a fold."
    parser.epilog = ("Recipes (a flag left out takes the recipe's value): "
                     + "; ".join(f"{name}: " + ", ".join(f"{k}={v}" for k, v in values.items())
                                 for name, values in RECIPES.items()))
    defaults = TrainConfig()
    add_preset(parser, default=defaults.preset)
    add_data_group(parser, fold=defaults.fold, seed=defaults.seed)
    parser.add_argument("--device", default=defaults.device, choices=("cpu", "cuda"))
    parser.add_argument("--amp", action="store_true",
                        help="mixed precision: float16 autocast + GradScaler on CUDA, "
                             "bfloat16 autocast on CPU")
    parser.add_argument("--init-trunk", type=Path, default=None, metavar="PATH",
                        help="ImageNet ResNet-50 weights: torchvision resnet50-*.pth or timm "
                             ".safetensors/.pth (implies --recipe canet unless given)")
    parser.add_argument("--recipe", default=None, choices=sorted(RECIPES),
                        help="canet with --init-trunk, else scratch")
    parser.add_argument("--steps", type=int, default=defaults.steps)
    add_batch(parser, help="episodes per step")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--optimizer", default=None, choices=("sgd", "adamw"))
    parser.add_argument("--momentum", type=float, default=None)
    parser.add_argument("--weight-decay", type=float, default=None)
    add_warmup(parser, default=None, help="linear warm-up steps")
    parser.add_argument("--min-lr-ratio", type=float, default=None,
                        help="cosine floor as a fraction of --lr (1 = constant rate)")
    parser.add_argument("--clip-norm", type=float, default=None, help="0 = no clipping")
    parser.add_argument("--input-size", type=int, default=None,
                        help="square input side (0 = the preset's)")
    parser.add_argument("--freeze-trunk", action=argparse.BooleanOptionalAction, default=None,
                        help="freeze the trunk (BatchNorm in eval mode, no gradients)")
    parser.add_argument("--query-loss-weight", type=float, default=None)
    parser.add_argument("--support-loss-weight", type=float, default=None)
    parser.add_argument("--eval-every", type=int, default=defaults.eval_every)
    parser.add_argument("--eval-episodes", type=int, default=defaults.eval_episodes)
    parser.add_argument("--save-every", type=int, default=defaults.save_every)
    add_threads(parser, default=defaults.threads, help="torch threads (0: torch's default)")
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="where state and the final checkpoint go (default runs/PRESET-foldF)")
    parser.add_argument("--resume", action="store_true", help="continue from run-dir/state.json")


def train_config(args: argparse.Namespace) -> Any:
    """The TrainConfig of parsed options: the recipe's values, overridden by given flags."""
    from crnet.models.config import ConfigError, TrainConfig, preset

    try:
        preset(args.preset)
    except ValueError as error:
        raise UsageError(str(error)) from None
    for flag, value in (("--steps", args.steps), ("--batch", args.batch),
                        ("--eval-every", args.eval_every),
                        ("--eval-episodes", args.eval_episodes),
                        ("--save-every", args.save_every)):
        at_least(flag, value, 1)
    check_data_root(args.dataset, args.data_root)
    recipe = args.recipe or ("canet" if args.init_trunk is not None else "scratch")
    try:
        config = TrainConfig.for_recipe(
            recipe, preset=args.preset, fold=args.fold, steps=args.steps, batch=args.batch,
            lr=args.lr, optimizer=args.optimizer, momentum=args.momentum,
            weight_decay=args.weight_decay, warmup=args.warmup, min_lr_ratio=args.min_lr_ratio,
            clip_norm=args.clip_norm, input_size=args.input_size,
            freeze_trunk=args.freeze_trunk, query_loss_weight=args.query_loss_weight,
            support_loss_weight=args.support_loss_weight, seed=args.seed,
            eval_every=args.eval_every, eval_episodes=args.eval_episodes,
            save_every=args.save_every, threads=args.threads, dataset=args.dataset,
            data_root=None if args.data_root is None else str(args.data_root),
            init_trunk=None if args.init_trunk is None else str(args.init_trunk),
            device=args.device, amp=args.amp or None,
        )
    except ConfigError as error:
        raise UsageError(str(error)) from None
    if config.freeze_trunk and config.init_trunk is None:
        raise UsageError(
            f"--recipe {recipe} freezes the trunk, which only makes sense with ImageNet "
            "weights: give --init-trunk PATH (torchvision resnet50-*.pth or timm "
            "resnet50 .safetensors), or --no-freeze-trunk to train it from scratch")
    return config


def run(args: argparse.Namespace) -> int:
    """Train, then print the final record as JSON."""
    config = train_config(args)
    run_dir = args.run_dir or Path("runs") / f"{args.preset}-fold{args.fold}"
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--run-dir {run_dir} is a file; expected a directory")
    if args.init_trunk is not None and not args.init_trunk.is_file():
        raise UsageError(f"--init-trunk {args.init_trunk} does not exist or is not a file")
    from crnet.models.training import train

    final = train(config, run_dir, resume=args.resume)
    print(json.dumps(final, indent=2))
    return 0
