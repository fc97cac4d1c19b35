"""A private copy of a bundle for the GPU suite, without its engines (plain Python)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from crnet.runtime.files import write_json_atomic

ENGINE_SECTIONS = ("engines", "ort_builds")


def copy_without_engines(source: Path, destination: Path) -> Path:
    """Copy ``source`` to ``destination`` leaving out ``engines/``, and drop from the copy's
    manifest what it recorded about them (``files`` entries under engines/, the
    ``engines`` and ``ort_builds`` sections), so ``Bundle.load(verify=True)`` holds."""
    copy = Path(shutil.copytree(source, destination, ignore=shutil.ignore_patterns("engines")))
    manifest_path = copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    files = manifest.get("files", {})
    manifest["files"] = {name: digest for name, digest in files.items()
                         if not name.startswith("engines/")}
    for section in ENGINE_SECTIONS:
        manifest.pop(section, None)
    write_json_atomic(manifest_path, manifest)
    return copy
