"""Episodic training of CRNet on base-class episodes (the loop behind `crnet train`).

The recipe (CaNet's settings do not transfer: CaNet starts from ImageNet weights and
freezes the trunk; here nothing can be downloaded, so the whole network trains from
scratch on synthetic-5i):

* episodes: 1-shot, sampled from the fold's 15 base classes (split "train"); the novel
  classes are never seen. ``batch`` episodes per step; each step encodes the
  2 x batch images in one call and refines all episodes in one batched call.
* loss: cross-entropy (ignore 255) on the query and on the support predictions, logits
  upsampled to the network's input size, labels resized nearest.
* optimiser: AdamW, lr 2e-3, weight decay 1e-4, 200 linear warm-up steps, cosine decay
  to 2% of the peak over ``steps``; gradient norm clipped at 5.
* refinement steps: the preset's T (crnet-lite: 3), the same at train and test time.
* augmentation: the generator varies scale, rotation, aspect and colour per instance;
  a horizontal flip of query and support is added.
* evaluation: every ``eval_every`` steps, mIoU on ``eval_episodes`` 1-shot test
  episodes of the fold's 5 novel classes (seed 0), through the same evaluation loop,
  metrics and numpy pre/post-processing as `crnet eval` (on the in-memory model).
* resumable: ``state.safetensors`` + ``state.json`` (model, optimiser, step, history)
  in the run directory every ``save_every`` steps; ``--resume`` continues from it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from data.episodes import Episode
from data.evaluation import evaluate
from data.synthetic import Synthetic5i
from models.checkpoint import load_state, save_checkpoint
from models.config import CRNetConfig, TrainConfig, preset
from models.crnet import CRNet
from runtime.files import atomic_path, write_json_atomic
from runtime.metrics import IGNORE
from runtime.preprocess import (
    mask_at_input_size,
    mask_from_logits,
    preprocess_image,
    preprocess_mask,
)


def training_record(train_config: TrainConfig, history: list[dict[str, Any]] | None = None,
                    steps_done: int = 0, wall_s: float = 0.0) -> dict[str, Any]:
    """The checkpoint JSON's ``training`` section, read back by models.provenance."""
    return {
        "recipe": "models/training.py", "train": dataclasses.asdict(train_config),
        "history": list(history or []), "steps_done": steps_done, "wall_s_this_run": wall_s,
        "machine": f"{platform.machine()} {platform.processor() or ''} "
                   f"{torch.get_num_threads()} threads".strip(),
        "torch": torch.__version__,
    }


def episode_tensors(episode: Episode, config: CRNetConfig) -> dict[str, np.ndarray]:
    """Network inputs and labels of one episode, through the runtime's preprocessing."""
    size = config.input_size
    args = (size, config.mean, config.std)
    return {
        "query": preprocess_image(episode.query_image, *args)[0],
        "supports": np.concatenate([preprocess_image(i, *args) for i in episode.support_images]),
        "support_masks": np.concatenate(
            [mask_at_input_size(m, size) for m in episode.support_masks]
        ),
        "query_label": _label_at(episode.query_mask, size),
        "support_labels": np.stack([_label_at(m, size) for m in episode.support_masks]),
    }


def _label_at(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a 0/1/255 label map to ``size``."""
    rows = (np.arange(size[0]) + 0.5) * mask.shape[0] / size[0]
    cols = (np.arange(size[1]) + 0.5) * mask.shape[1] / size[1]
    return mask[rows.astype(np.int64)][:, cols.astype(np.int64)].astype(np.int64)


class EpisodeStream(torch.utils.data.IterableDataset):
    """Batches of 1-shot base-class episodes, deterministic from (fold, seed, step)."""

    def __init__(self, model_config: CRNetConfig, fold: int, seed: int, batch: int,
                 start_step: int) -> None:
        super().__init__()
        self.model_config = model_config
        self.fold, self.seed, self.batch, self.start_step = fold, seed, batch, start_step

    def __iter__(self):
        dataset = Synthetic5i(self.fold, split="train", seed=self.seed)
        step = self.start_step
        while True:
            items = [episode_tensors(dataset.episode(step * self.batch + i, shots=1),
                                     self.model_config) for i in range(self.batch)]
            flip = np.random.default_rng([self.seed, step]).random(self.batch) < 0.5
            batch = {key: np.stack([item[key] for item in items]) for key in items[0]}
            for key in batch:
                batch[key][flip] = batch[key][flip][..., ::-1]
            yield step, {key: torch.from_numpy(np.ascontiguousarray(value))
                         for key, value in batch.items()}
            step += 1


def episode_loss(model: CRNet, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy on query and support predictions of a batch of 1-shot episodes."""
    episodes = batch["query"].shape[0]
    images = torch.cat([batch["query"], batch["supports"].flatten(0, 1)])
    features = model.encode(images)
    query_feat, support_feat = features[:episodes], features[episodes:]
    support_mask = F.interpolate(batch["support_masks"].flatten(0, 1), size=features.shape[2:],
                                 mode="bilinear", align_corners=True)
    query_logits, support_logits = model.refine(query_feat, support_feat, support_mask)
    size = batch["query"].shape[2:]
    query_up = F.interpolate(query_logits, size=size, mode="bilinear", align_corners=False)
    support_up = F.interpolate(support_logits, size=size, mode="bilinear", align_corners=False)
    return (F.cross_entropy(query_up, batch["query_label"], ignore_index=IGNORE)
            + F.cross_entropy(support_up, batch["support_labels"].flatten(0, 1),
                              ignore_index=IGNORE))


def torch_predictor(model: CRNet):
    """An episode -> query mask predictor for an in-memory model (eval mode, no grad)."""
    config = model.config

    @torch.no_grad()
    def predict(episode: Episode) -> np.ndarray:
        args = (config.input_size, config.mean, config.std)
        supports = np.concatenate([preprocess_image(i, *args) for i in episode.support_images])
        masks = np.concatenate([preprocess_mask(m, config.input_size, config.feature_size)
                                for m in episode.support_masks])
        query = preprocess_image(episode.query_image, *args)
        query_logits, _ = model.refine(model.encode(torch.from_numpy(query)),
                                       model.encode(torch.from_numpy(supports)),
                                       torch.from_numpy(masks))
        return mask_from_logits(query_logits[0].numpy(), episode.query_image.shape)

    return predict


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warm-up then cosine decay to ``min_lr_ratio`` of the peak."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = min(1.0, (step - config.warmup) / max(1, config.steps - config.warmup))
    floor = config.min_lr_ratio
    return config.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def save_state(run_dir: Path, model: CRNet, optimizer: torch.optim.Optimizer, step: int,
               history: list[dict[str, Any]], train_config: TrainConfig) -> None:
    """Resumable state without pickle: tensors in safetensors, the rest in JSON."""
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    groups = optimizer.state_dict()
    for index, state in groups["state"].items():
        for name, value in state.items():
            tensors[f"optim.{index}.{name}"] = torch.as_tensor(value).contiguous()
    with atomic_path(run_dir / "state.safetensors") as temporary:
        save_file(tensors, str(temporary))
    write_json_atomic(run_dir / "state.json", {
        "step": step, "history": history, "train": dataclasses.asdict(train_config),
        "model": model.config.to_dict(), "param_groups": groups["param_groups"],
    })


def load_state_into(run_dir: Path, model: CRNet, optimizer: torch.optim.Optimizer
                    ) -> tuple[int, list[dict[str, Any]]]:
    """Restore model and optimiser from ``save_state``; return (step, history)."""
    meta = json.loads((run_dir / "state.json").read_text())
    tensors = load_file(str(run_dir / "state.safetensors"))
    load_state(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")},
               source=run_dir / "state.safetensors")
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return int(meta["step"]), list(meta["history"])


def train(train_config: TrainConfig, run_dir: Path, resume: bool = False,
          model_config: CRNetConfig | None = None, progress: bool = True) -> dict[str, Any]:
    """Train, evaluating and saving periodically; returns the final history entry."""
    from tqdm import tqdm

    if train_config.threads:
        torch.set_num_threads(train_config.threads)
    torch.manual_seed(train_config.seed)
    model_config = model_config or preset(train_config.preset)
    run_dir.mkdir(parents=True, exist_ok=True)
    model = CRNet(model_config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_config.lr,
                                  weight_decay=train_config.weight_decay)
    step, history = 0, []
    if resume and (run_dir / "state.json").exists():
        step, history = load_state_into(run_dir, model, optimizer)
    eval_set = Synthetic5i(train_config.fold, split="test", seed=0)
    stream = torch.utils.data.DataLoader(
        EpisodeStream(model_config, train_config.fold, train_config.seed, train_config.batch,
                      step),
        batch_size=None, num_workers=1, prefetch_factor=4, persistent_workers=False,
    )
    started = time.time()
    earlier_s = history[-1].get("total_elapsed_s", history[-1]["elapsed_s"]) if history else 0.0
    losses: list[float] = []
    bar = tqdm(total=train_config.steps, initial=step, desc="train", disable=not progress)
    model.train()
    for batch_step, batch in stream:
        if batch_step >= train_config.steps:
            break
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(batch_step, train_config)
        loss = episode_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train_config.clip_norm)
        optimizer.step()
        losses.append(loss.item())
        step = batch_step + 1
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
        if step % train_config.eval_every == 0 or step == train_config.steps:
            model.eval()
            result = evaluate(torch_predictor(model),
                              eval_set.episodes(train_config.eval_episodes, shots=1),
                              total=train_config.eval_episodes, progress=False)
            model.train()
            history.append({"step": step, "loss": float(np.mean(losses[-100:])),
                            "miou_1shot": result.miou, "fbiou_1shot": result.fbiou,
                            "elapsed_s": time.time() - started,
                            "total_elapsed_s": earlier_s + time.time() - started})
            bar.write(f"step {step}: loss {history[-1]['loss']:.3f} "
                      f"1-shot mIoU {result.miou:.1f} FB-IoU {result.fbiou:.1f}")
        if step % train_config.save_every == 0 or step == train_config.steps:
            save_state(run_dir, model, optimizer, step, history, train_config)
    bar.close()
    model.eval()
    provenance = training_record(train_config, history, step, time.time() - started)
    save_checkpoint(model, run_dir / f"{model_config.name}-fold{train_config.fold}",
                    training=provenance)
    return history[-1] if history else {}
