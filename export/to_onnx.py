"""`crnet export`: a checkpoint -> a bundle of split ONNX graphs, checked for parity.

    python export/to_onnx.py                          # the bundled trained checkpoint
    python export/to_onnx.py --checkpoint ck.safetensors --out bundle/ [--force]
    python export/to_onnx.py --preset crnet-lite --random-weights --out /tmp/b

Writes ``backbone.fp32.onnx``, ``refine.fp32.onnx``, ``checkpoint.safetensors`` +
``checkpoint.json`` (a copy of the source) and ``manifest.json`` (runtime.bundle's
contract). Everything is written into a hidden temporary sibling of the output directory
and renamed into place only at the end, so an interrupted or failed export leaves nothing
half-written. An export whose parity or lint check fails is not installed: it is moved to
``DIR.failed/`` (with ``parity_report.json`` / ``lint_report.json`` beside its manifest)
for inspection, and ``DIR`` itself is left as it was.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from crnet.models.provenance import training_fold
from crnet.runtime.bundle import FORMAT, FORMAT_VERSION, MANIFEST, Bundle, is_bundle
from crnet.runtime.errors import CrnetError
from crnet.runtime.files import (
    clean_stale_directories,
    current_umask,
    exchange_paths,
    make_owned_directory,
    pid_alive,
    replace_durably,
    sha256_file,
    write_json_atomic,
)
from crnet.runtime.layout import CHECKPOINT_STEM, LINT_REPORT, PARITY_REPORT

DEFAULT_OUT = Path("bundle")
DEFAULT_OPSET = 18  # export.graphs has the same default; kept here so --help needs no torch
MIN_OPSET = 18  # torch's dynamo exporter writes 18 at least (lower requests came out as 18)
PARITY_EPISODES = 64
BATCH_AXIS, SHOTS_AXIS = "batch", "shots"  # as export.graphs names the dynamic axes


class ExportError(CrnetError, RuntimeError):
    """An export that cannot start or whose graphs fail a check; nothing is installed."""


def validate_graph(path: Path, dynamic_axis: str) -> dict[str, list[dict[str, Any]]]:
    """Checker (full), strict shape inference, no control flow, static non-batch axes.

    Returns the graph's io specs ``{"inputs": [...], "outputs": [...]}`` for the manifest.
    """
    import onnx

    model = onnx.load(str(path))
    try:
        onnx.checker.check_model(model, full_check=True)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as error:  # onnx raises several error types
        raise ExportError(f"{path.name} fails ONNX validation: {error}") from error
    control = sorted({n.op_type for n in model.graph.node if n.op_type in ("Loop", "If", "Scan")})
    if control:
        raise ExportError(f"{path.name} contains control flow {control}; it must be unrolled")
    io: dict[str, list[dict[str, Any]]] = {"inputs": [], "outputs": []}
    for kind, values in (("inputs", model.graph.input), ("outputs", model.graph.output)):
        for value in values:
            tensor = value.type.tensor_type
            shape: list[int | str] = [
                d.dim_value if d.HasField("dim_value") else d.dim_param for d in tensor.shape.dim
            ]
            static = all(isinstance(d, int) and d > 0 for d in shape[1:])
            if not static or (isinstance(shape[0], str) and shape[0] != dynamic_axis):
                raise ExportError(
                    f"{path.name}: {value.name} has shape {shape}; only axis 0 may be dynamic "
                    f"(named {dynamic_axis!r}), spatial sizes are fixed per bundle"
                )
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
            io[kind].append({"name": value.name, "shape": shape, "dtype": dtype})
    return io


def verify_dynamic_axes(paths: dict[str, Path], model: Any, max_shots: int) -> dict[str, Any]:
    """Run both graphs in ONNX Runtime at every N and K the bundle promises; check shapes."""
    import onnxruntime as ort

    config = model.config
    height, width = config.input_size
    feat_h, feat_w = config.feature_size
    channels = config.feature_channels
    rng = np.random.default_rng(0)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    backbone = ort.InferenceSession(str(paths["backbone"]), options,
                                    providers=["CPUExecutionProvider"])
    refine = ort.InferenceSession(str(paths["refine"]), options,
                                  providers=["CPUExecutionProvider"])
    batches = sorted({1, 2, max_shots + 1})
    for batch in batches:
        image = rng.standard_normal((batch, 3, height, width), dtype=np.float32)
        (feat,) = backbone.run(None, {"image": image})
        if feat.shape != (batch, channels, feat_h, feat_w):
            raise ExportError(f"backbone at N={batch} gave {feat.shape}")
    shot_counts = list(range(1, max_shots + 1))
    for shots in shot_counts:
        query_logits, support_logits = refine.run(None, {
            "query_feat": rng.standard_normal((1, channels, feat_h, feat_w), dtype=np.float32),
            "support_feat": rng.standard_normal((shots, channels, feat_h, feat_w),
                                                dtype=np.float32),
            "support_mask": (rng.random((shots, 1, feat_h, feat_w)) > 0.5).astype(np.float32),
        })
        if query_logits.shape != (1, 2, feat_h, feat_w) or \
                support_logits.shape != (shots, 2, feat_h, feat_w):
            raise ExportError(
                f"refine at K={shots} gave {query_logits.shape} and {support_logits.shape}"
            )
    return {"backbone_batches": batches, "refine_shots": shot_counts}


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    try:
        ours = metadata.version("crnet-deploy")
    except metadata.PackageNotFoundError:
        ours = "unknown"
    return {"torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "crnet-deploy": ours}


def check_opset(opset: int) -> None:
    """Refuse an opset the exporter cannot write (it would silently write another one)."""
    import onnx

    highest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or \
            not MIN_OPSET <= opset <= highest:
        raise ExportError(f"opset {opset!r} is not supported: the exporter writes opsets "
                          f"{MIN_OPSET}..{highest} (installed onnx); default {DEFAULT_OPSET}")


def graph_opset(path: Path) -> int | None:
    """The default-domain opset an ONNX file declares."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((entry.version for entry in model.opset_import
                 if entry.domain in ("", "ai.onnx")), None)


def _check_destination(out_dir: Path, force: bool) -> None:
    """Refuse an --out that is a file, a non-empty directory without --force, or (even with
    --force) a non-empty directory that is not a bundle: --force only replaces a bundle."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"output path {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not is_bundle(out_dir):
            raise ExportError(
                f"output directory {out_dir} is not empty and is not a crnet bundle (no "
                f"{MANIFEST} of format {FORMAT}); --force only replaces a bundle, so remove "
                "it yourself or choose another --out"
            )
        if not force:
            raise ExportError(
                f"output directory {out_dir} already holds a bundle; pass --force "
                "(force=True) to replace it, or choose another --out"
            )


def _load_source(checkpoint: str | Path | None, allow_unverified: bool = False
                 ) -> tuple[Any, dict[str, Any], Path, Path]:
    """Model, checkpoint info, and the weights/metadata files to copy into the bundle."""
    from crnet.models.checkpoint import DEFAULT_CHECKPOINT, checkpoint_paths, load_checkpoint

    weights, meta = checkpoint_paths(DEFAULT_CHECKPOINT if checkpoint is None else checkpoint)
    if checkpoint is None and not weights.exists():
        raise ExportError(
            f"the bundled trained checkpoint {weights} does not exist yet (it is written by "
            "training, `crnet train`); pass --checkpoint PATH for another one, or "
            "--preset NAME --random-weights to export an untrained model"
        )
    model, info = load_checkpoint(weights, allow_unverified=allow_unverified)
    source = {"name": weights.name, "sha256": info.sha256, "training": info.training,
              "preprocessing": info.preprocessing, "verified": info.verified}
    return model, source, weights, meta


def _publishable(directory: Path) -> None:
    """Give the bundle ordinary permissions (mkdtemp/mkstemp create owner-only ones); the
    umask is read, never set (runtime.files.current_umask)."""
    umask = current_umask()
    directory.chmod(0o777 & ~umask)
    for path in directory.iterdir():
        path.chmod(0o666 & ~umask)


def _temporary_prefix(out_dir: Path) -> str:
    return f".{out_dir.name}."


def clean_leftovers(out_dir: Path) -> list[Path]:
    """Remove temporary and retired directories of killed exports to ``out_dir`` (only
    ``.NAME.<pid>-*.export-tmp`` / ``.NAME.old-<pid>-*`` of processes that no longer run,
    owned by this user). A retired bundle is put back first when ``out_dir`` is missing
    (an export killed between the two renames of a replace, where no swap exists)."""
    parent = out_dir.parent
    if not out_dir.exists():
        retired_prefix = f"{_temporary_prefix(out_dir)}old-"
        for entry in sorted(parent.glob(f"{glob.escape(retired_prefix)}*"),
                            key=lambda path: path.stat().st_mtime, reverse=True):
            pid = entry.name[len(retired_prefix):].partition("-")[0]
            if pid.isdigit() and not pid_alive(int(pid)) and is_bundle(entry):
                os.replace(entry, out_dir)
                break
    removed = clean_stale_directories(parent, _temporary_prefix(out_dir), ".export-tmp")
    removed += clean_stale_directories(parent, f"{_temporary_prefix(out_dir)}old-")
    return removed


def _install(temporary: Path, out_dir: Path) -> None:
    """Put the finished temporary directory at ``out_dir``, replacing a bundle there.

    A replace is one atomic swap (Linux renameat2 RENAME_EXCHANGE): ``out_dir`` always
    holds a complete bundle, old or new. Where the swap is unavailable, the old bundle is
    renamed aside and the new one renamed in; a crash between the two leaves the old one as
    ``.NAME.old-<pid>-*``, which the next export to ``out_dir`` puts back or removes.
    """
    _publishable(temporary)
    if not out_dir.exists():
        replace_durably(temporary, out_dir)
        return
    if exchange_paths(temporary, out_dir):
        shutil.rmtree(temporary, ignore_errors=True)  # now holds the old bundle
        return
    retired = make_owned_directory(out_dir.parent, f"{_temporary_prefix(out_dir)}old-")
    retired.rmdir()  # only its name is wanted: os.replace needs a free target
    replace_durably(out_dir, retired)
    try:
        replace_durably(temporary, out_dir)
    except BaseException:
        os.replace(retired, out_dir)
        raise
    shutil.rmtree(retired, ignore_errors=True)


def _remove_failed(failed: Path, missing_ok: bool = False) -> None:
    """Remove an earlier export's ``DIR.failed`` — only if it is a bundle (never a user's
    directory that happens to have that name)."""
    if not failed.exists():
        return
    if is_bundle(failed):
        shutil.rmtree(failed, ignore_errors=True)
    elif not missing_ok:
        raise ExportError(f"{failed} exists and is not a failed export's bundle; move it away "
                          "so a failed export can be left there for inspection")


def failed_dir(out_dir: str | Path) -> Path:
    """Where an export that failed parity or lint is left for inspection: ``DIR.failed``."""
    out_dir = Path(out_dir)
    return out_dir.parent / f"{out_dir.name}.failed"


def export_bundle(
    out_dir: str | Path = DEFAULT_OUT,
    checkpoint: str | Path | None = None,
    *,
    model: Any = None,
    force: bool = False,
    opset: int = DEFAULT_OPSET,
    parity_episodes: int = PARITY_EPISODES,
    parity_fold: int | None = None,
    parity_seed: int = 0,
    progress: bool = True,
    allow_unverified_checkpoint: bool = False,
    golden: bool = True,
) -> dict[str, Any]:
    """Export a checkpoint (the bundled one by default) or an in-memory ``model`` to a bundle.

    Checks the graphs (ONNX checker, strict shape inference, ORT at every N and K), runs
    parity against PyTorch on ``parity_episodes`` synthetic-5i episodes and the TensorRT
    lint, records the golden references (``golden``: export.golden, for `crnet verify`),
    writes the manifest, and installs the bundle atomically. Returns the manifest.
    A checkpoint whose sidecar records no sha256 is refused unless
    ``allow_unverified_checkpoint``; the manifest's ``source_checkpoint.verified`` says so.
    Raises ExportError (ParityError for a parity failure) or CheckpointError.
    """
    from crnet.export.parity import check_parity

    if model is not None and checkpoint is not None:
        raise ExportError("pass either a checkpoint or a model, not both")
    started = time.perf_counter()
    out_dir = Path(out_dir)
    check_opset(opset)
    _check_destination(out_dir, force)
    model, source, weights, meta = _resolve_source(model, checkpoint,
                                                   allow_unverified_checkpoint)
    model.eval()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(out_dir)
    temporary = make_owned_directory(out_dir.parent, _temporary_prefix(out_dir), ".export-tmp")
    try:
        copied = _copy_checkpoint(temporary, model, source, weights, meta)
        paths, checks, lint = _export_and_check(model, temporary, opset)
        manifest = _fp32_manifest(model.config, source, opset, paths, checks, copied)
        fold = parity_fold if parity_fold is not None else (
            training_fold(source["training"]) or 0)
        # parity runs the unfinished bundle through the runtime's own backends
        parity = check_parity(model, Bundle(temporary, manifest), episodes=parity_episodes,
                              fold=fold, seed=parity_seed, progress=progress)
        if golden:  # seeded episodes and the torch reference's masks, hashed below
            from crnet.export.golden import record_golden
            from crnet.runtime.golden import GOLDEN_KEY

            manifest[GOLDEN_KEY] = record_golden(model, temporary, manifest, fold)
        manifest.update({
            "files": {p.name: sha256_file(p) for p in sorted(temporary.iterdir())
                      if p.is_file()},
            "parity": parity.to_dict(),
            "lint": lint.to_dict(),
            "export_seconds": round(time.perf_counter() - started, 2),
        })
        write_json_atomic(temporary / MANIFEST, manifest)
        if not parity.passed or not lint.passed:
            _set_aside_failed(temporary, out_dir, parity, lint)
        _install(temporary, out_dir)
        _remove_failed(failed_dir(out_dir), missing_ok=True)  # stale report of an old run
        return manifest
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)


def _resolve_source(model: Any, checkpoint: str | Path | None, allow_unverified: bool
                    ) -> tuple[Any, dict[str, Any], Path | None, Path | None]:
    """(model, source record, weights file, metadata file): the checkpoint's, or an
    in-memory model's (no files; its weights are hashed once saved into the bundle)."""
    from crnet.models.checkpoint import preprocessing_of

    if model is None:
        return _load_source(checkpoint, allow_unverified)
    source = {"name": f"random-weights:{model.config.name}", "sha256": None,
              "training": {}, "preprocessing": preprocessing_of(model.config),
              "verified": True}  # hashed here, from memory
    return model, source, None, None


def _copy_checkpoint(temporary: Path, model: Any, source: dict[str, Any],
                     weights: Path | None, meta: Path | None) -> tuple[Path, Path]:
    """Put the checkpoint into the bundle (an in-memory model: saved and hashed now);
    its weights and metadata paths there."""
    from crnet.models.checkpoint import checkpoint_paths, save_checkpoint

    bundle_weights, bundle_meta = checkpoint_paths(temporary / CHECKPOINT_STEM)
    if weights is None:
        save_checkpoint(model, bundle_weights, training={"random_weights": True})
        source["sha256"] = sha256_file(bundle_weights)
    else:
        shutil.copyfile(weights, bundle_weights)
        shutil.copyfile(meta, bundle_meta)
        if sha256_file(bundle_weights) != source["sha256"]:
            raise ExportError(f"copy of {weights} into the bundle does not match its hash")
    return bundle_weights, bundle_meta


def _export_and_check(model: Any, temporary: Path, opset: int
                      ) -> tuple[dict[str, Path], dict[str, Any], Any]:
    """Export both graphs into ``temporary`` and check them: the opset written, each
    graph's I/O (``graphs``), the dynamic axes at every N and K (``dynamic_axes_check``)
    and the TensorRT lint (returned apart: it decides the install)."""
    from crnet.export.graphs import export_graphs
    from crnet.export.lint import lint_files

    paths = export_graphs(model, temporary, opset)
    written = {graph: graph_opset(path) for graph, path in paths.items()}
    if any(version != opset for version in written.values()):
        raise ExportError(f"opset {opset} was requested but the exporter wrote {written}; "
                          f"use --opset {DEFAULT_OPSET}")
    from crnet.export.adaptable import adaptable_record

    checks = {"graphs": {"backbone": validate_graph(paths["backbone"], BATCH_AXIS),
                         "refine": validate_graph(paths["refine"], SHOTS_AXIS)},
              "dynamic_axes_check": verify_dynamic_axes(paths, model, model.config.max_shots),
              "adaptable": adaptable_record(model, paths["refine"])}
    lint = lint_files({path.name: path for path in paths.values()})
    return paths, checks, lint


def _fp32_manifest(config: Any, source: dict[str, Any], opset: int, paths: dict[str, Path],
                   checks: dict[str, Any], copied: tuple[Path, Path]) -> dict[str, Any]:
    """The manifest of the fp32 bundle before parity (no files, parity or lint yet)."""
    from crnet.models.checkpoint import preprocessing_of
    from crnet.models.summary import flops_entry

    bundle_weights, bundle_meta = copied
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": config.to_dict(),
        "preprocessing": source["preprocessing"] or preprocessing_of(config),
        "refine_steps": config.refine_steps,
        "input_size": list(config.input_size),
        "feature_size": list(config.feature_size),
        "feature_channels": config.feature_channels,
        "shots": {"min": 1, "max": config.max_shots},
        "flops": flops_entry(config),
        "opset": opset,
        "graphs": checks["graphs"],
        "variants": {"fp32": {
            "backbone": paths["backbone"].name, "refine": paths["refine"].name,
            "how": {"exporter": "torch.onnx.export(dynamo=True, optimize=True)",
                    "opset": opset, "constant_folding": True,
                    "refine_steps_unrolled": config.refine_steps},
        }},
        "checkpoint": {"weights": bundle_weights.name, "metadata": bundle_meta.name},
        "source_checkpoint": {"name": source["name"], "sha256": source["sha256"],
                              "verified": source["verified"]},
        "versions": _versions(),
        "dynamic_axes_check": checks["dynamic_axes_check"],
        "adaptable": checks["adaptable"],  # runtime.adapter: what an adapter may replace
    }


def _set_aside_failed(temporary: Path, out_dir: Path, parity: Any, lint: Any) -> None:
    """Move a bundle that failed parity or the lint to ``failed_dir(out_dir)`` with both
    reports, and raise ParityError or ExportError."""
    from crnet.export.lint import format_table
    from crnet.export.parity import ParityError

    write_json_atomic(temporary / PARITY_REPORT, parity.to_dict())
    write_json_atomic(temporary / LINT_REPORT, lint.to_dict())
    failed = failed_dir(out_dir)
    _remove_failed(failed)
    _publishable(temporary)
    os.replace(temporary, failed)
    if not parity.passed:
        raise ParityError(parity, failed)
    raise ExportError(f"TensorRT lint found errors (bundle left in {failed}):\n"
                      + format_table(lint.errors))


if __name__ == "__main__":  # `python export/to_onnx.py ...` is `crnet export ...`
    from crnet.cli import main

    sys.exit(main(["export", *sys.argv[1:]]))
