"""Validation: the loss and BLEU of a model on the run's validation split, computed one way for
training (best checkpoint, patience, the plateau schedule) and for `lstmmt average` (which keeps
an average only if it scores at least as well as best.pt), so both give a checkpoint one score.

    loss: teacher-forced cross-entropy per target token (no label smoothing), in batches of
          train.batch_tokens
    BLEU: greedy search (the decode settings with beam 1) of the encoded split preprocess stored,
          the ids training reads, never truncated at decode.max_source_tokens; the detokenized
          outputs scored against the stored references by lstmmt.scoring.bleu (corpus BLEU, NFC)

both in the training precision, with the model as training holds it (fp32 weights, autocast).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lstmmt import checkpoint
from lstmmt.batching import Batch, collate, token_batches
from lstmmt.config import Config
from lstmmt.device import Precision, autocast, choose_precision, prepare_device, resolve_device
from lstmmt.encoded import EncodedSide, Sentences
from lstmmt.evaluate import read_lines
from lstmmt.model import Seq2Seq
from lstmmt.rundir import RunDir
from lstmmt.scoring import bleu
from lstmmt.tokenizer import Tokenizer
from lstmmt.translator import Translator


def token_loss(model: torch.nn.Module, batch: Batch, precision: str, label_smoothing: float = 0.0) -> torch.Tensor:
    """Summed cross-entropy of a batch's target tokens under teacher forcing (a device scalar):
    the training step's loss (with label smoothing) and validation's (without)."""
    with autocast(batch.src.device, precision):
        return model(batch.src, batch.src_lengths, batch.tgt_in, batch.tgt_out, label_smoothing)


@dataclass
class Validation:
    """A run's validation split and the settings a model is scored with (see the module docstring)."""

    src: Sentences
    tgt: Sentences
    references: list[str]
    tokenizer: Tokenizer
    config: Config  # train.batch_tokens batches the loss; decode holds the search settings
    device: torch.device
    precision: Precision

    @classmethod
    def open(cls, run: RunDir, tokenizer: Tokenizer, config: Config, device: torch.device,
             precision: Precision) -> Validation:
        """The split as training reads it: encoded ids from data/ and the reference lines."""
        return cls(EncodedSide.open(run, "valid", "src").all(), EncodedSide.open(run, "valid", "tgt").all(),
                   read_lines(run.text("valid", "tgt")), tokenizer, config, device, precision)

    @classmethod
    def of_checkpoints(cls, run: RunDir, device: str) -> Validation:
        """Validation outside training, for a run's checkpoints: its config and tokenizer, on
        `device` prepared as training prepares it, in the training precision resolved there."""
        config, resolved = Config.load(run.config), resolve_device(device)
        prepare_device(resolved)
        precision = choose_precision(config.train.precision, resolved, "train.precision", training=False)
        return cls.open(run, Tokenizer.load(run.tokenizer_dir), config, resolved, precision)

    @torch.inference_mode()
    def scores(self, model: Seq2Seq) -> dict[str, float]:
        """{"loss", "ppl", "bleu"} of `model`, which is left in eval mode."""
        loss = self.loss(model)
        return {"loss": loss, "ppl": math.exp(min(loss, 50)), "bleu": self.bleu(model)}

    @torch.inference_mode()
    def loss(self, model: Seq2Seq) -> float:
        """Mean cross-entropy per target token (EOS included) of the references under teacher forcing."""
        model.eval()
        total_loss, total_tokens = torch.zeros((), device=self.device), 0
        lengths = np.maximum(self.src.lengths, self.tgt.lengths) + 1
        for indices in token_batches(np.argsort(lengths, kind="stable"), lengths, self.config.train.batch_tokens):
            batch = collate(indices, self.src, self.tgt)
            total_loss += token_loss(model, batch.to(self.device), self.precision.name)
            total_tokens += batch.tgt_tokens
        return total_loss.item() / max(total_tokens, 1)

    @torch.inference_mode()
    def bleu(self, model: Seq2Seq) -> float:
        """Corpus BLEU of `model`'s greedy translations of the encoded split."""
        greedy = Translator(model, self.tokenizer, self.config.decode.greedy(), self.device, self.precision)
        return bleu(greedy.translate_encoded([self.src[i] for i in range(len(self.src))]), self.references)

    def checkpoint_bleu(self, payload: dict[str, Any], path: Path) -> float:
        """`bleu` of the model in a checkpoint payload; a UserError naming `path` if it does not fit the tokenizer."""
        model, _ = checkpoint.model_of(payload, self.tokenizer, path)
        return self.bleu(model.to(self.device))
