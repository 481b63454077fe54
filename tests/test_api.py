"""`pqm_jax.api`: loading, quantisation choices, transcription, adapters and input errors.

Fast tests use a small random Whisper with tiny.en's tokenizer (vocabulary 51,864); the real
weights are exercised in `test_api_real.py` (slow).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile

import pqm_jax
from pqm_jax import api, resources
from pqm_jax import lora as lora_lib
from pqm_jax.models.whisper import family as whisper_family
from pqm_jax.quant import base
from pqm_jax.quant import tree as qtree
from pqm_jax.run import bank as bank_lib
from pqm_jax.run import workdir as workdir_lib
from pqm_jax.testing import toy

MAX_NEW = 3  # random models ramble; a short cap keeps the loops short


@functools.cache
def _model() -> api.WhisperModel:
    try:
        resources.tiny_en_dir()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    return toy.whisper_model()


def _clips(n: int, seed: int = 0) -> list[np.ndarray]:
    """Tones of different pitches and lengths: the random model transcribes them differently."""
    rng = np.random.default_rng(seed)
    clips = []
    for i in range(n):
        t = np.arange(int(rng.integers(4_000, 40_000))) / 16_000
        pitch = (200.0, 900.0, 2_500.0, 5_000.0, 7_000.0)[(i + seed) % 5]
        on = t < rng.uniform(0.2, 2.5)
        clips.append((0.5 * np.sin(2 * np.pi * pitch * t) * on).astype(np.float32))
    return clips


def test_batches_padding_and_order_do_not_change_transcripts():
    m, clips = _model(), _clips(5)
    together = m.transcribe(clips, batch_size=2, max_new_tokens=MAX_NEW, progress=False)
    alone = [m.transcribe(c, batch_size=2, max_new_tokens=MAX_NEW)[0] for c in clips]
    assert together == alone
    assert len(set(together)) > 2  # distinct transcripts, so a mix-up in the order would show
    assert all(isinstance(t, str) for t in together)
    assert m.transcribe([], max_new_tokens=MAX_NEW) == []


def test_paths_and_other_rates_are_loaded(tmp_path):
    m, (clip,) = _model(), _clips(1, seed=3)
    path = tmp_path / "a.wav"
    soundfile.write(path, clip, 16_000, subtype="FLOAT")
    down = clip[::2].copy()
    out = m.transcribe(
        [str(path), path, down], batch_size=2, max_new_tokens=MAX_NEW, sample_rate=8_000
    )
    assert out[0] == out[1] == m.transcribe(clip, batch_size=2, max_new_tokens=MAX_NEW)[0]


def _adapter(seed: int, b_scale: float) -> dict:
    m = _model()
    ad = lora_lib.init(
        m.params,
        lora_lib.LoraConfig(rank=2, targets=whisper_family.LORA_TARGETS),
        key=jax.random.key(seed),
    )
    return jax.tree.map(
        lambda w: w.replace(b=jnp.full(w.b.shape, b_scale)),
        ad,
        is_leaf=lambda x: isinstance(x, lora_lib.LoraWeights),
    )


def test_speaker_bank_matches_each_speaker_alone(tmp_path):
    m, clips = _model(), _clips(4, seed=1)
    ads = {"ann": _adapter(1, 0.0), "bob": _adapter(2, 0.3)}
    who = ["bob", "ann", "bob", "ann"]
    kw = {"batch_size": 2, "max_new_tokens": MAX_NEW}
    by_dict = m.transcribe(clips, adapters=ads, speakers=who, **kw)
    bank = lora_lib.stack([ads["ann"], ads["bob"]])
    by_bank = m.transcribe(clips, adapters=bank, speakers=[1, 0, 1, 0], **kw)
    assert by_dict == by_bank
    # the same bank on disk, read a batch at a time
    paths = workdir_lib.Workdir(tmp_path)
    bank_lib.write_lines(paths, [{"header": True}])
    rows = bank_lib.flatten(jax.device_get(bank), 2)
    results = [{"speaker": "ann"}, {"speaker": "bob"}]
    bank_lib.write_chunk(paths, 0, rows, ["ann", "bob"], results, ads["ann"])
    bank_lib.append_line(paths, {"chunk": 0, "speakers": results})
    paged = bank_lib.PagedBank(paths, ads["ann"], cache_speakers=1)
    assert m.transcribe(clips, adapters=paged, speakers=who, **kw) == by_dict
    with pytest.raises(KeyError, match="'cat'"):
        m.transcribe(clips[:1], adapters=paged, speakers=["cat"], **kw)
    for i, s in enumerate(who):
        assert by_dict[i] == m.transcribe(clips[i], adapters=ads[s], **kw)[0]
    plain = m.transcribe(clips, **kw)
    assert [by_dict[i] for i in (1, 3)] == [plain[i] for i in (1, 3)]  # B = 0: the base model
    assert [by_dict[i] for i in (0, 2)] != [plain[i] for i in (0, 2)]


def test_input_errors(tmp_path):
    m = _model()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        m.transcribe(str(tmp_path / "missing.wav"))
    with pytest.raises(ValueError, match="mono"):
        m.transcribe([np.zeros((2, 100), np.float32)])
    with pytest.raises(ValueError, match="dtype int16"):
        m.transcribe(np.zeros(100, np.int16))
    with pytest.raises(ValueError, match="NaN"):
        m.transcribe(np.full(100, np.nan, np.float32))
    with pytest.raises(ValueError, match="empty"):
        m.transcribe(np.zeros(0, np.float32))
    with pytest.raises(ValueError, match="without adapters"):
        m.transcribe(_clips(1), speakers=[0])
    bank = lora_lib.stack([_adapter(1, 0.0), _adapter(2, 0.0)])
    with pytest.raises(ValueError, match="needs `speakers`"):
        m.transcribe(_clips(1), adapters=bank)
    with pytest.raises(ValueError, match="bank index"):
        m.transcribe(_clips(1), adapters=bank, speakers=[2])
    with pytest.raises(ValueError, match="2 speakers for 1"):
        m.transcribe(_clips(1), adapters=bank, speakers=[0, 1])
    with pytest.raises(KeyError, match="carl"):
        m.transcribe(_clips(1), adapters={"ann": _adapter(1, 0.0)}, speakers=["carl"])
    with pytest.raises(ValueError, match="batch_size"):
        m.transcribe(_clips(1), batch_size=0)


def test_long_audio_is_truncated_with_a_warning():
    m = _model()
    long = np.zeros(31 * 16_000, np.float32)
    with pytest.warns(pqm_jax.PQMWarning, match="first 30 s"):
        m.transcribe(long, max_new_tokens=MAX_NEW, batch_size=2)


def test_quantize_params_selects_weights_and_layouts():
    params = _model().params
    q = api.quantize_params(params, api.QuantConfig())
    assert isinstance(q["encoder"]["layers_0"]["self_attn"]["q_proj"]["kernel"], qtree.Transposed)
    assert isinstance(q["decoder"]["layers_0"]["fc2"]["kernel"], qtree.Transposed)
    emb = q["decoder"]["embed_tokens"]
    assert base.is_quantized(emb) and not isinstance(emb, qtree.Transposed)
    assert not base.is_quantized(q["encoder"]["conv1"]["kernel"])
    assert not base.is_quantized(q["decoder"]["embed_positions"])
    assert not base.is_quantized(q["decoder"]["layers_0"]["fc2"]["bias"])
    conv = api.quantize_params(params, api.QuantConfig(scheme="int8", convs=True, embedding=False))
    assert base.is_quantized(conv["encoder"]["conv2"]["kernel"])
    assert not base.is_quantized(conv["decoder"]["embed_tokens"])
    err = jnp.abs(base.dequantize(emb) - params["decoder"]["embed_tokens"]).max()
    assert float(err) < 0.5 * float(jnp.abs(params["decoder"]["embed_tokens"]).max())


def test_nf4_model_transcribes_and_is_smaller():
    m = _model()
    q = api.WhisperModel(
        params=api.quantize_params(m.params, api.QuantConfig(options={"double_quant": True})),
        config=m.config,
        tokenizer=m.tokenizer,
    )
    assert q.nbytes < m.nbytes / 4
    assert len(q.transcribe(_clips(2), batch_size=2, max_new_tokens=MAX_NEW)) == 2


def test_decode_options_from_tokenizer():
    m = _model()
    opts = m.decode_options(beam_size=3, max_repeats=4)
    special = m.tokenizer.special
    assert opts.prompt == (special.sot, special.no_timestamps)  # English-only: no language
    assert opts.eot == special.eot
    assert special.eot in opts.begin_suppress and 220 in opts.begin_suppress
    assert opts.suppress == m.tokenizer.suppress_tokens
    assert (opts.beam_size, opts.max_repeats) == (3, 4)


def test_load_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        api.load_model(tmp_path / "nothing" / "here" / "at_all")
    (tmp_path / "model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"is not 'tiny\.en'"):
        api.load_model(tmp_path / "model.bin")
    with pytest.raises(ValueError, match="quant_options"):
        api.load_model("tiny.en", quant=api.QuantConfig(), quant_options={"block_size": 64})
