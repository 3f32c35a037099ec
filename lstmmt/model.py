"""The attentional LSTM encoder-decoder, readable top to bottom.

    source ids -> Embedding -> bidirectional LSTM                -> memory   (B, S, H)
    last states of both directions -> bridge                     -> decoder initial (h, c)
    target ids -> Embedding -> LSTM -> attention over memory -> tanh(W [h; context]) -> logits

H is `hidden_size`: the decoder's size and the size of the encoder output (H/2 per direction).
Without input feeding the decoder LSTM runs over the whole target in one fused call during
training; with it, the previous attentional state is fed back, so it runs step by step.
`encode` and `decode_step` are the API beam search uses; states are plain tensors in
NamedTuples whose `select(index)` picks and reorders rows (beams, finished sentences).
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lstmmt.config import ModelConfig
from lstmmt.output_loss import output_loss
from lstmmt.tokenizer import PAD


class Memory(NamedTuple):
    """What the decoder attends to; one row per sentence.

    Beam search keeps one row per sentence while the decoder has one row per hypothesis:
    attention groups the k hypotheses of a sentence (consecutive rows) as k queries of one
    row, so the encoder outputs are never copied per beam.
    """

    values: Tensor  # (B, S, H) encoder outputs
    keys: Tensor  # (B, S, K) attention keys, precomputed once per batch
    mask: Tensor  # (B, S) True at real (non-pad) source positions

    def select(self, index: Tensor) -> Memory:
        return Memory(*(t.index_select(0, index) for t in self))


class DecoderState(NamedTuple):
    """The decoder's recurrent state between steps."""

    h: Tensor  # (layers, B, H)
    c: Tensor  # (layers, B, H)
    feed: Tensor | None  # (B, H) previous attentional state, with input feeding only

    def select(self, index: Tensor) -> DecoderState:
        feed = None if self.feed is None else self.feed.index_select(0, index)
        return DecoderState(self.h.index_select(1, index), self.c.index_select(1, index), feed)


class OutputRows(NamedTuple):
    """The output layer cut down to some target ids (a batch's vocabulary shortlist,
    lstmmt/shortlist.py), sliced once per batch rather than at every step (`OutputLayer.rows`)."""

    ids: Tensor  # (V',) sorted full-vocabulary target ids
    weight: Tensor | None  # (V', E or H) their rows of the output weight (None with int8)
    bias: Tensor | None  # (V',)
    int8: nn.Module | None = None  # with an int8 output layer: its rows as an int8 Linear of their own

    def logits(self, x: Tensor) -> Tensor:
        """Output-layer inputs (..., E or H) -> logits over ids (..., V')."""
        return self.int8(x) if self.int8 is not None else F.linear(x, self.weight, self.bias)


class Attention(nn.Module):
    """Global attention over encoder outputs: Luong dot/general or Bahdanau MLP scores."""

    def __init__(self, kind: str, hidden_size: int):
        super().__init__()
        self.kind = kind
        if kind == "luong":
            self.key_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        elif kind == "bahdanau":
            self.key_proj = nn.Linear(hidden_size, hidden_size, bias=False)
            self.query_proj = nn.Linear(hidden_size, hidden_size)
            self.energy = nn.Linear(hidden_size, 1, bias=False)
        elif kind != "dot":
            raise ValueError(f"unknown attention {kind!r}")

    def keys(self, values: Tensor) -> Tensor:
        """(B, S, H) -> (B, S, H): the part of the score that depends only on the source."""
        return values if self.kind == "dot" else self.key_proj(values)

    def forward(self, query: Tensor, memory: Memory) -> Tensor:
        """query (k*B, T, H) -> context (k*B, T, H) for memory of B rows, each shared by k
        consecutive query rows (k = 1 in training); padded source positions get zero weight."""
        rows, steps, size = query.shape
        return torch.bmm(self.weights(query, memory), memory.values).view(rows, steps, size)

    def weights(self, query: Tensor, memory: Memory) -> Tensor:
        """query (k*B, T, H) -> attention weights (B, k*T, S), summing to 1 over real source positions."""
        query = query.reshape(memory.mask.size(0), -1, query.size(-1))  # (B, k*T, H)
        if self.kind == "bahdanau":
            hidden = torch.tanh(self.query_proj(query).unsqueeze(2) + memory.keys.unsqueeze(1))  # (B, T, S, H)
            scores = self.energy(hidden).squeeze(-1)  # (B, T, S)
        else:
            scores = torch.bmm(query, memory.keys.transpose(1, 2))  # (B, T, S)
        scores = scores.masked_fill(~memory.mask.unsqueeze(1), float("-inf"))
        return torch.softmax(scores, dim=-1)


class Dropout(nn.Module):
    """Inverted dropout whose mask comes from uniform noise: the same as nn.Dropout in
    expectation, but torch.rand is about twice as fast as the bernoulli_ that nn.Dropout
    uses on CPU, where dropout was a tenth of a training step."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand(x.shape, device=x.device) >= self.p
        return x * keep / (1.0 - self.p)


class LSTM(nn.LSTM):
    """nn.LSTM whose bf16 autocast on CUDA runs in bf16.

    PyTorch's autocast wrapper for cuDNN RNNs casts input, weights and states to fp16
    whatever dtype autocast names (aten/src/ATen/cudnn/AutocastRNN.cpp), and fp16 without a
    loss scaler lets small gradients underflow. Under CUDA bf16 autocast this LSTM leaves
    autocast and runs on bf16 copies of its weights instead (the casts are differentiable,
    so the fp32 weights get the gradients). Elsewhere it is nn.LSTM unchanged: oneDNN's CPU
    autocast already runs bf16.
    """

    def forward(self, x: Tensor, hx: tuple[Tensor, Tensor] | None = None) -> Any:
        if x.is_cuda and torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda") == torch.bfloat16:
            return self.run_in(torch.bfloat16, x, hx)
        return super().forward(x, hx)

    def run_in(self, dtype: torch.dtype, x: Tensor, hx: tuple[Tensor, Tensor] | None = None) -> Any:
        """The forward pass with input, states and weights cast to `dtype`, outside autocast."""
        with torch.autocast(x.device.type, enabled=False):
            weights = {name: weight.to(dtype) for name, weight in self.named_parameters()}
            states = None if hx is None else tuple(h.to(dtype) for h in hx)
            return torch.func.functional_call(self, weights, (x.to(dtype), states))


class StackedLSTM(nn.Module):
    """One-layer LSTMs stacked, with our Dropout between layers.

    nn.LSTM(num_layers=L, dropout=p) drops between layers too, but on GPUs cuDNN draws those
    masks from a dropout state of its own that no checkpoint holds, so a resumed run would
    not continue exactly; these masks come from torch's generator, like all other dropout.
    """

    def __init__(self, input_size: int, hidden_size: int, layers: int, dropout: float):
        super().__init__()
        self.dropout = Dropout(dropout)
        sizes = [input_size] + [hidden_size] * (layers - 1)
        self.layers = nn.ModuleList(LSTM(size, hidden_size, batch_first=True) for size in sizes)

    def forward(self, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, T, in), h and c (layers, B, H) -> top layer outputs (B, T, H) and the new h, c."""
        hs, cs = [], []
        for i, layer in enumerate(self.layers):
            if i > 0:
                x = self.dropout(x)
            x, (h_i, c_i) = layer(x, (h[i : i + 1], c[i : i + 1]))
            hs.append(h_i)
            cs.append(c_i)
        if len(self.layers) == 1:
            return x, hs[0], cs[0]
        return x, torch.cat(hs), torch.cat(cs)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        """Checkpoints from before the stack held one nn.LSTM: its weight_ih_lK is layers.K.weight_ih_l0."""
        for key in [k for k in state_dict if k.startswith(prefix)]:
            if match := re.fullmatch(r"((?:weight|bias)_(?:ih|hh))_l(\d+)", key[len(prefix) :]):
                state_dict[f"{prefix}layers.{match.group(2)}.{match.group(1)}_l0"] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args)


class BiLSTMEncoder(nn.Module):
    """A stacked bidirectional LSTM over right-padded batches, without packing.

    Each layer runs two one-direction LSTMs over the padded batch: the forward one as is
    (padding comes after the last real token, so it cannot reach a real position) and the
    backward one over each sentence reversed in place (pads stay at the end). Packed
    sequences would do the same, but on CPU they fall back to a per-timestep loop, while
    padded input runs oneDNN's fused kernels (cuDNN's on GPU); this is ~25% faster to train.
    """

    def __init__(self, input_size: int, hidden_size: int, layers: int, dropout: float):
        super().__init__()
        self.dropout = Dropout(dropout)
        sizes = [input_size] + [2 * hidden_size] * (layers - 1)
        self.forward_lstms = nn.ModuleList(LSTM(size, hidden_size, batch_first=True) for size in sizes)
        self.backward_lstms = nn.ModuleList(LSTM(size, hidden_size, batch_first=True) for size in sizes)

    def forward(self, embedded: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """embedded (B, S, E), lengths (B,) -> outputs (B, S, 2h), zero at pads, and the top
        layer's last states of both directions concatenated (B, 2h)."""
        batch, steps, _ = embedded.shape
        positions = torch.arange(steps, device=embedded.device).expand(batch, steps)
        lengths = lengths.to(embedded.device).unsqueeze(1)  # a no-op for batches moved by Batch.to
        real = positions < lengths
        # Maps position t of a sentence to position length-1-t (pads to themselves): its own inverse.
        reverse_index = torch.where(real, lengths - 1 - positions, positions)

        def reverse(x: Tensor) -> Tensor:
            return x.gather(1, reverse_index.unsqueeze(-1).expand_as(x))

        x = embedded
        for i, (forward_lstm, backward_lstm) in enumerate(zip(self.forward_lstms, self.backward_lstms)):
            if i > 0:
                x = self.dropout(x)
            forward_out, _ = forward_lstm(x)
            backward_out, _ = backward_lstm(reverse(x))
            x = torch.cat([forward_out, reverse(backward_out)], dim=-1) * real.unsqueeze(-1)
        hidden = forward_out.size(-1)
        last_forward = x[:, :, :hidden].gather(1, (lengths - 1).unsqueeze(-1).expand(batch, 1, hidden)).squeeze(1)
        last_backward = x[:, 0, hidden:]  # the backward direction ends at the first token
        return x, torch.cat([last_forward, last_backward], dim=-1)


class OutputLayer:
    """Attentional states (..., H) -> logits over the target vocabulary, or over a batch's shortlist.

        tied (the default): logits = pre_output(dropout(x)) @ tgt_embed.weight.T + output_bias
        untied:             logits = output(dropout(x))

    pre_output projects H down to E (nn.Identity when they are equal); `output` is a Linear
    H -> V of its own. quantize.py makes both int8, like every Linear of the model; an int8
    `output` (`Int8Linear`) has no float weight, so its products, over a shortlist's rows too,
    run its int8 kernel. Training takes the same inputs and weights into the fused loss (`loss`).

    The parameters are the model's, under the names checkpoints and releases store them by
    (output_bias, pre_output.weight; output.weight, output.bias), and this view reads them from
    the model when called, so the Linears quantize.py swaps into the model are the ones used.
    """

    def __init__(self, model: Seq2Seq):
        self.model = model
        self.tied = model.config.tie_embeddings

    @property
    def int8(self) -> bool:
        """Whether the untied output Linear is an int8 one, which has no float weight to multiply or slice."""
        return not self.tied and not isinstance(self.model.output, nn.Linear)

    def inputs(self, attentional: Tensor) -> Tensor:
        """What the weight multiplies: the attentional states after dropout, projected to E when tied."""
        x = self.model.dropout(attentional)
        return self.model.pre_output(x) if self.tied else x

    def weights(self) -> tuple[Tensor, Tensor]:
        """The float output weight (V, E or H) and bias (V,)."""
        if self.tied:
            return self.model.tgt_embed.weight, self.model.output_bias
        return self.model.output.weight, self.model.output.bias

    def __call__(self, attentional: Tensor, rows: OutputRows | None = None) -> Tensor:
        """Logits over every target id (..., V), or over rows.ids only (..., V')."""
        x = self.inputs(attentional)
        if rows is not None:
            return rows.logits(x)
        return self.model.output(x) if self.int8 else F.linear(x, *self.weights())

    @torch.no_grad()
    def rows(self, ids: Tensor) -> OutputRows:
        """The output layer restricted to the sorted target ids `ids`; for search only, so no
        gradient reaches the sliced copies. An int8 output Linear gives an int8 Linear of its
        rows `ids` (quantize.py `Int8Linear.rows`), so the product stays an int8 one."""
        if self.int8:
            return OutputRows(ids, None, None, self.model.output.rows(ids))
        weight, bias = self.weights()
        return OutputRows(ids, weight.index_select(0, ids), bias.index_select(0, ids))

    def loss(self, attentional: Tensor, targets: Tensor, label_smoothing: float) -> Tensor:
        """Summed label-smoothed cross-entropy of targets (B, T) given attentional states (B, T, H),
        through `output_loss`, which never holds the logits of the whole batch."""
        hidden, (weight, bias) = self.inputs(attentional), self.weights()
        return output_loss(hidden.flatten(0, 1), weight, bias, targets.flatten(), label_smoothing)


class Seq2Seq(nn.Module):
    """The encoder-decoder of this module's docstring, sized by a ModelConfig and the vocabularies.

    Training calls `forward` (the summed loss of a teacher-forced batch); search calls `encode`
    once per batch, then `decode_step` per step (the StepModel protocol of lstmmt/search.py);
    `logits` gives teacher-forced logits. With tie_embeddings the target embedding is also the
    output weight (`output_layer`), and with a joint vocabulary the source embedding as well.
    Attribute names are parameter names, which checkpoints and releases store: keep them.
    """

    def __init__(self, config: ModelConfig, src_vocab_size: int, tgt_vocab_size: int, joint_vocab: bool):
        super().__init__()
        self.config = config
        E, H = config.embed_size, config.hidden_size
        self.dropout = Dropout(config.dropout)
        self.tgt_embed = nn.Embedding(tgt_vocab_size, E, padding_idx=PAD)
        share_src = config.tie_embeddings and joint_vocab
        self.src_embed = self.tgt_embed if share_src else nn.Embedding(src_vocab_size, E, padding_idx=PAD)

        self.encoder = BiLSTMEncoder(E, H // 2, config.encoder_layers, config.dropout)
        self.bridge_h = nn.Linear(H, H * config.decoder_layers)
        self.bridge_c = nn.Linear(H, H * config.decoder_layers)

        feed_size = H if config.input_feeding else 0
        self.decoder = StackedLSTM(E + feed_size, H, config.decoder_layers, config.dropout)
        self.attention = Attention(config.attention, H)
        self.combine = nn.Linear(2 * H, H, bias=False)
        if config.tie_embeddings:
            # The output layer's parameters (`OutputLayer`): logits reuse the target embedding matrix.
            self.pre_output = nn.Linear(H, E, bias=False) if H != E else nn.Identity()
            self.output_bias = nn.Parameter(torch.zeros(tgt_vocab_size))
        else:
            self.output = nn.Linear(H, tgt_vocab_size)
        self._init_parameters()

    @property
    def output_layer(self) -> OutputLayer:
        """The output layer over this model's parameters as they are now (a view made per call:
        stored, it would tie the model into a reference cycle that only the garbage collector frees)."""
        return OutputLayer(self)

    def _init_parameters(self) -> None:
        """`init: uniform` draws every parameter from U(-r, r); otherwise layers keep PyTorch's
        defaults and embeddings get N(0, 1/E). The PAD embedding starts at zero either way."""
        embeddings = {self.src_embed, self.tgt_embed}
        if self.config.init == "uniform":
            for parameter in self.parameters():
                nn.init.uniform_(parameter, -self.config.init_range, self.config.init_range)
        else:
            for embed in embeddings:
                nn.init.normal_(embed.weight, std=embed.embedding_dim**-0.5)
        with torch.no_grad():
            for embed in embeddings:
                embed.weight[PAD].zero_()

    # -- encoder -------------------------------------------------------------------------

    def encode(self, src: Tensor, src_lengths: Tensor) -> tuple[Memory, DecoderState]:
        """src (B, S) padded ids, src_lengths (B,) -> memory and the decoder's first state.

        Padding never reaches a real position, so a sentence's encoding does not depend on
        what else is in its batch.
        """
        values, last = self.encoder(self.dropout(self.src_embed(src)), src_lengths)
        memory = Memory(values, self.attention.keys(values), src != PAD)
        return memory, self._bridge(last)

    def _bridge(self, last: Tensor) -> DecoderState:
        """Encoder's last states (B, H) -> initial (h, c) of every decoder layer."""
        batch, layers, H = last.size(0), self.config.decoder_layers, self.config.hidden_size

        def per_layer(x: Tensor) -> Tensor:  # (B, layers * H) -> (layers, B, H)
            return x.view(batch, layers, H).transpose(0, 1).contiguous()

        h0 = per_layer(torch.tanh(self.bridge_h(last)))
        c0 = per_layer(self.bridge_c(last))
        feed = last.new_zeros(batch, H) if self.config.input_feeding else None
        return DecoderState(h0, c0, feed)

    # -- decoder -------------------------------------------------------------------------

    def _attend(self, hidden: Tensor, memory: Memory) -> Tensor:
        """Decoder LSTM output (B, T, H) -> attentional state tanh(W [h; context]) (B, T, H)."""
        context = self.attention(hidden, memory)
        return torch.tanh(self.combine(torch.cat([hidden, context], dim=-1)))

    def _decode(self, embedded: Tensor, memory: Memory, state: DecoderState) -> tuple[Tensor, DecoderState]:
        """Embedded target (B, T, E) -> attentional states (B, T, H) and the state after the last step."""
        if not self.config.input_feeding:
            hidden, h, c = self.decoder(embedded, state.h, state.c)
            return self._attend(self.dropout(hidden), memory), DecoderState(h, c, None)
        outputs, h, c, feed = [], state.h, state.c, state.feed
        for t in range(embedded.size(1)):
            step_input = torch.cat([embedded[:, t], feed], dim=-1).unsqueeze(1)
            hidden, h, c = self.decoder(step_input, h, c)
            attentional = self._attend(self.dropout(hidden), memory)
            feed = attentional.squeeze(1)
            outputs.append(attentional)
        return torch.cat(outputs, dim=1), DecoderState(h, c, feed)

    def forward(self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor, tgt_out: Tensor,
                label_smoothing: float = 0.0) -> Tensor:
        """Summed label-smoothed cross-entropy of the target tokens tgt_out (B, T) under
        teacher forcing (PAD positions count zero): the training loss."""
        return self.output_layer.loss(self._teacher_forced(src, src_lengths, tgt_in), tgt_out, label_smoothing)

    def logits(self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced logits (B, T, V) for target inputs tgt_in (B, T) that start with BOS."""
        return self.output_layer(self._teacher_forced(src, src_lengths, tgt_in))

    def _teacher_forced(self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor) -> Tensor:
        """Attentional states (B, T, H) for target inputs tgt_in (B, T)."""
        memory, state = self.encode(src, src_lengths)
        attentional, _ = self._decode(self.dropout(self.tgt_embed(tgt_in)), memory, state)
        return attentional

    def decode_step(self, prev_tokens: Tensor, memory: Memory, state: DecoderState,
                    rows: OutputRows | None = None) -> tuple[Tensor, DecoderState]:
        """One step for search: previous tokens (N,) -> log-probabilities (N, V) and the next state.

        With `rows` (a vocabulary shortlist) the distribution covers rows.ids only (N, V'):
        normalised over them, as if the other pieces did not exist. prev_tokens are full ids either way.
        """
        embedded = self.dropout(self.tgt_embed(prev_tokens)).unsqueeze(1)
        attentional, state = self._decode(embedded, memory, state)
        return torch.log_softmax(self.output_layer(attentional.squeeze(1), rows), dim=-1, dtype=torch.float32), state


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def parameter_count(config: ModelConfig, src_vocab_size: int, tgt_vocab_size: int, joint_vocab: bool) -> int:
    """count_parameters(Seq2Seq(config, ...)) worked out without building the model (or looping
    over its layers), so config validation can refuse a size that cannot be allocated."""
    E, H, layers = config.embed_size, config.hidden_size, config.decoder_layers

    def lstm(inputs: int, size: int) -> int:  # weight_ih, weight_hh, bias_ih, bias_hh of one layer
        return 4 * size * (inputs + size + 2)

    half = H // 2
    encoder = 2 * (lstm(E, half) + (config.encoder_layers - 1) * lstm(2 * half, half))
    decoder = lstm(E + (H if config.input_feeding else 0), H) + (layers - 1) * lstm(H, H)
    bridges = 2 * (H * H * layers + H * layers)
    attention = {"dot": 0, "luong": H * H, "bahdanau": 2 * H * H + 2 * H}[config.attention]
    embeddings = tgt_vocab_size * E + (0 if config.tie_embeddings and joint_vocab else src_vocab_size * E)
    if config.tie_embeddings:
        output = (H * E if H != E else 0) + tgt_vocab_size
    else:
        output = H * tgt_vocab_size + tgt_vocab_size
    return embeddings + encoder + bridges + decoder + attention + 2 * H * H + output
