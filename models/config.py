"""CRNetConfig: every hyperparameter of the model in one dataclass, and the named presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from crnet.runtime.errors import CrnetError


class ConfigError(CrnetError, ValueError):
    """A model or training configuration that is not valid (names the field and the rule)."""


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class CRNetConfig:
    """Architecture and preprocessing of one CRNet variant.

    The trunk is a ResNet cut after layer3: ``block`` picks basic or bottleneck blocks,
    ``trunk_blocks`` the block count of layer1..layer3, ``trunk_widths`` their base widths.
    layer3 is dilated (stride 1, dilation 2) so the output stride is 8, as in CaNet.
    """

    name: str = "crnet-lite"
    block: str = "basic"  # "basic" | "bottleneck"
    stem_width: int = 32
    trunk_blocks: tuple[int, int, int] = (1, 1, 1)
    trunk_widths: tuple[int, int, int] = (32, 64, 128)
    feature_channels: int = 64  # C: channels of the backbone output
    reduction: int = 4  # cross-reference FC bottleneck ratio
    refine_steps: int = 3  # T: recurrent mask-refinement steps
    dropout: float = 0.1
    input_size: tuple[int, int] = (193, 193)  # (H, W) the network sees
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    max_shots: int = 8

    def __post_init__(self) -> None:
        _check_types(self)
        if self.block not in ("basic", "bottleneck"):
            raise ConfigError(f"block must be 'basic' or 'bottleneck', got {self.block!r}")
        if len(self.trunk_blocks) != 3 or len(self.trunk_widths) != 3:
            raise ConfigError("trunk_blocks and trunk_widths need exactly 3 entries (layer1..3)")
        if self.refine_steps < 1:
            raise ConfigError(f"refine_steps must be >= 1, got {self.refine_steps}")
        if min(self.input_size) < 32:
            raise ConfigError(f"input_size must be at least 32x32, got {self.input_size}")
        for name, (low, high) in LIMITS.items():
            value = getattr(self, name)
            for item in value if isinstance(value, tuple) else (value,):
                if not low <= item <= high:
                    raise ConfigError(
                        f"{name} is {value}; each value must lie in [{low}, {high}] "
                        "(a config outside these bounds is refused before any model is built)")
        if not all(s > 0 for s in self.std):
            raise ConfigError(f"std must be positive, got {self.std}")

    @property
    def feature_size(self) -> tuple[int, int]:
        """Spatial size (h, w) of the backbone output for ``input_size``."""

        def down(n: int) -> int:
            n = (n + 2 * 3 - 7) // 2 + 1  # stem conv 7x7 stride 2
            n = (n + 2 - 3) // 2 + 1  # max-pool 3x3 stride 2
            return (n + 2 - 3) // 2 + 1  # layer2 stride 2

        return down(self.input_size[0]), down(self.input_size[1])

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CRNetConfig:
        """Inverse of ``to_dict``; unknown keys, wrong types and out-of-range values are
        ConfigErrors naming the field."""
        if not isinstance(data, dict):
            raise ConfigError(f"a model config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        data = dict(data)
        if data.get("extra") == {}:  # an empty field that older checkpoints recorded
            del data["extra"]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown CRNetConfig keys: {unknown}")
        values = dict(data)
        for key in ("trunk_blocks", "trunk_widths", "input_size", "mean", "std"):
            if key in values:
                if not isinstance(values[key], (list, tuple)):
                    raise ConfigError(f"{key} is {values[key]!r}; expected a list")
                values[key] = tuple(values[key])
        return cls(**values)


# Bounds of every numeric field: generous for real models (ResNet-101-sized trunks, 1024x1024
# inputs), but small enough that a config read from an untrusted sidecar cannot make the
# model builder allocate gigabytes (widths of 8192 took 42 s and 8.8 GB before failing).
LIMITS: dict[str, tuple[float, float]] = {
    "stem_width": (1, 512),
    "trunk_blocks": (1, 64),
    "trunk_widths": (1, 1024),
    "feature_channels": (1, 2048),
    "reduction": (1, 1024),
    "refine_steps": (1, 32),
    "dropout": (0.0, 0.99),
    "input_size": (32, 2048),
    "mean": (-10.0, 10.0),
    "std": (1e-6, 10.0),
    "max_shots": (1, 64),
}
_FIELD_TYPES: dict[str, tuple[type, int | None]] = {  # (element type, tuple length or None)
    "name": (str, None), "block": (str, None), "stem_width": (int, None),
    "trunk_blocks": (int, 3), "trunk_widths": (int, 3), "feature_channels": (int, None),
    "reduction": (int, None), "refine_steps": (int, None), "dropout": (float, None),
    "input_size": (int, 2), "mean": (float, 3), "std": (float, 3), "max_shots": (int, None),
}


def _check_types(config: CRNetConfig) -> None:
    """Each field has its declared type (ints are not bools; floats accept ints)."""
    for name, (kind, length) in _FIELD_TYPES.items():
        value = getattr(config, name)
        items = value if length is not None else (value,)
        if length is not None and (not isinstance(value, tuple) or len(value) != length):
            raise ConfigError(f"{name} is {value!r}; expected {length} {kind.__name__}s")
        accepted = (int, float) if kind is float else kind
        if not all(isinstance(item, accepted) and not isinstance(item, bool) for item in items):
            raise ConfigError(f"{name} is {value!r}; expected "
                              f"{kind.__name__}{'s' if length else ''}")


PRESETS: dict[str, CRNetConfig] = {
    # The paper's size: ResNet-50 layer1..3 (bottleneck 3/4/6), 256 channels, 321x321 -> 41x41.
    "crnet-r50": CRNetConfig(
        name="crnet-r50",
        block="bottleneck",
        stem_width=64,
        trunk_blocks=(3, 4, 6),
        trunk_widths=(64, 128, 256),
        feature_channels=256,
        reduction=16,
        refine_steps=5,
        dropout=0.5,
        input_size=(321, 321),
    ),
    # A small trunk for CPUs and edge devices, trainable on 2 CPU cores within an hour.
    "crnet-lite": CRNetConfig(),
}


def preset(name: str) -> CRNetConfig:
    """The named preset's config; a clear error lists the known names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)}") from None


TRAIN_DEVICES = ("cpu", "cuda")
OPTIMIZERS = ("adamw", "sgd")

# The two recipes of `crnet train` (models/training.py). "scratch": the whole network from
# random weights (the shipped crnet-lite). "canet": CaNet's settings (icoz69/CaNet):
# ImageNet trunk frozen, SGD lr 0.0025 momentum 0.9 weight decay 5e-4, batch 4, 321x321,
# constant learning rate, no gradient clipping.
RECIPES: dict[str, dict[str, Any]] = {
    "scratch": {"optimizer": "adamw", "lr": 2e-3, "momentum": 0.9, "weight_decay": 1e-4,
                "batch": 8, "warmup": 200, "min_lr_ratio": 0.02, "clip_norm": 5.0,
                "freeze_trunk": False, "input_size": 0},
    "canet": {"optimizer": "sgd", "lr": 2.5e-3, "momentum": 0.9, "weight_decay": 5e-4,
              "batch": 4, "warmup": 0, "min_lr_ratio": 1.0, "clip_norm": 0.0,
              "freeze_trunk": True, "input_size": 321},
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run besides the model config.

    The defaults are the "scratch" recipe; ``TrainConfig.for_recipe("canet", ...)`` gives
    CaNet's. ``input_size`` 0 keeps the preset's; ``min_lr_ratio`` 1 is a constant rate;
    ``clip_norm`` 0 turns clipping off.
    """

    preset: str = "crnet-lite"
    fold: int = 0
    steps: int = 3000
    batch: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: int = 200
    min_lr_ratio: float = 0.02
    clip_norm: float = 5.0
    seed: int = 0
    eval_every: int = 500
    eval_episodes: int = 200
    save_every: int = 100
    threads: int = 0  # 0: torch's default
    recipe: str = "scratch"
    dataset: str = "synthetic-5i"
    data_root: str | None = None
    optimizer: str = "adamw"
    momentum: float = 0.9  # SGD only
    freeze_trunk: bool = False
    init_trunk: str | None = None  # ImageNet ResNet-50 file (models.imagenet_init)
    input_size: int = 0  # square training/eval input; 0: the preset's
    query_loss_weight: float = 1.0
    support_loss_weight: float = 1.0
    device: str = "cpu"
    amp: bool = False

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "eval_every", "eval_episodes", "save_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.recipe not in RECIPES:
            raise ConfigError(f"recipe must be one of {sorted(RECIPES)}, got {self.recipe!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.device not in TRAIN_DEVICES:
            raise ConfigError(f"device must be one of {TRAIN_DEVICES}, got {self.device!r}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        for name in ("weight_decay", "warmup", "clip_norm"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.input_size and self.input_size < 32:
            raise ConfigError(f"input_size must be 0 (the preset's) or >= 32, "
                              f"got {self.input_size}")
        if self.query_loss_weight < 0 or self.support_loss_weight < 0 or (
                self.query_loss_weight + self.support_loss_weight == 0):
            raise ConfigError("query_loss_weight and support_loss_weight must be >= 0 and not "
                              "both 0")

    @classmethod
    def for_recipe(cls, recipe: str, **overrides: Any) -> TrainConfig:
        """A TrainConfig with ``recipe``'s settings, then ``overrides`` (None = keep)."""
        if recipe not in RECIPES:
            raise ConfigError(f"recipe must be one of {sorted(RECIPES)}, got {recipe!r}")
        values = {**RECIPES[recipe], "recipe": recipe}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
