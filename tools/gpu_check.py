"""One-shot check of crnet-deploy on a GPU machine (no network needed), in one table.

    python tools/gpu_check.py --prepare gpu-check          # here: the inputs (<= 64 MiB)
    python gpu-check/gpu_check.py --bundle gpu-check/bundle   # there: the check

On the machine it reports what is installed (NVIDIA driver, CUDA, TensorRT, onnxruntime
and its providers and distributions, torch), then, within ``--budget`` seconds (default
450, under 8 minutes):

* ``crnet verify BUNDLE --backend B --precision P`` for every backend that can run there
  and every precision of the bundle (exit 0 pass, 1 a failed gate; a crnet without the
  command, or a bundle without golden references, is reported as such); for ``tensorrt``
  on a copy of the bundle whose engines `crnet build` built here;
* the GPU suite (tests/engines/test_tensorrt_suite.py) where tensorrt imports and the
  checkout's tests are present, its summary rows folded into the table;
* the torch backend on CUDA: milliseconds per call at 1 and 8 queries per call
  (``Segmenter.segment_batch``).

A row that cannot run here (no GPU, no TensorRT, a missing command) is skipped with the
reason, so the script runs on a CPU machine too. Exit status 1 when a row failed, else 0.
``--json OUT`` writes the rows as JSON. ``--prepare DIR`` writes the inputs instead: the
bundled trained checkpoint exported with fp16 and int8 variants and golden references
(or a copy of ``--from-bundle``), this script, and a RUN.txt with the command; it refuses
to leave anything if they exceed ``--limit-mib`` (64).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "tests" / "engines" / "test_tensorrt_suite.py"
LIMIT_MIB = 64
BUDGET_S = 450.0
LATENCY_BATCHES = (1, 8)
EXIT_NO_GOLDEN = 4  # crnet verify: the bundle has no golden references


@dataclass
class Row:
    """One line of the summary: what was checked, pass/FAIL/skip/info/error, and why."""

    what: str
    status: str
    detail: str


class Deadline:
    """Seconds left of the run's budget."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self, at_most: float | None = None) -> float:
        left = max(0.0, self.end - time.monotonic())
        return left if at_most is None else min(left, at_most)


def _tail(text: str, lines: int = 2) -> str:
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(kept[-lines:])


def driver_row() -> Row:
    """The NVIDIA driver and GPUs, as nvidia-smi reports them."""
    if shutil.which("nvidia-smi") is None:
        return Row("NVIDIA driver", "skip", "nvidia-smi not found: no NVIDIA driver here")
    query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap",
             "--format=csv,noheader"]
    try:
        done = subprocess.run(query, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        return Row("NVIDIA driver", "error", f"nvidia-smi: {error}")
    if done.returncode != 0:
        return Row("NVIDIA driver", "error", f"nvidia-smi: {_tail(done.stderr or done.stdout)}")
    return Row("NVIDIA driver", "info", "; ".join(done.stdout.strip().splitlines()))


def cuda_row() -> Row:
    """The CUDA driver and runtime versions cuda-python sees."""
    try:
        from crnet.runtime.backends.tensorrt_backend import _import_cudart

        cudart = _import_cudart()
    except ImportError as error:
        return Row("CUDA (cuda-python)", "skip", f"cuda-python does not import ({error})")
    try:
        driver = cudart.cudaDriverGetVersion()
        runtime = cudart.cudaRuntimeGetVersion()
    except RuntimeError as error:  # cuda-python 12.0-12.6.0 without a driver
        return Row("CUDA (cuda-python)", "skip", f"no CUDA driver ({error})")

    def version(result: Any) -> str:
        error, value = result[0], result[1]
        if error != cudart.cudaError_t.cudaSuccess:
            return f"unavailable ({error})"
        return f"{int(value) // 1000}.{int(value) % 1000 // 10}"

    return Row("CUDA (cuda-python)", "info",
               f"driver API {version(driver)}, runtime {version(runtime)}")


def tensorrt_row() -> Row:
    """TensorRT's version and whether the tensorrt backend can run."""
    try:
        import tensorrt
    except ImportError as error:
        return Row("TensorRT", "skip", f"tensorrt does not import ({error})")
    from crnet.runtime.backends.tensorrt_backend import TensorRTBackend

    available, reason = TensorRTBackend.is_available()
    return Row("TensorRT", "info" if available else "skip",
               f"tensorrt {tensorrt.__version__}: {reason}")


def onnxruntime_rows() -> list[Row]:
    """onnxruntime's version and providers; more than one ONNX Runtime distribution (they
    share one onnxruntime/ folder) fails; the TensorRT provider's libnvinfer."""
    from importlib import metadata

    names = sorted({(dist.metadata["Name"] or "").lower() for dist in metadata.distributions()
                    if (dist.metadata["Name"] or "").lower().startswith("onnxruntime")})
    rows = []
    if len(names) > 1:
        rows.append(Row("ONNX Runtime distributions", "FAIL",
                        f"{' and '.join(names)} share one onnxruntime/ folder: uninstall all, "
                        "then install one (crnet-deploy or crnet-deploy-gpu)"))
    try:
        import onnxruntime
    except ImportError as error:
        return [*rows, Row("onnxruntime", "skip", f"does not import ({error})")]
    from crnet.runtime.backends.onnxruntime_backend import (
        tensorrt_ep_problem,
        tensorrt_provider_library,
    )

    providers = onnxruntime.get_available_providers()
    rows.append(Row("onnxruntime", "info", f"{onnxruntime.__version__} ({', '.join(names)}), "
                                           f"providers {providers}"))
    if "TensorrtExecutionProvider" in providers:
        problem = tensorrt_ep_problem(tensorrt_provider_library(onnxruntime.__file__))
        rows.append(Row("onnxruntime TensorRT provider", "info" if problem is None else "skip",
                        "libnvinfer loads: used by the onnxruntime backend" if problem is None
                        else f"left out by the onnxruntime backend: {problem}"))
    return rows


def torch_row() -> Row:
    """torch's version and CUDA device, without importing it where it is absent."""
    try:
        import torch
    except ImportError as error:
        return Row("torch", "skip", f"does not import ({error})")
    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if cuda else "no CUDA device"
    return Row("torch", "info", f"{torch.__version__} (CUDA build {torch.version.cuda}), "
                                f"{device}")


def crnet_command(*args: str) -> list[str]:
    """The command line of ``crnet ARGS`` with this interpreter."""
    return [sys.executable, "-m", "crnet", *args]


def verify_row(bundle: Path, backend: str, precision: str, deadline: Deadline) -> Row:
    """`crnet verify` of one backend and precision, read from its exit status."""
    what = f"verify {backend} {precision}"
    if deadline.left() < 5:
        return Row(what, "skip", "the time budget is spent")
    with tempfile.TemporaryDirectory(prefix="crnet-verify-") as work:
        report = Path(work) / "verify.json"
        command = crnet_command("verify", str(bundle), "--backend", backend, "--precision",
                                precision, "--json", str(report))
        try:
            done = subprocess.run(command, capture_output=True, text=True,
                                  timeout=deadline.left(240), stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return Row(what, "error", "crnet verify gave no answer within the time budget")
        output = done.stdout + done.stderr
        if done.returncode == 2 and "invalid choice: 'verify'" in output:
            return Row(what, "skip", "this crnet has no `verify` command (an older crnet)")
        if done.returncode == EXIT_NO_GOLDEN:
            return Row(what, "skip", f"the bundle has no golden references: {_tail(output, 1)}")
        detail = _tail(done.stdout or done.stderr, 1)
        if done.returncode == 0:
            return Row(what, "pass", detail)
        if done.returncode == 1:
            return Row(what, "FAIL", _tail(output, 3))
        return Row(what, "error", f"exit {done.returncode}: {_tail(output, 3)}")


def verify_rows(bundle: Path, deadline: Deadline, backends: list[str] | None) -> list[Row]:
    """`crnet verify` on every precision of every backend that can run here."""
    from crnet.runtime.backends.base import backend_class, backend_names
    from crnet.runtime.bundle import Bundle

    precisions = Bundle.load(bundle).precisions
    rows = []
    for name in backends or backend_names():
        available, reason = backend_class(name).is_available()
        if not available:
            rows.append(Row(f"verify {name}", "skip", reason))
            continue
        target = bundle
        if name == "tensorrt":
            built = build_tensorrt_copy(bundle, deadline)
            if isinstance(built, Row):
                rows.append(built)
                continue
            target = built
        wanted = ["fp32"] if name == "torch" else precisions  # torch is the fp32 model
        rows += [verify_row(target, name, precision, deadline) for precision in wanted]
    return rows


def build_tensorrt_copy(bundle: Path, deadline: Deadline) -> Path | Row:
    """A copy of ``bundle`` (in a temporary folder) with TensorRT engines built here for
    every precision; a Row saying why not when the build fails."""
    copy = Path(tempfile.mkdtemp(prefix="crnet-gpu-check-")) / "bundle"
    shutil.copytree(bundle, copy, ignore=shutil.ignore_patterns("engines"))
    command = crnet_command("build", str(copy), "--precision", "all", "--target", "tensorrt")
    try:
        done = subprocess.run(command, capture_output=True, text=True,
                              timeout=deadline.left(240), stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return Row("build tensorrt", "error", "crnet build gave no answer in the time budget")
    if done.returncode != 0:
        return Row("build tensorrt", "FAIL", _tail(done.stdout + done.stderr, 3))
    return copy


def suite_rows(bundle: Path, episodes: int, deadline: Deadline) -> list[Row]:
    """The GPU suite on a copy of ``bundle``, its summary rows and its outcome."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as error:
        return [Row("GPU suite", "skip", f"tensorrt does not import ({error})")]
    if not SUITE.is_file():
        return [Row("GPU suite", "skip", f"{SUITE} not found (run from a checkout)")]
    with tempfile.TemporaryDirectory(prefix="crnet-suite-") as work:
        summary = Path(work) / "summary.json"
        env = {**os.environ, "CRNET_TRT_BUNDLE": str(bundle), "CRNET_TRT_EPISODES": str(episodes),
               "CRNET_TRT_SUMMARY": str(summary)}
        command = [sys.executable, "-m", "pytest", "-q", "-m", "tensorrt", "-p",
                   "no:cacheprovider", str(SUITE)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env,
                                  timeout=deadline.left(), stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return [Row("GPU suite", "error", "did not finish within the time budget")]
        rows = []
        if summary.is_file():
            for row in json.loads(summary.read_text())["rows"]:
                status = "FAIL" if "FAIL" in row["result"] else "pass"
                rows.append(Row(f"suite {row['precision']} {row['check']}", status,
                                row["result"]))
    outcome = _tail(done.stdout, 1)
    status = {0: "pass", 5: "skip"}.get(done.returncode, "FAIL")
    return [*rows, Row("GPU suite", status, outcome)]


def latency_rows(bundle: Path, repeats: int = 20) -> list[Row]:
    """The torch backend on CUDA: milliseconds per segment_batch call of 1 and 8 queries."""
    try:
        import torch
    except ImportError as error:
        return [Row("torch on CUDA", "skip", f"torch does not import ({error})")]
    if not torch.cuda.is_available():
        return [Row("torch on CUDA", "skip", "torch sees no CUDA device")]
    from crnet.data.synthetic import Synthetic5i
    from crnet.runtime import Segmenter

    episode = Synthetic5i(0, split="test", seed=0).episode(0, 1)
    rows = []
    with Segmenter(bundle, backend="torch", precision="fp32", device="cuda") as segmenter:
        segmenter.set_support(list(episode.support_images), list(episode.support_masks))
        for batch in LATENCY_BATCHES:
            images = [episode.query_image] * batch
            for _ in range(3):
                segmenter.segment_batch(images)  # warm-up: kernels, allocator
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                segmenter.segment_batch(images)
                times.append(time.perf_counter() - started)
            median = sorted(times)[len(times) // 2] * 1000
            rows.append(Row(f"torch cuda {batch} quer{'y' if batch == 1 else 'ies'}/call",
                            "info", f"median {median:.2f} ms per call, "
                                    f"{median / batch:.2f} ms per query ({repeats} calls)"))
    return rows


class PrepareError(RuntimeError):
    """The inputs cannot be prepared (too large, or the export failed); says why."""


def folder_mib(folder: Path) -> float:
    """Size of every file under ``folder``, MiB."""
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) / 2**20


def prepare(out: Path, from_bundle: Path | None = None, limit_mib: float = LIMIT_MIB) -> Path:
    """Write the check's inputs to ``out`` (which must not exist): ``bundle/`` (a copy of
    ``from_bundle``, else the bundled trained checkpoint exported with fp16 and int8
    variants), this script and RUN.txt. PrepareError, and nothing left at ``out``, when
    they exceed ``limit_mib``."""
    if out.exists():
        raise PrepareError(f"{out} exists; give a new folder")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        partial.mkdir(parents=True)
        bundle = partial / "bundle"
        if from_bundle is not None:
            shutil.copytree(from_bundle, bundle, ignore=shutil.ignore_patterns("engines"))
        else:
            from crnet.calibration.precision import quantize_bundle
            from crnet.export.to_onnx import export_bundle

            export_bundle(bundle, progress=False)
            for precision in ("fp16", "int8"):
                quantize_bundle(bundle, precision)
        shutil.copy2(Path(__file__).resolve(), partial / "gpu_check.py")
        (partial / "RUN.txt").write_text(
            "On the GPU machine, in a crnet-deploy checkout with crnet installed (the "
            "GPU suite needs the checkout's tests/):\n"
            f"  python {out.name}/gpu_check.py --bundle {out.name}/bundle --json "
            "gpu-check.json\n")
        size = folder_mib(partial)
        if size > limit_mib:
            raise PrepareError(f"the prepared inputs are {size:.1f} MiB, over the "
                               f"{limit_mib:g} MiB limit")
        partial.rename(out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return out


def table(rows: list[Row]) -> str:
    """The rows as one aligned plain-text table."""
    width = max([len(row.what) for row in rows] + [len("check")])
    lines = [f"{'check':<{width}}  {'status':<6}  detail", f"{'-' * width}  ------  ------"]
    lines += [f"{row.what:<{width}}  {row.status:<6}  {row.detail}" for row in rows]
    return "\n".join(lines)


def run_check(bundle: Path, budget: float, episodes: int,
              backends: list[str] | None) -> list[Row]:
    """Every row of the check, in the order of the table."""
    deadline = Deadline(budget)
    rows = [driver_row(), cuda_row(), tensorrt_row(), *onnxruntime_rows(), torch_row()]
    rows += verify_rows(bundle, deadline, backends)
    rows += latency_rows(bundle)
    rows += suite_rows(bundle, episodes, deadline)
    return rows


def main(argv: list[str] | None = None) -> int:
    cli = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_argument("--bundle", type=Path, help="the bundle to check (from --prepare)")
    cli.add_argument("--budget", type=float, default=BUDGET_S,
                        help="seconds for the whole check (default 450)")
    cli.add_argument("--episodes", type=int, default=50,
                        help="synthetic-5i episodes per mIoU in the GPU suite")
    cli.add_argument("--backends", help="comma list to verify (default: every one)")
    cli.add_argument("--json", type=Path, help="also write the rows as JSON here")
    cli.add_argument("--prepare", type=Path, metavar="DIR",
                        help="write the inputs to DIR instead of checking")
    cli.add_argument("--from-bundle", type=Path, help="--prepare: copy this bundle")
    cli.add_argument("--limit-mib", type=float, default=LIMIT_MIB,
                        help="--prepare: the most the inputs may take (default 64)")
    args = cli.parse_args(argv)
    if args.prepare is not None:
        try:
            out = prepare(args.prepare, args.from_bundle, args.limit_mib)
        except (PrepareError, OSError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        print(f"prepared {out} ({folder_mib(out):.1f} MiB): {(out / 'RUN.txt').read_text()}")
        return 0
    if args.bundle is None or not (args.bundle / "manifest.json").is_file():
        cli.error("--bundle DIR: a bundle directory with manifest.json (see --prepare)")
    started = time.monotonic()
    backends = args.backends.split(",") if args.backends else None
    rows = run_check(args.bundle, args.budget, args.episodes, backends)
    print(f"crnet-deploy GPU check, {time.strftime('%Y-%m-%d %H:%M:%S')}, bundle "
          f"{args.bundle}, {time.monotonic() - started:.0f} s")
    print(table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(row) for row in rows], indent=1))
    return 1 if any(row.status in ("FAIL", "error") for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
