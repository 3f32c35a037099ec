"""int8 dynamic quantisation for CPU search (decode.quantize: int8)."""

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lstmmt import Translator
from lstmmt.cli import app
from lstmmt.config import ModelConfig
from lstmmt.errors import UserError
from lstmmt.model import Seq2Seq
from lstmmt.quantize import Int8Linear, int8_precision, quantize_int8
from lstmmt.shortlist import Shortlist
from lstmmt.tokenizer import BOS
from tests.helpers import TOY_LINES, random_batch

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (tests/conftest.py)


@pytest.mark.parametrize("tied", [True, False])
def test_int8_layers_give_nearly_the_fp32_distribution(tied):
    torch.manual_seed(0)
    config = ModelConfig(embed_size=16, hidden_size=32, encoder_layers=2, decoder_layers=2, dropout=0.0,
                         tie_embeddings=tied)
    model = Seq2Seq(config, 30, 30, joint_vocab=True).eval()
    quantized = quantize_int8(model)
    assert isinstance(model.encoder.forward_lstms[0], torch.nn.LSTM)  # the original is not changed
    assert type(quantized.encoder.forward_lstms[0]) is torch.ao.nn.quantized.dynamic.LSTM
    assert type(quantized.decoder.layers[1]) is torch.ao.nn.quantized.dynamic.LSTM
    assert type(quantized.combine) is Int8Linear  # torch's dynamic int8 Linear, keeping its weight unpacked too
    # The output layer's Linears: the projection to E when tied, the output Linear itself when not.
    assert type(quantized.pre_output if tied else quantized.output) is Int8Linear
    assert quantized.output_layer.int8 != tied and not model.output_layer.int8
    src, lengths = random_batch(4)
    prev = torch.full((4,), BOS)
    with torch.inference_mode():
        expected, _ = model.decode_step(prev, *model.encode(src, lengths))
        found, _ = quantized.decode_step(prev, *quantized.encode(src, lengths))
        ids = torch.tensor([0, 1, 2, 3, 9, 17])
        rows = quantized.output_layer.rows(ids)
        narrowed, _ = quantized.decode_step(prev, *quantized.encode(src, lengths), rows)
    assert found.dtype == torch.float32 and found.shape == expected.shape
    assert (found.exp() - expected.exp()).abs().max() < 0.02
    # The same int8 product over fewer rows (untied: an int8 Linear of those rows), renormalised.
    assert torch.allclose(narrowed, found[:, ids] - torch.logsumexp(found[:, ids], dim=-1, keepdim=True), atol=1e-5)
    assert (rows.int8 is None) == tied


def test_quantised_translation_gives_output_of_the_same_kind(tiny_run, tmp_path):
    fp32 = Translator.load(tiny_run, device="cpu", beam_size=3, n_best=2)
    int8 = Translator.load(tiny_run, device="cpu", beam_size=3, n_best=2, quantize="int8")
    assert str(int8.precision) == "fp32 (decode.quantize=int8: int8 weights, fp32 activations)"
    assert type(int8.models[0].decoder.layers[0]) is torch.ao.nn.quantized.dynamic.LSTM
    assert type(fp32.models[0].decoder.layers[0]) is not torch.ao.nn.quantized.dynamic.LSTM
    expected, found = fp32.translate(TOY_LINES), int8.translate(TOY_LINES)
    assert [t.text == "" for t in found] == [t.text == "" for t in expected] == [not line.strip() for line in TOY_LINES]
    assert all(len(t.n_best) == 2 and t.n_best[0].text == t.text and np.isfinite(t.score) for t in found if t.text)
    narrowed = Translator(int8.models, int8.tokenizer, int8.decode, int8.device, int8.precision,
                          shortlist=Shortlist(np.full((int8.tokenizer.src_vocab_size, 1), -1, dtype=np.int32),
                                              np.arange(int8.tokenizer.tgt_vocab_size, dtype=np.int32), {}))
    # int8 with a shortlist of every id
    assert [t.text for t in narrowed.translate(TOY_LINES)] == [t.text for t in found]

    (tmp_path / "in.txt").write_text("seven\n\ntwenty-one\n", encoding="utf-8")
    arguments = ["translate", str(tiny_run), "-i", str(tmp_path / "in.txt"), "--quantize", "int8", "--device", "cpu"]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert "decode.quantize=int8" in result.output


def test_int8_is_refused_where_it_cannot_run():
    with pytest.raises(UserError, match="decode.quantize=int8 runs on the CPU only"):
        int8_precision(torch.device("cuda"), "auto")
    with pytest.raises(UserError, match="set decode.precision to auto or fp32"):
        int8_precision(torch.device("cpu"), "bf16")
    assert int8_precision(torch.device("cpu"), "auto").name == "fp32"


def test_unknown_quantisation_is_one_line(tiny_run):
    result = runner.invoke(app, ["translate", str(tiny_run), "--quantize", "int4"], input="seven\n")
    assert result.exit_code == 1 and "decode.quantize must be one of none, int8, got 'int4'" in result.output
