"""Model card of a trained checkpoint: accuracy, support-swap evidence, example picture.

`python -m models.model_card --checkpoint PATH` evaluates the checkpoint with the same
predictor as `crnet eval --backend torch` on synthetic-5i test episodes (seed 0) and
writes ``<checkpoint stem>.md`` and ``<checkpoint stem>-examples.png`` beside it.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Any

import numpy as np

from data.episodes import Episode, episode_rng
from data.evaluation import EvalResult, evaluate, segmenter_predictor
from data.pictures import PREDICTION_COLOR, SUPPORT_COLOR, TRUTH_COLOR, grid, overlay, save_png
from data.synthetic import CLASS_NAMES, SUPPORT_DISTRACTOR_PROB, Synthetic5i
from models.provenance import training_fold
from runtime.files import write_bytes_atomic

SWAP_SALT = 7919  # keys the swapped supports' random stream apart from the episodes'


def swapped_support_episodes(dataset: Synthetic5i, count: int) -> tuple[list[Episode],
                                                                          list[Episode]]:
    """Pairs of episodes on the same queries: the true support, and a support of another
    class that is present in the query (a distractor). Only queries with a distractor."""
    true_episodes, swapped = [], []
    index = 0
    while len(true_episodes) < count:
        supports, query = dataset.episode_scenes(index, shots=1)
        if query.distractors:
            other = query.distractors[0]
            rng = episode_rng(SWAP_SALT, dataset.fold, dataset.seed, index)
            support = dataset.render(rng, other, SUPPORT_DISTRACTOR_PROB)
            true_episodes.append(Episode(query.target, (supports[0].image,),
                                         (supports[0].mask,), query.image, query.mask))
            swapped.append(Episode(query.target, (support.image,), (support.mask,),
                                   query.image, query.mask))
        index += 1
    return true_episodes, swapped


def example_grid(episodes: list[Episode], predictions: list[np.ndarray]) -> np.ndarray:
    """Rows of support (mask outlined), query, prediction, ground truth."""
    rows = []
    for episode, prediction in zip(episodes, predictions, strict=True):
        rows.append([
            overlay(episode.support_images[0], episode.support_masks[0], SUPPORT_COLOR, 0.35),
            episode.query_image,
            overlay(episode.query_image, prediction.astype(np.uint8), PREDICTION_COLOR),
            overlay(episode.query_image, episode.query_mask, TRUTH_COLOR),
        ])
    return grid(rows, titles=["support (+mask)", "query", "prediction", "ground truth"])


def build_card(checkpoint: Path, episodes: int = 1000, swap_episodes: int = 300,
               progress: bool = True, note: str = "") -> dict[str, Any]:
    """Evaluate and write the card and picture beside the checkpoint; return the figures."""
    from models.checkpoint import read_checkpoint_info
    from runtime import Segmenter

    info = read_checkpoint_info(checkpoint)
    fold = training_fold(info.training) or 0
    segmenter = Segmenter.from_checkpoint(checkpoint)
    predict = segmenter_predictor(segmenter)
    dataset = Synthetic5i(fold, split="test", seed=0)
    results: dict[str, EvalResult] = {}
    for shots in (1, 5):
        results[f"{shots}-shot"] = evaluate(predict, dataset.episodes(episodes, shots=shots),
                                            total=episodes, progress=progress,
                                            description=f"{shots}-shot")
    true_episodes, swapped = swapped_support_episodes(dataset, swap_episodes)
    with_true = evaluate(predict, true_episodes, total=len(true_episodes), progress=progress,
                         description="true support", keep_predictions=True)
    with_swap = evaluate(predict, swapped, total=len(swapped), progress=progress,
                         description="swapped support")
    stem = info.weights_path.with_suffix("")
    picture = save_png(f"{stem}-examples.png",
                       example_grid(true_episodes[:6], with_true.predictions[:6]))
    figures = {
        "fold": fold, "episodes": episodes, "seed": 0,
        **{f"miou_{k}": r.miou for k, r in results.items()},
        **{f"fbiou_{k}": r.fbiou for k, r in results.items()},
        "per_class_iou_1shot": results["1-shot"].per_class_iou,
        "swap_episodes": len(true_episodes),
        "swap_true_miou": with_true.miou, "swap_other_miou": with_swap.miou,
        "swap_drop": with_true.miou - with_swap.miou,
    }
    card = render_card(info, figures, picture.name, checkpoint, note)
    write_bytes_atomic(f"{stem}.md", card.encode())
    return figures


def render_card(info: Any, figures: dict[str, Any], picture: str, checkpoint: Path,
                note: str = "") -> str:
    """The markdown of the model card."""
    training = info.training
    train = training.get("train", {})
    history = training.get("history", [])
    fold = figures["fold"]
    rel = checkpoint.as_posix()
    per_class = "\n".join(
        f"| {cls} | {CLASS_NAMES[int(cls) - 1]} | {iou:.1f} |"
        for cls, iou in sorted(figures["per_class_iou_1shot"].items())
    )
    accuracy_rows = "\n".join(
        f"| {shots} | {figures[f'miou_{shots}-shot']:.1f} | {figures[f'fbiou_{shots}-shot']:.1f} "
        f"| `crnet eval --backend torch --checkpoint {rel} --fold {fold} --shots {shots} "
        f"--episodes {figures['episodes']} --seed 0` |"
        for shots in (1, 5)
    )
    train_command = (
        f"crnet train --preset {train.get('preset')} --fold {fold} --steps {train.get('steps')} "
        f"--batch {train.get('batch')} --threads {train.get('threads')}"
    )
    curve = "\n".join(
        f"| {h['step']} | {h['loss']:.3f} | {h['miou_1shot']:.1f} | {h['elapsed_s'] / 60:.0f} |"
        for h in history
    )
    return f"""# Model card: {info.config.name}, synthetic-5i fold {fold}

CRNet ({info.config.name} preset: {info.config.block} trunk {list(info.config.trunk_blocks)},
widths {list(info.config.trunk_widths)}, C={info.config.feature_channels},
input {info.config.input_size[0]}x{info.config.input_size[1]}, T={info.config.refine_steps}
refinement steps), trained from scratch on the 15 base classes of synthetic-5i fold {fold};
evaluated on the fold's 5 novel classes, never seen in training.

Weights: `{info.weights_path.name}` (sha256 `{info.sha256}`), safetensors; config,
preprocessing and training provenance in the JSON beside it.

## Accuracy on novel classes ({figures['episodes']} synthetic-5i test episodes, seed 0)

| shots | mIoU | FB-IoU | reproduce |
|---|---|---|---|
{accuracy_rows}

Per novel class, 1-shot IoU:

| class | name | IoU |
|---|---|---|
{per_class}

## The support steers the prediction

The same {figures['swap_episodes']} test queries (those holding an object of another
class), segmented with their true support and with a support of that other class:

| support | mIoU of the true target |
|---|---|
| true class | {figures['swap_true_miou']:.1f} |
| another class present in the query | {figures['swap_other_miou']:.1f} |
| drop | **{figures['swap_drop']:.1f} points** |

Reproduce: `python -m models.model_card --checkpoint {rel}` (writes this card).

![support, query, prediction, ground truth]({picture})

## Training

Recipe: `models/training.py` (docstring). Command:
`{train_command}`

| step | loss | 1-shot mIoU (200 episodes) | minutes into its run segment |
|---|---|---|---|
{curve}

Wall time of the last run segment: {training.get('wall_s_this_run', 0) / 60:.0f} minutes on
{training.get('machine')}
({platform.system()}), torch {training.get('torch')}; seed {train.get('seed')}.
{note}

## Limits

Synthetic-5i only: these numbers say nothing about PASCAL-5i, where CRNet-R50 reports
55.7 (1-shot) / 58.8 (5-shot) mIoU with an ImageNet-pretrained trunk. K-shot uses
prototype fusion, without the paper's k-shot finetuning.
"""


def main(argv: list[str] | None = None) -> int:
    """Write the model card of a checkpoint."""
    parser = argparse.ArgumentParser(prog="python -m models.model_card", description=__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--swap-episodes", type=int, default=300)
    parser.add_argument("--note", default="", help="extra training notes for the card")
    args = parser.parse_args(argv)
    figures = build_card(args.checkpoint, args.episodes, args.swap_episodes, note=args.note)
    print(json.dumps(figures, indent=2, default=str))
    return 0


if __name__ == "__main__":
    from runtime.errors import run_command

    raise SystemExit(run_command("python -m models.model_card", main))
