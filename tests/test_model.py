"""The model's promises: padding never leaks, attention ignores padding, fused == step-by-step,
one output layer for logits, loss and shortlist rows, parameter names that checkpoints store."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from lstmmt.batching import pad
from lstmmt.config import ModelConfig
from lstmmt.model import Seq2Seq
from lstmmt.tokenizer import BOS, EOS, PAD

VOCAB = 40


def small_model(**overrides) -> Seq2Seq:
    torch.manual_seed(0)
    base = ModelConfig(embed_size=16, hidden_size=24, encoder_layers=2, decoder_layers=2, dropout=0.0)
    config = dataclasses.replace(base, **overrides)
    return Seq2Seq(config, VOCAB, VOCAB, joint_vocab=True).eval()


def batch_of(*sentences: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    src = pad([torch.tensor(s).numpy() for s in sentences], suffix=EOS)
    return src, torch.tensor([len(s) + 1 for s in sentences])


def test_padding_never_changes_encoder_outputs():
    model = small_model()
    short = [5, 6, 7]
    alone_src, alone_len = batch_of(short)
    batch_src, batch_len = batch_of([9, 10, 11, 12, 13, 14, 15], short)
    with torch.no_grad():
        alone_mem, alone_state = model.encode(alone_src, alone_len)
        batch_mem, batch_state = model.encode(batch_src, batch_len)
    n = len(short) + 1
    torch.testing.assert_close(batch_mem.values[1, :n], alone_mem.values[0, :n])
    assert torch.all(batch_mem.values[1, n:] == 0)
    torch.testing.assert_close(batch_state.h[:, 1], alone_state.h[:, 0])
    torch.testing.assert_close(batch_state.c[:, 1], alone_state.c[:, 0])


@pytest.mark.parametrize("attention", ["luong", "dot", "bahdanau"])
def test_attention_ignores_padded_source_positions(attention):
    model = small_model(attention=attention)
    src, lengths = batch_of([9, 10, 11, 12, 13, 14], [5, 6])
    query = torch.randn(2, 3, 24)
    with torch.no_grad():
        memory, _ = model.encode(src, lengths)
        context = model.attention(query, memory)
        garbage = memory.values.clone()
        garbage[1, 3:] = 1e3  # positions past the short sentence's EOS
        poisoned = memory._replace(values=garbage, keys=model.attention.keys(garbage))
        context_poisoned = model.attention(query, poisoned)
        garbage[1, 0] = 1e3  # a real position of the short sentence: that one must matter
        real_poisoned = model.attention(query, memory._replace(values=garbage, keys=model.attention.keys(garbage)))
    torch.testing.assert_close(context_poisoned[1], context[1])
    assert not torch.allclose(real_poisoned[1], context[1])


@pytest.mark.parametrize("input_feeding", [False, True])
def test_teacher_forcing_equals_step_by_step_decoding(input_feeding):
    model = small_model(input_feeding=input_feeding)
    src, lengths = batch_of([5, 6, 7, 8], [9, 10])
    tgt_in = torch.tensor([[BOS, 11, 12, 13], [BOS, 14, 15, 16]])
    with torch.no_grad():
        logits = model.logits(src, lengths, tgt_in)
        memory, state = model.encode(src, lengths)
        steps = []
        for t in range(tgt_in.size(1)):
            log_probs, state = model.decode_step(tgt_in[:, t], memory, state)
            steps.append(log_probs)
    torch.testing.assert_close(torch.stack(steps, dim=1), torch.log_softmax(logits, dim=-1))


def test_untied_and_separate_vocabularies_build_and_run():
    config = ModelConfig(embed_size=8, hidden_size=12, encoder_layers=1, decoder_layers=1, tie_embeddings=False)
    model = Seq2Seq(config, 30, 50, joint_vocab=False)
    src, lengths = batch_of([5, 6])
    logits = model.logits(src, lengths, torch.tensor([[BOS, 7]]))
    assert logits.shape == (1, 2, 50)
    assert model.src_embed is not model.tgt_embed


def test_uniform_init_draws_every_parameter_from_its_range():
    config = dataclasses.replace(ModelConfig(), embed_size=16, hidden_size=32, init="uniform", init_range=0.05)
    torch.manual_seed(0)
    model = Seq2Seq(config, 50, 50, joint_vocab=True)
    for name, parameter in model.named_parameters():
        assert parameter.abs().max() <= 0.05, name
        if parameter.numel() > 100:
            assert parameter.abs().max() > 0.04, name  # filled, not left at a default of a smaller scale
    assert model.tgt_embed.weight[PAD].abs().sum() == 0
    default = Seq2Seq(dataclasses.replace(config, init="pytorch"), 50, 50, joint_vocab=True)
    assert default.tgt_embed.weight.detach().std().item() == pytest.approx(16**-0.5, rel=0.2)


@pytest.mark.parametrize("tied", [True, False])
def test_the_output_layer_gives_logits_loss_and_shortlist_rows_that_agree(tied):
    model = small_model(tie_embeddings=tied)
    layer = model.output_layer
    attentional = torch.randn(2, 3, 24)
    targets = torch.tensor([[5, 6, PAD], [7, 8, 9]])
    with torch.no_grad():
        logits = layer(attentional)
        loss = layer.loss(attentional, targets, 0.1)
        ids = torch.tensor([0, 1, 2, 3, 9, 17])
        narrowed = layer(attentional, layer.rows(ids))
    assert logits.shape == (2, 3, VOCAB) and not layer.int8
    assert (layer.weights()[0] is model.tgt_embed.weight) == tied
    expected = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=PAD, label_smoothing=0.1,
                               reduction="sum")
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(narrowed, logits[..., ids])


# Checkpoints and releases store parameters by these names, and Adam's state by parameter position.
OUTPUT_PARAMETERS = {
    (True, 16): ["output_bias", "pre_output.weight"],
    (True, 24): ["output_bias"],  # embed_size == hidden_size: no projection
    (False, 16): ["output.weight", "output.bias"],
}


@pytest.mark.parametrize("tied, embed_size", list(OUTPUT_PARAMETERS))
def test_output_parameters_keep_the_names_and_places_checkpoints_store(tied, embed_size):
    names = list(small_model(tie_embeddings=tied, embed_size=embed_size).state_dict())
    assert [name for name in names if name.startswith("output") or name.startswith("pre_output")] == \
        OUTPUT_PARAMETERS[tied, embed_size]
    assert names.index(OUTPUT_PARAMETERS[tied, embed_size][0]) == (0 if tied else len(names) - 2)
