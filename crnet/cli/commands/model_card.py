"""`crnet model-card --checkpoint PATH`: the model card of a trained checkpoint.

Evaluates the checkpoint (crnet.models.model_card.build_card) and writes
``<checkpoint stem>.md`` and ``<checkpoint stem>-examples.png`` beside it;
``python -m crnet.models.model_card`` hands over to this command.
"""

from __future__ import annotations

import argparse
import json

from crnet.cli.arguments import add_checkpoint, add_data_group, add_episodes, check_data_root
from crnet.runtime.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--checkpoint, the data group, episode counts and --note."""
    parser.description = ("Evaluate a checkpoint on its fold's test episodes (seed 0; 1- and "
                          "5-shot) with the support-swap evidence, and write its model card "
                          "and example picture beside it.")
    add_checkpoint(parser, required=True, help="checkpoint .safetensors")
    add_data_group(parser, fold=None, seed=None,
                   fold_help="default: the fold the checkpoint was trained on")
    add_episodes(parser, default=1000)
    parser.add_argument("--swap-episodes", type=int, default=300)
    parser.add_argument("--note", default="", help="extra training notes for the card")


def run(args: argparse.Namespace) -> int:
    """Write the card; print its figures as JSON."""
    if args.episodes < 1 or args.swap_episodes < 1:
        raise UsageError("--episodes and --swap-episodes must be >= 1")
    check_data_root(args.dataset, args.data_root)
    from crnet.models.model_card import build_card

    figures = build_card(args.checkpoint, args.episodes, args.swap_episodes, note=args.note,
                         dataset=args.dataset, data_root=args.data_root, fold=args.fold)
    print(json.dumps(figures, indent=2, default=str))
    return 0
