"""int8 dynamic quantisation of a model for CPU search (`decode.quantize: int8`).

torch.ao.quantization.quantize_dynamic stores the weights of the LSTMs and Linear layers as
int8 and quantises each input on the fly (activations stay fp32 between layers), running
fbgemm's int8 kernels on x86 (qnnpack's on ARM). Those are CPU kernels: on a GPU it is refused.

What becomes int8: every LSTM (encoder, decoder), the bridges, the attention and combine
projections, and the output layer's Linears (lstmmt/model.py `OutputLayer`): pre_output and,
with untied embeddings, the output Linear, which the output layer then runs as an int8 one.
With tied embeddings (the default) the output projection multiplies by the target embedding
matrix itself, which is no Linear module and stays fp32; a vocabulary shortlist
(decode.shortlist) is what shrinks it. Embeddings stay fp32. Both options together work: the
shortlist slices the int8 output layer into an int8 Linear of the batch's rows, packed once per
batch (`Int8Linear.rows`).
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import Tensor, nn

from lstmmt.device import Precision
from lstmmt.errors import UserError
from lstmmt.model import LSTM, Seq2Seq

KEY = "decode.quantize"


class _Int8LSTM(torch.ao.nn.quantized.dynamic.LSTM):
    """Converts lstmmt's LSTM (an nn.LSTM subclass, which torch's converter refuses by its exact
    type) by way of a plain nn.LSTM with the same settings and weights."""

    @classmethod
    def from_float(cls, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> nn.Module:
        plain = nn.LSTM(mod.input_size, mod.hidden_size, mod.num_layers, mod.bias, mod.batch_first,
                        mod.dropout, mod.bidirectional, mod.proj_size)
        plain.load_state_dict(mod.state_dict())
        plain.qconfig = mod.qconfig
        dynamic = torch.ao.nn.quantized.dynamic.LSTM
        return dynamic.from_float(plain, use_precomputed_fake_quant=use_precomputed_fake_quant)


class Int8Linear(torch.ao.nn.quantized.dynamic.Linear):
    """A dynamic int8 Linear that also keeps its int8 weight unpacked, so a vocabulary shortlist
    can cut a batch's rows out of it (`rows`) without unpacking the whole matrix each batch:
    fbgemm's unpack of an 8,000 x 512 output layer took 17 ms, twice per batch (weight and
    bias), a tenth of beam-search time with the shortlist. The copy costs 1 byte a weight."""

    def set_weight_bias(self, w: Tensor, b: Tensor | None) -> None:
        super().set_weight_bias(w, b)
        self.unpacked = (w, b)

    def rows(self, ids: Tensor) -> Int8Linear:
        """An int8 Linear of the output rows `ids` only, packed once (about 3 ms for 3,000 rows)."""
        weight, bias = self.unpacked
        rows = Int8Linear(self.in_features, len(ids), dtype=torch.qint8)
        rows.set_weight_bias(weight.index_select(0, ids), None if bias is None else bias.index_select(0, ids))
        return rows


def quantize_int8(model: Seq2Seq) -> Seq2Seq:
    """An int8 copy of `model` (fp32, eval mode, on the CPU) for search; the model is not changed.

    PyTorch marks torch.ao.quantization deprecated in favour of torchao, whose quantize_ has
    no LSTM; until torch drops it, its warnings are silenced here (a torch without it is a UserError)."""
    quantize_dynamic = getattr(getattr(torch.ao, "quantization", None), "quantize_dynamic", None)
    if quantize_dynamic is None:
        raise UserError(f"{KEY}=int8 needs torch.ao.quantization.quantize_dynamic, which PyTorch {torch.__version__} "
                        "no longer has: translate without --quantize int8")
    model = copy.deepcopy(model).cpu().float().eval()
    mapping = {nn.Linear: Int8Linear, nn.LSTM: torch.ao.nn.quantized.dynamic.LSTM, LSTM: _Int8LSTM}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.ao.quantization is deprecated", DeprecationWarning)
        warnings.filterwarnings("ignore", "torch.quantize_per_tensor, torch.quantize_per_channel", UserWarning)
        return quantize_dynamic(model, {nn.Linear, nn.LSTM, LSTM}, dtype=torch.qint8, mapping=mapping)


def int8_precision(device: torch.device, requested: str) -> Precision:
    """The search precision with int8 weights: fp32 activations, on the CPU only."""
    if device.type != "cpu":
        raise UserError(f"{KEY}=int8 runs on the CPU only (PyTorch's dynamic int8 kernels are CPU kernels), but the "
                        f"device is {device}: translate with --device cpu, or without --quantize int8")
    if requested == "bf16":
        raise UserError(f"{KEY}=int8 computes in fp32 between its int8 layers: set decode.precision to auto or fp32 "
                        "(--precision fp32), or leave out --quantize int8")
    return Precision("fp32", f"{KEY}=int8: int8 weights, fp32 activations")
