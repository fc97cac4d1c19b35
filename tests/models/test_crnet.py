from __future__ import annotations

import dataclasses

import pytest
import torch

from crnet.models.config import PRESETS, CRNetConfig, preset
from crnet.models.crnet import CRNet, resize_mask


def _inputs(config: CRNetConfig, shots: int, size: tuple[int, int] | None = None):
    height, width = size or config.input_size
    query = torch.randn(1, 3, height, width)
    supports = torch.randn(shots, 3, height, width)
    masks = torch.zeros(shots, 1, height, width)
    masks[:, :, height // 4: 3 * height // 4, width // 4: 3 * width // 4] = 1
    return query, supports, masks


@pytest.mark.parametrize("shots", [1, 2, 3, 4, 5])
def test_shapes_for_k_shots(tiny_config: CRNetConfig, shots: int) -> None:
    model = CRNet(tiny_config).eval()
    query, supports, masks = _inputs(tiny_config, shots)
    with torch.no_grad():
        query_logits, support_logits = model(query, supports, masks)
    height, width = tiny_config.feature_size
    assert query_logits.shape == (1, 2, height, width)
    assert support_logits.shape == (shots, 2, height, width)


def test_non_square_input(tiny_config: CRNetConfig) -> None:
    config = dataclasses.replace(tiny_config, input_size=(81, 129))
    model = CRNet(config).eval()
    query, supports, masks = _inputs(config, 2)
    with torch.no_grad():
        query_logits, support_logits = model(query, supports, masks)
    assert query_logits.shape == (1, 2, *config.feature_size)
    assert config.feature_size == (11, 17)
    assert support_logits.shape == (2, 2, 11, 17)


def test_feature_size_matches_paper_preset() -> None:
    assert preset("crnet-r50").feature_size == (41, 41)
    assert preset("crnet-lite").feature_size == (25, 25)


def test_gradients_reach_every_parameter(tiny_config: CRNetConfig) -> None:
    model = CRNet(tiny_config).train()
    query, supports, masks = _inputs(tiny_config, 2)
    query_logits, support_logits = model(query, supports, masks)
    (query_logits.square().mean() + support_logits.square().mean()).backward()
    without_grad = [
        name for name, parameter in model.named_parameters()
        if parameter.requires_grad and (parameter.grad is None or not parameter.grad.any())
    ]
    assert without_grad == []


@pytest.mark.parametrize("shots", [1, 3])
def test_refine_of_encode_equals_forward(tiny_config: CRNetConfig, shots: int) -> None:
    model = CRNet(tiny_config).eval()
    query, supports, masks = _inputs(tiny_config, shots)
    with torch.no_grad():
        expected = model(query, supports, masks)
        support_feat = model.encode(supports)
        split = model.refine(
            model.encode(query), support_feat, resize_mask(masks, support_feat.shape[2:])
        )
    for whole, parts in zip(expected, split, strict=True):
        assert torch.equal(whole, parts)


@pytest.mark.parametrize("shots", [1, 3])
def test_refine_query_is_the_query_half_of_refine(tiny_config: CRNetConfig, shots: int) -> None:
    model = CRNet(tiny_config).eval()
    query, supports, masks = _inputs(tiny_config, shots)
    with torch.no_grad():
        query_feat, support_feat = model.encode(query), model.encode(supports)
        small_masks = resize_mask(masks, support_feat.shape[2:])
        query_logits, _ = model.refine(query_feat, support_feat, small_masks)
        alone = model.refine_query(query_feat, support_feat, small_masks)
        # The supports still matter to the query branch (cross-reference, class vector).
        other = model.refine_query(query_feat, support_feat.flip(0).roll(1, dims=2),
                                   small_masks)
    assert torch.equal(alone, query_logits)
    assert not torch.allclose(other, query_logits)


def test_refine_steps_argument_changes_output(tiny_config: CRNetConfig) -> None:
    model = CRNet(tiny_config).eval()
    query, supports, masks = _inputs(tiny_config, 1)
    with torch.no_grad():
        feat_q, feat_s = model.encode(query), model.encode(supports)
        mask = resize_mask(masks, feat_s.shape[2:])
        one = model.refine(feat_q, feat_s, mask, steps=1)[0]
        two = model.refine(feat_q, feat_s, mask, steps=2)[0]
    assert not torch.equal(one, two)


def test_all_zero_support_mask_is_a_clear_error(tiny_config: CRNetConfig) -> None:
    model = CRNet(tiny_config).eval()
    query, supports, masks = _inputs(tiny_config, 2)
    masks[1] = 0
    with pytest.raises(ValueError, match=r"shot\(s\) \[1\] is all zero"):
        model(query, supports, masks)


def test_mismatched_shapes_are_clear_errors(tiny_config: CRNetConfig) -> None:
    model = CRNet(tiny_config).eval()
    query, supports, masks = _inputs(tiny_config, 2)
    with pytest.raises(ValueError, match="2 support images but 1 masks"):
        model(query, supports, masks[:1])
    with pytest.raises(ValueError, match=r"images must be \[N,3,H,W\]"):
        model(query[:, :1], supports, masks)
    feat = model.encode(query)
    with pytest.raises(ValueError, match="support_mask must be"):
        model.refine(feat, feat, torch.ones(1, 1, 3, 3))
    with pytest.raises(ValueError, match="1 support features for 2 queries"):
        model.refine(torch.cat([feat, feat]), feat, torch.ones(1, 1, *feat.shape[2:]))


def test_batched_episodes_equal_separate_episodes(tiny_config: CRNetConfig) -> None:
    """Training batches B episodes in one refine call; results equal B separate calls."""
    model = CRNet(tiny_config).eval()
    episodes = [_inputs(tiny_config, 2) for _ in range(3)]
    with torch.no_grad():
        separate = [model(*episode) for episode in episodes]
        query_feat = model.encode(torch.cat([e[0] for e in episodes]))
        support_feat = model.encode(torch.cat([e[1] for e in episodes]))
        masks = resize_mask(torch.cat([e[2] for e in episodes]), support_feat.shape[2:])
        query_logits, support_logits = model.refine(query_feat, support_feat, masks)
    torch.testing.assert_close(query_logits, torch.cat([s[0] for s in separate]))
    torch.testing.assert_close(support_logits, torch.cat([s[1] for s in separate]))


def test_k_shot_fusion_is_weighted_by_mask_area(tiny_config: CRNetConfig) -> None:
    """Two identical shots give the same query prediction as one (prototype fusion)."""
    model = CRNet(tiny_config).eval()
    query, supports, masks = _inputs(tiny_config, 1)
    with torch.no_grad():
        one = model(query, supports, masks)[0]
        two = model(query, supports.repeat(2, 1, 1, 1), masks.repeat(2, 1, 1, 1))[0]
    torch.testing.assert_close(one, two, rtol=1e-5, atol=1e-5)


def test_presets_and_config_round_trip() -> None:
    assert set(PRESETS) == {"crnet-r50", "crnet-lite"}
    for config in PRESETS.values():
        assert CRNetConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        preset("nope")
    with pytest.raises(ValueError, match="unknown CRNetConfig keys"):
        CRNetConfig.from_dict({"wat": 1})
    with pytest.raises(ValueError, match="block must be"):
        CRNetConfig(block="dense")
