"""`python tools/finetune_bench.py`: time of a K-shot adaptation (crnet.models.finetune)
per preset and thread count, on this machine's CPU.

crnet-lite runs the shipped checkpoint, crnet-r50 random weights (the time of a step does
not depend on the weights). The supports are the K supports of synthetic-5i fold-0 test
episode 0. Each (preset, threads) runs ``--repeats`` times after one warm-up run and the
median is printed: the whole adaptation (preprocessing and encoding the supports once,
then every step), the encode share, the time per step, and encode + the default step
count x the time per step (the default run's time when ``--steps`` shortens the timed
one, e.g. for crnet-r50). The finetune settings are crnet.models.finetune.DEFAULTS
unless given; the GPU estimate is for the default step count.

GPU: where torch sees CUDA, ``--device cuda`` measures there. Without a GPU the last
column is an estimate, not a measurement: training FLOPs of the run (3x the forward FLOPs
of the pairs each step: forward + backward) divided by ``--gpu-tflops`` (default 10, an
assumed sustained fp32 rate of a mid-range data-centre GPU on convolutions this small).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="crnet-lite,crnet-r50")
    parser.add_argument("--threads", default="1,2", help="comma list of torch thread counts")
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--pairs-per-step", type=int, default=None)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--gpu-tflops", type=float, default=10.0)
    return parser.parse_args(argv)


def _model(preset_name: str) -> Any:
    """The shipped checkpoint for crnet-lite, random weights for any other preset."""
    from crnet.models.checkpoint import load_checkpoint
    from crnet.models.config import preset
    from crnet.models.crnet import CRNet

    if preset_name == "crnet-lite":
        return load_checkpoint(None)[0]
    return CRNet(preset(preset_name)).eval()


def _gpu_estimate_s(model: Any, options: Any, pairs: int, tflops: float) -> float:
    """Estimated seconds of the steps at ``tflops``: 3 x forward FLOPs of the pairs."""
    from crnet.models.summary import summarize

    per_pair = summarize(model.config).refine_flops  # one 1-shot refine, both branches
    batch = options.pairs_per_step or pairs
    return 3.0 * per_pair * batch * options.steps / (tflops * 1e12)


def main(argv: list[str] | None = None) -> int:
    """Time the adaptations and print one row per (preset, threads)."""
    import torch

    from crnet.data.synthetic import Synthetic5i
    from crnet.models.finetune import DEFAULTS, finetune, support_pairs

    args = parse(argv)
    overrides = {key: value for key, value in (("steps", args.steps),
                                               ("pairs_per_step", args.pairs_per_step))
                 if value is not None}
    options = DEFAULTS.__class__(**{**DEFAULTS.__dict__, **overrides, "device": args.device})
    episode = Synthetic5i(0, split="test", seed=0).episode(0, shots=args.shots)
    images, masks = list(episode.support_images), list(episode.support_masks)
    pairs = len(support_pairs(args.shots))
    print(f"{args.shots}-shot adaptation ({pairs} pairs): {options.steps} {options.optimizer} "
          f"steps, lr {options.lr:g}, pairs/step {options.pairs_per_step or 'all'}, parts "
          f"{','.join(options.parts)}; median of {args.repeats} after a warm-up")
    print(f"{'preset':<11} {'threads':>7} {'total s':>8} {'encode s':>8} {'s/step':>7} "
          f"{f'at {DEFAULTS.steps} steps':>12} {'GPU est. s':>10}")
    for preset_name in args.presets.split(","):
        model = _model(preset_name)
        estimate = _gpu_estimate_s(model, options, pairs, args.gpu_tflops)
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            runs = []
            for _ in range(args.repeats + 1):
                started = time.perf_counter()
                adapter = finetune(model, images, masks, options)
                runs.append((time.perf_counter() - started, adapter.settings))
            timed = runs[1:]
            total = statistics.median(run[0] for run in timed)
            encode = statistics.median(run[1]["encode_seconds"] for run in timed)
            step = statistics.median(run[1]["seconds_per_step"] for run in timed)
            default_run = encode + DEFAULTS.steps * step  # the default step count
            print(f"{preset_name:<11} {threads:>7} {total:8.2f} {encode:8.2f} {step:7.3f} "
                  f"{default_run:12.2f} {estimate * DEFAULTS.steps / options.steps:10.3f}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
