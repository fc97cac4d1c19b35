"""crnet-deploy-gpu: the same package as crnet-deploy, on onnxruntime-gpu instead of onnxruntime.

onnxruntime and onnxruntime-gpu are two distributions of one import package,
``onnxruntime``: installed together they write into one folder, the last one installed
wins file by file, and the CUDA and TensorRT execution providers can silently vanish. An
extra cannot replace a base requirement (pip adds extras, it never removes), so a GPU
install of crnet-deploy cannot be an extra of the distribution whose plain install brings
onnxruntime. It is a second distribution instead, as onnxruntime-gpu is to onnxruntime:
``crnet-deploy-gpu`` has the same code, the same extras and the same versions, with every
``onnxruntime`` requirement (the plain install's and ``[export]``'s) on ``onnxruntime-gpu``
with the same bounds. Install one of the two, never both (they ship the same ``crnet``
package).

This writes that distribution's source tree (the package folders and a pyproject.toml
derived from this repository's), ready for ``pip install DIR`` or ``pip wheel DIR``:

    python tools/gpu_distribution.py --out build/crnet-deploy-gpu
    python -m pip install -c constraints.txt "build/crnet-deploy-gpu[export]"

``--wheel`` also builds the wheel into ``DIR/dist`` (for a machine without this checkout).
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
NAME, GPU_NAME = "crnet-deploy", "crnet-deploy-gpu"
CPU_RUNTIME, GPU_RUNTIME = "onnxruntime", "onnxruntime-gpu"
GPU_EXTRA = "gpu"  # an extra of crnet-deploy that must not exist: it cannot work
COPIED_FILES = ("README.md", "constraints.txt")
IGNORED = ("__pycache__", "*.pyc", "*.egg-info", "build", "dist")


class DistributionError(RuntimeError):
    """pyproject.toml cannot be turned into the GPU distribution's; says why."""


def _requirement_name(text: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", text)
    return match.group(1).lower().replace("_", "-") if match else ""


def gpu_pyproject(text: str) -> str:
    """pyproject.toml of crnet-deploy-gpu from crnet-deploy's (its text, comments kept):
    the name, every ``onnxruntime`` requirement moved to ``onnxruntime-gpu`` with the same
    bounds, and extras that name ``crnet-deploy[...]`` naming ``crnet-deploy-gpu[...]``."""
    project = tomllib.loads(text)["project"]
    if project.get("name") != NAME:
        raise DistributionError(f"expected the pyproject.toml of {NAME}, got "
                                f"{project.get('name')!r}")
    if GPU_EXTRA in project.get("optional-dependencies", {}):
        raise DistributionError(f"{NAME} must not have a [{GPU_EXTRA}] extra: extras add, "
                                f"they cannot replace its {CPU_RUNTIME} ({GPU_NAME} does)")
    text = re.sub(rf'^name = "{NAME}"$', f'name = "{GPU_NAME}"', text, count=1,
                  flags=re.MULTILINE)
    # a requirement: the name, then a version, marker or extras (not a bare keyword)
    text = re.sub(rf'"{CPU_RUNTIME}(?=\s*[<>=!~;\[])', f'"{GPU_RUNTIME}', text)
    text = text.replace(f'"{NAME}[', f'"{GPU_NAME}[')
    check_gpu_project(tomllib.loads(text)["project"])
    return text


def check_gpu_project(project: dict[str, object]) -> None:
    """DistributionError unless ``project`` is named crnet-deploy-gpu and no requirement of
    it, plain or extra, names onnxruntime (the CPU distribution)."""
    if project.get("name") != GPU_NAME:
        raise DistributionError(f"the GPU distribution is named {project.get('name')!r}")
    extras = project.get("optional-dependencies", {})
    assert isinstance(extras, dict)
    requirements = [*project.get("dependencies", []),  # type: ignore[misc]
                    *(line for lines in extras.values() for line in lines)]
    cpu = [line for line in requirements if _requirement_name(line) == CPU_RUNTIME]
    if cpu:
        raise DistributionError(f"{GPU_NAME} still requires {CPU_RUNTIME}: {cpu}")
    if not any(_requirement_name(line) == GPU_RUNTIME for line in requirements):
        raise DistributionError(f"{GPU_NAME} requires no {GPU_RUNTIME}")


def package_folders(text: str) -> list[str]:
    """The repository folders the wheel installs (pyproject's package-dir values)."""
    package_dir = tomllib.loads(text)["tool"]["setuptools"]["package-dir"]
    return sorted(set(package_dir.values()))


def write_gpu_source(out: Path, root: Path = ROOT) -> Path:
    """Write crnet-deploy-gpu's source tree to ``out`` (which must not exist); returns it.
    Nothing is left at ``out`` if a step fails."""
    if out.exists():
        raise DistributionError(f"{out} exists; give a new folder")
    text = (root / "pyproject.toml").read_text()
    derived = gpu_pyproject(text)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        partial.mkdir(parents=True)
        for folder in package_folders(text):
            shutil.copytree(root / folder, partial / folder,
                            ignore=shutil.ignore_patterns(*IGNORED))
        for name in COPIED_FILES:
            shutil.copy2(root / name, partial / name)
        (partial / "pyproject.toml").write_text(derived)
        partial.rename(out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True,
                        help="new folder for the source tree")
    parser.add_argument("--wheel", action="store_true", help="also build DIR/dist/*.whl")
    args = parser.parse_args(argv)
    try:
        out = write_gpu_source(args.out)
    except (DistributionError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {out} ({GPU_NAME}); install it with: python -m pip install \"{out}\"")
    if args.wheel:
        import subprocess

        built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w",
                                str(out / "dist"), str(out)], check=False)
        if built.returncode != 0:
            print("error: pip wheel failed (see above)", file=sys.stderr)
            return 1
        print(f"wheel: {next((out / 'dist').glob('*.whl'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
