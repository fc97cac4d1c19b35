"""The schema of a bundle's manifest.json: one validator, and the graph I/O it promises.

``check_manifest`` checks every field the project reads from a manifest (docs/bundle-format.md
lists them): its type, its range, that numbers are finite, and the fields that must agree
with each other (``shots.min <= shots.max``, the feature size inside the input size, the
graphs' declared shapes against the sizes). The first bad field raises a one-line
BundleError naming the field, its value (truncated) and what was expected. It runs on every
manifest ``Bundle.load`` reads, before any graph is loaded or any listed file is touched.

Cost is linear in the manifest's size, and bounded: the file is refused above
``MAX_MANIFEST_BYTES`` before it is parsed, ``files`` above ``MAX_FILES`` entries before any
entry is looked at, and every other object or list the schema walks above
``MAX_ENTRIES``.

``check_graph_io`` compares what a backend reads from a loaded graph (its session, compiled
model or engine) with what the manifest promises: tensor names, ranks, channel counts and
feature size; each backend calls it at activation. What a schema cannot see: a graph whose
shapes are right but whose weights are wrong (constant weights give a silent, wrong mask);
golden reference masks catch that.

Fields the schema does not know (stage reports such as ``parity`` or ``lint``) are allowed and
left alone; nothing in the runtime reads them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NoReturn

from crnet.runtime.errors import CrnetError
from crnet.runtime.layout import GRAPHS, PRECISIONS

__all__ = ["FORMAT", "FORMAT_VERSION", "MAX_ENTRIES", "MAX_FILES", "MAX_MANIFEST_BYTES",
           "BundleError", "TensorInfo", "check_graph_io", "check_manifest", "expected_io",
           "tensor_info"]

FORMAT = "crnet-deploy/bundle"
FORMAT_VERSION = 1  # the newest manifest format this runtime reads

MAX_MANIFEST_BYTES = 16 * 1024 * 1024  # manifest.json, checked before it is parsed
MAX_FILES = 10_000  # entries of ``files``, checked before any is looked at
MAX_ENTRIES = 256  # entries of any other object or list the schema walks
MAX_TEXT = 4096  # characters of a file name, tensor name or other string the schema reads

# Ranges of the model's numbers: those models.config.CRNetConfig accepts, so every bundle
# the export writes passes, while a manifest cannot ask the runtime for a 10^6-pixel side.
INPUT_SIDE = (32, 2048)
FEATURE_CHANNELS = (1, 2048)
SHOTS = (1, 64)
DEFAULT_MAX_SHOTS = 8  # shots.max where neither shots.max nor model.max_shots is given
REFINE_STEPS = (1, 32)
MEAN = (-10.0, 10.0)
STD = (1e-6, 10.0)
PIXEL_SCALE = 1.0 / 255.0  # the only scale runtime.preprocess implements
COLOR = "RGB"
RESIZE = "bilinear"
LOGIT_CHANNELS = 2  # background and foreground
MAX_RANK = 8

_SHA256 = re.compile(r"[0-9a-f]{64}")
_FLOAT_TYPES = ("float32", "float16")
_DTYPE_NAMES = {"tensor(float)": "float32", "tensor(float16)": "float16",
                "tensor(double)": "float64"}

# Tensors the runtime binds by name, with their axes: an int is a fixed size, a letter a
# size from the manifest (H, W: input_size; C: feature_channels; h, w: feature_size), and
# N / K the batch and shot axes, which the graphs keep dynamic.
GRAPH_TENSORS: dict[str, dict[str, dict[str, tuple[int | str, ...]]]] = {
    "backbone": {"inputs": {"image": ("N", 3, "H", "W")},
                 "outputs": {"feat": ("N", "C", "h", "w")}},
    "refine": {"inputs": {"query_feat": (1, "C", "h", "w"),
                          "support_feat": ("K", "C", "h", "w"),
                          "support_mask": ("K", 1, "h", "w")},
               "outputs": {"query_logits": (1, LOGIT_CHANNELS, "h", "w"),
                           "support_logits": ("K", LOGIT_CHANNELS, "h", "w")}},
}
_DYNAMIC_AXES = ("N", "K")

# (name, shape with None for a dynamic axis or None for an unknown rank, numpy dtype name or
# None where the backend cannot say)
TensorInfo = tuple[str, tuple[int | None, ...] | None, str | None]


class BundleError(CrnetError, ValueError):
    """A bundle that is missing, incomplete, or whose files do not match the manifest."""


def _show(value: Any) -> str:
    """A short rendering of a manifest value for an error message (never the whole value)."""
    if isinstance(value, dict):
        return f"an object of {len(value)} entries"
    if isinstance(value, list):
        if len(value) <= 8 and not any(isinstance(item, dict | list) for item in value):
            text = "[" + ", ".join(_show(item) for item in value) + "]"
            return text if len(text) <= 80 else text[:76] + "...]"
        return f"a list of {len(value)} items"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = repr(value[:40])
        return text[:-1] + "...'" if len(value) > 40 else text
    if isinstance(value, int) and abs(value) >= 10 ** 12:
        return f"{'-' if value < 0 else ''}about 10^{len(str(abs(value))) - 1}"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _key(name: str) -> str:
    """A manifest key inside a field path: as it is when short and printable, else shown
    as _show shows a string (quoted, escaped, truncated)."""
    return name if len(name) <= 40 and name.isprintable() else _show(name)


class _Fields:
    """Reads fields of one manifest, failing with its file name, the field's dotted path,
    the value and what was expected."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, field: str, value: Any, expected: str) -> NoReturn:
        raise BundleError(f"{self.source}: {field} is {_show(value)}; expected {expected}")

    def object(self, where: Mapping[str, Any], key: str, field: str, *,
               required: bool = True, limit: int = MAX_ENTRIES) -> dict[str, Any] | None:
        value = where.get(key)
        if value is None and not required and key not in where:
            return None
        if not isinstance(value, dict):
            self.fail(field, value, "a JSON object" + ("" if required else " (or absent)"))
        if len(value) > limit:
            self.fail(field, value, f"at most {limit} entries")
        return value

    def items(self, where: Mapping[str, Any], key: str, field: str, *,
              names: Sequence[str] | None = None, required: bool = False
              ) -> Iterable[tuple[str, dict[str, Any]]]:
        """The entries of an object of objects (``names``: the keys allowed)."""
        section = self.object(where, key, field, required=required)
        for name, entry in (section or {}).items():
            if names is not None and name not in names:
                self.fail(f"{field} key {_show(name)}", name, f"one of {list(names)}")
            if not isinstance(entry, dict) or len(entry) > MAX_ENTRIES:
                self.fail(f"{field}.{_key(name)}", entry, f"a JSON object of at most "
                                                          f"{MAX_ENTRIES} entries")
            yield name, entry

    def integer(self, where: Mapping[str, Any], key: str, field: str, low: int, high: int,
                *, required: bool = True) -> int | None:
        value = where.get(key)
        if value is None and not required and key not in where:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            self.fail(field, value, f"an integer from {low} to {high}")
        return value

    def number(self, where: Mapping[str, Any], key: str, field: str, low: float = -math.inf,
               high: float = math.inf, *, required: bool = True) -> float | None:
        value = where.get(key)
        if value is None and not required and key not in where:
            return None
        if not isinstance(value, int | float) or isinstance(value, bool) \
                or not math.isfinite(value) or not low <= value <= high:
            bounds = "" if math.isinf(low) and math.isinf(high) else f" from {low:g} to {high:g}"
            self.fail(field, value, f"a finite number{bounds}")
        return float(value)

    def text(self, where: Mapping[str, Any], key: str, field: str, *, required: bool = True,
             nullable: bool = False, choices: Sequence[str] | None = None) -> str | None:
        value = where.get(key)
        if value is None and (nullable or (not required and key not in where)):
            return None
        if choices is not None and value not in choices:
            self.fail(field, value, f"one of {list(choices)}")
        if not isinstance(value, str) or not value or len(value) > MAX_TEXT:
            self.fail(field, value, f"a non-empty string of at most {MAX_TEXT} characters")
        return value

    def flag(self, where: Mapping[str, Any], key: str, field: str, *,
             required: bool = True) -> bool | None:
        value = where.get(key)
        if value is None and not required and key not in where:
            return None
        if not isinstance(value, bool):
            self.fail(field, value, "true or false")
        return value

    def sha256(self, where: Mapping[str, Any], key: str, field: str, *,
               nullable: bool = False) -> str | None:
        value = where.get(key)
        if value is None and nullable:
            return None
        if not isinstance(value, str) or not _SHA256.fullmatch(value):
            self.fail(field, value, "a sha256 digest (64 lowercase hex digits)")
        return value

    def numbers(self, where: Mapping[str, Any], key: str, field: str, count: int,
                low: float, high: float, *, required: bool = True) -> list[float] | None:
        value = where.get(key)
        if value is None and not required and key not in where:
            return None
        expected = f"a list of {count} finite numbers from {low:g} to {high:g}"
        if not isinstance(value, list) or len(value) != count:
            self.fail(field, value, expected)
        for index, item in enumerate(value):
            if not isinstance(item, int | float) or isinstance(item, bool) \
                    or not math.isfinite(item) or not low <= item <= high:
                self.fail(f"{field}[{index}]", item, expected)
        return [float(item) for item in value]

    def pair(self, where: Mapping[str, Any], key: str, field: str, low: int, high: int,
             *, required: bool = True) -> tuple[int, int] | None:
        value = where.get(key)
        if value is None and not required and key not in where:
            return None
        if not isinstance(value, list) or len(value) != 2 or not all(
                isinstance(v, int) and not isinstance(v, bool) and low <= v <= high
                for v in value):
            self.fail(field, value, f"[height, width], integers from {low} to {high}")
        return value[0], value[1]


def check_manifest(manifest: Any, source: str = "manifest.json") -> dict[str, Any]:
    """Validate a parsed manifest (module docstring); returns it, or raises BundleError
    naming ``source``, the first bad field, its value and what was expected."""
    fields = _Fields(source)
    if not isinstance(manifest, dict):
        fields.fail("the manifest", manifest, "a JSON object")
    if manifest.get("format") != FORMAT:
        fields.fail("format", manifest.get("format"), f"{FORMAT!r} (not a crnet-deploy "
                                                      "bundle manifest)")
    version = manifest.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise BundleError(f"{source}: format_version is {_show(version)}; this crnet reads "
                          f"format versions up to {FORMAT_VERSION} (upgrade crnet-deploy to "
                          "read this bundle)")
    fields.integer(manifest, "format_version", "format_version", 1, FORMAT_VERSION)
    _check_files(fields, manifest)
    sizes = _check_sizes(fields, manifest)
    _check_preprocessing(fields, manifest)
    _check_graphs(fields, manifest, sizes)
    _check_variants(fields, manifest)
    _check_gates(fields, manifest)
    _check_builds(fields, manifest)
    _check_records(fields, manifest)
    _check_golden(fields, manifest)
    _check_adaptable(fields, manifest)
    return manifest


def _check_files(fields: _Fields, manifest: dict[str, Any]) -> None:
    """``files``: at most MAX_FILES names, each with a sha256 (counted before any is read)."""
    files = manifest.get("files")
    if not isinstance(files, dict):
        fields.fail("files", files, "an object {file name: sha256}")
    if len(files) > MAX_FILES:
        fields.fail("files", files, f"at most {MAX_FILES} entries (a bundle lists a few "
                                    "dozen files)")
    for name in files:
        if not name or len(name) > MAX_TEXT:
            fields.fail("a files name", name, f"a file name of 1 to {MAX_TEXT} characters")
        fields.sha256(files, name, f"files[{_show(name)}]")


def _check_sizes(fields: _Fields, manifest: dict[str, Any]) -> dict[str, int]:
    """input_size, feature_size, feature_channels, refine_steps, shots and the model
    section; the sizes the graphs' shapes are checked against."""
    height, width = fields.pair(manifest, "input_size", "input_size", *INPUT_SIDE) or (0, 0)
    feat_h, feat_w = fields.pair(manifest, "feature_size", "feature_size", 1,
                                 INPUT_SIDE[1]) or (0, 0)
    if feat_h > height or feat_w > width:
        fields.fail("feature_size", manifest["feature_size"],
                    f"at most the input_size [{height}, {width}]")
    channels = fields.integer(manifest, "feature_channels", "feature_channels",
                              *FEATURE_CHANNELS) or 0
    fields.integer(manifest, "refine_steps", "refine_steps", *REFINE_STEPS, required=False)
    model = fields.object(manifest, "model", "model") or {}
    fields.text(model, "name", "model.name", required=False)
    for key, wanted in (("input_size", [height, width]), ("feature_channels", channels)):
        if key in model and model[key] != wanted:
            fields.fail(f"model.{key}", model[key], f"{wanted}, the manifest's {key}")
    max_shots = fields.integer(model, "max_shots", "model.max_shots", *SHOTS,
                               required=False) or DEFAULT_MAX_SHOTS
    for key, bounds in (("mean", MEAN), ("std", STD)):
        fields.numbers(model, key, f"model.{key}", 3, *bounds, required=False)
    shots = fields.object(manifest, "shots", "shots", required=False) or {}
    low = fields.integer(shots, "min", "shots.min", *SHOTS, required=False) or 1
    high = fields.integer(shots, "max", "shots.max", *SHOTS, required=False) or max_shots
    if high < low:
        fields.fail("shots.max" if "max" in shots else "model.max_shots", high,
                    f"at least shots.min ({low})")
    return {"H": height, "W": width, "h": feat_h, "w": feat_w, "C": channels}


def _check_preprocessing(fields: _Fields, manifest: dict[str, Any]) -> None:
    """What runtime.preprocess does to an image, which must be what it implements."""
    preprocessing = fields.object(manifest, "preprocessing", "preprocessing") or {}
    fields.numbers(preprocessing, "mean", "preprocessing.mean", 3, *MEAN)
    fields.numbers(preprocessing, "std", "preprocessing.std", 3, *STD)
    size = preprocessing.get("input_size", manifest["input_size"])
    if size != manifest["input_size"]:
        fields.fail("preprocessing.input_size", size,
                    f"{manifest['input_size']}, the manifest's input_size")
    fields.text(preprocessing, "color", "preprocessing.color", required=False,
                choices=(COLOR,))
    fields.text(preprocessing, "resize", "preprocessing.resize", required=False,
                choices=(RESIZE,))
    scale = fields.number(preprocessing, "scale", "preprocessing.scale", required=False)
    if scale is not None and not math.isclose(scale, PIXEL_SCALE, rel_tol=1e-6):
        fields.fail("preprocessing.scale", scale, f"1/255 ({PIXEL_SCALE!r}), the pixel scale "
                                                  "the runtime applies")


def _check_graphs(fields: _Fields, manifest: dict[str, Any], sizes: dict[str, int]) -> None:
    """``graphs``: each io entry well formed, and the tensors the runtime binds present with
    the shapes the sizes give."""
    graphs = fields.object(manifest, "graphs", "graphs") or {}
    for graph in GRAPHS:
        entry = fields.object(graphs, graph, f"graphs.{graph}") or {}
        for kind in ("inputs", "outputs"):
            declared = _io_list(fields, entry.get(kind), f"graphs.{graph}.{kind}")
            for name, axes in GRAPH_TENSORS[graph][kind].items():
                field = f"graphs.{graph}.{kind} {name!r}"
                if name not in declared:
                    fields.fail(f"graphs.{graph}.{kind}", entry[kind],
                                f"an entry named {name!r}")
                expected = _resolve(axes, sizes)
                shape = declared[name]
                if len(shape) != len(expected) or any(
                        isinstance(dim, int) and want is not None and dim != want
                        for dim, want in zip(shape, expected, strict=False)):
                    fields.fail(f"{field} shape", shape, _render(expected))


def _io_list(fields: _Fields, value: Any, field: str) -> dict[str, list[int | str]]:
    """A list of ``{"name", "shape", "dtype"}``; name -> shape."""
    if not isinstance(value, list) or len(value) > MAX_ENTRIES:
        fields.fail(field, value, f"a list of at most {MAX_ENTRIES} {{name, shape, dtype}} "
                                  "entries")
    declared: dict[str, list[int | str]] = {}
    for index, item in enumerate(value):
        where = f"{field}[{index}]"
        if not isinstance(item, dict):
            fields.fail(where, item, "an object {name, shape, dtype}")
        name = fields.text(item, "name", f"{where}.name") or ""
        fields.text(item, "dtype", f"{where}.dtype")
        shape = item.get("shape")
        if not isinstance(shape, list) or len(shape) > MAX_RANK or not all(
                (isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0)
                or (isinstance(dim, str) and 0 < len(dim) <= MAX_TEXT) for dim in shape):
            fields.fail(f"{where}.shape", shape, f"a list of at most {MAX_RANK} sizes "
                                                 "(integers >= 0 or axis names)")
        if name in declared:
            fields.fail(f"{where}.name", name, "a name used once")
        declared[name] = shape
    return declared


def _check_variants(fields: _Fields, manifest: dict[str, Any]) -> None:
    """``variants``: at least one known precision, each naming its graph files."""
    variants = fields.object(manifest, "variants", "variants") or {}
    if not variants:
        fields.fail("variants", variants, "at least one of " + ", ".join(PRECISIONS))
    for precision, variant in fields.items(manifest, "variants", "variants", names=PRECISIONS):
        for graph in GRAPHS:
            fields.text(variant, graph, f"variants.{precision}.{graph}", required=False)
        how = fields.object(variant, "how", f"variants.{precision}.how", required=False) or {}
        for key in ("check", "calibration", "sensitivity"):  # read by crnet deploy's report
            fields.object(how, key, f"variants.{precision}.how.{key}", required=False)
        kept = how.get("kept_fp32_layers", [])
        if not isinstance(kept, list) or len(kept) > MAX_FILES or not all(
                isinstance(name, str) for name in kept):
            fields.fail(f"variants.{precision}.how.kept_fp32_layers", kept,
                        f"a list of at most {MAX_FILES} layer names")


def _check_gates(fields: _Fields, manifest: dict[str, Any]) -> None:
    """``gates``: per precision and backend, the record ``crnet deploy`` writes."""
    for precision, backends in fields.items(manifest, "gates", "gates", names=PRECISIONS):
        for backend, record in _entries(fields, backends, f"gates.{precision}"):
            where = f"gates.{precision}.{_key(backend)}"
            fields.flag(record, "passed", f"{where}.passed")
            fields.number(record, "delta_miou", f"{where}.delta_miou", -100.0, 100.0)
            fields.number(record, "max_abs_delta_miou", f"{where}.max_abs_delta_miou",
                          0.0, 100.0)
            fields.integer(record, "episodes", f"{where}.episodes", 0, 10 ** 9)
            for key in ("dataset", "split"):
                fields.text(record, key, f"{where}.{key}", nullable=True)
            for key in ("fold", "shots"):
                if record.get(key) is not None:
                    fields.integer(record, key, f"{where}.{key}", 0, 10 ** 6)
            graphs = fields.object(record, "graphs", f"{where}.graphs") or {}
            for graph in GRAPHS:
                fields.sha256(graphs, graph, f"{where}.graphs.{graph}")


def _entries(fields: _Fields, section: dict[str, Any], field: str
             ) -> Iterable[tuple[str, dict[str, Any]]]:
    """The (name, object) entries of an already-checked object of objects."""
    for name, entry in section.items():
        if not isinstance(entry, dict) or len(entry) > MAX_ENTRIES:
            fields.fail(f"{field}.{_key(name)}", entry, f"a JSON object of at most "
                                                        f"{MAX_ENTRIES} entries")
        yield name, entry


def _check_builds(fields: _Fields, manifest: dict[str, Any]) -> None:
    """``ort_builds`` and ``engines``: per precision and graph, the files a build wrote."""
    for precision, graphs in fields.items(manifest, "ort_builds", "ort_builds",
                                          names=PRECISIONS):
        for graph, entry in _graph_entries(fields, graphs, f"ort_builds.{precision}"):
            where = f"ort_builds.{precision}.{graph}"
            fields.text(entry, "path", f"{where}.path")
            fields.text(entry, "source", f"{where}.source", required=False)
            fields.sha256(entry, "source_sha256", f"{where}.source_sha256", nullable=True)
            for key in ("execution_provider", "onnxruntime_version"):
                fields.text(entry, key, f"{where}.{key}", required=False)
    for precision, graphs in fields.items(manifest, "engines", "engines", names=PRECISIONS):
        for graph, entry in _graph_entries(fields, graphs, f"engines.{precision}"):
            for key in ("plan", "json"):
                fields.text(entry, key, f"engines.{precision}.{graph}.{key}")


def _graph_entries(fields: _Fields, section: dict[str, Any], field: str
                   ) -> Iterable[tuple[str, dict[str, Any]]]:
    """The (graph, object) entries of a per-graph section; only known graph names."""
    for graph, entry in _entries(fields, section, field):
        if graph not in GRAPHS:
            fields.fail(f"{field} key {_show(graph)}", graph, f"one of {list(GRAPHS)}")
        yield graph, entry


def _check_records(fields: _Fields, manifest: dict[str, Any]) -> None:
    """checkpoint, source_checkpoint, slim, flops and versions, where present."""
    checkpoint = fields.object(manifest, "checkpoint", "checkpoint", required=False) or {}
    for key in ("weights", "metadata"):
        fields.text(checkpoint, key, f"checkpoint.{key}", required=False)
    source = fields.object(manifest, "source_checkpoint", "source_checkpoint",
                           required=False) or {}
    fields.text(source, "name", "source_checkpoint.name", required=False)
    fields.sha256(source, "sha256", "source_checkpoint.sha256", nullable=True)
    fields.flag(source, "verified", "source_checkpoint.verified", required=False)
    if source.get("training") is not None:  # its fields: models.provenance checks them
        fields.object(source, "training", "source_checkpoint.training")
    fields.object(manifest, "parity", "parity", required=False)  # crnet deploy prints it
    slim = fields.object(manifest, "slim", "slim", required=False)
    if slim is not None:
        fields.text(slim, "precision", "slim.precision", choices=PRECISIONS)
    flops = fields.object(manifest, "flops", "flops", required=False) or {}
    for key in flops:
        if key == "counted":
            fields.text(flops, key, "flops.counted")
        else:
            fields.integer(flops, key, f"flops.{_key(key)}", 0, 10 ** 18)
    versions = fields.object(manifest, "versions", "versions", required=False) or {}
    for key in versions:
        fields.text(versions, key, f"versions.{_key(key)}", nullable=True)


def _check_golden(fields: _Fields, manifest: dict[str, Any]) -> None:
    """``golden`` (runtime.golden), where present: its file and the gates it records."""
    golden = fields.object(manifest, "golden", "golden", required=False)
    if golden is None:
        return
    fields.text(golden, "file", "golden.file")
    fields.number(golden, "threshold", "golden.threshold", 0.0, 1.0, required=False)
    fields.integer(golden, "episodes", "golden.episodes", 0, MAX_FILES, required=False)
    gates = fields.object(golden, "max_abs_delta_miou", "golden.max_abs_delta_miou",
                          required=False) or {}
    for precision in gates:
        fields.number(gates, precision, f"golden.max_abs_delta_miou.{_key(precision)}",
                      0.0, 100.0)


def _check_adaptable(fields: _Fields, manifest: dict[str, Any]) -> None:
    """``adaptable`` (runtime.adapter), where present: the tensors an adapter may replace."""
    record = fields.object(manifest, "adaptable", "adaptable", required=False)
    if record is None:
        return
    fields.text(record, "graph", "adaptable.graph", required=False, choices=GRAPHS)
    fields.sha256(record, "refine_sha256", "adaptable.refine_sha256", nullable=True)
    tensors = fields.object(record, "tensors", "adaptable.tensors", required=False,
                            limit=MAX_FILES) or {}
    for name, tensor in _entries(fields, tensors, "adaptable.tensors"):
        where = f"adaptable.tensors[{_show(name)}]"
        shape = tensor.get("shape")
        if not isinstance(shape, list) or len(shape) > MAX_RANK or not all(
                isinstance(dim, int) and not isinstance(dim, bool) and 0 <= dim < 2 ** 31
                for dim in shape):
            fields.fail(f"{where}.shape", shape, f"a list of at most {MAX_RANK} sizes")
        fields.text(tensor, "torch_name", f"{where}.torch_name", required=False)
        fields.text(tensor, "part", f"{where}.part", required=False)


def _resolve(axes: tuple[int | str, ...], sizes: Mapping[str, int]) -> tuple[int | None, ...]:
    """Axes of GRAPH_TENSORS as sizes: fixed ints, the manifest's sizes, None (dynamic)."""
    return tuple(axis if isinstance(axis, int) else sizes.get(axis) for axis in axes)


def _render(shape: Sequence[int | str | None]) -> str:
    return "[" + ", ".join("?" if dim is None else str(dim) for dim in shape) + "]"


def expected_io(manifest: Mapping[str, Any], graph: str
                ) -> dict[str, dict[str, tuple[int | None, ...]]]:
    """The tensors the runtime binds on ``graph`` (inputs, outputs), each with the shape a
    checked manifest promises (None: a dynamic batch or shot axis)."""
    height, width = manifest["input_size"]
    feat_h, feat_w = manifest["feature_size"]
    sizes = {"H": height, "W": width, "h": feat_h, "w": feat_w,
             "C": manifest["feature_channels"]}
    return {kind: {name: _resolve(axes, sizes) for name, axes in tensors.items()}
            for kind, tensors in GRAPH_TENSORS[graph].items()}


def tensor_info(name: str, shape: Iterable[Any] | None, dtype: str | None = None
                ) -> TensorInfo:
    """A TensorInfo from a backend's own description: dimensions that are not
    non-negative ints (names, None, -1) become None (dynamic); ONNX Runtime's type names
    ("tensor(float)") become numpy's ("float32")."""
    dims = None if shape is None else tuple(
        dim if isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0 else None
        for dim in shape)
    return name, dims, None if dtype is None else _DTYPE_NAMES.get(dtype, dtype)


def check_graph_io(manifest: Mapping[str, Any], graph: str, inputs: Sequence[TensorInfo],
                   outputs: Sequence[TensorInfo], source: str) -> None:
    """Raise BundleError unless a loaded ``graph`` (``source``: its file, for the message)
    takes exactly the inputs the runtime feeds and gives the outputs it reads, with the
    ranks, channel counts and feature size the manifest promises. A dynamic dimension is
    accepted where the manifest's is fixed (it cannot be checked before a run); a fixed
    batch or shot axis is refused, since the runtime feeds several images or shots."""
    wanted = expected_io(manifest, graph)
    given = {name for name, _, _ in inputs}
    if given != set(wanted["inputs"]):
        raise BundleError(f"{source}: the {graph} graph has inputs {sorted(given)}; the "
                          f"manifest expects {sorted(wanted['inputs'])}")
    for kind, tensors in (("input", inputs), ("output", outputs)):
        found = {name: (shape, dtype) for name, shape, dtype in tensors}
        for name, expected in wanted[kind + "s"].items():
            if name not in found:
                raise BundleError(f"{source}: the {graph} graph has no {kind} {name!r} "
                                  f"(it has {sorted(found)}); the manifest expects "
                                  f"{sorted(wanted[kind + 's'])}")
            shape, dtype = found[name]
            _check_tensor(graph, kind, name, shape, dtype, expected, source)


def _check_tensor(graph: str, kind: str, name: str, shape: tuple[int | None, ...] | None,
                  dtype: str | None, expected: tuple[int | None, ...], source: str) -> None:
    """One tensor of check_graph_io: dtype, rank, then each fixed dimension."""
    what = f"{source}: the {graph} graph's {kind} {name!r}"
    if dtype is not None and dtype not in _FLOAT_TYPES:
        raise BundleError(f"{what} is {dtype}; expected one of {list(_FLOAT_TYPES)}")
    if shape is None:
        return  # the backend cannot tell the rank before a run
    if len(shape) != len(expected):
        raise BundleError(f"{what} has rank {len(shape)} (shape {_render(shape)}); the "
                          f"manifest expects rank {len(expected)}, {_render(expected)}")
    axes = GRAPH_TENSORS[graph][kind + "s"][name]
    for axis, (dim, want) in enumerate(zip(shape, expected, strict=True)):
        if axes[axis] in _DYNAMIC_AXES and dim is not None:
            raise BundleError(f"{what} has shape {_render(shape)}, a fixed size on axis "
                              f"{axis}; the manifest expects {_render(expected)}, with a "
                              f"dynamic {_axis_meaning(axes[axis], None)}")
        if want is not None and dim is not None and dim != want:
            raise BundleError(f"{what} has shape {_render(shape)}; the manifest expects "
                              f"{_render(expected)} ({_axis_meaning(axes[axis], want)})")


def _axis_meaning(axis: int | str, size: int | None) -> str:
    """What an axis of GRAPH_TENSORS is, for a message."""
    meanings = {"N": "batch of images", "K": "number of shots",
                "H": "input_size height", "W": "input_size width",
                "h": "feature_size height", "w": "feature_size width",
                "C": "feature_channels"}
    if isinstance(axis, int):
        return {LOGIT_CHANNELS: f"{size} logit channels: background, foreground",
                3: "3 colour channels"}.get(axis, f"a fixed {size}")
    return meanings[axis] if size is None else f"{meanings[axis]} {size}"
