"""K-shot finetuning (CRNet's third part): adapt the head to K labelled supports.

With K >= 2 labelled supports, every ordered pair (i, j), i != j, is an episode with
support i and query j, both labels known: K * (K - 1) pairs. CRNet predicts the query and
the support mask, so both cross-entropy losses count (as in training, models.training's
``episode_loss``). The encoder stays frozen: each support image is encoded ONCE, before the
first step, and its features are cached; a step runs only the parts after the encoder
(the cross-reference module, the condition module and the recurrent mask refinement,
all of them or the ones named in ``parts``), on all pairs as one batch of 1-shot episodes.

The result is an :class:`~crnet.runtime.adapter.Adapter`: the finetuned tensors only
(float32), keyed by the names the exported refine graph gives them, with the identity of
what it was made for and the settings (with the time taken). The model passed in, and any
checkpoint on disk, are never changed: the finetune works on a copy.

Defaults (``DEFAULTS``) were chosen by the ablation in docs/finetuning.md: crnet-lite
fold 0 on synthetic-5i 5-shot test episodes, fusion against finetuning for several
settings.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from crnet.models.adapter_tensors import (
    ONNX_PREFIX,
    PARTS,
    AdapterTensorError,
    apply_tensors,
)
from crnet.models.crnet import CRNet
from crnet.runtime.adapter import Adapter, adaptable_tensors, bundle_identity
from crnet.runtime.bundle import Bundle, is_bundle
from crnet.runtime.errors import CrnetError
from crnet.runtime.metrics import IGNORE
from crnet.runtime.preprocess import (
    InputError,
    check_marked,
    checked_mask,
    preprocess_image,
    preprocess_mask,
)
from crnet.runtime.progress import Progress
from crnet.runtime.progress import resolve as resolve_progress

OPTIMIZERS = ("adam", "sgd")
DEVICES = ("cpu", "cuda")
StepHook = Callable[[int, CRNet], None]


class FinetuneError(CrnetError, ValueError):
    """A finetune that cannot run: bad options, too few supports, a missing device."""


__all__ = ["DEFAULTS", "ONNX_PREFIX", "PARTS", "AdapterTensorError", "FinetuneError",
           "FinetuneOptions", "FinetuneSource", "adapted_model", "apply_tensors", "finetune",
           "open_source", "support_pairs", "trainable_names"]


@dataclass(frozen=True)
class FinetuneOptions:
    """The settings of a finetune; ``check()`` says what is wrong with a bad one."""

    steps: int = 12
    lr: float = 1e-3
    parts: tuple[str, ...] = PARTS
    optimizer: str = "adam"
    seed: int = 0
    device: str = "cpu"
    momentum: float = 0.9  # SGD only
    pairs_per_step: int = 4  # pairs drawn (by the seed) per step; 0: every pair

    def check(self) -> FinetuneOptions:
        """Return self, or raise FinetuneError naming the bad option and what it expects."""
        if not isinstance(self.steps, int) or self.steps < 1:
            raise FinetuneError(f"steps is {self.steps!r}; expected an integer >= 1")
        if not self.lr > 0:
            raise FinetuneError(f"lr is {self.lr!r}; expected a learning rate > 0")
        if not self.parts or any(part not in PARTS for part in self.parts):
            raise FinetuneError(f"parts is {list(self.parts)!r}; expected one or more of "
                                f"{', '.join(PARTS)}")
        if self.optimizer not in OPTIMIZERS:
            raise FinetuneError(f"optimizer is {self.optimizer!r}; expected one of "
                                f"{', '.join(OPTIMIZERS)}")
        if self.device not in DEVICES:
            raise FinetuneError(f"device is {self.device!r}; expected one of "
                                f"{', '.join(DEVICES)}")
        if self.pairs_per_step < 0:
            raise FinetuneError(f"pairs_per_step is {self.pairs_per_step}; expected 0 (all "
                                "pairs) or a positive count")
        return self


DEFAULTS = FinetuneOptions()


def support_pairs(shots: int) -> list[tuple[int, int]]:
    """Every ordered (support, query) pair of ``shots`` supports, support != query."""
    if shots < 2:
        raise FinetuneError(f"finetuning needs at least 2 labelled supports (each one serves "
                            f"as the query of the others), got {shots}")
    return [(support, query) for support in range(shots) for query in range(shots)
            if support != query]


@dataclass
class SupportCache:
    """The supports as the head sees them: features [K,C,h,w] (encoded once), masks at
    the feature size [K,1,h,w], labels at the input size [K,H,W] (255 = ignore)."""

    features: torch.Tensor
    masks: torch.Tensor
    labels: torch.Tensor
    encode_seconds: float = 0.0


def encode_supports(model: CRNet, images: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                    device: torch.device) -> SupportCache:
    """Preprocess the supports as the Segmenter does and encode them in one call;
    ``encode_seconds`` counts both."""
    if len(images) != len(masks):
        raise InputError(f"{len(images)} support images but {len(masks)} masks; expected "
                         "one mask per image")
    config = model.config
    args = (config.input_size, config.mean, config.std)
    started = time.perf_counter()
    batch, small, labels = [], [], []
    for shot, (image, mask) in enumerate(zip(images, masks, strict=True)):
        batch.append(preprocess_image(image, *args, what=f"support image {shot}"))
        shape = np.asarray(image).shape
        checked = checked_mask(mask, shape, f"support mask {shot}")
        check_marked(checked, f"support mask {shot}")
        small.append(preprocess_mask(checked, config.input_size, config.feature_size))
        labels.append(_label_at(checked, config.input_size))
    with torch.no_grad():
        features = model.encode(torch.from_numpy(np.concatenate(batch)).to(device))
    return SupportCache(features=features.detach(),
                        masks=torch.from_numpy(np.concatenate(small)).to(device),
                        labels=torch.from_numpy(np.stack(labels)).to(device),
                        encode_seconds=time.perf_counter() - started)


def _label_at(mask: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """A checked mask as int64 0/1/255 labels at ``size`` (nearest, as training's labels)."""
    values = mask.astype(np.uint8) if mask.dtype == np.bool_ else mask
    rows = ((np.arange(size[0]) + 0.5) * values.shape[0] / size[0]).astype(np.int64)
    cols = ((np.arange(size[1]) + 0.5) * values.shape[1] / size[1]).astype(np.int64)
    labels: np.ndarray = values[rows][:, cols].astype(np.int64)
    return labels


def pair_loss(model: CRNet, cache: SupportCache, pairs: torch.Tensor) -> torch.Tensor:
    """Query + support cross-entropy of ``pairs`` [P,2] (support, query) as P 1-shot
    episodes in one batched refine, logits upsampled to the input size as in training."""
    support, query = pairs[:, 0], pairs[:, 1]
    query_logits, support_logits = model.refine(
        cache.features[query], cache.features[support], cache.masks[support])
    size = cache.labels.shape[1:]
    query_up = F.interpolate(query_logits, size=size, mode="bilinear", align_corners=False)
    support_up = F.interpolate(support_logits, size=size, mode="bilinear", align_corners=False)
    return (F.cross_entropy(query_up, cache.labels[query], ignore_index=IGNORE)
            + F.cross_entropy(support_up, cache.labels[support], ignore_index=IGNORE))


@dataclass
class FinetuneSource:
    """A model to finetune (never changed: each finetune works on a copy), what it was
    made for, and the ONNX name of each adaptable torch parameter (the export record's;
    empty: the export's prefix rule). Open it once to finetune many support sets."""

    model: CRNet
    identity: dict[str, str]
    onnx_names: dict[str, str] = field(default_factory=dict)


def open_source(source: CRNet | Bundle | str | Path | None) -> FinetuneSource:
    """A CRNet, a Bundle, a bundle directory or a checkpoint (.safetensors; None: the
    shipped one) -> FinetuneSource."""
    if isinstance(source, CRNet):
        return FinetuneSource(source, {})
    if isinstance(source, str | Path) and is_bundle(source):
        source = Bundle.load(source)
    if isinstance(source, Bundle):
        from crnet.models.torch_backend import TorchBackend

        backend = TorchBackend(source, device="cpu")
        backend.activate()
        record = adaptable_tensors(source)
        names = {str(entry["torch_name"]): name for name, entry in record.items()}
        return FinetuneSource(backend.model, dict(bundle_identity(source)), names)
    if source is None or isinstance(source, str | Path):
        from crnet.models.checkpoint import load_checkpoint

        model, info = load_checkpoint(source)
        return FinetuneSource(model, {"checkpoint_sha256": info.sha256})
    raise FinetuneError(f"cannot finetune a {type(source).__name__}; expected a CRNet, a "
                        "Bundle, a bundle directory or a checkpoint path")


def trainable_names(model: CRNet, parts: Sequence[str]) -> list[str]:
    """The torch names of the parameters of ``parts``, in the model's order."""
    return [name for name, _ in model.named_parameters() if name.split(".")[0] in parts]


def onnx_name_of(torch_name: str, onnx_names: dict[str, str]) -> str:
    """The refine graph's name for a torch parameter (the export record's, if any)."""
    if onnx_names:
        if torch_name not in onnx_names:
            raise FinetuneError(f"parameter {torch_name} is not adaptable in this bundle "
                                "(its export record does not list it); re-export the bundle")
        return onnx_names[torch_name]
    return ONNX_PREFIX + torch_name


def check_device(device: str) -> torch.device:
    """The torch device; a clear error when CUDA is asked for and torch sees none."""
    if device == "cuda" and not torch.cuda.is_available():
        raise FinetuneError(
            f"device cuda: torch {torch.__version__} sees no CUDA device"
            + (" (a CPU-only build)" if torch.version.cuda is None else "")
            + "; use device cpu, or install a CUDA build of torch on a GPU machine")
    return torch.device(device)


def make_optimizer(parameters: list[torch.nn.Parameter], options: FinetuneOptions
                   ) -> torch.optim.Optimizer:
    """Adam or SGD with momentum over ``parameters``, no weight decay (a few steps)."""
    if options.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=options.lr, momentum=options.momentum)
    return torch.optim.Adam(parameters, lr=options.lr)


def finetune(source: FinetuneSource | CRNet | Bundle | str | Path,
             images: Sequence[np.ndarray],
             masks: Sequence[np.ndarray], options: FinetuneOptions | None = None, *,
             progress: bool | Progress = False, on_step: StepHook | None = None,
             **overrides: Any) -> Adapter:
    """Finetune the head of ``source`` on K >= 2 labelled supports -> an Adapter.

    ``images``: HxWx3 uint8 RGB; ``masks``: HxW bool or uint8 0/1 (255 = ignore), as for
    ``Segmenter.set_support``. ``options`` (or keyword overrides of DEFAULTS: steps, lr,
    parts, optimizer, seed, device, momentum, pairs_per_step) set the run.
    ``on_step(step, model)`` sees the model after each step (1-based; an ablation scores
    several step counts in one run); it must not change the model.
    """
    options = _options(options, overrides)
    pairs = support_pairs(len(images))
    device = check_device(options.device)
    opened = source if isinstance(source, FinetuneSource) else open_source(source)
    # a private copy; eval mode: the head has no dropout or batch statistics
    model = copy.deepcopy(opened.model).to(device).eval()
    generator = torch.Generator().manual_seed(options.seed)  # the pair draws
    cache = encode_supports(model, images, masks, device)
    names = trainable_names(model, options.parts)
    onnx = {name: onnx_name_of(name, opened.onnx_names) for name in names}
    parameters = dict(model.named_parameters())
    for name, parameter in parameters.items():
        parameter.requires_grad_(name in onnx)
    optimizer = make_optimizer([parameters[name] for name in names], options)
    record = _run_steps(model, cache, torch.tensor(pairs, device=device), optimizer,
                        options, generator, resolve_progress(progress), on_step)
    tensors = {onnx[name]: parameters[name].detach().float().cpu().numpy().copy()
               for name in names}
    settings = {**asdict(options), "parts": list(options.parts), "shots": len(images),
                "pairs": len(pairs), "encode_seconds": cache.encode_seconds, **record,
                "torch": torch.__version__}
    return Adapter(tensors=tensors, identity=opened.identity, settings=settings)


def _options(options: FinetuneOptions | None, overrides: dict[str, Any]) -> FinetuneOptions:
    """``options`` (DEFAULTS when None) with keyword overrides, checked."""
    known = set(FinetuneOptions.__dataclass_fields__)
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise FinetuneError(f"unknown finetune option(s) {unknown}; known: {sorted(known)}")
    if "parts" in overrides and isinstance(overrides["parts"], str | list):
        parts = overrides["parts"]
        overrides["parts"] = tuple(parts.split(",") if isinstance(parts, str) else parts)
    base = options or DEFAULTS
    return FinetuneOptions(**{**asdict(base), **overrides}).check()


def _run_steps(model: CRNet, cache: SupportCache, pairs: torch.Tensor,
               optimizer: torch.optim.Optimizer, options: FinetuneOptions,
               generator: torch.Generator, progress: Progress,
               on_step: StepHook | None = None) -> dict[str, Any]:
    """The optimiser steps; the record of losses and times for the adapter's settings."""
    bar = progress.bar(options.steps, "finetune", leave=True)
    step_seconds: list[float] = []
    losses: list[float] = []
    for _ in range(options.steps):
        tick = time.perf_counter()
        batch = pairs
        if 0 < options.pairs_per_step < len(pairs):
            batch = pairs[torch.randperm(len(pairs), generator=generator)
                          [:options.pairs_per_step].to(pairs.device)]
        loss = pair_loss(model, cache, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.item()))
        step_seconds.append(time.perf_counter() - tick)
        bar.update(1)
        bar.set_postfix_str(f"loss={losses[-1]:.3f} {step_seconds[-1]:.2f} s/step")
        if on_step is not None:
            with torch.no_grad():
                on_step(len(losses), model)
    bar.close()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return {"loss_first": losses[0], "loss_last": losses[-1],
            "seconds": float(sum(step_seconds)) + cache.encode_seconds,
            "seconds_per_step": float(np.mean(step_seconds))}


def adapted_model(model: CRNet, adapter: Adapter,
                  torch_names: dict[str, str] | None = None) -> CRNet:
    """A copy of ``model`` with ``adapter`` applied (the model itself is left as it is)."""
    adapted = copy.deepcopy(model)
    apply_tensors(adapted, adapter.tensors, torch_names)
    return adapted.eval()
