"""--init-trunk: torchvision/timm ResNet-50 state dicts into the crnet-r50 trunk.

The state dict is built here from torchvision's ResNet-50 key table (nothing downloaded).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from crnet.models.config import TrainConfig, preset
from crnet.models.crnet import CRNet
from crnet.models.imagenet_init import TrunkInitError, init_trunk, read_state_dict, trunk_key

# torchvision.models.resnet50: (stage, blocks, width); bottleneck out = 4 x width
RESNET50_STAGES = (("layer1", 3, 64), ("layer2", 4, 128), ("layer3", 6, 256), ("layer4", 3, 512))
BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _bn(prefix: str, channels: int, table: dict[str, list[int]]) -> None:
    for name in BN_KEYS:
        table[f"{prefix}.{name}"] = [] if name == "num_batches_tracked" else [channels]


def resnet50_key_table() -> dict[str, list[int]]:
    """torchvision ResNet-50 state dict: key -> shape, in torchvision's names."""
    table: dict[str, list[int]] = {"conv1.weight": [64, 3, 7, 7]}
    _bn("bn1", 64, table)
    channels = 64
    for stage, blocks, width in RESNET50_STAGES:
        for index in range(blocks):
            block = f"{stage}.{index}"
            table[f"{block}.conv1.weight"] = [width, channels, 1, 1]
            _bn(f"{block}.bn1", width, table)
            table[f"{block}.conv2.weight"] = [width, width, 3, 3]
            _bn(f"{block}.bn2", width, table)
            table[f"{block}.conv3.weight"] = [4 * width, width, 1, 1]
            _bn(f"{block}.bn3", 4 * width, table)
            if index == 0:
                table[f"{block}.downsample.0.weight"] = [4 * width, channels, 1, 1]
                _bn(f"{block}.downsample.1", 4 * width, table)
            channels = 4 * width
    table["fc.weight"] = [1000, 2048]
    table["fc.bias"] = [1000]
    return table


def resnet50_state_dict(seed: int = 1, keep=lambda key: True) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for key, shape in resnet50_key_table().items():
        if not keep(key):
            continue
        if key.endswith("num_batches_tracked"):
            tensors[key] = torch.tensor(1000, dtype=torch.long)
        elif key.startswith(("layer4", "fc")):
            tensors[key] = torch.zeros(shape)  # unused by the trunk: values do not matter
        elif key.endswith("running_var"):
            tensors[key] = torch.rand(shape, generator=generator) + 0.5
        else:
            tensors[key] = torch.randn(shape, generator=generator) * 0.05
    return tensors


def test_the_key_table_is_resnet50() -> None:
    table = resnet50_key_table()
    assert len(table) == 320  # len(torchvision.models.resnet50().state_dict())
    learned = sum(torch.Size(s).numel() for k, s in table.items()
                  if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert learned == 25_557_032  # torchvision's documented ResNet-50 parameter count


@pytest.fixture(scope="module")
def torchvision_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("imagenet") / "resnet50-0676ba61.pth"
    torch.save(resnet50_state_dict(), path)
    return path


def _check_imported(model: CRNet, source: dict[str, torch.Tensor]) -> None:
    trunk = model.trunk.state_dict()
    for key, value in source.items():
        if not key.startswith(("fc.", "layer4.")):
            assert torch.equal(trunk[trunk_key(key)], value), key


def test_torchvision_file_maps_onto_the_r50_trunk(torchvision_file: Path) -> None:
    model = CRNet(preset("crnet-r50"))
    report = init_trunk(model, torchvision_file)
    trunk_keys = model.trunk.state_dict().keys()
    assert len(report.mapped) == len(trunk_keys) and report.missing == []
    assert sorted(report.unused) == sorted(k for k in resnet50_key_table()
                                           if k.startswith(("fc.", "layer4.")))
    assert report.to_dict()["file"] == torchvision_file.name and len(report.sha256) == 64
    _check_imported(model, resnet50_state_dict())
    assert "0 missing" in report.summary()


def test_timm_safetensors_wrappers_and_old_files(tmp_path: Path) -> None:
    source = resnet50_state_dict(seed=2)
    timm_file = tmp_path / "model.safetensors"
    save_file(source, str(timm_file))
    model = CRNet(preset("crnet-r50"))
    init_trunk(model, timm_file)
    _check_imported(model, source)

    wrapped = tmp_path / "checkpoint.pth"  # a training checkpoint around a DataParallel dict
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in source.items()}},
               wrapped)
    assert set(read_state_dict(wrapped)) == set(source)

    old = tmp_path / "resnet50-19c8e357.pth"  # older torchvision files: no num_batches_tracked
    torch.save({k: v for k, v in source.items() if "num_batches_tracked" not in k}, old)
    report = init_trunk(CRNet(preset("crnet-r50")), old)
    assert report.missing and all(k.endswith("num_batches_tracked") for k in report.missing)


def test_a_whole_pickled_model_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "whole-model.pth"
    torch.save(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1)), path)
    with pytest.raises(TrunkInitError, match=r"whole-model\.pth holds pickled Python objects"):
        read_state_dict(path)


def test_truncated_files_are_refused(tmp_path: Path, torchvision_file: Path) -> None:
    cut = tmp_path / "resnet50-cut.pth"
    cut.write_bytes(torchvision_file.read_bytes()[:1_000_000])
    with pytest.raises(TrunkInitError, match=r"resnet50-cut\.pth cannot be read.*truncated"):
        read_state_dict(cut)
    cut_safetensors = tmp_path / "cut.safetensors"
    save_file({"conv1.weight": torch.zeros(64, 3, 7, 7)}, str(cut_safetensors))
    cut_safetensors.write_bytes(cut_safetensors.read_bytes()[:-100])
    with pytest.raises(TrunkInitError, match=r"cut\.safetensors is a truncated or corrupt"):
        read_state_dict(cut_safetensors)
    with pytest.raises(TrunkInitError, match="does not exist"):
        read_state_dict(tmp_path / "absent.pth")


def test_other_architectures_are_refused(tmp_path: Path) -> None:
    vit = tmp_path / "vit_base.safetensors"
    save_file({"patch_embed.proj.weight": torch.zeros(8, 3, 16, 16),
               "blocks.0.attn.qkv.weight": torch.zeros(24, 8)}, str(vit))
    with pytest.raises(TrunkInitError, match=r"vit_base\.safetensors is not a ResNet"):
        init_trunk(CRNet(preset("crnet-r50")), vit)

    deeper = resnet50_state_dict()  # ResNet-101: layer3 has 23 blocks
    deeper["layer3.6.conv1.weight"] = torch.zeros(256, 1024, 1, 1)
    path = tmp_path / "resnet101.pth"
    torch.save(deeper, path)
    with pytest.raises(TrunkInitError, match=r"resnet101\.pth has 1 weights .*layer3\.6\.conv1"):
        init_trunk(CRNet(preset("crnet-r50")), path)

    basic = resnet50_state_dict()  # ResNet-34-like: 3x3 convolutions where r50 has 1x1
    basic["layer1.0.conv1.weight"] = torch.zeros(64, 64, 3, 3)
    path = tmp_path / "resnet34.pth"
    torch.save(basic, path)
    with pytest.raises(TrunkInitError, match=r"shape mismatch at layer1\.0\.conv1\.weight "
                                             r"\[64, 64, 3, 3\]"):
        init_trunk(CRNet(preset("crnet-r50")), path)


def test_r50_weights_do_not_fit_the_lite_trunk(torchvision_file: Path) -> None:
    with pytest.raises(TrunkInitError, match=r"crnet-lite trunk .*conv1\.weight \[64, 3, 7, 7\] "
                                             r"\(trunk\.stem\.0\.weight expects \[32, 3, 7, 7\]\)"):
        init_trunk(CRNet(preset("crnet-lite")), torchvision_file)


@pytest.mark.slow
def test_canet_recipe_keeps_the_imported_trunk_frozen(torchvision_file: Path,
                                                      tmp_path: Path) -> None:
    """A few SGD steps of crnet-r50 (65x65 inputs to stay quick): the trunk tensors in the
    saved checkpoint equal the imported ones (BatchNorm statistics included); the rest
    trains."""
    from crnet.models.checkpoint import load_checkpoint
    from crnet.models.training import train

    config = TrainConfig.for_recipe("canet", preset="crnet-r50", steps=2, batch=1,
                                    input_size=65, eval_every=2, eval_episodes=1,
                                    save_every=2, threads=2, init_trunk=str(torchvision_file))
    train(config, tmp_path / "run", progress=False)
    model, info = load_checkpoint(tmp_path / "run" / "crnet-r50-fold0.safetensors")
    _check_imported(model, resnet50_state_dict())
    trunk = model.trunk.state_dict()
    assert int(trunk["layer1.0.bn1.num_batches_tracked"]) == 1000  # BN never in train mode
    torch.manual_seed(config.seed)
    fresh = CRNet(info.config)
    assert not torch.equal(fresh.project[0].weight, model.project[0].weight)
    recorded = info.training["train"]
    assert {k: recorded[k] for k in ("recipe", "optimizer", "lr", "momentum", "weight_decay",
                                     "freeze_trunk", "dataset", "fold")} == {
        "recipe": "canet", "optimizer": "sgd", "lr": 0.0025, "momentum": 0.9,
        "weight_decay": 0.0005, "freeze_trunk": True, "dataset": "synthetic-5i", "fold": 0}
    assert info.training["init_trunk"]["mapped"] == len(trunk)
    assert info.config.input_size == (65, 65)
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["param_groups"][0]["momentum"] == 0.9
