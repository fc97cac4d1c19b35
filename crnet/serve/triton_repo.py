"""`crnet triton-repo BUNDLE --out DIR`: a Triton model repository for a GPU server.

    DIR/crnet_backbone/      config.pbtxt, 1/model.onnx (or model.plan)   image -> feat
    DIR/crnet_query_refine/  config.pbtxt, 1/model.onnx (or model.plan)   -> query_logits
    DIR/crnet_support/       config.pbtxt, 1/model.py, 1/manifest.json    Python backend (BLS)
    DIR/crnet_segment/       config.pbtxt, 1/model.py, 1/manifest.json    Python backend (BLS)

crnet_support and crnet_segment keep the contract of `crnet serve` (DESIGN.md). The query
refine is the bundle's refine graph cut to ``query_logits`` (runtime.graph_prune), the
graph Segmenter runs per frame. Shapes and names come from the manifest; dynamic axes are
-1. With ``--backend tensorrt`` the plans are taken from the bundle's engines/ folder
(built on the serving GPU by `crnet build`; a plan of the cut refine graph when there is
one, else the full refine plan).
``--backend python`` runs the two graphs with ONNX Runtime inside Python-backend models
(CPU; for a tritonserver without the onnxruntime backend, such as PyTriton's).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from crnet.runtime.bundle import Bundle
from crnet.runtime.files import write_bytes_atomic, write_json_atomic
from crnet.runtime.layout import engine_paths, query_refine_plan_path
from crnet.serve.support_store import DEFAULT_MAX_BYTES, DEFAULT_MAX_ENTRIES

BLS_SOURCE = Path(__file__).with_name("triton_bls_model.py")
ONNX_PYTHON_SOURCE = Path(__file__).with_name("triton_onnx_model.py")
DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "uint8": "TYPE_UINT8",
          "bool": "TYPE_BOOL", "bytes": "TYPE_STRING"}
# backend -> (config.pbtxt platform, or "python" for the Python backend; model file)
PLATFORMS = {"onnxruntime": ("onnxruntime_onnx", "model.onnx"),
             "tensorrt": ("tensorrt_plan", "model.plan"),
             "python": ("python", "model.onnx")}


def _dims(shape: list[Any]) -> str:
    return "[ " + ", ".join(str(dim) if isinstance(dim, int) else "-1" for dim in shape) + " ]"


def _tensor_block(kind: str, specs: list[dict[str, Any]]) -> str:
    entries = ",\n".join(
        f'  {{\n    name: "{spec["name"]}"\n    data_type: {DTYPES[spec["dtype"]]}\n'
        f'    dims: {_dims(spec["shape"])}\n  }}' for spec in specs)
    return f"{kind} [\n{entries}\n]\n"


def graph_config(name: str, platform: str, inputs: list[dict[str, Any]],
                 outputs: list[dict[str, Any]], instances: int, gpu: bool) -> str:
    """config.pbtxt of one graph model (batching off: the graphs carry their own N/K)."""
    kind = "KIND_GPU" if gpu and platform != "python" else "KIND_CPU"
    runs = 'backend: "python"' if platform == "python" else f'platform: "{platform}"'
    return (f'name: "{name}"\n{runs}\nmax_batch_size: 0\n'
            + _tensor_block("input", inputs) + _tensor_block("output", outputs)
            + f"instance_group [\n  {{\n    count: {instances}\n    kind: {kind}\n  }}\n]\n")


def bls_config(name: str, role: str, parameters: dict[str, str], instances: int) -> str:
    """config.pbtxt of crnet_support / crnet_segment (Python backend)."""
    if role == "support":
        inputs = [{"name": "images", "dtype": "uint8", "shape": [-1, -1, -1, 3]},
                  {"name": "masks", "dtype": "uint8", "shape": [-1, -1, -1]}]
        outputs = [{"name": "support_id", "dtype": "bytes", "shape": [1]}]
    else:
        inputs = [{"name": "support_id", "dtype": "bytes", "shape": [1]},
                  {"name": "image", "dtype": "uint8", "shape": [-1, -1, 3]}]
        outputs = [{"name": "mask", "dtype": "bool", "shape": [-1, -1]},
                   {"name": "probability", "dtype": "float32", "shape": [-1, -1]}]
    params = "".join(
        f'parameters {{\n  key: "{key}"\n  value: {{ string_value: "{value}" }}\n}}\n'
        for key, value in {"role": role, **parameters}.items())
    return (f'name: "{name}"\nbackend: "python"\nmax_batch_size: 0\n'
            + _tensor_block("input", inputs) + _tensor_block("output", outputs)
            + f"instance_group [\n  {{\n    count: {instances}\n    kind: KIND_CPU\n  }}\n]\n"
            + params)


def query_refine_io(bundle: Bundle) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Inputs and the one output (query_logits) of the cut refine graph."""
    io = bundle.io("refine")
    return list(io["inputs"]), [io["outputs"][0]]


def tensorrt_plan(bundle: Bundle, name: str, precision: str,
                  outputs: list[dict[str, Any]]) -> tuple[Path, list[dict[str, Any]]]:
    """The bundle's plan for a graph model, and the outputs its config must list.

    The query refine prefers ``engines/refine_query.<precision>.plan`` (a plan of the cut
    graph); without it the full refine plan serves, listing both of its outputs (BLS asks
    for ``query_logits`` only, but TensorRT still runs the support branch).
    """
    if name == "crnet_backbone":
        candidates = [(engine_paths(bundle.root, "backbone", precision)[0], outputs)]
    else:
        candidates = [(query_refine_plan_path(bundle.root, precision), outputs),
                      (engine_paths(bundle.root, "refine", precision)[0],
                       bundle.io("refine")["outputs"])]
    for plan, plan_outputs in candidates:
        if plan.is_file():
            return plan, list(plan_outputs)
    raise FileNotFoundError(
        f"{candidates[0][0]} not found: build it on the serving GPU first (`crnet build "
        f"{bundle.root} --precision {precision}`), or use --backend onnxruntime")


def write_repo(bundle_dir: str | Path, out: str | Path, backend: str = "onnxruntime",
               precision: str = "fp32", store_dir: str = "/dev/shm/crnet-supports",
               store_max_entries: int = DEFAULT_MAX_ENTRIES,
               store_max_mb: float = DEFAULT_MAX_BYTES / 2**20, instances: int = 1,
               gpu: bool = True) -> list[Path]:
    """Write the model repository; the files written."""
    import onnx

    from crnet.runtime.graph_prune import prune_to_outputs

    if backend not in PLATFORMS:
        raise ValueError(f"backend must be one of {sorted(PLATFORMS)}, got {backend!r}")
    bundle = Bundle.load(bundle_dir)
    out = Path(out)
    platform, filename = PLATFORMS[backend]
    written: list[Path] = []
    backbone_io = bundle.io("backbone")
    refine_inputs, refine_outputs = query_refine_io(bundle)
    graphs = {"crnet_backbone": (backbone_io["inputs"], backbone_io["outputs"]),
              "crnet_query_refine": (refine_inputs, refine_outputs)}
    for name, (inputs, outputs) in graphs.items():
        version = out / name / "1"
        version.mkdir(parents=True, exist_ok=True)
        target = version / filename
        if backend == "python":
            write_bytes_atomic(version / "model.py", ONNX_PYTHON_SOURCE.read_bytes())
            written.append(version / "model.py")
        if backend in ("onnxruntime", "python"):
            source = bundle.graph_path("backbone" if name == "crnet_backbone" else "refine",
                                       precision)
            model = onnx.load(str(source))
            if name == "crnet_query_refine":
                model = prune_to_outputs(model, [outputs[0]["name"]])
            write_bytes_atomic(target, model.SerializeToString())
        else:
            plan, outputs = tensorrt_plan(bundle, name, precision, outputs)
            shutil.copyfile(plan, target)
        written.append(target)
        config = out / name / "config.pbtxt"
        write_bytes_atomic(config, graph_config(name, platform, inputs, outputs, instances,
                                                gpu).encode())
        written.append(config)
    parameters = {"store_dir": store_dir, "store_max_entries": str(store_max_entries),
                  "store_max_mb": f"{store_max_mb:g}", "precision": precision}
    for name, role in (("crnet_support", "support"), ("crnet_segment", "segment")):
        version = out / name / "1"
        version.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(version / "model.py", BLS_SOURCE.read_bytes())
        write_json_atomic(version / "manifest.json", bundle.manifest)
        config = out / name / "config.pbtxt"
        write_bytes_atomic(config, bls_config(name, role, parameters, instances).encode())
        written += [version / "model.py", version / "manifest.json", config]
    return written
