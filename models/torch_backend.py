"""PyTorch backend: the fp32 reference, on CPU or CUDA (models' plugin to runtime.Segmenter).

It lives beside the model, not in runtime/, so that the runtime stays a leaf: it is
registered under the name ``torch`` through the ``crnet_deploy.backends`` entry point of
crnet-deploy's pyproject (runtime.backends.base discovers it).

Runs ``CRNet.encode`` and ``CRNet.refine`` of the checkpoint a bundle carries
(``checkpoint.safetensors`` + ``checkpoint.json``, named in the manifest's
``"checkpoint"`` entry), or of a bare checkpoint (``checkpoint=`` path). torch and
``models`` are imported only when the backend is activated. Pre- and post-processing are
the Segmenter's (runtime.preprocess), exactly as for every other backend.
"""

from __future__ import annotations

import copy
import importlib.util
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from crnet.runtime.backends.base import Backend, BackendError, ModelSpec
from crnet.runtime.bundle import Bundle, relative_member
from crnet.runtime.layout import CHECKPOINT_WEIGHTS

if TYPE_CHECKING:
    from crnet.runtime.adapter import Adapter


class TorchBackend(Backend):
    """models.CRNet in eval mode under torch.inference_mode."""

    name = "torch"
    install_hint = "Install it with `pip install torch==2.13.0` (a CPU wheel is enough)."
    thread_safe = True
    runs_on_cpu = True
    takes_threads = True

    @classmethod
    def runs_query_branch_only(cls, info: dict[str, Any]) -> bool:
        """Always: segment() runs ``refine_query``, the query branch alone."""
        return True

    def __init__(self, bundle: Bundle | None, precision: str = "fp32", *,
                 checkpoint: str | Path | None = None, device: str | None = None,
                 threads: int | None = None, model: Any = None) -> None:
        if precision != "fp32":
            raise BackendError(f"the torch backend is the fp32 reference; precision "
                               f"{precision!r} runs on onnxruntime or tensorrt")
        super().__init__(bundle, precision)
        self.in_memory_model = model  # a models.crnet.CRNet to run instead of a checkpoint
        if model is not None and checkpoint is not None:
            raise BackendError("pass either a checkpoint or an in-memory model, not both")
        if bundle is not None and checkpoint is None and model is None:
            entry = bundle.manifest.get("checkpoint", {})
            name = entry.get("weights", CHECKPOINT_WEIGHTS) if isinstance(entry, dict) \
                else CHECKPOINT_WEIGHTS
            checkpoint = relative_member(bundle.root, name, "bundled checkpoint")
            if not Path(checkpoint).exists():
                raise BackendError(
                    f"bundle {bundle.root} carries no checkpoint ({Path(checkpoint).name}); "
                    "re-export it with `crnet export` or use Segmenter.from_checkpoint(path)")
            # both files are loaded: each must be listed (so verified) in a verified bundle
            bundle.file_path(name, "bundled checkpoint")
            bundle.file_path(Path(name).with_suffix(".json").as_posix(),
                             "bundled checkpoint metadata")
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.device_name = device
        self.threads = threads
        self.model: Any = None
        self.checkpoint_info: Any = None
        self.adapter: Adapter | None = None
        self._shipped: dict[str, Any] | None = None  # adaptable tensors before any adapter
        self.spec = ModelSpec.from_manifest(bundle.manifest) if bundle is not None else None

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        """Whether torch is installed; checked without importing it (import is slow)."""
        if importlib.util.find_spec("torch") is None:
            return False, "torch is not installed"
        try:
            version = metadata.version("torch")
        except metadata.PackageNotFoundError:
            version = "(version unknown)"
        return True, f"torch {version}"

    def load_spec(self) -> ModelSpec:
        """The model spec: from the bundle, else from the checkpoint's JSON (no torch needed
        beyond models.checkpoint's import)."""
        if self.spec is None and self.in_memory_model is not None:
            self.spec = ModelSpec.from_config(self.in_memory_model.config)
        if self.spec is None:
            from crnet.models.checkpoint import DEFAULT_CHECKPOINT, read_checkpoint_info

            info = read_checkpoint_info(self.checkpoint or DEFAULT_CHECKPOINT,
                                        allow_unverified=True)  # the config only
            self.spec = ModelSpec.from_config(info.config)
        return self.spec

    def _activate(self) -> None:
        import torch

        from crnet.models.checkpoint import load_checkpoint

        if self.threads is not None:
            torch.set_num_threads(self.threads)
        device = self.device_name or ("cuda" if torch.cuda.is_available() else "cpu")
        if self.in_memory_model is not None:
            self.device = torch.device(device)
            self.model = self.in_memory_model.to(self.device).eval()
            if self.adapter is not None:
                self._install_adapter()
            return
        # a checkpoint inside a verified bundle is covered by the manifest's hash, also when
        # it was exported with --allow-unverified-checkpoint (its own .json has no sha256)
        in_verified_bundle = self.bundle is not None and getattr(self.bundle, "verified", False)
        model, info = load_checkpoint(self.checkpoint, allow_unverified=in_verified_bundle)
        spec = self.load_spec()
        built = (tuple(info.config.input_size), tuple(info.config.feature_size),
                 info.config.feature_channels)
        wanted = (spec.input_size, spec.feature_size, spec.feature_channels)
        if built != wanted:
            raise BackendError(
                f"checkpoint {info.weights_path} is for input, feature size and channels "
                f"{built} but the bundle expects {wanted}; the bundle and its checkpoint "
                "disagree")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.checkpoint_info = info
        if self.adapter is not None:
            self._install_adapter()

    def _deactivate(self) -> None:
        self.model = None
        self._shipped = None

    def apply_adapter(self, adapter: Adapter | None) -> None:
        """Run the model with ``adapter``'s tensors in place of the shipped ones (None
        restores them). Checked against the bundle (or the checkpoint's sha256) first;
        names map to torch parameters through the bundle's export record."""
        if adapter is not None:
            self._check_adapter(adapter)
        self.adapter = adapter
        if self.is_active:
            self._install_adapter()

    def _check_adapter(self, adapter: Adapter) -> None:
        from crnet.runtime.adapter import AdapterError, check_adapter

        if self.bundle is not None:
            check_adapter(adapter, self.bundle)
            return
        expected = getattr(self.checkpoint_info, "sha256", None)
        made_for = adapter.identity.get("checkpoint_sha256")
        if expected and made_for and made_for != expected:
            raise AdapterError(f"adapter was made for checkpoint {made_for[:12]}..., this "
                               f"backend runs {expected[:12]}...; finetune this checkpoint")

    def _install_adapter(self) -> None:
        """Restore the shipped tensors, then copy the adapter's in (on the model's device)."""
        import torch

        from crnet.models.adapter_tensors import PARTS, apply_tensors

        if self.model is self.in_memory_model:  # never change the caller's model
            self.model = copy.deepcopy(self.in_memory_model).to(self.device).eval()
        parameters = dict(self.model.named_parameters())
        if self._shipped is None:
            self._shipped = {name: value.detach().clone() for name, value in parameters.items()
                             if name.split(".")[0] in PARTS}
        with torch.no_grad():
            for name, value in self._shipped.items():
                parameters[name].copy_(value)
        if self.adapter is not None:
            apply_tensors(self.model, self.adapter.tensors, self._torch_names())

    def _torch_names(self) -> dict[str, str] | None:
        """ONNX name -> torch name from the bundle's export record (None: the prefix rule)."""
        if self.bundle is None:
            return None
        from crnet.runtime.adapter import adaptable_tensors

        return {name: str(entry["torch_name"])
                for name, entry in adaptable_tensors(self.bundle).items()}

    def run_backbone(self, images: np.ndarray) -> np.ndarray:
        import torch

        self._require_active()
        with torch.inference_mode():
            feat = self.model.encode(torch.from_numpy(np.ascontiguousarray(images,
                                                                           np.float32))
                                     .to(self.device))
        return feat.float().cpu().numpy()

    def run_refine(self, query_feat: np.ndarray, support_feat: np.ndarray,
                   support_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        self._require_active()
        with torch.inference_mode():
            query_logits, support_logits = self.model.refine(
                *self._tensors(query_feat, support_feat, support_mask))
        return query_logits.float().cpu().numpy(), support_logits.float().cpu().numpy()

    def run_query_refine(self, query_feat: np.ndarray, support_feat: np.ndarray,
                         support_mask: np.ndarray) -> np.ndarray:
        import torch

        self._require_active()
        with torch.inference_mode():
            query_logits = self.model.refine_query(
                *self._tensors(query_feat, support_feat, support_mask))
        return query_logits.float().cpu().numpy()

    def _tensors(self, *arrays: np.ndarray) -> list[Any]:
        import torch

        return [torch.from_numpy(np.ascontiguousarray(array, np.float32)).to(self.device)
                for array in arrays]

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["device"] = str(getattr(self, "device", self.device_name or "auto"))
        info["checkpoint"] = str(self.checkpoint) if self.checkpoint else "default"
        info["adapter"] = None if self.adapter is None else self.adapter.summary()
        return info
