"""K-shot prototype fusion against K-shot finetuning, side by side (`crnet eval
--finetune`, `crnet deploy`'s finetune rows).

On each episode the PyTorch reference predicts the query twice: from the K supports fused
(the shipped weights), and after a finetune on the K supports (crnet.models.finetune,
seeded by ``seed + episode index``), with the adapter that finetune produced. Each
deployed variant does the same: one Segmenter keeps the shipped weights, a second one
gets the episode's adapter (``Segmenter.set_adapter``), so the finetune runs once per
episode and every variant applies the same tensors. Each fusion row is gated against the
fused PyTorch reference, each finetune row against the finetuned PyTorch reference, with
the precision's gate (crnet/gates.json).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from crnet.runtime.backends.base import REFERENCE_BACKEND

if TYPE_CHECKING:
    from crnet.data.episodes import Episode
    from crnet.evaluate import EvalOptions


class _EpisodeAdapters:
    """The adapter of the current episode, made once, whichever predictor asks first."""

    def __init__(self, source: Any, seed: int, overrides: dict[str, Any]) -> None:
        self.source, self.seed, self.overrides = source, seed, overrides
        self.index = -1
        self.episode: Episode | None = None
        self.adapter: Any = None
        self.seconds: list[float] = []

    def of(self, episode: Episode) -> Any:
        """The finetune of ``episode``'s supports (seeded by its position in the run)."""
        if episode is not self.episode:
            from crnet.models.finetune import finetune

            self.index += 1
            self.episode = episode
            self.adapter = finetune(self.source, list(episode.support_images),
                                    list(episode.support_masks),
                                    seed=self.seed + self.index, **self.overrides)
            self.seconds.append(float(self.adapter.settings["seconds"]))
        return self.adapter


def _adapted_predictor(segmenter: Any, adapters: _EpisodeAdapters) -> Any:
    """Predictor: the episode's adapter on ``segmenter``, then its supports and query."""

    def predict(episode: Episode) -> Any:
        segmenter.set_adapter(adapters.of(episode))
        segmenter.set_support(list(episode.support_images), list(episode.support_masks))
        return segmenter.segment(episode.query_image)

    return predict


def _segmenters(options: EvalOptions) -> tuple[dict[str, tuple[Any, Any]], Any]:
    """({"reference" or a precision: (fusion segmenter, finetune segmenter)}, the model
    source of the finetune); the PyTorch reference comes first."""
    from crnet.evaluate import parse_precisions
    from crnet.models.finetune import open_source
    from crnet.runtime import Segmenter

    if options.bundle is None:
        make = lambda: Segmenter.from_checkpoint(options.checkpoint)  # noqa: E731
        return {"reference": (make(), make())}, open_source(options.checkpoint)
    from crnet.runtime.bundle import Bundle

    bundle = Bundle.load(options.bundle)
    precisions = parse_precisions(options.precision, bundle.precisions)
    pairs: dict[str, tuple[Any, Any]] = {
        "reference": (Segmenter(options.bundle, backend=REFERENCE_BACKEND),
                      Segmenter(options.bundle, backend=REFERENCE_BACKEND))}
    for precision in precisions:
        if options.backend == REFERENCE_BACKEND and precision == "fp32":
            continue
        hint = ({"inference_precision": options.inference_precision}
                if options.inference_precision else {})
        pairs[precision] = (
            Segmenter(options.bundle, backend=options.backend, precision=precision, **hint),
            Segmenter(options.bundle, backend=options.backend, precision=precision, **hint))
    return pairs, open_source(bundle)


def evaluate_finetune(options: EvalOptions, finetune: dict[str, Any] | None = None,
                      source: Any = None) -> list[dict[str, Any]]:
    """Score fusion and finetuning for the reference and each precision of ``options`` in
    one pass: two records per variant (``mode`` fusion / finetune), each gated against the
    PyTorch reference of its mode; a finetune record carries ``gain_miou`` over its fusion
    one. ``finetune``: overrides of the finetune's defaults (crnet.models.finetune)."""
    from crnet.data.evaluation import evaluate_many, gate_record, segmenter_predictor
    from crnet.evaluate import load_gates

    if options.shots < 2:
        from crnet.runtime.errors import UsageError

        raise UsageError(f"--finetune needs --shots >= 2 (each support is the query of the "
                         f"others), got {options.shots}")
    data = options.data
    source = data.open("test") if source is None else source
    pairs, model_source = _segmenters(options)
    adapters = _EpisodeAdapters(model_source, data.seed, dict(finetune or {}))
    predictors: dict[str, Any] = {}
    for name, (fused, tuned) in pairs.items():
        predictors[f"{name}/fusion"] = segmenter_predictor(fused)
        predictors[f"{name}/finetune"] = _adapted_predictor(tuned, adapters)
    try:
        results = evaluate_many(
            predictors, source.episodes(options.episodes, shots=options.shots),
            total=options.episodes, progress=options.progress,
            description="eval fusion + finetune", classes=getattr(source, "classes", None))
    finally:
        for fused, tuned in pairs.values():
            fused.close()
            tuned.close()
    gates = load_gates()
    settings = {key: value for key, value in (adapters.adapter.settings.items())
                if key in ("steps", "lr", "parts", "optimizer", "pairs_per_step", "device")}
    finetune_s = sum(adapters.seconds) / max(len(adapters.seconds), 1)
    records: list[dict[str, Any]] = []
    for name in pairs:  # the reference first, then each variant
        precision = "fp32" if name == "reference" else name
        backend = (getattr(pairs[name][0], "backend_name", options.backend)
                   if name != "reference" else REFERENCE_BACKEND)
        for mode in ("fusion", "finetune"):
            record = gate_record(
                results[f"{name}/{mode}"], results[f"reference/{mode}"],
                gates.get(precision) if name != "reference" else None,
                is_reference=name == "reference", backend=backend, precision=precision,
                mode=mode, dataset=data.dataset, sampler=data.sampler, fold=data.fold_or(0),
                shots=options.shots, seed=data.seed,
                bundle=None if options.bundle is None else str(options.bundle))
            if mode == "finetune":
                record["gain_miou"] = record["miou"] - records[-1]["miou"]
                record["finetune"] = {**settings, "seconds_per_episode": finetune_s}
            records.append(record)
    return records


def format_finetune_table(records: list[dict[str, Any]]) -> str:
    """Fusion and finetune mIoU side by side per variant, each with its gate verdict."""
    lines = [f"{'backend':<12} {'precision':<9} {'fusion':>7} {'finetune':>8} {'gain':>6} "
             f"{'FB-IoU ft':>9} {'delta':>7} {'gate':>5}  result"]
    for fused, tuned in zip(records[::2], records[1::2], strict=True):
        gate = tuned["max_abs_delta_miou"]
        verdicts = {True: "pass", False: "FAIL", None: "-"}
        verdict = (verdicts[tuned["passed"]] if fused["passed"] is not False
                   else f"{verdicts[tuned['passed']]} (fusion FAIL)")
        lines.append(
            f"{tuned['backend']:<12} {tuned['precision']:<9} {fused['miou']:7.2f} "
            f"{tuned['miou']:8.2f} {tuned['gain_miou']:+6.2f} {tuned['fbiou']:9.2f} "
            f"{tuned['delta_miou']:+7.2f} {'' if gate is None else f'{gate:.2f}':>5}  {verdict}")
    settings = records[1]["finetune"]
    lines.append(f"finetune: {settings['steps']} {settings['optimizer']} steps, lr "
                 f"{settings['lr']:g}, parts {','.join(settings['parts'])}, pairs/step "
                 f"{settings['pairs_per_step'] or 'all'}, {settings['seconds_per_episode']:.2f} "
                 f"s per episode on {settings['device']}; delta: finetune mIoU vs the "
                 "finetuned PyTorch reference")
    return "\n".join(lines)
