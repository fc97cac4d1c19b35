"""Recording a bundle's golden references: seeded episodes and the PyTorch model's answers.

The episodes are synthetic-5i test episodes of the checkpoint's fold (its novel classes),
drawn at the model's input size, so one code path serves crnet-lite (193x193) and a
user's crnet-r50 (321x321) alike. The reference is the PyTorch fp32 model on the CPU run
through the runtime's own pre- and post-processing (a torch-backend Segmenter), so a
deployed variant that matches it exactly reproduces its masks bit for bit. The file
format and the check are crnet.runtime.golden's; `crnet export` and `crnet deploy` record
them, ``add_golden`` adds them to a bundle exported without them (`crnet verify BUNDLE
--record`).

Size: 15 one-shot and 5 five-shot episodes (each class of the fold 3 and 1 times) are 60
images; compressed, about 3 MB at 193x193 and 8 MB at 321x321.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crnet.runtime.bundle import Bundle, BundleError, update_manifest
from crnet.runtime.golden import (
    GOLDEN_FILE,
    GOLDEN_KEY,
    QUICK_EPISODES,
    GoldenEpisode,
    default_gates,
    write_golden_file,
)
from crnet.runtime.metrics import FewShotMeter
from crnet.runtime.preprocess import THRESHOLD, InputError, probability_to_mask

GOLDEN_PLAN: tuple[tuple[int, int], ...] = ((1, 15), (5, 5))
"""(shots, episodes) per group, in file order: the first QUICK_EPISODES are one-shot
episodes of the fold's five classes, so verify="quick" covers every class."""
GOLDEN_SEED = 0
_MAX_SKIPPED = 50  # episodes whose support vanishes at the feature size, per group


def reference_segmenter(model: Any, manifest: dict[str, Any]) -> Any:
    """A Segmenter running ``model`` (PyTorch fp32, CPU) with the bundle's pre-processing."""
    from crnet.models.torch_backend import TorchBackend
    from crnet.runtime.backends.base import ModelSpec
    from crnet.runtime.segmenter import Segmenter

    model.eval()
    backend = TorchBackend(None, "fp32", model=model, device="cpu")
    return Segmenter.from_backend(backend, ModelSpec.from_manifest(manifest))


def _episode_size(manifest: dict[str, Any]) -> int:
    """The side of the square synthetic images: the model's input size."""
    height, width = manifest.get("input_size") or manifest["preprocessing"]["input_size"]
    return int(max(height, width))


def golden_episodes(model: Any, manifest: dict[str, Any], fold: int, *,
                    seed: int = GOLDEN_SEED,
                    plan: Sequence[tuple[int, int]] = GOLDEN_PLAN) -> list[GoldenEpisode]:
    """Draw the plan's episodes and record the reference's answer to each (an episode
    whose support the runtime refuses, an object too small for the feature map, is
    skipped and the next index taken)."""
    from crnet.data.synthetic import Synthetic5i

    source = Synthetic5i(fold, split="test", seed=seed, image_size=_episode_size(manifest))
    recorded: list[GoldenEpisode] = []
    index = 0
    with reference_segmenter(model, manifest) as reference:
        for planned, count in plan:
            shots = min(planned, reference.spec.max_shots)  # a bundle taking fewer shots
            kept, skipped = 0, 0
            while kept < count:
                episode = source.episode(index, shots)
                index += 1
                try:
                    support = reference.encode_support(list(episode.support_images),
                                                       list(episode.support_masks))
                except InputError:
                    skipped += 1
                    if skipped > _MAX_SKIPPED:
                        raise
                    continue
                tensor, shape = reference.preprocess(episode.query_image)
                probability = reference.infer(tensor, support)
                recorded.append(GoldenEpisode(
                    class_id=episode.class_id, support_images=episode.support_images,
                    support_masks=episode.support_masks, query_image=episode.query_image,
                    query_mask=episode.query_mask,
                    reference_mask=probability_to_mask(probability, shape, THRESHOLD),
                    reference_probability=probability))
                kept += 1
    return recorded


def record_golden(model: Any, root: str | Path, manifest: dict[str, Any], fold: int, *,
                  seed: int = GOLDEN_SEED,
                  plan: Sequence[tuple[int, int]] = GOLDEN_PLAN) -> dict[str, Any]:
    """Write ``root/golden.npz`` for ``model`` and return the manifest's ``golden``
    section (the caller lists and hashes the file with the others)."""
    episodes = golden_episodes(model, manifest, fold, seed=seed, plan=plan)
    size = write_golden_file(Path(root) / GOLDEN_FILE, episodes)
    entry = {
        "file": GOLDEN_FILE, "episodes": len(episodes),
        "shots": [len(e.support_images) for e in episodes], "fold": fold, "seed": seed,
        "dataset": "synthetic-5i", "split": "test",
        "image_size": list(episodes[0].query_image.shape[:2]), "threshold": THRESHOLD,
        "quick_episodes": QUICK_EPISODES, "bytes": size,
        "reference": "PyTorch fp32 (CPU) through the runtime's pre/post-processing",
        "max_abs_delta_miou": default_gates(),
    }
    meter = FewShotMeter(sorted({e.class_id for e in episodes}))
    for episode in episodes:
        meter.update(episode.class_id, episode.reference_mask, episode.query_mask)
    entry["reference_miou"] = round(meter.miou(), 4)
    return entry


def add_golden(bundle_dir: str | Path, checkpoint: str | Path | None = None, *,
               replace: bool = False) -> dict[str, Any]:
    """Record golden references into an existing bundle (one exported without them).

    The model is the bundle's checkpoint copy, or ``checkpoint`` when given, which must
    be the one the bundle was exported from (same sha256). The file is written, then
    listed and hashed in the manifest under the bundle's lock. Returns the ``golden``
    section. BundleError when the bundle already has them (unless ``replace``) or the
    checkpoint does not match.
    """
    from crnet.models.checkpoint import checkpoint_paths, load_checkpoint
    from crnet.models.provenance import training_fold

    bundle = Bundle.load(bundle_dir)
    if GOLDEN_KEY in bundle.manifest and not replace:
        raise BundleError(f"bundle {bundle.root} already has golden references; pass "
                          "replace=True (--force) to record them again")
    weights = _checkpoint_of(bundle, checkpoint)
    model, info = load_checkpoint(checkpoint_paths(weights)[0], allow_unverified=True)
    expected = bundle.manifest.get("source_checkpoint", {}).get("sha256")
    if info.sha256 != expected:
        raise BundleError(f"checkpoint {weights} (sha256 {info.sha256}) is not the one bundle "
                          f"{bundle.root} was exported from (sha256 {expected}); pass that "
                          "checkpoint")
    fold = training_fold(info.training) or 0
    entry: dict[str, Any] = {}

    def change(manifest: dict[str, Any]) -> None:
        entry.update(record_golden(model, bundle.root, manifest, fold))
        manifest[GOLDEN_KEY] = entry

    try:  # recorded under the bundle's lock; a failure leaves no unlisted file behind
        update_manifest(bundle.root, change, added_files=[GOLDEN_FILE])
    except BaseException:
        if GOLDEN_KEY not in bundle.manifest:
            (bundle.root / GOLDEN_FILE).unlink(missing_ok=True)
        raise
    return entry


def _checkpoint_of(bundle: Bundle, checkpoint: str | Path | None) -> Path:
    """The checkpoint to record with: the given one, else the bundle's copy."""
    if checkpoint is not None:
        return Path(checkpoint)
    entry = bundle.manifest.get("checkpoint")
    weights = entry.get("weights") if isinstance(entry, dict) else None
    if not isinstance(weights, str) or not (bundle.root / weights).is_file():
        raise BundleError(f"bundle {bundle.root} holds no checkpoint copy (slimmed?); pass "
                          "the checkpoint it was exported from (--checkpoint PATH)")
    return bundle.file_path(weights, "checkpoint copy")
