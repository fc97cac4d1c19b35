"""Episodic training of CRNet on base-class episodes (the loop behind `crnet train`).

Two recipes (models.config.RECIPES; every setting is a TrainConfig field and a flag of
`crnet train`, and all of them are recorded in the checkpoint JSON under training.train):

* ``scratch`` (crnet-lite's, and the default without ``--init-trunk``): the whole network
  trains from random weights. AdamW, lr 2e-3, weight decay 1e-4, batch 8, 200 linear
  warm-up steps, cosine decay to 2% of the peak over ``steps``; gradient norm clipped at 5;
  the preset's input size. The shipped crnet-lite fold-0 checkpoint was trained this way
  on synthetic-5i.
* ``canet`` (the paper's way, the default with ``--init-trunk``; CaNet's
  settings, since CRNet's own are not public): the trunk is initialised from an ImageNet
  ResNet-50 (models.imagenet_init) and frozen (no gradients, BatchNorm in eval mode, so
  its tensors in the saved checkpoint equal the imported ones); the rest trains with SGD,
  lr 0.0025, momentum 0.9, weight decay 5e-4, batch 4, 321x321, constant rate, no clipping.

Common to both:

* episodes: 1-shot, from the fold's 15 base classes (split "train") of ``dataset``
  (synthetic-5i, pascal-5i: VOC2012 + SBD train_aug under ``data_root``); the novel
  classes are never seen. A ``folder`` dataset has no fold split: all its classes serve
  for training and for the periodic evaluation. ``batch`` episodes per step; each step
  encodes the 2 x batch images in one call and refines all episodes in one batched call.
* loss: cross-entropy (ignore 255) on the query and on the support predictions
  (weights ``query_loss_weight``, ``support_loss_weight``, both 1), logits upsampled to
  the network's input size, labels resized nearest.
* refinement steps: the preset's T, the same at train and test time.
* augmentation: a horizontal flip of query and support (synthetic-5i also varies scale,
  rotation, aspect and colour per instance).
* device: ``cpu`` or ``cuda`` (a clear error when torch sees no CUDA device). ``amp``:
  torch.autocast (float16 on CUDA with a GradScaler; bfloat16 on CPU, where the scaler is
  off because bfloat16 needs none).
* evaluation: every ``eval_every`` steps, mIoU on ``eval_episodes`` 1-shot test episodes of
  the fold's 5 novel classes (seed 0), through the same evaluation loop, metrics and
  numpy pre/post-processing as `crnet eval` (on the in-memory model, fp32).
* resumable: ``state.safetensors`` + ``state.json`` (model, optimiser, step, history)
  in the run directory every ``save_every`` steps; ``resume`` continues from it and
  refuses to start afresh when there is none.
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

from crnet.data.episodes import Episode
from crnet.data.evaluation import episode_source, evaluate
from crnet.models.checkpoint import load_state, save_checkpoint
from crnet.models.config import CRNetConfig, TrainConfig, preset
from crnet.models.crnet import CRNet
from crnet.runtime.errors import CrnetError
from crnet.runtime.files import atomic_path, write_json_atomic
from crnet.runtime.metrics import IGNORE
from crnet.runtime.preprocess import (
    mask_at_input_size,
    mask_from_logits,
    preprocess_image,
    preprocess_mask,
)
from crnet.runtime.progress import Progress
from crnet.runtime.progress import resolve as resolve_progress


class TrainingError(CrnetError, RuntimeError):
    """A training run that cannot start or continue (no CUDA, no state to resume, ...)."""


def training_record(train_config: TrainConfig, history: list[dict[str, Any]] | None = None,
                    steps_done: int = 0, wall_s: float = 0.0,
                    init_trunk: dict[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint JSON's ``training`` section, read back by models.provenance."""
    record = {
        "recipe": "models/training.py", "train": dataclasses.asdict(train_config),
        "history": list(history or []), "steps_done": steps_done, "wall_s_this_run": wall_s,
        "machine": f"{platform.machine()} {platform.processor() or ''} "
                   f"{torch.get_num_threads()} threads".strip(),
        "torch": torch.__version__,
    }
    if train_config.amp:
        record["amp_dtype"] = str(autocast_dtype(train_config.device)).replace("torch.", "")
    if init_trunk is not None:
        record["init_trunk"] = init_trunk
    return record


def autocast_dtype(device: str) -> torch.dtype:
    """float16 under CUDA autocast, bfloat16 on CPU (the dtype torch supports there)."""
    return torch.float16 if device == "cuda" else torch.bfloat16


def check_device(device: str) -> torch.device:
    """The torch device for ``cpu``/``cuda``; a clear error when CUDA is not usable."""
    if device == "cuda" and not torch.cuda.is_available():
        built = torch.version.cuda
        raise TrainingError(
            f"--device cuda: torch {torch.__version__} sees no CUDA device ("
            + (f"built for CUDA {built}, but no GPU or driver is available"
               if built else "this is a CPU-only build of torch")
            + "); use --device cpu, or install a CUDA build of torch on a GPU machine")
    return torch.device(device)


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
    """Batches of 1-shot base-class episodes, deterministic from (source, seed, step)."""

    def __init__(self, model_config: CRNetConfig, source: Any, seed: int, batch: int,
                 start_step: int) -> None:
        super().__init__()
        self.model_config = model_config
        self.source, self.seed, self.batch, self.start_step = source, seed, batch, start_step

    def __iter__(self):
        step = self.start_step
        while True:
            items = [episode_tensors(self.source.episode(step * self.batch + i, shots=1),
                                     self.model_config) for i in range(self.batch)]
            flip = np.random.default_rng([self.seed, step]).random(self.batch) < 0.5
            batch = {key: np.stack([item[key] for item in items]) for key in items[0]}
            for key in batch:
                batch[key][flip] = batch[key][flip][..., ::-1]
            yield step, {key: torch.from_numpy(np.ascontiguousarray(value))
                         for key, value in batch.items()}
            step += 1


def episode_loss(model: CRNet, batch: dict[str, torch.Tensor], query_weight: float = 1.0,
                 support_weight: float = 1.0) -> torch.Tensor:
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
    query_loss = F.cross_entropy(query_up.float(), batch["query_label"], ignore_index=IGNORE)
    support_loss = F.cross_entropy(support_up.float(), batch["support_labels"].flatten(0, 1),
                                   ignore_index=IGNORE)
    return query_weight * query_loss + support_weight * support_loss


def torch_predictor(model: CRNet):
    """An episode -> query mask predictor for an in-memory model (eval mode, no grad)."""
    config = model.config
    device = next(model.parameters()).device

    @torch.no_grad()
    def predict(episode: Episode) -> np.ndarray:
        args = (config.input_size, config.mean, config.std)
        supports = np.concatenate([preprocess_image(i, *args) for i in episode.support_images])
        masks = np.concatenate([preprocess_mask(m, config.input_size, config.feature_size)
                                for m in episode.support_masks])
        query = preprocess_image(episode.query_image, *args)
        query_logits, _ = model.refine(model.encode(torch.from_numpy(query).to(device)),
                                       model.encode(torch.from_numpy(supports).to(device)),
                                       torch.from_numpy(masks).to(device))
        return mask_from_logits(query_logits[0].float().cpu().numpy(),
                                episode.query_image.shape)

    return predict


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warm-up then cosine decay to ``min_lr_ratio`` of the peak."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = min(1.0, (step - config.warmup) / max(1, config.steps - config.warmup))
    floor = config.min_lr_ratio
    return config.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def save_state(run_dir: Path, model: CRNet, optimizer: torch.optim.Optimizer, step: int,
               history: list[dict[str, Any]], train_config: TrainConfig,
               extra: dict[str, Any] | None = None) -> None:
    """Resumable state without pickle: tensors in safetensors, the rest in JSON."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous()
               for k, v in model.state_dict().items()}
    groups = optimizer.state_dict()
    for index, state in groups["state"].items():
        for name, value in state.items():
            tensors[f"optim.{index}.{name}"] = torch.as_tensor(value).cpu().contiguous()
    with atomic_path(run_dir / "state.safetensors") as temporary:
        save_file(tensors, str(temporary))
    write_json_atomic(run_dir / "state.json", {
        "step": step, "history": history, "train": dataclasses.asdict(train_config),
        "model": model.config.to_dict(), "param_groups": groups["param_groups"],
        **(extra or {}),
    })


def load_state_into(run_dir: Path, model: CRNet, optimizer: torch.optim.Optimizer
                    ) -> tuple[int, list[dict[str, Any]]]:
    """Restore model and optimiser from ``save_state``; return (step, history)."""
    meta = read_state_meta(run_dir)
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


def read_state_meta(run_dir: Path) -> dict[str, Any]:
    """state.json of a run directory; a clear error when it is missing or unreadable."""
    path = run_dir / "state.json"
    if not path.is_file() or not (run_dir / "state.safetensors").is_file():
        raise TrainingError(
            f"--resume: no saved state in {run_dir} (expected state.json and "
            "state.safetensors from an earlier `crnet train --run-dir` there); drop --resume "
            "to start a fresh run")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise TrainingError(f"--resume: {path} is not valid JSON ({error})") from error


def build_model(train_config: TrainConfig, model_config: CRNetConfig | None = None
                ) -> tuple[CRNet, dict[str, Any] | None]:
    """The model of a run: preset (or ``model_config``) at the run's input size, with the
    ImageNet trunk imported when ``init_trunk`` is set; returns (model, import record)."""
    model_config = model_config or preset(train_config.preset)
    if train_config.input_size:
        size = (train_config.input_size, train_config.input_size)
        model_config = dataclasses.replace(model_config, input_size=size)
    model = CRNet(model_config)
    record = None
    if train_config.init_trunk:
        from crnet.models.imagenet_init import init_trunk

        report = init_trunk(model, train_config.init_trunk)
        record = report.to_dict()
        print(report.summary())
    if train_config.freeze_trunk:
        from crnet.models.imagenet_init import freeze_trunk

        freeze_trunk(model)
    return model, record


def make_optimizer(model: CRNet, train_config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (CaNet) or AdamW over the parameters that train (a frozen trunk's do not)."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    if train_config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=train_config.lr, momentum=train_config.momentum,
                               weight_decay=train_config.weight_decay)
    return torch.optim.AdamW(parameters, lr=train_config.lr,
                             weight_decay=train_config.weight_decay)


def set_train_mode(model: CRNet, train_config: TrainConfig) -> None:
    """model.train(), with a frozen trunk's BatchNorm kept in eval mode."""
    model.train()
    if train_config.freeze_trunk:
        model.trunk.eval()


@dataclasses.dataclass
class _Session:
    """A training run's model, optimiser state and history."""

    model: CRNet
    optimizer: torch.optim.Optimizer
    scaler: Any
    amp_cuda: bool
    init_record: dict[str, Any] | None
    step: int = 0
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def train(train_config: TrainConfig, run_dir: Path, resume: bool = False,
          model_config: CRNetConfig | None = None, progress: bool | Progress = True
          ) -> dict[str, Any]:
    """Train, evaluating and saving periodically; returns the final history entry."""
    device = check_device(train_config.device)
    if run_dir.exists() and not run_dir.is_dir():
        raise TrainingError(f"run directory {run_dir} is a file; expected a directory")
    if resume:
        read_state_meta(run_dir)
    if train_config.threads:
        torch.set_num_threads(train_config.threads)
    torch.manual_seed(train_config.seed)
    train_source, eval_set = _episode_sources(train_config)
    session = _start_session(train_config, model_config, device, run_dir, resume)
    run_dir.mkdir(parents=True, exist_ok=True)
    stream = torch.utils.data.DataLoader(
        EpisodeStream(session.model.config, train_source, train_config.seed,
                      train_config.batch, session.step),
        batch_size=None, num_workers=1, prefetch_factor=4, persistent_workers=False,
        pin_memory=device.type == "cuda",
    )
    started = time.time()
    history = session.history
    earlier_s = history[-1].get("total_elapsed_s", history[-1]["elapsed_s"]) if history else 0.0
    losses: list[float] = []
    bar = resolve_progress(progress).bar(train_config.steps, "train", leave=True,
                                         initial=session.step)
    set_train_mode(session.model, train_config)
    for batch_step, batch in stream:
        if batch_step >= train_config.steps:
            break
        losses.append(_train_step(session, batch, batch_step, train_config, device))
        session.step = step = batch_step + 1
        bar.update(1)
        bar.set_postfix_str(f"loss={np.mean(losses[-50:]):.3f}")
        if step % train_config.eval_every == 0 or step == train_config.steps:
            entry = _evaluate_step(session, eval_set, train_config, losses)
            entry.update({"elapsed_s": time.time() - started,
                          "total_elapsed_s": earlier_s + time.time() - started})
            history.append(entry)
            bar.write(f"step {step}: loss {entry['loss']:.3f} "
                      f"1-shot mIoU {entry['miou_1shot']:.1f} FB-IoU {entry['fbiou_1shot']:.1f}")
        if step % train_config.save_every == 0 or step == train_config.steps:
            _save_session(run_dir, session, train_config)
    bar.close()
    session.model.eval()
    provenance = training_record(train_config, history, session.step, time.time() - started,
                                 session.init_record)
    save_checkpoint(session.model,
                    run_dir / f"{session.model.config.name}-fold{train_config.fold}",
                    training=provenance)
    return history[-1] if history else {}


def _episode_sources(train_config: TrainConfig) -> tuple[Any, Any]:
    """The train split's episodes (base classes) and the test split's (novel classes, seed
    0) of the configured dataset; each opened once here so a bad dataset fails now, not in
    the loader's worker."""
    data_root = Path(train_config.data_root) if train_config.data_root else None
    train_source = episode_source(train_config.dataset, train_config.fold, train_config.seed,
                                  data_root, split="train")
    eval_set = episode_source(train_config.dataset, train_config.fold, 0, data_root,
                              split="test")
    train_source.episode(0, shots=1)
    eval_set.episode(0, shots=1)
    return train_source, eval_set


def _start_session(train_config: TrainConfig, model_config: CRNetConfig | None,
                   device: torch.device, run_dir: Path, resume: bool) -> _Session:
    """The model on ``device``, its optimiser and gradient scaler; with ``resume``, the
    saved state of ``run_dir`` loaded into them."""
    model, init_record = build_model(train_config, model_config)
    model.to(device)
    optimizer = make_optimizer(model, train_config)
    amp_cuda = train_config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=amp_cuda)
    session = _Session(model, optimizer, scaler, amp_cuda, init_record)
    if resume:
        session.step, session.history = load_state_into(run_dir, model, optimizer)
        meta = read_state_meta(run_dir)
        session.init_record = meta.get("init_trunk", init_record)
        if amp_cuda and meta.get("grad_scaler"):
            scaler.load_state_dict(meta["grad_scaler"])
    return session


def _train_step(session: _Session, batch: dict[str, torch.Tensor], batch_step: int,
                train_config: TrainConfig, device: torch.device) -> float:
    """One optimiser step on a batch of episodes; its loss."""
    model, optimizer, scaler = session.model, session.optimizer, session.scaler
    batch = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(batch_step, train_config)
    with torch.autocast(device.type, dtype=autocast_dtype(device.type),
                        enabled=train_config.amp):
        loss = episode_loss(model, batch, train_config.query_loss_weight,
                            train_config.support_loss_weight)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if train_config.clip_norm > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                       train_config.clip_norm)
    scaler.step(optimizer)
    scaler.update()
    return loss.item()


def _evaluate_step(session: _Session, eval_set: Any, train_config: TrainConfig,
                   losses: list[float]) -> dict[str, Any]:
    """The periodic 1-shot evaluation on the test split: a history entry (no times)."""
    session.model.eval()
    result = evaluate(torch_predictor(session.model),
                      eval_set.episodes(train_config.eval_episodes, shots=1),
                      total=train_config.eval_episodes, progress=False,
                      classes=eval_set.classes)
    set_train_mode(session.model, train_config)
    return {"step": session.step, "loss": float(np.mean(losses[-100:])),
            "miou_1shot": result.miou, "fbiou_1shot": result.fbiou}


def _save_session(run_dir: Path, session: _Session, train_config: TrainConfig) -> None:
    """Save the resumable state (with the trunk's init record and the AMP scaler)."""
    extra: dict[str, Any] = {"init_trunk": session.init_record} if session.init_record else {}
    if session.amp_cuda:
        extra["grad_scaler"] = session.scaler.state_dict()
    save_state(run_dir, session.model, session.optimizer, session.step, session.history,
               train_config, extra)
