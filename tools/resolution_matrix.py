"""Can pip install crnet-deploy, and each main extra, from binary wheels where users are?

For the plain install, the ``export``, ``openvino``, ``tensorrt-cu12`` and ``serve``
extras, and ``gpu``, the GPU distribution crnet-deploy-gpu (tools/gpu_distribution.py: the
same requirements with onnxruntime-gpu for onnxruntime), on CPython 3.10, 3.11 and 3.12,
on Linux x86_64 and aarch64 (glibc 2.35: Ubuntu 22.04 and JetPack 6; manylinux tags 2_17
to 2_35 accepted), pip resolves the
requirements pyproject.toml declares with ``pip install --dry-run --ignore-installed
--only-binary=:all: --python-version X --platform P``. pip reads each candidate's metadata
with HTTP range requests (``--use-feature=fast-deps``), so no large wheel is downloaded;
``export`` resolves its direct requirements only (``--no-deps``: torch's CUDA wheels would
add minutes to each of its combinations for no more information).

Prints one line per (extra, Python, platform): ``ok`` with the versions of the floored
packages pip picked, ``not available`` with the documented reason (docs/installing.md),
or ``FAILED`` with pip's last error line. Exits 1 on a failure that is not documented,
0 otherwise; a combination pip did not answer within its time limit is printed as
``unknown`` and does not fail the run (an unreachable index is not a packaging fault);
``--budget`` bounds the whole run, so that it adds at most that much to CI.

Usage: python tools/resolution_matrix.py [--jobs N] [--timeout S] [--budget S] [--extras a,b]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("", "export", "openvino", "gpu", "tensorrt-cu12", "serve")
PYTHONS = ("3.10", "3.11", "3.12")
ARCHES = ("x86_64", "aarch64")
GLIBC_MINORS = range(35, 16, -1)  # manylinux_2_35 ... manylinux_2_17
SHALLOW = {"export"}  # resolved with --no-deps (module docstring)
GPU = "gpu"  # not an extra: the distribution crnet-deploy-gpu
REPORTED = ("onnxruntime", "onnxruntime-gpu", "onnx", "numpy", "torch", "openvino",
            "tensorrt-cu12", "tensorrt-cu12-libs", "nvidia-pytriton", "tritonclient")

# (extra, Python or "*", arch or "*") -> why no binary wheels resolve there; docs/installing.md
# says the same.
NOT_AVAILABLE: dict[tuple[str, str, str], str] = {
    ("gpu", "3.10", "aarch64"): "PyPI has no cp310 onnxruntime-gpu for Linux aarch64 "
                                "(on Jetson: NVIDIA's Jetson build, docs/jetson.md)",
    ("export", "3.10", "*"): "int8 quantization needs onnxruntime >= 1.27 (quantize_static's "
                             "calibration_cache_path), which has no cp310 wheels; the "
                             "runtime (the plain install) supports Python 3.10",
    ("tensorrt-cu12", "*", "*"): "NVIDIA publishes tensorrt-cu12 (and its -libs/-bindings) "
                                 "on PyPI as source packages that fetch the wheels from "
                                 "NVIDIA's own index at install time; aarch64: JetPack's "
                                 "TensorRT (docs/jetson.md)",
}
# Quickest first: when the time budget runs out, the slow resolutions (torch's metadata,
# PyTriton's many dependencies) are the ones left unknown, not the plain install.
COST = {"": 0, "tensorrt-cu12": 1, "openvino": 2, "gpu": 3, "export": 4, "serve": 5}


def documented(extra: str, python: str, arch: str) -> str | None:
    """Why (extra, python, arch) is documented as not available, or None."""
    for key in ((extra, python, arch), (extra, python, "*"), (extra, "*", arch),
                (extra, "*", "*")):
        if key in NOT_AVAILABLE:
            return NOT_AVAILABLE[key]
    return None


def platform_flags(arch: str) -> list[str]:
    """pip's --platform options for a glibc 2.35 Linux on ``arch`` (pip does not widen a
    given manylinux tag to the older ones such a system also runs)."""
    tags = [f"manylinux_2_{minor}_{arch}" for minor in GLIBC_MINORS]
    tags += [f"manylinux2014_{arch}"]
    if arch == "x86_64":
        tags += ["manylinux2010_x86_64", "manylinux1_x86_64"]
    return [flag for tag in tags for flag in ("--platform", tag)]


def _gpu_pyproject(text: str) -> str:
    """tools/gpu_distribution.py's pyproject.toml of crnet-deploy-gpu, from ``text``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "gpu_distribution", Path(__file__).resolve().parent / "gpu_distribution.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.gpu_pyproject(text))


def requirements(extra: str, python: str) -> list[str]:
    """pyproject.toml's plain requirements, plus ``extra``'s (``gpu``: crnet-deploy-gpu's
    plain requirements), whose markers hold on ``python`` (pip would evaluate them for the
    interpreter running it, not the target)."""
    import tomllib

    text = (ROOT / "pyproject.toml").read_text()
    if extra == GPU:
        text = _gpu_pyproject(text)
    project = tomllib.loads(text)["project"]
    lines = list(project["dependencies"])
    if extra and extra != GPU:
        lines += project["optional-dependencies"][extra]
    environment = {**default_environment(), "python_version": python,
                   "python_full_version": f"{python}.0", "platform_system": "Linux",
                   "sys_platform": "linux"}
    kept = []
    for line in lines:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate(environment):
            requirement.marker = None
            kept.append(str(requirement))
    return kept


def resolve(extra: str, python: str, arch: str, timeout: float,
            deadline: float = float("inf")) -> tuple[str, str]:
    """(status, detail) of one combination: status is ok, failed or unknown. pip gets
    ``timeout`` seconds, and none past ``deadline`` (time.monotonic)."""
    timeout = min(timeout, deadline - time.monotonic())
    if timeout < 5:
        return "unknown", "not run: the run's time budget was spent"
    with tempfile.TemporaryDirectory(prefix="crnet-resolve-") as work:
        report = Path(work) / "report.json"
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
                   "--quiet", "--use-feature=fast-deps", "--only-binary=:all:",
                   "--python-version", python, *platform_flags(arch),
                   "--target", str(Path(work) / "target"), "--report", str(report)]
        if extra in SHALLOW:
            command.append("--no-deps")
        command += requirements(extra, python)
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return "unknown", f"pip gave no answer in {timeout:.0f} s"
        if done.returncode != 0:
            errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
            return "failed", (errors[-1] if errors else done.stderr.strip()[-300:])
        installed = {item["metadata"]["name"].lower().replace("_", "-"):
                     item["metadata"]["version"]
                     for item in json.loads(report.read_text())["install"]}
        runtimes = sorted(name for name in installed if name.startswith("onnxruntime"))
        if len(runtimes) > 1:  # one onnxruntime/ folder: the last one installed wins
            return "failed", f"ERROR: installs {' and '.join(runtimes)} into one environment"
        picked = [f"{name} {installed[name]}" for name in REPORTED if name in installed]
        return "ok", ", ".join(picked)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=6, help="pip processes at once")
    parser.add_argument("--timeout", type=float, default=240.0,
                        help="seconds one combination may take")
    parser.add_argument("--budget", type=float, default=420.0,
                        help="seconds the whole run may take")
    parser.add_argument("--extras", default=",".join(EXTRAS),
                        help="comma-separated extras ('' or 'plain' for the plain install)")
    args = parser.parse_args(argv)
    extras = ["" if name in ("", "plain") else name for name in args.extras.split(",")]
    unknown = sorted(set(extras) - set(EXTRAS))
    if unknown:
        parser.error(f"unknown extras {unknown}; expected some of {list(EXTRAS)}")
    combinations = [(extra, python, arch) for extra in extras for python in PYTHONS
                    for arch in ARCHES]
    started = time.monotonic()
    deadline = started + args.budget
    order = sorted(combinations, key=lambda combo: COST.get(combo[0], 0))
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        answered = dict(zip(order, pool.map(
            lambda combo: resolve(*combo, args.timeout, deadline), order), strict=True))
    answers = [answered[combo] for combo in combinations]
    unexpected = 0
    for (extra, python, arch), (status, detail) in zip(combinations, answers, strict=True):
        name = ("crnet-deploy-gpu" if extra == GPU else
                f"crnet-deploy[{extra}]" if extra else "crnet-deploy")
        reason = documented(extra, python, arch)
        if status == "ok":
            line = f"ok             {detail}"
            if reason:
                line += " (documented as not available: update docs/installing.md)"
        elif status == "failed" and reason:
            line = f"not available  {reason}"
        elif status == "failed":
            unexpected += 1
            line = f"FAILED         {detail}"
        else:
            line = f"unknown        {detail}"
        shallow = " (direct requirements)" if extra in SHALLOW else ""
        print(f"{name + shallow:<44} cp{python.replace('.', '')} {arch:<8} {line}", flush=True)
    print(f"resolution matrix: {len(combinations)} combinations, {unexpected} unexpected "
          f"failure(s), {time.monotonic() - started:.0f} s")
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
