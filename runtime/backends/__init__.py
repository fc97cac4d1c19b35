"""Backends of runtime.Segmenter, behind one small interface (see base.py).

``backend_class(name)``, ``availability()`` and ``require_available(name)`` import a
backend's module on demand; no backend library is imported by this package.
"""

from crnet.runtime.backends.base import (
    REGISTRY,
    Backend,
    BackendError,
    BackendUnavailable,
    ModelSpec,
    availability,
    backend_class,
    register_backend,
    require_available,
)

__all__ = [
    "REGISTRY", "Backend", "BackendError", "BackendUnavailable", "ModelSpec", "availability",
    "register_backend",
    "backend_class", "require_available",
]
