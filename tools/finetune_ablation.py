"""`python tools/finetune_ablation.py`: 5-shot prototype fusion against k-shot finetuning
(crnet.models.finetune) for several settings, on the same seeded episodes.

For every episode the shipped model predicts the query from the K supports fused (the
baseline); then each setting finetunes a copy of the head on the K supports' ordered pairs
and the query is predicted after each of the ``--at`` step counts (one run per setting
scores all of them). mIoU and FB-IoU as `crnet eval` computes them (per-class
intersection over union of the fold's novel classes). The JSON written to ``--json``
after every episode holds the running figures, so a long run that is stopped keeps its
results.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

SETTINGS: dict[str, dict[str, Any]] = {
    "adam-1e-3-all": {"optimizer": "adam", "lr": 1e-3, "parts": ("cross_reference",
                                                              "condition", "refinement")},
    "adam-1e-4-all": {"optimizer": "adam", "lr": 1e-4, "parts": ("cross_reference",
                                                              "condition", "refinement")},
    "adam-1e-3-refinement": {"optimizer": "adam", "lr": 1e-3, "parts": ("refinement",)},
    "adam-1e-3-xref-cond": {"optimizer": "adam", "lr": 1e-3,
                            "parts": ("cross_reference", "condition")},
    "adam-3e-3-all": {"optimizer": "adam", "lr": 3e-3, "parts": ("cross_reference",
                                                              "condition", "refinement")},
    "sgd-1e-2-all": {"optimizer": "sgd", "lr": 1e-2, "parts": ("cross_reference",
                                                            "condition", "refinement")},
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="default: the shipped crnet-lite")
    parser.add_argument("--dataset", default="synthetic-5i")
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--start", type=int, default=0, help="first episode index")
    parser.add_argument("--merge", type=Path, nargs="+", default=None,
                        help="print the table of several --json results of disjoint "
                             "episode ranges (same settings) and exit")
    parser.add_argument("--settings", default=",".join(SETTINGS),
                        help=f"comma list of {', '.join(SETTINGS)}")
    parser.add_argument("--at", default="5,10,20", help="step counts to score")
    parser.add_argument("--pairs-per-step", type=int, default=0,
                        help="pairs per step (0: all K*(K-1))")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the ablation and print the table."""
    import torch

    from crnet.data.evaluation import episode_source
    from crnet.models.checkpoint import load_checkpoint
    from crnet.models.finetune import FinetuneOptions, finetune
    from crnet.runtime.metrics import FewShotMeter
    from crnet.runtime.preprocess import mask_from_logits, preprocess_image, preprocess_mask

    args = parse(argv)
    if args.merge:
        _print(_merged(args.merge))
        return 0
    torch.set_num_threads(args.threads)
    model, _ = load_checkpoint(args.checkpoint)
    config = model.config
    source = episode_source(args.dataset, args.fold, args.seed, args.data_root)
    at = sorted(int(v) for v in args.at.split(","))
    names = args.settings.split(",")
    meters: dict[str, Any] = {"fusion": FewShotMeter(source.classes)}
    meters.update({f"{n}@{s}": FewShotMeter(source.classes) for n in names for s in at})
    seconds: dict[str, float] = dict.fromkeys(names, 0.0)
    started = time.time()
    for index in range(args.start, args.start + args.episodes):
        episode = source.episode(index, shots=args.shots)
        prep = (config.input_size, config.mean, config.std)
        with torch.no_grad():
            query = model.encode(torch.from_numpy(preprocess_image(episode.query_image, *prep)))
            supports = model.encode(torch.from_numpy(np.concatenate(
                [preprocess_image(i, *prep) for i in episode.support_images])))
        masks = torch.from_numpy(np.concatenate(
            [preprocess_mask(m, config.input_size, config.feature_size)
             for m in episode.support_masks]))

        def score(name: str, net: Any, episode: Any = episode, query: Any = query,
                  supports: Any = supports, masks: Any = masks) -> None:
            with torch.no_grad():
                logits = net.refine_query(query, supports, masks)
            predicted = mask_from_logits(logits[0].numpy(), episode.query_image.shape)
            meters[name].update(episode.class_id, predicted, episode.query_mask)

        score("fusion", model)
        for name in names:
            options = FinetuneOptions(steps=at[-1], seed=args.seed + index,
                                      pairs_per_step=args.pairs_per_step, **SETTINGS[name])
            adapter = finetune(
                model, episode.support_images, episode.support_masks, options,
                on_step=lambda step, net, name=name: score(f"{name}@{step}", net)
                if step in at else None)
            seconds[name] += float(adapter.settings["seconds"])
        done = index + 1 - args.start
        report = _report(meters, seconds, done, args, time.time() - started)
        if args.json is not None:
            args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"episode {done}/{args.episodes}: fusion {report['rows'][0]['miou']:.1f}",
              file=sys.stderr, flush=True)
    _print(report)
    return 0


def _report(meters: dict[str, Any], seconds: dict[str, float], episodes: int,
            args: argparse.Namespace, wall: float) -> dict[str, Any]:
    """The running figures: one row per (setting, steps), mIoU delta against fusion."""
    fusion = meters["fusion"].miou()
    rows = []
    for key, meter in meters.items():
        name = key.split("@")[0]
        rows.append({"setting": key, "miou": meter.miou(), "fbiou": meter.fbiou(),
                     "delta_miou": meter.miou() - fusion,
                     "finetune_s_per_episode": seconds.get(name, 0.0) / episodes,
                     "counts": _counts(meter)})
    return {"episodes": episodes, "start": args.start, "dataset": args.dataset, "fold": args.fold,
            "shots": args.shots, "seed": args.seed, "pairs_per_step": args.pairs_per_step,
            "threads": args.threads, "wall_s": wall, "rows": rows,
            "settings": {n: {**SETTINGS[n], "parts": list(SETTINGS[n]["parts"])}
                         for n in args.settings.split(",")}}


COUNTS = ("_inter", "_union", "_fg", "_bg", "episodes")


def _counts(meter: Any) -> dict[str, Any]:
    """A meter's sums (per-class intersections and unions, FB sums) to merge ranges."""
    return {"classes": meter.classes, **{key: getattr(meter, key) for key in COUNTS}}


def _merged(paths: list[Path]) -> dict[str, Any]:
    """One report over the episode ranges of several reports (sums of the meters' counts)."""
    from crnet.runtime.metrics import FewShotMeter

    reports = [json.loads(path.read_text()) for path in paths]
    merged = dict(reports[0])
    merged["episodes"] = sum(r["episodes"] for r in reports)
    merged["wall_s"] = max(r["wall_s"] for r in reports)
    rows = []
    for position, row in enumerate(reports[0]["rows"]):
        meter = FewShotMeter(None)
        meter.classes = row["counts"].get("classes")
        for report in reports:
            counts = report["rows"][position]["counts"]
            for key in ("_inter", "_union"):
                total = getattr(meter, key)
                for cls, value in counts[key].items():
                    total[int(cls)] = total.get(int(cls), 0) + value
            meter._fg = [a + b for a, b in zip(meter._fg, counts["_fg"], strict=True)]
            meter._bg = [a + b for a, b in zip(meter._bg, counts["_bg"], strict=True)]
            meter.episodes += counts["episodes"]
        seconds = sum(r["rows"][position]["finetune_s_per_episode"] * r["episodes"]
                      for r in reports) / merged["episodes"]
        rows.append({"setting": row["setting"], "miou": meter.miou(), "fbiou": meter.fbiou(),
                     "finetune_s_per_episode": seconds})
    fusion = rows[0]["miou"]
    for row in rows:
        row["delta_miou"] = row["miou"] - fusion
    merged["rows"] = rows
    return merged


def _print(report: dict[str, Any]) -> None:
    print(f"{report['episodes']} {report['dataset']} fold {report['fold']} "
          f"{report['shots']}-shot episodes (seed {report['seed']})")
    print(f"{'setting@steps':<28} {'mIoU':>6} {'FB-IoU':>7} {'vs fusion':>9} {'s/ep':>6}")
    for row in report["rows"]:
        print(f"{row['setting']:<28} {row['miou']:6.1f} {row['fbiou']:7.1f} "
              f"{row['delta_miou']:+9.1f} {row['finetune_s_per_episode']:6.2f}")


if __name__ == "__main__":
    sys.exit(main())
