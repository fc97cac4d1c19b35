"""The options of `crnet deploy`: one frozen value, checked when made."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from crnet.calibration.options import Fp16Options, Int8Options
from crnet.data.options import EpisodeSource
from crnet.runtime.errors import UsageError
from crnet.runtime.layout import PRECISIONS


@dataclass(frozen=True)
class DeployOptions:
    """What deploy builds, on which data, and how much it measures.

    Episode counts and ``bench_iterations`` left None come from the budget for the model's
    FLOPs per query (crnet.deploy.pipeline.BUDGETS).
    """

    checkpoint: Path | None = None
    """The checkpoint; None: the bundled trained crnet-lite."""
    data: EpisodeSource = field(default_factory=EpisodeSource)
    """Calibrate on its train split (base classes of the fold), gate and bench on its test
    split; its fold None: the checkpoint's training fold; its seed draws the test episodes."""
    precisions: tuple[str, ...] = PRECISIONS
    """The variants built; fp32 must be one."""
    episodes: int = 1000
    """Test episodes of the accuracy check."""
    shots: int = 1
    """Support images per test episode."""
    parity_episodes: int = 64
    """Episodes of the export's PyTorch/ONNX parity check."""
    calibration_episodes: int | None = None
    """int8 calibration episodes."""
    sensitivity_episodes: int | None = None
    """int8 sensitivity episodes."""
    check_episodes: int | None = None
    """fp16 check episodes."""
    bench_iterations: int | None = None
    """Timed queries per variant."""
    threads: int | None = None
    """Threads of the benchmark; None: all cores."""
    finetune_episodes: int = 0
    """5-shot episodes on which fusion and k-shot finetuning are scored side by side for
    every variant (crnet.bench.finetune, the finetune's defaults); 0: no such row."""
    fp16: Fp16Options = field(default_factory=Fp16Options)
    """The fp16 options; deploy sets their data, progress and check_episodes."""
    int8: Int8Options = field(default_factory=Int8Options)
    """The int8 options; deploy sets their data, progress, calibration_episodes and
    sensitivity episodes."""
    progress: bool = True
    """Show progress bars."""
    command: str = "crnet deploy"
    """The command line recorded in the report."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "precisions", tuple(self.precisions))
        unknown = sorted(set(self.precisions) - set(PRECISIONS))
        if unknown or "fp32" not in self.precisions:
            raise UsageError(f"precisions must list fp32 and any of {PRECISIONS}, got "
                             f"{list(self.precisions)}")
        if self.finetune_episodes < 0:
            raise UsageError(f"deploy finetune_episodes must be at least 0, got "
                             f"{self.finetune_episodes}")
        if self.parity_episodes < 0:
            raise UsageError(f"deploy parity_episodes must be at least 0, got "
                             f"{self.parity_episodes}")
        counts = {"episodes": self.episodes, "shots": self.shots,
                  "calibration_episodes": self.calibration_episodes,
                  "sensitivity_episodes": self.sensitivity_episodes,
                  "check_episodes": self.check_episodes,
                  "bench_iterations": self.bench_iterations, "threads": self.threads}
        for name, value in counts.items():
            if value is not None and value < 1:
                raise UsageError(f"deploy {name} must be at least 1, got {value}")

    def budget_overrides(self) -> dict[str, int | None]:
        """The explicit episode counts and bench iterations (None: the budget's)."""
        return {"calibration_episodes": self.calibration_episodes,
                "sensitivity_episodes": self.sensitivity_episodes,
                "check_episodes": self.check_episodes,
                "bench_iterations": self.bench_iterations}
