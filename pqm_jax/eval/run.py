"""Scoring a finished run: the same test utterances of the same speakers under four systems.

- fp32:   the full-precision backbone;
- nf4:    the quantised backbone (as stored in the run);
- nf4_si: the quantised backbone + the speaker-independent (stage-2) adapters;
- pqm:    the quantised backbone + each speaker's own (stage-3) adapters.

All four see the same cached log-mel windows (the run's audio window) and decode with the same
options. PQM decodes every batch with per-utterance adapters gathered from the bank, so a batch
mixes speakers with one compiled program.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from pqm_jax import lora as lora_lib
from pqm_jax import models, multihost
from pqm_jax.data import issues
from pqm_jax.eval import report as report_lib
from pqm_jax.eval import wer
from pqm_jax.quant import tree as qtree
from pqm_jax.run import bank as bank_lib
from pqm_jax.run import results
from pqm_jax.run import workdir as workdir_lib
from pqm_jax.text import normalize

SYSTEMS = ("fp32", "nf4", "nf4_si", "pqm")
# Whisper as released reads 30 s windows: baselines scored that way too, when asked, so a short
# training window never handicaps the unadapted models.
FULL_WINDOW = {"fp32_30s": "fp32", "nf4_30s": "nf4"}


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    """How to decode and score.

    Attributes:
      systems: which of SYSTEMS to score.
      beam_size: 1 = greedy.
      batch_size: utterances per jitted decoding call.
      max_repeats, max_period: the repetition guard (`decoding.DecodeOptions`), the same for
        every system; 0 turns it off.
      max_new_tokens: generated-token cap; None = the run's `model.max_tokens` budget.
      normalizer: "english" (Whisper's), "digits" (FSDD) or "auto" (digits for FSDD runs).
      speakers: score only these adapted speakers (default: all).
      full_window_baselines: also score fp32 and NF4 on Whisper's own 30 s windows (systems
        "fp32_30s" and "nf4_30s"), when the run trained on a shorter window.
      partial: score a run that has not finished (the report says what is missing); without
        it an unfinished run is an `IncompleteRunError`.
      cache_speakers: adapted speakers kept in memory while decoding PQM (the rest are read
        from the bank on disk when a batch needs them).
    """

    systems: tuple[str, ...] = SYSTEMS
    beam_size: int = 1
    batch_size: int = 8
    max_repeats: int = 4
    max_period: int = 8
    max_new_tokens: int | None = None
    normalizer: str = "auto"
    speakers: tuple[str, ...] | None = None
    full_window_baselines: bool = False
    partial: bool = False
    cache_speakers: int = 256

    def __post_init__(self):
        for name in ("beam_size", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        unknown = set(self.systems) - set(SYSTEMS)
        if unknown:
            raise ValueError(f"unknown systems {sorted(unknown)}; choose from {SYSTEMS}")
        if self.normalizer not in ("auto", "english", "digits"):
            raise ValueError(f"normalizer must be auto, english or digits, not {self.normalizer}")


class IncompleteRunError(RuntimeError):
    """The run has not finished: scoring it would silently leave systems or speakers out."""


def completeness(res: results.Results, report: issues.InputReport) -> dict[str, Any] | None:
    """None for a finished run; else {"stage2": finished?, "missing_speakers": [...]}."""
    stage2 = res.paths.stage2_final.exists()
    stage3 = not res.config.stage3.enabled or bool(res.manifest.get("complete"))
    if stage2 and stage3:
        return None
    adapted = set(res.speakers())
    targets = sorted(res.corpus(report).targets)
    missing = [s for s in targets if s not in adapted] if res.config.stage3.enabled else []
    return {"stage2": stage2, "missing_speakers": missing}


def _incomplete_message(workdir: Any, state: dict[str, Any]) -> str:
    missing = state["missing_speakers"]
    what = "stage 2 has not finished" if not state["stage2"] else "stage 3 has not finished"
    if missing:
        what += f" ({len(missing)} speakers not adapted: {', '.join(missing[:8])}"
        what += ", ...)" if len(missing) > 8 else ")"
    return (
        f"{workdir}: the run is incomplete: {what}; rerun the same train.py command to resume "
        "it, or pass --partial to score what is there"
    )


@dataclasses.dataclass(frozen=True)
class TestSet:
    """Test utterances in a fixed order: mel [N, n_mels, frames], refs, speakers, ids."""

    mel: np.ndarray
    refs: tuple[str, ...]
    speakers: tuple[str, ...]
    utt_ids: tuple[str, ...]


def test_set(
    res: results.Results,
    speakers: Sequence[str],
    report: issues.InputReport,
    *,
    window_s: float | None = None,
) -> TestSet:
    """Every usable test utterance of `speakers`, from the run's feature cache (or, with
    `window_s`, a cache of windows of that length)."""
    corpus = res.corpus(report)
    store = res.feature_store(report, window_s=window_s)
    mels, refs, spk, ids = [], [], [], []
    for s in speakers:
        if s not in corpus.targets:
            raise KeyError(f"speaker {s!r} is not a target speaker of this run")
        for entry in corpus.targets[s].test:
            mel = store.get(entry)
            if mel is None:
                continue  # reported by the store (skipped)
            mels.append(mel)
            refs.append(entry.text)
            spk.append(s)
            ids.append(entry.utt_id)
    if not mels:
        raise ValueError(f"no usable test utterance for speakers {list(speakers)}")
    return TestSet(np.stack(mels), tuple(refs), tuple(spk), tuple(ids))


def token_budget(res: results.Results, options: EvalOptions) -> int:
    """Most generated tokens: `options.max_new_tokens`, else the run's budget less the prompt."""
    return options.max_new_tokens or res.config.model.max_tokens - len(res.tokenizer().prompt())


def decode_options(res: results.Results, options: EvalOptions) -> Any:
    """The decoding settings of a run's model, from its family (`Family.decode_options`)."""
    return res.config.model.family.decode_options(
        res.tokenizer(),
        res.config.model,
        beam_size=options.beam_size,
        max_new_tokens=token_budget(res, options),
        max_repeats=options.max_repeats,
        max_period=options.max_period,
    )


def decode_all(
    params: Any,
    mel: np.ndarray,
    *,
    config: Any,
    options: Any,
    tokenizer: Any,
    lora: Any = None,
    bank: bank_lib.PagedBank | None = None,
    speakers: Sequence[str] | None = None,
    batch_size: int = 8,
    desc: str = "decoding",
) -> list[str]:
    """Transcripts of mel [N, n_mels, frames] in order. With `bank` and `speakers` [N],
    utterance i uses speaker `speakers[i]`'s adapters: each batch gathers only its own
    speakers' rows from the (paged) bank onto the device; one compiled program serves all."""
    if (bank is None) != (speakers is None):
        raise ValueError("decode_all needs both bank and speakers, or neither")
    n = mel.shape[0]
    starts = list(range(0, n, batch_size))
    mine = starts[multihost.share()]  # several processes: each decodes its share of batches
    out: list[str] = []
    quiet = not multihost.primary()
    for start in tqdm(mine, desc=desc, unit="batch", leave=False, disable=quiet):
        idx = np.arange(start, min(start + batch_size, n))
        pad = batch_size - len(idx)
        rows = np.concatenate([idx, np.repeat(idx[-1:], pad)])  # fixed shape: one compilation
        ad = lora
        if bank is not None:
            ad = jax.tree.map(jnp.asarray, bank.gather([speakers[r] for r in rows]))
        tokens, lengths = models.of(config).generate(
            params, mel[rows], config=config, options=options, lora=ad, bank=bank is not None
        )
        out.append([tokenizer.decode(tokens[j, : lengths[j]]) for j in range(len(idx))])
    batches = multihost.interleave(multihost.gather_json(out), len(starts))
    return [text for batch in batches for text in batch]


def normalizer_for(res: results.Results, name: str) -> Callable[[str], str]:
    if name == "auto":
        digits = res.config.data.source == "fsdd" or res.config.data.text == "digits"
        name = "digits" if digits else "english"
    return normalize.normalize_digits if name == "digits" else normalize.normalize_english


def evaluate(
    workdir: str | pathlib.Path,
    options: EvalOptions = EvalOptions(),
    *,
    report: issues.InputReport | None = None,
) -> dict:
    """Scores the run in `workdir`; writes report.json/.md/.png and transcripts.jsonl there.

    Returns:
      The report dict (see `pqm_jax.eval.report.build`).

    Raises:
      IncompleteRunError: the run has not finished (and `options.partial` is off).
      WorkdirLocked: another process is running on `workdir`.
    """
    res = results.load(workdir)
    holder = workdir_lib.lock(res.paths) if multihost.primary() else contextlib.nullcontext()
    with holder:
        return _evaluate(res, workdir, options, issues.default(report))


def _evaluate(
    res: results.Results, workdir: Any, options: EvalOptions, report: issues.InputReport
) -> dict:
    t0 = time.time()
    norm = normalizer_for(res, options.normalizer)
    if norm is normalize.normalize_english:
        normalize.english_normalizer()  # a missing spelling map fails now, not after decoding
    state = completeness(res, report)
    if state is not None and not options.partial:
        raise IncompleteRunError(_incomplete_message(workdir, state))
    adapted = res.speakers()
    unavailable = {"nf4_si", "pqm"} if state is not None and not state["stage2"] else set()
    wanted = [s for s in options.systems if (s != "pqm" or adapted) and s not in unavailable]
    if "pqm" in options.systems and not adapted:
        print("evaluate: no adapted speaker (stage 3 has not run): PQM is left out")
    speakers = list(options.speakers or adapted or sorted(res.corpus(report).targets))
    missing = [s for s in speakers if adapted and s not in adapted]
    if missing and "pqm" in wanted:
        raise KeyError(f"speakers {missing} have no adapters; adapted: {adapted}")
    data = test_set(res, speakers, report)
    base, cfg = res.model()
    tok = res.tokenizer()
    mc = res.config.model
    family = mc.family
    dopts = decode_options(res, options)
    hyps: dict[str, list[str]] = {}
    sizes: dict[str, int] = {}
    kw = {"config": cfg, "options": dopts, "tokenizer": tok, "batch_size": options.batch_size}
    si = res.si_lora() if "nf4_si" in wanted else None
    paged = res.paged_bank(options.cache_speakers) if "pqm" in wanted else None
    one_speaker = paged.one(speakers[0]) if paged is not None else (si or None)
    for system in tqdm(wanted, desc="systems", unit="system"):
        if system == "fp32":
            full, full_cfg, _ = res.full_precision()
            params, _ = family.window(jax.tree.map(jnp.asarray, full), full_cfg, mc.audio_window_s)
            sizes[system] = qtree.tree_nbytes(full)
            hyps[system] = decode_all(params, data.mel, desc=system, **kw)
            del full, params
        elif system == "nf4":
            sizes[system] = qtree.tree_nbytes(base)
            hyps[system] = decode_all(base, data.mel, desc=system, **kw)
        elif system == "nf4_si":
            sizes[system] = qtree.tree_nbytes(base) + qtree.tree_nbytes(si)
            hyps[system] = decode_all(base, data.mel, lora=si, desc=system, **kw)
        else:
            sizes[system] = qtree.tree_nbytes(base) + qtree.tree_nbytes(one_speaker)
            hyps[system] = decode_all(
                base, data.mel, bank=paged, speakers=data.speakers, desc=system, **kw
            )
    # 30 s for released Whisper; a Conformer reads any length (None)
    full_window = family.full_window_s(res.backbone()[1])
    if options.full_window_baselines and full_window and mc.audio_window_s < full_window:
        full_data = test_set(res, speakers, report, window_s=full_window)
        if full_data.utt_ids != data.utt_ids:
            raise ValueError("30 s features and run features cover different utterances")
        full_q, full_cfg, _ = res.backbone()
        kw30 = {**kw, "config": full_cfg}
        for name, system in FULL_WINDOW.items():
            if system not in wanted:
                continue
            if system == "fp32":
                full = res.full_precision()[0]
                params = jax.tree.map(jnp.asarray, full)
            else:
                params = full_q
            sizes[name] = sizes[system]
            hyps[name] = decode_all(params, full_data.mel, desc=name, **kw30)
            wanted = [*wanted, name]
            del params
    systems = {s: wer.score_by_speaker(data.refs, hyps[s], data.speakers, norm) for s in wanted}
    rep = report_lib.build(
        systems,
        sizes,
        base_params=qtree.tree_num_params(base),
        speaker_params=lora_lib.num_params(one_speaker) if one_speaker is not None else 0,
        extra={
            "workdir": str(workdir),
            "model": mc.name,
            "quant": mc.quant,
            "audio_window_s": mc.audio_window_s,
            "decoding": {
                "beam_size": options.beam_size,
                "max_new_tokens": token_budget(res, options),
                "repetition_guard": {
                    "max_repeats": options.max_repeats,
                    "max_period": options.max_period,
                },
            },
            "normalizer": options.normalizer,
            "test_utterances": len(data.refs),
            "speakers": speakers,
            "input_issues": report.summary(),
            "partial": state if state is not None else False,
            "seconds": round(time.time() - t0, 1),
        },
    )
    if multihost.primary():
        report_lib.write(rep, res.workdir)
        with open(res.paths.transcripts, "w") as f:
            for i, utt in enumerate(data.utt_ids):
                row = {"utt_id": utt, "speaker": data.speakers[i], "ref": data.refs[i]}
                row.update({s: hyps[s][i] for s in wanted})
                f.write(json.dumps(row) + "\n")
    multihost.barrier("pqm-evaluate-written")
    return rep
