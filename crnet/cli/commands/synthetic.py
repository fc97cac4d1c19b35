"""`crnet synthetic`: generation speed, preview grids and VOC-layout trees of synthetic-5i.

``python -m crnet.data.synthetic`` hands over to this command.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from crnet.cli.arguments import add_episodes, add_fold, add_seed, add_shots
from crnet.runtime.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--bench, --preview PATH, --write-voc DIR and what they draw."""
    parser.add_argument("--bench", action="store_true", help="print generation images/s")
    parser.add_argument("--preview", type=Path, help="write a PNG grid of episodes")
    add_fold(parser)
    parser.add_argument("--split", default="test", choices=("train", "test"))
    add_shots(parser)
    add_episodes(parser, default=6, help="episodes in the --preview grid (default 6)")
    add_seed(parser)
    parser.add_argument("--count", type=int, default=200, help="episodes for --bench")
    parser.add_argument("--write-voc", type=Path, metavar="DIR",
                        help="write a small VOC2012-layout tree of --fold (train_aug + val)")


def run(args: argparse.Namespace) -> int:
    """Do what was asked, in the order --write-voc, --bench, --preview."""
    if not args.bench and args.preview is None and args.write_voc is None:
        raise UsageError("give --bench, --preview PATH and/or --write-voc DIR")
    from crnet.data.synthetic import images_per_second, write_preview, write_voc_tree

    if args.write_voc is not None:
        write_voc_tree(args.write_voc, args.fold, seed=args.seed)
        print(f"wrote a VOC-layout tree of fold {args.fold} to {args.write_voc}")
    if args.bench:
        rate = images_per_second(args.count, args.shots)
        print(f"synthetic-5i: {rate:.1f} images/s ({args.count} episodes, "
              f"{args.shots}-shot, 321x321, one process)")
    if args.preview is not None:
        write_preview(args.preview, args.fold, args.shots, args.episodes, args.seed, args.split)
        print(f"wrote {args.preview}")
    return 0
