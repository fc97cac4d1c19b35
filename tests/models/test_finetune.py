"""crnet.models.finetune: support pairs, the encoder cache, the adapter, determinism,
option checks, and the torch backend running an adapter."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from crnet.data.synthetic import Synthetic5i
from crnet.models.config import CRNetConfig
from crnet.models.crnet import CRNet
from crnet.models.finetune import (
    ONNX_PREFIX,
    FinetuneError,
    adapted_model,
    finetune,
    support_pairs,
    trainable_names,
)
from crnet.runtime.adapter import Adapter, AdapterError, load_adapter, save_adapter
from crnet.runtime.bundle import Bundle
from crnet.runtime.preprocess import InputError

FAST = {"steps": 3, "lr": 1e-2}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def supports() -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, np.ndarray]:
    """Three labelled supports and a query of one synthetic-5i test episode."""
    episode = Synthetic5i(0, split="test", seed=0).episode(1, shots=3)
    return (list(episode.support_images), list(episode.support_masks), episode.query_image,
            episode.query_mask)


@pytest.fixture
def model(tiny_config: CRNetConfig) -> CRNet:
    return CRNet(dataclasses.replace(tiny_config, dropout=0.0)).eval()


@pytest.mark.parametrize("shots", [2, 3, 5])
def test_every_ordered_pair_once(shots: int) -> None:
    pairs = support_pairs(shots)
    assert len(pairs) == shots * (shots - 1) == len(set(pairs))
    assert all(support != query for support, query in pairs)
    assert {index for pair in pairs for index in pair} == set(range(shots))


def test_one_support_is_refused() -> None:
    with pytest.raises(FinetuneError, match="at least 2 labelled supports"):
        support_pairs(1)


def test_encoder_runs_once_per_support(model: CRNet, supports, monkeypatch) -> None:
    images, masks, _, _ = supports
    calls: list[int] = []
    encode = CRNet.encode

    def counting(self: CRNet, batch: torch.Tensor) -> torch.Tensor:
        calls.append(batch.shape[0])
        return encode(self, batch)

    monkeypatch.setattr(CRNet, "encode", counting)
    adapter = finetune(model, images, masks, steps=4, lr=1e-2)
    assert calls == [len(images)]  # one call, one row per support, whatever the step count
    assert adapter.settings["pairs"] == 6 and adapter.settings["steps"] == 4


def test_adapter_holds_only_the_trainable_tensors(model: CRNet, supports) -> None:
    images, masks, _, _ = supports
    before = {k: v.clone() for k, v in model.state_dict().items()}
    adapter = finetune(model, images, masks, parts=("refinement",), **FAST)
    expected = {ONNX_PREFIX + name for name in trainable_names(model, ("refinement",))}
    assert set(adapter.tensors) == expected
    assert all(t.dtype == np.float32 for t in adapter.tensors.values())
    shipped = {ONNX_PREFIX + k: v.numpy() for k, v in before.items()}
    changed = [name for name, t in adapter.tensors.items() if not np.array_equal(t, shipped[name])]
    assert changed, "the finetune changed none of the trainable tensors"
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the source model changed"


def test_seeded_runs_are_identical(model: CRNet, supports) -> None:
    images, masks, _, _ = supports
    first = finetune(model, images, masks, pairs_per_step=2, seed=3, **FAST)
    again = finetune(model, images, masks, pairs_per_step=2, seed=3, **FAST)
    other = finetune(model, images, masks, pairs_per_step=2, seed=4, **FAST)
    assert all(np.array_equal(first.tensors[k], again.tensors[k]) for k in first.tensors)
    assert any(not np.array_equal(first.tensors[k], other.tensors[k]) for k in first.tensors)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_loss_on_the_pairs_goes_down(model: CRNet, supports, optimizer: str) -> None:
    images, masks, _, _ = supports
    adapter = finetune(model, images, masks, steps=12, optimizer=optimizer,
                       lr=1e-2 if optimizer == "adam" else 0.1)
    assert adapter.settings["loss_last"] < 0.9 * adapter.settings["loss_first"]
    assert adapter.settings["seconds_per_step"] > 0


@pytest.mark.parametrize(("overrides", "message"), [
    ({"steps": 0}, "steps is 0"),
    ({"lr": 0.0}, "lr is 0.0"),
    ({"parts": ("trunk",)}, "expected one or more of cross_reference"),
    ({"optimizer": "rmsprop"}, "optimizer is 'rmsprop'"),
    ({"device": "tpu"}, "device is 'tpu'"),
    ({"warmup": 3}, "unknown finetune option"),
])
def test_bad_options_are_refused(model: CRNet, supports, overrides, message) -> None:
    images, masks, _, _ = supports
    with pytest.raises(FinetuneError, match=message):
        finetune(model, images, masks, **overrides)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_says_so(model: CRNet, supports) -> None:
    images, masks, _, _ = supports
    with pytest.raises(FinetuneError, match="sees no CUDA device"):
        finetune(model, images, masks, device="cuda", **FAST)


def test_bad_supports_are_refused(model: CRNet, supports) -> None:
    images, masks, _, _ = supports
    with pytest.raises(InputError, match="3 support images but 2 masks"):
        finetune(model, images, masks[:2], **FAST)
    with pytest.raises(InputError, match="support mask 1 is empty"):
        finetune(model, images, [masks[0], np.zeros_like(masks[1]), masks[2]], **FAST)


def test_bundle_adapter_runs_on_the_torch_backend(tiny_bundle: Path, supports,
                                                  tmp_path: Path) -> None:
    from crnet.runtime import Segmenter

    images, masks, query, _ = supports
    adapter = finetune(tiny_bundle, images, masks, **FAST)
    bundle = Bundle.load(tiny_bundle)
    saved = load_adapter(save_adapter(tmp_path / "adapter", adapter), bundle)
    segmenter = Segmenter(tiny_bundle, backend="torch")
    segmenter.set_support(images, masks)
    _, shipped = segmenter.segment(query, return_prob=True)
    segmenter.set_adapter(saved)
    _, adapted = segmenter.segment(query, return_prob=True)
    reference = _adapted_probability(segmenter, adapter, images, masks, query)
    assert np.abs(adapted - shipped).max() > 1e-3  # the adapter changes the masks
    np.testing.assert_allclose(adapted, reference, atol=1e-5)
    segmenter.set_adapter(None)
    _, restored = segmenter.segment(query, return_prob=True)
    np.testing.assert_array_equal(restored, shipped)


def _adapted_probability(segmenter, adapter: Adapter, images, masks, query) -> np.ndarray:
    """The query probability of the finetuned model run directly (no backend)."""
    from crnet.models.checkpoint import load_checkpoint
    from crnet.runtime.preprocess import (
        foreground_probability,
        preprocess_image,
        preprocess_mask,
        probability_to_image,
    )

    weights = Path(segmenter.bundle.root) / "checkpoint.safetensors"
    model, _ = load_checkpoint(weights, allow_unverified=True)
    tuned = adapted_model(model, adapter)
    config = tuned.config
    prep = (config.input_size, config.mean, config.std)
    with torch.no_grad():
        logits = tuned.refine_query(
            tuned.encode(torch.from_numpy(preprocess_image(query, *prep))),
            tuned.encode(torch.from_numpy(np.concatenate(
                [preprocess_image(i, *prep) for i in images]))),
            torch.from_numpy(np.concatenate(
                [preprocess_mask(m, config.input_size, config.feature_size) for m in masks])))
    return probability_to_image(foreground_probability(logits[0].numpy()), query.shape)


def test_adapter_for_another_bundle_is_refused(tiny_bundle: Path, supports) -> None:
    from crnet.runtime import Segmenter

    images, masks, _, _ = supports
    adapter = finetune(tiny_bundle, images, masks, steps=1, lr=1e-3)
    foreign = Adapter(adapter.tensors, {**adapter.identity, "checkpoint_sha256": "0" * 64},
                      adapter.settings)
    segmenter = Segmenter(tiny_bundle, backend="torch")
    with pytest.raises(AdapterError, match="made for another bundle"):
        segmenter.set_adapter(foreign)
    assert segmenter.backend.adapter is None


def test_torch_backend_never_changes_an_in_memory_model(model: CRNet, supports) -> None:
    from crnet.models.torch_backend import TorchBackend

    images, masks, _, _ = supports
    adapter = finetune(model, images, masks, **FAST)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    backend = TorchBackend(None, model=model, device="cpu")
    backend.apply_adapter(adapter)
    with backend:
        tuned = dict(backend.model.named_parameters())
        name = next(iter(adapter.tensors))
        np.testing.assert_array_equal(tuned[name[len(ONNX_PREFIX):]].detach().numpy(),
                                      adapter.tensors[name])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
