"""`crnet train`: the command line of episodic training (the loop is models.training).

Light on import, so `crnet train --help` works without torch; the training itself needs
the `[export]` extra (torch, safetensors).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from models.config import TrainConfig, preset
from runtime.errors import UsageError


def build_parser() -> argparse.ArgumentParser:
    """The options of `crnet train`, with TrainConfig's defaults."""
    parser = argparse.ArgumentParser(prog="crnet train",
                                     description="Episodic training of CRNet on the base "
                                                 "classes of a fold.")
    defaults = TrainConfig()
    parser.add_argument("--preset", default=defaults.preset)
    parser.add_argument("--fold", type=int, default=defaults.fold, choices=range(4))
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch", type=int, default=defaults.batch)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--eval-every", type=int, default=defaults.eval_every)
    parser.add_argument("--eval-episodes", type=int, default=defaults.eval_episodes)
    parser.add_argument("--threads", type=int, default=defaults.threads)
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="where state and the final checkpoint go (default runs/PRESET-foldF)")
    parser.add_argument("--resume", action="store_true", help="continue from run-dir/state.json")
    return parser


def main(argv: list[str] | None = None) -> int:
    """`crnet train --preset crnet-lite --fold F`."""
    args = build_parser().parse_args(argv)
    try:
        preset(args.preset)
    except ValueError as error:
        raise UsageError(str(error)) from None
    for flag, value in (("--steps", args.steps), ("--batch", args.batch),
                        ("--eval-every", args.eval_every),
                        ("--eval-episodes", args.eval_episodes)):
        if value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    train_config = TrainConfig(
        preset=args.preset, fold=args.fold, steps=args.steps, batch=args.batch, lr=args.lr,
        seed=args.seed, eval_every=args.eval_every, eval_episodes=args.eval_episodes,
        threads=args.threads,
    )
    run_dir = args.run_dir or Path("runs") / f"{args.preset}-fold{args.fold}"
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--run-dir {run_dir} is a file; expected a directory")
    from models.training import train

    final = train(train_config, run_dir, resume=args.resume)
    print(json.dumps(final, indent=2))
    return 0


if __name__ == "__main__":
    from runtime.errors import run_command

    sys.exit(run_command("crnet train", main))
