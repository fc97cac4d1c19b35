"""The options of each quantization job, one frozen value per job, checked when made.

``Fp16Options`` for calibration.fp16, ``Int8Options`` (with its ``SensitivityOptions``)
for calibration.int8; both carry the episodes they read as one data.options.EpisodeSource
(its fold None: the checkpoint's training fold; its seed draws the calibration episodes).
A bad value raises UsageError naming the option and what it accepts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from crnet.calibration.sensitivity import RANK_METHODS
from crnet.data.options import EpisodeSource
from crnet.runtime.errors import UsageError

# fp16: op types kept in fp32. ReduceSum/ReduceMean/Div hold range and accumulation:
# masked average pooling sums mask*feat over h*w pixels (past fp16's 65504 on larger
# presets) and divides by the mask area + 5e-4; Softmax is the probability the refinement
# feeds back to itself, Sigmoid the final probability. Casting any one of them to fp16
# moves the query probability measurably more than casting the other ops; Resize runs in
# fp16. (ONNX Runtime's CPU provider computes some fp16 ops in fp32 behind inserted casts,
# so CPU figures mostly bound the storage rounding; TensorRT computes in fp16.)
FP16_KEEP_FP32_OPS: tuple[str, ...] = ("ReduceMean", "ReduceSum", "Div", "Softmax", "Sigmoid")
INT8_OP_TYPES: tuple[str, ...] = ("Conv", "ConvTranspose", "Gemm", "MatMul")
CALIBRATION_METHODS: tuple[str, ...] = ("entropy", "percentile", "minmax")
DEFAULT_CALIBRATION_METHOD = "entropy"  # the lowest logit error of the three on crnet-lite
DEFAULT_CALIBRATION_EPISODES = 64
DEFAULT_CALIBRATION_SHOTS = 1
DEFAULT_CALIBRATION_SEED = 0
DEFAULT_CONFIRM_LAYERS = 4  # local ranking: top layers re-measured end to end
# local ranking: default cap on layers kept in fp32 (each step of the fp32 fallback is one
# int8 build and one scoring run, which is slow on the large models)
LOCAL_MAX_FP32_LAYERS = 4


def _at_least(name: str, value: int | float | None, low: int | float) -> None:
    if value is not None and value < low:
        raise UsageError(f"{name} must be at least {low}, got {value}")


@dataclass(frozen=True)
class Fp16Options:
    """How the fp16 variant is made and checked."""

    keep_fp32_ops: tuple[str, ...] = FP16_KEEP_FP32_OPS
    """ONNX op types left in fp32 (the converter's op_block_list)."""
    check_episodes: int = 32
    """Base-class train episodes that measure the fp16 graphs against fp32 (0: skip)."""
    data: EpisodeSource = field(default_factory=EpisodeSource)
    """The dataset and fold whose train split checks the variant."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep_fp32_ops", tuple(self.keep_fp32_ops))
        _at_least("check_episodes", self.check_episodes, 0)


@dataclass(frozen=True)
class SensitivityOptions:
    """How the int8 sensitivity analysis chooses the layers kept in fp32."""

    enabled: bool = True
    """False: quantize every layer (only ``Int8Options.exclude_layers`` stay fp32)."""
    episodes: int = 64
    """Held-out base-class episodes the int8 graphs are scored on."""
    target_delta: float = 0.5
    """|delta mIoU| against fp32 to reach by keeping layers in fp32."""
    rank: str = "auto"
    """full (each layer end to end), local (own output error, the top confirmed end to
    end) or auto (full up to sensitivity.FULL_RANK_MAX_LAYERS layers, else local)."""
    confirm_layers: int = DEFAULT_CONFIRM_LAYERS
    """Local ranking: top layers re-measured end to end."""
    max_fp32_layers: int | None = None
    """At most this many layers kept in fp32; None: no cap for the full ranking,
    LOCAL_MAX_FP32_LAYERS for the local one."""

    def __post_init__(self) -> None:
        _at_least("sensitivity episodes", self.episodes, 1)
        _at_least("target_delta", self.target_delta, 0)
        _at_least("confirm_layers", self.confirm_layers, 0)
        _at_least("max_fp32_layers", self.max_fp32_layers, 0)
        if self.rank not in RANK_METHODS:
            raise UsageError(f"sensitivity rank must be one of {RANK_METHODS}, got "
                             f"{self.rank!r}")


@dataclass(frozen=True)
class Int8Options:
    """How the int8 variant is calibrated, quantized and checked."""

    calibration_method: str | None = None
    """entropy, percentile or minmax; None: the saved ranges' method, else entropy."""
    calibration_episodes: int | None = None
    """Base-class train episodes to calibrate on; None: the saved ranges' count, else 64."""
    calibration_shots: int = DEFAULT_CALIBRATION_SHOTS
    """Support images per calibration episode."""
    recalibrate: bool = False
    """Calibrate again even when the bundle's saved ranges fit."""
    op_types: tuple[str, ...] = INT8_OP_TYPES
    """ONNX op types quantized."""
    exclude_layers: tuple[str, ...] = ()
    """``graph:weight`` layers always kept in fp32."""
    trt10_cache: bool = True
    """Also write TensorRT-10 calibration caches (the implicit INT8 path)."""
    sensitivity: SensitivityOptions = field(default_factory=SensitivityOptions)
    """The per-layer sensitivity analysis."""
    data: EpisodeSource = field(default_factory=EpisodeSource)
    """The dataset and fold whose train split calibrates (its seed draws the episodes)."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "op_types", tuple(self.op_types))
        object.__setattr__(self, "exclude_layers", tuple(self.exclude_layers))
        _at_least("calibration_episodes", self.calibration_episodes, 1)
        _at_least("calibration_shots", self.calibration_shots, 1)
        if (self.calibration_method is not None
                and self.calibration_method not in CALIBRATION_METHODS):
            raise UsageError(f"calibration method must be one of {CALIBRATION_METHODS}, got "
                             f"{self.calibration_method!r}")
