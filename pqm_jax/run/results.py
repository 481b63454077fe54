"""Reading a finished (or partly finished) run back: base, adapters, bank, splits, features.

    res = results.load(workdir)
    base, model_config = res.model()            # quantised, cut to the training audio window
    si = res.si_lora()                          # stage-2 adapters
    lora = res.speaker_lora("en-029")           # one speaker: reads only its row
    params, cfg = res.merged("en-029")          # its PQM model as dense weights (for export)
    paged = res.paged_bank()                    # any speaker's adapters, a page at a time
    bank, names = res.bank()                    # all adapted speakers stacked [S, ...] (small runs)
    corpus = res.corpus()                       # the same adapt/dev/test splits
    mel = res.feature_store().get(entry)        # cached log-mel of any entry

The evaluation must use `model()` (or `Family.window` with `res.config.model.audio_window_s`):
the adapters were trained on that window.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax

from pqm_jax import checkpoint
from pqm_jax import lora as lora_lib
from pqm_jax.convert import merged as merged_lib
from pqm_jax.data import corpus as corpus_lib
from pqm_jax.data import feature_store, issues
from pqm_jax.run import backbone, context
from pqm_jax.run import bank as bank_lib
from pqm_jax.run import config as config_lib
from pqm_jax.run import workdir as workdir_lib


@dataclasses.dataclass(eq=False)
class Results:
    """Handle on a run folder; everything is read lazily, on request."""

    paths: workdir_lib.Workdir
    config: config_lib.RunConfig
    _backbone: tuple | None = dataclasses.field(default=None, repr=False)

    @property
    def workdir(self):
        return self.paths.root

    @property
    def manifest(self) -> dict[str, Any]:
        """stage3/manifest.jsonl as one dict ({} before stage 3 has started): format, slots,
        chunks, "speakers" {name: results + chunk and row}, "complete"."""
        return bank_lib.manifest(bank_lib.read_lines(self.paths))

    def speakers(self) -> list[str]:
        """Adapted speakers, sorted."""
        return sorted(self.manifest.get("speakers", {}))

    def backbone(self) -> tuple[dict, Any, Any]:
        """(quantised base, full model config, tokenizer) from `ckpt/base` (read once)."""
        if self._backbone is None:
            self._backbone = backbone.quantized(self.config, self.paths)
        return self._backbone

    def full_precision(self) -> tuple[dict, Any, Any]:
        """(full-precision params, model config, tokenizer): the backbone before quantisation."""
        return backbone.load(self.config, self.paths)

    def model(self) -> tuple[dict, Any]:
        """(quantised base, model config) cut to the run's audio window."""
        base, cfg, _ = self.backbone()
        return self.config.model.family.window(base, cfg, self.config.model.audio_window_s)

    def tokenizer(self) -> Any:
        return self.backbone()[2]

    def _template(self) -> Any:
        base = self.backbone()[0]
        lc = context.lora_config(self.config)
        return jax.eval_shape(lambda: lora_lib.init(base, lc, key=jax.random.key(0)))

    def si_lora(self) -> Any:
        """The stage-2 adapters (initial adapters when stage 2 was disabled)."""
        out = checkpoint.restore(self.paths.stage2_final, {"lora": self._template()})
        return out["lora"]

    def si_info(self) -> dict[str, Any]:
        return checkpoint.restore(self.paths.stage2_final, {"info": checkpoint.Json()})["info"]

    def paged_bank(self, cache_speakers: int = 256) -> bank_lib.PagedBank:
        """The adapted speakers' bank read from disk on request (see `run.bank.PagedBank`)."""
        return bank_lib.PagedBank(self.paths, self._template(), cache_speakers=cache_speakers)

    def speaker_lora(self, speaker: str, template: Any = None) -> Any:
        """One speaker's best adapters (only its own row is read)."""
        paged = bank_lib.PagedBank(self.paths, template or self._template(), cache_speakers=0)
        return jax.tree.map(jax.numpy.asarray, paged.one(speaker))

    def merged(self, speaker: str | None, *, window: str = "run") -> tuple[dict, Any]:
        """(dense float32 params, model config) of `speaker`'s PQM model: the quantised base
        dequantised with the speaker's stage-3 adapters merged (`convert.merged.merge`; the
        stage-2 adapters are their starting point, already inside them). None = the stage-2
        (speaker-independent) model. `window`: "run" = cut to the run's audio window (the
        model the evaluation scores), "full" = the backbone's own window (Whisper: 30 s)."""
        if window not in ("run", "full"):
            raise ValueError(f"window must be 'run' or 'full', not {window!r}")
        if speaker is not None and speaker not in self.speakers():
            names = self.speakers()
            known = ", ".join(names[:10]) + (" ..." if len(names) > 10 else "") or "none yet"
            raise KeyError(f"speaker {speaker!r} is not in {self.workdir} (its speakers: {known})")
        base, cfg = self.model() if window == "run" else self.backbone()[:2]
        adapters = self.si_lora() if speaker is None else self.speaker_lora(speaker)
        return merged_lib.merge(base, adapters), cfg

    def bank(self, speakers: list[str] | None = None) -> tuple[Any, list[str]]:
        """(adapters of `speakers` (default all) stacked [S, ...], speaker index), in memory:
        for small runs; evaluation pages speakers in with `paged_bank` instead."""
        paged = bank_lib.PagedBank(self.paths, self._template(), cache_speakers=0)
        names = paged.speakers if speakers is None else list(speakers)
        return jax.tree.map(jax.numpy.asarray, paged.gather(names)), names

    def corpus(self, report: issues.InputReport | None = None) -> corpus_lib.Corpus:
        """The run's corpus (same splits; synthetic audio is reused, not re-rendered)."""
        return corpus_lib.build(self.config.data, self.paths.data, report=issues.default(report))

    def feature_store(
        self, report: issues.InputReport | None = None, *, window_s: float | None = None
    ) -> feature_store.FeatureStore:
        """The run's feature cache (window and mel bins of training), or with `window_s` the
        cache of windows of that length."""
        n_mels = self.backbone()[1].n_mels
        return context.store(self.config, self.paths, n_mels, report, window_s=window_s)


def load(workdir: str | os.PathLike) -> Results:
    """A handle on the run in `workdir` (its config.json must exist)."""
    paths = workdir_lib.Workdir.of(workdir)
    return Results(paths=paths, config=config_lib.from_dict(workdir_lib.read_config(paths)))
