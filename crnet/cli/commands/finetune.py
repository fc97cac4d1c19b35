"""`crnet finetune BUNDLE --support DIR --out ADAPTER`: k-shot finetuning on a support set.

DIR holds K >= 2 labelled supports in the layout of one class directory of the folder
dataset (crnet.data.folder): ``<stem>.jpg|.jpeg|.png`` images, each with its
``<stem>.mask.png`` (0 background, 1..254 object, 255 ignore; or pure black/white). The
finetune (crnet.models.finetune, torch: the `[export]` extra) adapts the bundle's
checkpoint on every ordered pair of the supports and writes an adapter,
``ADAPTER.safetensors`` + ``ADAPTER.json``, that every backend of the bundle runs
(``Segmenter.set_support(images, masks, adapter=ADAPTER)``), with no torch needed there.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from crnet.cli.arguments import (
    add_bundle,
    add_finetune_group,
    add_no_progress,
    add_out,
    add_seed,
    add_threads,
    finetune_overrides,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """BUNDLE, --support, --out, the finetune group, --seed, --threads."""
    parser.description = ("Finetune a bundle's model on K >= 2 labelled supports and write "
                          "an adapter that every backend of the bundle applies.")
    add_bundle(parser, help="bundle directory (from crnet export); the adapter is tied to "
                            "its checkpoint and refine graph")
    parser.add_argument("--support", type=Path, required=True, metavar="DIR",
                        help="images with <stem>.mask.png masks beside them (K >= 2)")
    add_out(parser, required=True, help="ADAPTER: writes ADAPTER.safetensors and "
                                        "ADAPTER.json")
    add_finetune_group(parser)
    add_seed(parser, help="seed of the finetune (pair draws, initial state)")
    add_threads(parser, help="torch intra-op threads (default: torch's own)")
    add_no_progress(parser)


def read_support_dir(directory: Path) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """(names, images HxWx3 uint8, masks HxW 0/1/255) of a support directory, sorted."""
    from crnet.data.episodes import DataNotFoundError, DatasetError, check_same_size, load_rgb
    from crnet.data.folder import IMAGE_SUFFIXES, MASK_SUFFIX, mask_path_for, read_mask

    if not directory.is_dir():
        raise DataNotFoundError(f"--support {directory} is not a directory; expected images "
                                f"with <stem>{MASK_SUFFIX} masks beside them")
    paths = sorted(p for p in directory.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not p.name.lower().endswith(MASK_SUFFIX))
    if len(paths) < 2:
        raise DatasetError(f"--support {directory} has {len(paths)} image(s); finetuning "
                           f"needs at least 2, each with its <stem>{MASK_SUFFIX}")
    names, images, masks = [], [], []
    for path in paths:
        mask_path = mask_path_for(path)
        if not mask_path.is_file():
            raise DataNotFoundError(f"missing mask {mask_path} for support image {path}")
        image, mask = load_rgb(path), read_mask(mask_path)
        check_same_size(path, mask_path, image.shape[:2], mask.shape)
        names.append(path.name)
        images.append(image)
        masks.append(mask)
    return names, images, masks


def run(args: argparse.Namespace) -> int:
    """Finetune, write the adapter, print the times."""
    from crnet.runtime.errors import UsageError
    from crnet.runtime.files import check_writable_file

    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    check_writable_file(Path(f"{args.out}.json"), "--out")
    names, images, masks = read_support_dir(args.support)
    import torch  # the [export] extra; a missing one is reported with its install line

    from crnet.models.finetune import finetune
    from crnet.runtime.adapter import save_adapter

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    adapter = finetune(args.bundle, images, masks, progress=not args.no_progress,
                       seed=args.seed, **finetune_overrides(args))
    weights = save_adapter(args.out, adapter)
    settings = adapter.settings
    print(f"finetuned {len(adapter.tensors)} tensors ({', '.join(settings['parts'])}) on "
          f"{len(names)} supports ({settings['pairs']} pairs), {settings['steps']} "
          f"{settings['optimizer']} steps at lr {settings['lr']:g} on {settings['device']}")
    print(f"time: {settings['seconds']:.2f} s in total ({settings['encode_seconds']:.2f} s "
          f"encoding the supports once, {settings['seconds_per_step']:.3f} s per step); "
          f"loss {settings['loss_first']:.3f} -> {settings['loss_last']:.3f}")
    print(f"wrote {weights} and {weights.with_suffix('.json')}")
    return 0
