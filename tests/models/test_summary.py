from __future__ import annotations

from crnet.models.config import CRNetConfig, preset
from crnet.models.summary import flops_entry, format_summary, summarize


def test_flops_of_the_query_branch(tiny_config: CRNetConfig) -> None:
    summary = summarize(tiny_config)
    # Both branches run the same condition + refinement; the query branch alone is half of
    # that plus the (small) cross-reference on both sides, so just above half the refine.
    assert summary.refine_flops / 2 < summary.refine_query_flops < 0.6 * summary.refine_flops
    assert summary.segment_flops == summary.encode_flops + summary.refine_query_flops
    assert summary.forward_flops == 2 * summary.encode_flops + summary.refine_flops
    entry = flops_entry(tiny_config)
    assert entry["refine_query"] == summary.refine_query_flops
    assert entry["segment"] == summary.segment_flops


def test_lite_preset_figures() -> None:
    summary = summarize(preset("crnet-lite"))
    # Hand count of the encoder's first conv: 7x7x3 -> 32 channels at stride 2 (97x97).
    assert summary.encode_flops > 2 * 97 * 97 * 32 * 7 * 7 * 3
    text = format_summary(summary)
    assert "query branch" in text and "segment 1 query" in text
