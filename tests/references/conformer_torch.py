"""A plain PyTorch Conformer AED: the independent reference of the Conformer tests.

The reference follows ESPnet's modules and names (`RelPositionMultiHeadedAttention` with its
pad-and-reshape `rel_shift`, `EncoderLayer`, `ConvolutionModule`, `Conv2dSubsampling`,
`DecoderLayer`, `CTC`), written independently of the JAX code, so that its `state_dict()` is what
an ESPnet checkpoint holds. Like WeNet (and our model), its convolution module zeroes padded frames.
`reference_model(config)` builds one, `params_of` converts its state dict (as an ESPnet
checkpoint's) to our params layout.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from pqm_jax.models.conformer import espnet
from pqm_jax.models.conformer import model as conformer

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional


def small_config(**overrides) -> conformer.ConformerConfig:
    fields = dict(
        vocab_size=23,
        n_mels=20,
        d_model=32,
        encoder_layers=2,
        encoder_heads=4,
        encoder_ffn=48,
        kernel_size=5,
        decoder_layers=2,
        decoder_heads=2,
        decoder_ffn=40,
    )
    return conformer.ConformerConfig(**(fields | overrides))


class LayerNorm(nn.LayerNorm):
    def __init__(self, n):
        super().__init__(n, eps=1e-12)


class MHA(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.h, self.dk = h, d // h
        self.linear_q, self.linear_k = nn.Linear(d, d), nn.Linear(d, d)
        self.linear_v, self.linear_out = nn.Linear(d, d), nn.Linear(d, d)

    def qkv(self, q, k, v):
        b = q.size(0)
        heads = lambda x, lin: lin(x).view(b, -1, self.h, self.dk).transpose(1, 2)
        return heads(q, self.linear_q), heads(k, self.linear_k), heads(v, self.linear_v)

    def attend(self, v, scores, mask):
        if mask is not None:
            masked = ~mask.unsqueeze(1)  # [B, 1, Tq|1, Tk]
            scores = scores.masked_fill(masked, torch.finfo(scores.dtype).min)
            attn = torch.softmax(scores, dim=-1).masked_fill(masked, 0.0)
        else:
            attn = torch.softmax(scores, dim=-1)
        x = torch.matmul(attn, v).transpose(1, 2).reshape(v.size(0), -1, self.h * self.dk)
        return self.linear_out(x)

    def forward(self, q, k, v, mask):
        q, k, v = self.qkv(q, k, v)
        return self.attend(v, torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.dk), mask)


class RelMHA(MHA):
    def __init__(self, d, h):
        super().__init__(d, h)
        self.linear_pos = nn.Linear(d, d, bias=False)
        self.pos_bias_u = nn.Parameter(torch.randn(h, d // h) * 0.3)
        self.pos_bias_v = nn.Parameter(torch.randn(h, d // h) * 0.3)

    @staticmethod
    def rel_shift(x):
        b, h, t, n = x.shape
        padded = torch.cat([x.new_zeros(b, h, t, 1), x], dim=-1).view(b, h, n + 1, t)
        return padded[:, :, 1:].reshape(b, h, t, n)[:, :, :, : n // 2 + 1]

    def forward(self, x, pos, mask):
        q, k, v = self.qkv(x, x, x)
        q = q.transpose(1, 2)  # [B, T, H, dk]
        p = self.linear_pos(pos).view(1, -1, self.h, self.dk).transpose(1, 2)
        ac = torch.matmul((q + self.pos_bias_u).transpose(1, 2), k.transpose(-2, -1))
        bd = torch.matmul((q + self.pos_bias_v).transpose(1, 2), p.transpose(-2, -1))
        return self.attend(v, (ac + self.rel_shift(bd)) / math.sqrt(self.dk), mask)


def rel_table(t, d):
    """ESPnet's RelPositionalEncoding.extend_pe + slicing, [1, 2t - 1, d]."""
    pos = torch.arange(0, t, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * -(math.log(10000.0) / d))
    plus, minus = torch.zeros(t, d), torch.zeros(t, d)
    plus[:, 0::2], plus[:, 1::2] = torch.sin(pos * div), torch.cos(pos * div)
    minus[:, 0::2], minus[:, 1::2] = torch.sin(-pos * div), torch.cos(-pos * div)
    return torch.cat([torch.flip(plus, [0]), minus[1:]], dim=0).unsqueeze(0)


class FFN(nn.Module):
    def __init__(self, d, hidden, act):
        super().__init__()
        self.w_1, self.w_2, self.act = nn.Linear(d, hidden), nn.Linear(hidden, d), act

    def forward(self, x):
        return self.w_2(self.act(self.w_1(x)))


class ConvModule(nn.Module):
    def __init__(self, d, k, norm):
        super().__init__()
        self.pointwise_conv1 = nn.Conv1d(d, 2 * d, 1)
        self.depthwise_conv = nn.Conv1d(d, d, k, padding=(k - 1) // 2, groups=d)
        self.norm = nn.BatchNorm1d(d) if norm == "batch_norm" else nn.LayerNorm(d)
        self.pointwise_conv2 = nn.Conv1d(d, d, 1)

    def forward(self, x, valid):
        x = F.glu(self.pointwise_conv1(x.transpose(1, 2)), dim=1)
        x = x.masked_fill(~valid[:, None, :], 0.0)
        x = self.depthwise_conv(x)
        if isinstance(self.norm, nn.BatchNorm1d):
            x = self.norm(x)
        else:
            x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        return self.pointwise_conv2(F.silu(x)).transpose(1, 2)


class EncoderLayer(nn.Module):
    def __init__(self, c):
        super().__init__()
        d = c.d_model
        self.self_attn = RelMHA(d, c.encoder_heads)
        self.feed_forward = FFN(d, c.encoder_ffn, F.silu)
        self.feed_forward_macaron = FFN(d, c.encoder_ffn, F.silu) if c.macaron else None
        self.conv_module = ConvModule(d, c.kernel_size, c.conv_norm)
        self.norm_ff, self.norm_mha = LayerNorm(d), LayerNorm(d)
        self.norm_ff_macaron = LayerNorm(d) if c.macaron else None
        self.norm_conv, self.norm_final = LayerNorm(d), LayerNorm(d)
        self.ff_scale = 0.5 if c.macaron else 1.0

    def forward(self, x, pos, valid):
        if self.feed_forward_macaron is not None:
            x = x + self.ff_scale * self.feed_forward_macaron(self.norm_ff_macaron(x))
        x = x + self.self_attn(self.norm_mha(x), pos, valid[:, None, :])
        x = x + self.conv_module(self.norm_conv(x), valid)
        x = x + self.ff_scale * self.feed_forward(self.norm_ff(x))
        return self.norm_final(x)


class Subsampling(nn.Module):
    def __init__(self, n_mels, d):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, d, 3, 2), nn.ReLU(), nn.Conv2d(d, d, 3, 2), nn.ReLU()
        )
        self.out = nn.Sequential(nn.Linear(d * (((n_mels - 1) // 2 - 1) // 2), d))

    def forward(self, x):
        x = self.conv(x.unsqueeze(1))
        b, c, t, f = x.size()
        return self.out(x.transpose(1, 2).contiguous().view(b, t, c * f))


class Encoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.d = c.d_model
        self.embed = Subsampling(c.n_mels, c.d_model)
        self.encoders = nn.ModuleList([EncoderLayer(c) for _ in range(c.encoder_layers)])
        self.after_norm = LayerNorm(c.d_model)

    def forward(self, feats, lens):
        x = self.embed(feats) * math.sqrt(self.d)
        out_lens = ((lens - 1) // 2 - 1) // 2
        valid = torch.arange(x.size(1))[None, :] < out_lens[:, None]
        pos = rel_table(x.size(1), self.d)
        for layer in self.encoders:
            x = layer(x, pos, valid)
        return self.after_norm(x), out_lens


class DecoderLayer(nn.Module):
    def __init__(self, c):
        super().__init__()
        d = c.d_model
        self.self_attn, self.src_attn = MHA(d, c.decoder_heads), MHA(d, c.decoder_heads)
        self.feed_forward = FFN(d, c.decoder_ffn, F.relu)
        self.norm1, self.norm2, self.norm3 = LayerNorm(d), LayerNorm(d), LayerNorm(d)

    def forward(self, x, tgt_mask, memory, memory_mask):
        h = self.norm1(x)
        x = x + self.self_attn(h, h, h, tgt_mask)
        h = self.norm2(x)
        x = x + self.src_attn(h, memory, memory, memory_mask)
        return x + self.feed_forward(self.norm3(x))


class Decoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        d = c.d_model
        self.d = d
        self.embed = nn.Sequential(nn.Embedding(c.vocab_size, d))
        self.decoders = nn.ModuleList([DecoderLayer(c) for _ in range(c.decoder_layers)])
        self.after_norm = LayerNorm(d)
        self.output_layer = nn.Linear(d, c.vocab_size)

    def forward(self, tokens, memory, memory_valid):
        u = tokens.size(1)
        pos = torch.arange(u, dtype=torch.float32)[:, None]
        div = torch.exp(torch.arange(0, self.d, 2, dtype=torch.float32) * -(math.log(1e4) / self.d))
        pe = torch.zeros(u, self.d)
        pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * div), torch.cos(pos * div)
        x = self.embed(tokens) * math.sqrt(self.d) + pe
        tgt_mask = torch.tril(torch.ones(u, u, dtype=torch.bool))[None]
        for layer in self.decoders:
            x = layer(x, tgt_mask, memory, memory_valid[:, None, :])
        return self.output_layer(self.after_norm(x))


class CTC(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.ctc_lo = nn.Linear(c.d_model, c.vocab_size)


class Model(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.encoder, self.decoder, self.ctc = Encoder(c), Decoder(c), CTC(c)


def reference_model(config: conformer.ConformerConfig, seed: int = 0) -> Model:
    """The PyTorch reference with every tensor random (biases, norms, BatchNorm statistics too)."""
    torch.manual_seed(seed)
    model = Model(config).eval()
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand_like(t))
            elif name.endswith(("running_mean", "bias")) or ".norm" in name:
                t.add_(0.2 * torch.randn_like(t))
    return model


def params_of(model: Model, config: conformer.ConformerConfig) -> dict:
    return espnet.from_state_dict(model.state_dict(), config)


def random_feats(batch: int, frames: int, n_mels: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, frames, n_mels)).astype(np.float32)
