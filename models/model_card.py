"""Model card of any trained checkpoint: accuracy, support-swap evidence, example picture.

`crnet model-card --checkpoint PATH [--dataset synthetic-5i|pascal-5i|folder --data-root DIR]
[--fold F] [--episodes N]` (or `python -m crnet.models.model_card ...`) evaluates the
checkpoint with the same predictor as `crnet eval --backend torch` on the fold's test
episodes (seed 0; 1- and 5-shot; the fold defaults to the one the checkpoint was trained
on) and writes
``<checkpoint stem>.md`` and ``<checkpoint stem>-examples.png`` beside it.

K-shot finetuning (crnet.models.finetune, its defaults): on the first
``finetune_episodes`` 5-shot episodes (100, or fewer when ``episodes`` is smaller) the
card scores fusion and finetuning side by side, as `crnet eval --shots 5 --finetune` does
for the torch reference.

Support-swap evidence: the same queries segmented with their true support and with a
support of another class present in the query (synthetic-5i: a rendered distractor
class; pascal-5i: another VOC class in the query image). A folder dataset has no second
class per image, so its card leaves that section out.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import numpy as np

from crnet.data.episodes import Episode, episode_rng
from crnet.data.evaluation import (
    EvalResult,
    episode_source,
    evaluate,
    evaluate_many,
    segmenter_predictor,
)
from crnet.data.pictures import (
    PREDICTION_COLOR,
    SUPPORT_COLOR,
    TRUTH_COLOR,
    grid,
    overlay,
    save_png,
)
from crnet.data.synthetic import CLASS_NAMES, SUPPORT_DISTRACTOR_PROB, Synthetic5i
from crnet.models.provenance import training_config, training_dataset, training_fold
from crnet.runtime.files import write_bytes_atomic

SWAP_SALT = 7919  # keys the swapped supports' random stream apart from the episodes'
FINETUNE_EPISODES = 100  # 5-shot finetunes per card (each one adapts the head on 20 pairs)


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


def class_names(source: Any) -> dict[int, str]:
    """Class id -> name for the card's per-class table."""
    from crnet.data.pascal import VOC_CLASS_NAMES

    if isinstance(source, Synthetic5i):
        return {c: CLASS_NAMES[c - 1] for c in source.classes}
    if hasattr(source, "class_names"):  # a folder dataset
        return dict(zip(source.classes, source.class_names, strict=True))
    return {c: VOC_CLASS_NAMES[c - 1] for c in source.classes}


def support_swap_pairs(source: Any, count: int) -> tuple[list[Episode], list[Episode]]:
    """(true-support, other-class-support) episodes on the same queries; empty when the
    dataset cannot tell which other class a query holds (a folder)."""
    if isinstance(source, Synthetic5i):
        return swapped_support_episodes(source, count)
    if hasattr(source, "swapped_support_episodes"):
        return source.swapped_support_episodes(count, SWAP_SALT)
    return [], []


def finetune_figures(checkpoint: Path, source: Any, episodes: int,
                     progress: bool = True) -> dict[str, Any]:
    """5-shot fusion and 5-shot finetuning (the finetune's defaults, seed = episode index)
    of the torch reference on the first ``episodes`` episodes of ``source``."""
    from crnet.models.finetune import finetune, open_source
    from crnet.runtime import Segmenter

    opened = open_source(checkpoint)
    fused, tuned = Segmenter.from_checkpoint(checkpoint), Segmenter.from_checkpoint(checkpoint)
    settings: dict[str, Any] = {}
    count = iter(range(episodes))

    def predict_tuned(episode: Episode) -> np.ndarray:
        adapter = finetune(opened, list(episode.support_images), list(episode.support_masks),
                           seed=next(count))
        settings.update(adapter.settings)
        tuned.set_support(list(episode.support_images), list(episode.support_masks),
                          adapter=adapter)
        return tuned.segment(episode.query_image)

    results = evaluate_many({"fusion": segmenter_predictor(fused), "finetune": predict_tuned},
                            source.episodes(episodes, shots=5), total=episodes,
                            progress=progress, description="5-shot fusion + finetune",
                            classes=source.classes)
    return {"finetune_episodes": episodes,
            "miou_5-shot-fusion-same": results["fusion"].miou,
            "miou_5-shot-finetune": results["finetune"].miou,
            "fbiou_5-shot-finetune": results["finetune"].fbiou,
            "finetune_settings": {key: settings.get(key) for key in
                                  ("steps", "lr", "optimizer", "parts", "pairs_per_step")}}


def build_card(checkpoint: Path, episodes: int = 1000, swap_episodes: int = 300,
               progress: bool = True, note: str = "", dataset: str = "synthetic-5i",
               data_root: Path | None = None, fold: int | None = None,
               finetune_episodes: int | None = None) -> dict[str, Any]:
    """Evaluate and write the card and picture beside the checkpoint; return the figures."""
    from crnet.models.checkpoint import read_checkpoint_info
    from crnet.runtime import Segmenter

    info = read_checkpoint_info(checkpoint)
    if fold is None:
        fold = training_fold(info.training) or 0
    source = episode_source(dataset, fold, 0, data_root, split="test")
    segmenter = Segmenter.from_checkpoint(checkpoint)
    predict = segmenter_predictor(segmenter)
    results: dict[str, EvalResult] = {}
    for shots in (1, 5):
        results[f"{shots}-shot"] = evaluate(predict, source.episodes(episodes, shots=shots),
                                            total=episodes, progress=progress,
                                            description=f"{shots}-shot",
                                            classes=source.classes)
    true_episodes, swapped = support_swap_pairs(source, swap_episodes)
    finetuned = finetune_figures(
        checkpoint, source, min(episodes, FINETUNE_EPISODES) if finetune_episodes is None
        else finetune_episodes, progress)
    figures: dict[str, Any] = {
        **finetuned,
        "dataset": dataset, "data_root": None if data_root is None else str(data_root),
        "fold": fold, "episodes": episodes, "seed": 0,
        **{f"miou_{k}": r.miou for k, r in results.items()},
        **{f"fbiou_{k}": r.fbiou for k, r in results.items()},
        "per_class_iou_1shot": results["1-shot"].per_class_iou,
        "absent_classes_1shot": results["1-shot"].absent_classes,
        "class_names": class_names(source),
        "swap_episodes": len(true_episodes), "swap_requested": swap_episodes,
    }
    stem = info.weights_path.with_suffix("")
    if true_episodes:
        with_true = evaluate(predict, true_episodes, total=len(true_episodes),
                             progress=progress, description="true support",
                             keep_predictions=True)
        with_swap = evaluate(predict, swapped, total=len(swapped), progress=progress,
                             description="swapped support")
        figures.update(swap_true_miou=with_true.miou, swap_other_miou=with_swap.miou,
                       swap_drop=with_true.miou - with_swap.miou)
        shown, predictions = true_episodes[:6], with_true.predictions[:6]
    else:
        shown = list(source.episodes(min(6, episodes), shots=1))
        predictions = [predict(episode) for episode in shown]
    picture = save_png(f"{stem}-examples.png", example_grid(shown, predictions))
    card = render_card(info, figures, picture.name, checkpoint, note)
    write_bytes_atomic(f"{stem}.md", card.encode())
    return figures


def _data_flags(figures: dict[str, Any]) -> str:
    flags = f"--dataset {figures['dataset']}"
    if figures.get("data_root"):
        flags += f" --data-root {figures['data_root']}"
    return flags


def _training_text(info: Any) -> tuple[str, str]:
    """(how it was trained, in a sentence; the `crnet train` command that did it)."""
    train = training_config(info.training)
    trained_on = training_dataset(info.training) or "synthetic-5i"
    recipe = train.get("recipe", "scratch")
    if recipe == "canet":
        init = info.training.get("init_trunk") or {}
        how = (f"trunk initialised from ImageNet weights (`{init.get('file', '?')}`) and "
               f"frozen, the rest trained with CaNet's recipe ({train.get('optimizer')} "
               f"lr {train.get('lr')})")
    elif train:
        how = "trained from scratch"
    else:
        how = "not trained by `crnet train` (no training record)"
    command = f"crnet train --preset {train.get('preset')} --dataset {trained_on}"
    if train.get("data_root"):
        command += f" --data-root {train['data_root']}"
    command += f" --fold {train.get('fold')} --recipe {recipe} --steps {train.get('steps')} " \
               f"--batch {train.get('batch')} --threads {train.get('threads')}"
    if train.get("init_trunk"):
        command += f" --init-trunk {train['init_trunk']}"
    if train.get("input_size"):
        command += f" --input-size {train['input_size']}"
    if train.get("device", "cpu") != "cpu":
        command += f" --device {train['device']}"
    if train.get("amp"):
        command += " --amp"
    return f"{how} on the 15 base classes of {trained_on} fold {train.get('fold')}", command


def render_card(info: Any, figures: dict[str, Any], picture: str, checkpoint: Path,
                note: str = "") -> str:
    """The markdown of the model card."""
    training = info.training
    train = training_config(training)
    history = training.get("history", [])
    fold = figures["fold"]
    dataset = figures.get("dataset", "synthetic-5i")
    rel = checkpoint.as_posix()
    data_flags = _data_flags({"dataset": dataset, **figures})
    per_class, absent_note = _per_class_rows(figures)
    accuracy_rows = "\n".join(
        f"| {shots} | {figures[f'miou_{shots}-shot']:.1f} | {figures[f'fbiou_{shots}-shot']:.1f} "
        f"| `crnet eval --backend torch --checkpoint {rel} {data_flags} --fold {fold} "
        f"--shots {shots} --episodes {figures['episodes']} --seed 0` |"
        for shots in (1, 5)
    )
    how, train_command = _training_text(info)
    curve = "\n".join(
        f"| {h['step']} | {h['loss']:.3f} | {h['miou_1shot']:.1f} | {h['elapsed_s'] / 60:.0f} |"
        for h in history
    )
    swap = _swap_section(figures, dataset, picture,
                         _card_command(rel, dataset, figures, data_flags, fold))
    limits = _limits(dataset)
    accuracy_rows += _finetune_row(figures, rel, data_flags, fold)
    limits += " " + _finetune_limit(figures)
    return f"""# Model card: {info.config.name}, {dataset} fold {fold}

CRNet ({info.config.name} preset: {info.config.block} trunk {list(info.config.trunk_blocks)},
widths {list(info.config.trunk_widths)}, C={info.config.feature_channels},
input {info.config.input_size[0]}x{info.config.input_size[1]}, T={info.config.refine_steps}
refinement steps), {how}; evaluated on the 5 novel classes of {dataset} fold {fold},
never seen in training.

Weights: `{info.weights_path.name}` (sha256 `{info.sha256}`), safetensors; config,
preprocessing and training provenance in the JSON beside it.

## Accuracy on novel classes ({figures['episodes']} {dataset} test episodes, seed 0)

| shots | mIoU | FB-IoU | reproduce |
|---|---|---|---|
{accuracy_rows}

Per novel class, 1-shot IoU:

| class | name | IoU |
|---|---|---|
{per_class}
{absent_note}
{swap}

## Training

Recipe: `models/training.py` (docstring), `{train.get('recipe', 'scratch')}`. Command:
`{train_command}`

| step | loss | 1-shot mIoU ({train.get('eval_episodes')} episodes) | minutes into its run segment |
|---|---|---|---|
{curve}

Wall time of the last run segment: {training.get('wall_s_this_run', 0) / 60:.0f} minutes on
{training.get('machine')}
({platform.system()}), torch {training.get('torch')}; seed {train.get('seed')}.
{note}

## Limits

{limits}
"""


def _finetune_row(figures: dict[str, Any], rel: str, data_flags: str, fold: int) -> str:
    """The accuracy table's 5-shot finetuned row (empty without the figures)."""
    if "miou_5-shot-finetune" not in figures:
        return ""
    count = figures["finetune_episodes"]
    return (f"\n| 5, finetuned ({count} episodes; fusion on them: "
            f"{figures['miou_5-shot-fusion-same']:.1f}) | {figures['miou_5-shot-finetune']:.1f} "
            f"| {figures['fbiou_5-shot-finetune']:.1f} | `crnet eval --backend torch "
            f"--checkpoint {rel} {data_flags} --fold {fold} --shots 5 --finetune --episodes "
            f"{count} --seed 0` |")


def _finetune_limit(figures: dict[str, Any]) -> str:
    """The Limits sentence on K-shot: fusion, and the measured finetuning figure."""
    if "miou_5-shot-finetune" not in figures:
        return ("K-shot uses prototype fusion; k-shot finetuning (`crnet finetune`) was not "
                "measured for this card.")
    settings = figures.get("finetune_settings") or {}
    gain = figures["miou_5-shot-finetune"] - figures["miou_5-shot-fusion-same"]
    return (f"K-shot uses prototype fusion by default; the paper's k-shot finetuning "
            f"(`crnet finetune`, docs/finetuning.md: {settings.get('steps')} "
            f"{settings.get('optimizer')} steps, lr {settings.get('lr')}) changes 5-shot mIoU "
            f"by {gain:+.1f} points on the first {figures['finetune_episodes']} episodes "
            f"({figures['miou_5-shot-fusion-same']:.1f} -> "
            f"{figures['miou_5-shot-finetune']:.1f}).")


def _per_class_rows(figures: dict[str, Any]) -> tuple[str, str]:
    """The per-class 1-shot IoU rows, and the note on classes without an episode."""
    names = figures.get("class_names") or {int(c): CLASS_NAMES[int(c) - 1]
                                           for c in figures["per_class_iou_1shot"]}
    rows = "\n".join(f"| {cls} | {names[int(cls)]} | {iou:.1f} |"
                     for cls, iou in sorted(figures["per_class_iou_1shot"].items()))
    absent = figures.get("absent_classes_1shot") or []
    note = (f"\nClasses without an episode count 0 in the mean: {absent}.\n"
            if absent else "")
    return rows, note


def _card_command(rel: str, dataset: str, figures: dict[str, Any], data_flags: str,
                  fold: int) -> str:
    """The command that writes this card again."""
    command = f"python -m crnet.models.model_card --checkpoint {rel}"
    if dataset != "synthetic-5i" or figures["episodes"] != 1000:
        command += f" {data_flags} --fold {fold} --episodes {figures['episodes']}"
    if figures.get("swap_requested", 300) != 300:
        command += f" --swap-episodes {figures['swap_requested']}"
    return command


def _swap_section(figures: dict[str, Any], dataset: str, picture: str,
                  card_command: str) -> str:
    """The support-swap evidence where the dataset names a query's other class, else the
    example pictures alone."""
    if figures.get("swap_episodes"):
        return f"""## The support steers the prediction

The same {figures['swap_episodes']} test queries (those holding an object of another
class), segmented with their true support and with a support of that other class:

| support | mIoU of the true target |
|---|---|
| true class | {figures['swap_true_miou']:.1f} |
| another class present in the query | {figures['swap_other_miou']:.1f} |
| drop | **{figures['swap_drop']:.1f} points** |

Reproduce: `{card_command}` (writes this card).

![support, query, prediction, ground truth]({picture})"""
    return f"""## Examples

No support-swap evidence: {dataset} does not say which other class a query holds.
Reproduce: `{card_command}` (writes this card).

![support, query, prediction, ground truth]({picture})"""


def _limits(dataset: str) -> str:
    """What the figures of ``dataset`` do not say."""
    if dataset == "pascal-5i":
        return ("PASCAL-5i as found under the data root: on the real VOC2012 + SBD "
                "data, CRNet-R50 reports 55.7 (1-shot) / 58.8 (5-shot) mIoU with an "
                "ImageNet-pretrained trunk (mean of 4 folds). Queries are drawn uniformly "
                "over the fold's classes (`--sampler uniform`); HSNet's and PFENet's "
                "evaluators draw them differently, which moves FB-IoU.")
    if dataset == "synthetic-5i":
        return ("Synthetic-5i only: these numbers say nothing about PASCAL-5i, where "
                "CRNet-R50 reports 55.7 (1-shot) / 58.8 (5-shot) mIoU with an "
                "ImageNet-pretrained trunk.")
    return "The user's own folder of classes; no published figure to compare with."


if __name__ == "__main__":  # `python -m crnet.models.model_card ...` is `crnet model-card ...`
    import sys

    from crnet.cli import main

    sys.exit(main(["model-card", *sys.argv[1:]]))
