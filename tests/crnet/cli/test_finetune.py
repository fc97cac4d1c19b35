"""`crnet finetune`: a support directory -> an adapter the bundle's backends load; errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from crnet.cli import main
from crnet.data.synthetic import Synthetic5i

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _write_supports(directory: Path, shots: int = 3) -> Synthetic5i:
    """``shots`` synthetic-5i supports as PNG images with <stem>.mask.png beside them."""
    from PIL import Image

    episode = Synthetic5i(0, split="test", seed=0).episode(2, shots=shots)
    directory.mkdir(parents=True, exist_ok=True)
    for shot, (image, mask) in enumerate(zip(episode.support_images, episode.support_masks,
                                             strict=True)):
        Image.fromarray(image).save(directory / f"shot{shot}.png")
        Image.fromarray(mask.astype(np.uint8)).save(directory / f"shot{shot}.mask.png")
    return episode


def test_finetune_writes_an_adapter_the_bundle_loads(tiny_bundle: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from crnet.runtime import Segmenter
    from crnet.runtime.adapter import load_adapter
    from crnet.runtime.bundle import Bundle

    episode = _write_supports(tmp_path / "support")
    out = tmp_path / "adapters" / "mine"
    (tmp_path / "adapters").mkdir()
    code = main(["finetune", str(tiny_bundle), "--support", str(tmp_path / "support"),
                 "--out", str(out), "--finetune-steps", "2", "--finetune-lr", "0.01",
                 "--finetune-parts", "refinement",
                 "--threads", "1", "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "on 3 supports (6 pairs), 2 adam steps" in printed
    assert "s per step" in printed and "s in total" in printed
    adapter = load_adapter(out.with_suffix(".safetensors"), Bundle.load(tiny_bundle))
    assert {name.split(".")[1] for name in adapter.tensors} == {"refinement"}
    assert adapter.settings["shots"] == 3 and adapter.settings["steps"] == 2
    segmenter = Segmenter(tiny_bundle, backend="onnxruntime")
    segmenter.set_support(list(episode.support_images), list(episode.support_masks),
                          adapter=out)
    assert segmenter.segment(episode.query_image).shape == episode.query_image.shape[:2]


@pytest.mark.parametrize(("layout", "message"), [
    ("missing", "is not a directory"),
    ("one", "has 1 image(s); finetuning needs at least 2"),
    ("no-mask", "missing mask"),
])
def test_bad_support_directories_are_refused(tiny_bundle: Path, tmp_path: Path, layout: str,
                                             message: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    support = tmp_path / "support"
    if layout != "missing":
        _write_supports(support, shots=1 if layout == "one" else 2)
    if layout == "no-mask":
        (support / "shot1.mask.png").unlink()
    code = main(["finetune", str(tiny_bundle), "--support", str(support),
                 "--out", str(tmp_path / "a"), "--no-progress"])
    assert code == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "a.json").exists() and not (tmp_path / "a.safetensors").exists()


def test_bad_option_is_one_line(tiny_bundle: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    _write_supports(tmp_path / "support", shots=2)
    code = main(["finetune", str(tiny_bundle), "--support", str(tmp_path / "support"),
                 "--out", str(tmp_path / "a"), "--finetune-parts", "trunk", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "expected one or more of cross_reference" in err
    assert len(err.strip().splitlines()) == 1


def test_without_torch_it_names_the_extra(tiny_bundle: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    _write_supports(tmp_path / "support", shots=2)
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ModuleNotFoundError
    code = main(["finetune", str(tiny_bundle), "--support", str(tmp_path / "support"),
                 "--out", str(tmp_path / "a"), "--no-progress"])
    assert code == 1
    assert "pip install 'crnet-deploy[export]'" in capsys.readouterr().err
