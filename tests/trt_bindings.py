"""The real TensorRT Python bindings and cuda-python, importable on a machine without a GPU.

TensorRT's Python bindings (``tensorrt-cu12-bindings``) are real wheels; only the libraries
behind them (libnvinfer & co.) are not on PyPI. Their extension module links ten C entry
points, so a stub shared library exporting those (factories returning NULL), named with the
sonames the extension needs (``libnvinfer.so.10`` ...), lets the *real* module import: real
enums, classes, members and docstring signatures, for introspection only (nothing can be
built or run). cuda-python wheels import without a driver and answer every call with an
error code (or, 12.0-12.6.0, raise ``RuntimeError: Failed to dlopen libcuda.so.1``).

Once per machine, into ``$CRNET_TRT_BINDINGS_CACHE`` (default
``~/.cache/crnet-deploy/trt-bindings/``), each environment is installed with
``pip install --target`` and (TensorRT) given a compiled stub library plus a one-line
``tensorrt`` package that aliases ``tensorrt_bindings`` (what the ``tensorrt`` meta wheel
does when the libraries wheel is present). An environment is published by renaming its
finished folder, so a broken download is never reused. The checks run in a subprocess
(``run_python``) with PYTHONPATH/LD_LIBRARY_PATH pointing there: the test process itself
never imports them.

Nothing here claims a GPU: these are the real Python bindings over stub libraries.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TENSORRT_VERSIONS = ("10.8.0.43", "11.4.0.106")
# cuda-python 12.6.0 raises on the first call without a driver; cuda-bindings 12.9 returns
# cudaErrorInsufficientDriver (cuda-python >= 12.6.1 is a meta package over it)
CUDA_ENVIRONMENTS = {
    "cuda-python-12.6.0": ("cuda-python==12.6.0",),
    "cuda-bindings-12.9.4": ("cuda-bindings==12.9.4", "cuda-pathfinder==1.9.0"),
}
ENTRY_POINTS = (
    "createInferBuilder_INTERNAL", "createInferRuntime_INTERNAL",
    "createInferRefitter_INTERNAL", "createNvOnnxParser_INTERNAL",
    "createNvOnnxParserRefitter_INTERNAL", "getBuilderPluginRegistry", "getPluginRegistry",
    "initLibNvInferPlugins", "getInferLibVersion", "getNvOnnxParserVersion",
)
STUB_LIBRARIES = ("nvinfer", "nvinfer_plugin", "nvonnxparser")
READY = "READY.json"


class BindingsUnavailable(RuntimeError):
    """An environment cannot be made here (no pip access, no C compiler); says why."""


@dataclass(frozen=True)
class Environment:
    """One installed environment: ``site`` goes on PYTHONPATH, ``lib`` (if any) on
    LD_LIBRARY_PATH."""

    name: str
    site: Path
    lib: Path | None = None


def cache_root() -> Path:
    """Where environments live: $CRNET_TRT_BINDINGS_CACHE or ~/.cache/crnet-deploy/..."""
    configured = os.environ.get("CRNET_TRT_BINDINGS_CACHE")
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "crnet-deploy" / "trt-bindings"


def _stub_source() -> str:
    lines = ["/* stub TensorRT entry points for introspection of the real bindings */"]
    lines += [f"void *{name}(void) {{ return 0; }}" for name in ENTRY_POINTS]
    return "\n".join(lines) + "\n"


def _compiler() -> str:
    for name in (os.environ.get("CC", ""), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    raise BindingsUnavailable("no C compiler (cc/gcc/clang) to build the stub TensorRT "
                              "libraries; install gcc")


def _run(command: list[str], what: str, timeout: float = 600) -> None:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise BindingsUnavailable(f"{what} failed: {error}") from error
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise BindingsUnavailable(f"{what} failed (exit {result.returncode}): "
                                  + " | ".join(tail))


def _pip_install(requirements: tuple[str, ...], target: Path) -> None:
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--only-binary",
          ":all:", "--no-compile", "--disable-pip-version-check", "--target", str(target),
          *requirements], f"pip install {' '.join(requirements)}")


def _compile_stubs(lib: Path, major: int) -> None:
    compiler = _compiler()
    lib.mkdir(parents=True)
    source = lib / "trt_stub.c"
    source.write_text(_stub_source())
    for name in STUB_LIBRARIES:
        soname = f"lib{name}.so.{major}"
        _run([compiler, "-shared", "-fPIC", "-O0", f"-Wl,-soname,{soname}", "-o",
              str(lib / soname), str(source)], f"compiling the stub {soname}")


def _publish(build: Path, final: Path, facts: dict[str, object]) -> None:
    (build / READY).write_text(json.dumps(facts, indent=1))
    try:
        os.replace(build, final)
    except OSError:  # another process published it first
        shutil.rmtree(build, ignore_errors=True)
        if not (final / READY).exists():
            raise


def _ensure(name: str, make: object) -> Path:
    root = cache_root()
    final = root / name
    if (final / READY).exists():
        return final
    if final.exists():  # an unfinished older attempt
        shutil.rmtree(final, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    try:
        facts = make(build)  # type: ignore[operator]
        _publish(build, final, facts)
    finally:
        if build.exists():
            shutil.rmtree(build, ignore_errors=True)
    return final


def tensorrt_environment(version: str) -> Environment:
    """The real ``tensorrt-cu12-bindings==version`` over stub libraries (cached)."""
    major = int(version.split(".", 1)[0])
    name = f"tensorrt-cu12-bindings-{version}"

    def make(build: Path) -> dict[str, object]:
        site = build / "site"
        _pip_install((f"tensorrt-cu12-bindings=={version}",), site)
        shim = site / "tensorrt"
        shim.mkdir()
        (shim / "__init__.py").write_text(
            '"""Test shim: the real tensorrt_bindings as `tensorrt` (stub libraries)."""\n'
            "import sys\n\nimport tensorrt_bindings\n\n"
            'sys.modules["tensorrt"] = tensorrt_bindings\n')
        _compile_stubs(build / "lib", major)
        probe = run_python("import tensorrt; print(tensorrt.__version__)",
                           environments=[Environment(name, site, build / "lib")])
        if probe.returncode != 0 or probe.stdout.strip() != version:
            raise BindingsUnavailable(f"the real tensorrt {version} bindings do not import "
                                      f"over the stub libraries: {probe.stderr[-800:]}")
        return {"requirement": f"tensorrt-cu12-bindings=={version}", "stub_major": major}

    folder = _ensure(name, make)
    return Environment(name, folder / "site", folder / "lib")


def cuda_environment(name: str) -> Environment:
    """One of CUDA_ENVIRONMENTS (real cuda-python wheels, no driver here), cached."""
    requirements = CUDA_ENVIRONMENTS[name]

    def make(build: Path) -> dict[str, object]:
        _pip_install(requirements, build / "site")
        return {"requirements": list(requirements)}

    folder = _ensure(name, make)
    return Environment(name, folder / "site")


def run_python(code: str, environments: list[Environment], *, args: list[str] | None = None,
               timeout: float = 180, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run ``python -c code`` with the project and the environments importable."""
    env = dict(os.environ)
    paths = [str(ROOT), *(str(e.site) for e in environments)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    libs = [str(e.lib) for e in environments if e.lib is not None]
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return subprocess.run([sys.executable, "-c", code, *(args or [])], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=cwd)


def run_json(code: str, environments: list[Environment], **kwargs: object) -> object:
    """run_python whose last stdout line is JSON; raises AssertionError with stderr if not."""
    result = run_python(code, environments, **kwargs)  # type: ignore[arg-type]
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise AssertionError(f"subprocess failed (exit {result.returncode}):\n"
                             f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return json.loads(lines[-1])
