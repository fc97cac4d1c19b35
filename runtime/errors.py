"""The project's expected errors: one base class, and the missing-extra error (stdlib only).

Every error that a user can cause or fix (bad input, a bundle or checkpoint that does not
fit, a backend or extra that is not installed, a failed gate) derives from ``CrnetError``.
The ``crnet`` command prints such errors as one line and exits 1 (crnet.cli.exit_codes);
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

# import name -> the extra of crnet-deploy that installs it
EXTRA_OF_MODULE: dict[str, str] = {
    "torch": "export",
    "onnxscript": "export",
    "onnxconverter_common": "export",
    "safetensors": "export",
    "skimage": "export",
    "tqdm": "export",
    "PIL": "export",
    "tensorrt": "tensorrt",
    "cuda": "tensorrt",
    "openvino": "openvino",
    "tritonclient": "serve",
    "pytriton": "serve",
    "polygraphy": "tensorrt",
}


class CrnetError(Exception):
    """Base of every expected error of crnet-deploy (bad input, bundle, backend, gate)."""


class UsageError(CrnetError):
    """A command-line value that is not valid (the ``crnet`` command exits 2 for it)."""


class MissingExtraError(CrnetError, ImportError):
    """A feature needs a package that the installed extras do not bring."""

    def __init__(self, module: str, feature: str, extra: str | None = None) -> None:
        self.module = module
        self.extra = extra or EXTRA_OF_MODULE.get(module.split(".")[0], "export")
        super().__init__(
            f"{feature} needs the Python package {module!r}, which is not installed; "
            f"install it with: pip install 'crnet-deploy[{self.extra}]'"
        )


def missing_extra_from(error: ModuleNotFoundError, feature: str) -> MissingExtraError | None:
    """A MissingExtraError for an import that failed on a known optional package, else None."""
    name = (error.name or "").split(".")[0]
    if name in EXTRA_OF_MODULE:
        return MissingExtraError(name, feature)
    return None
