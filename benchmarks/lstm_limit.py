"""Upper-bound probe: how fast can one attentional LSTM seq2seq training step run on this device?

Plain PyTorch on synthetic ids, no lstmmt code: the figure lstmmt's own training speed is
compared with in the same run. By
default the model is the comparison model of train_speed.py (embeddings 256, BiLSTM 2 x 256
per direction, decoder 512, Luong general attention, untied 512 x 8,000 output layer);
`--enc-layers 1 --enc-hidden 512` gives one encoder layer of the decoder's width. Two decoder styles:
fused (no input feeding: one LSTM call over the target) and stepwise (input feeding, an
LSTMCell loop). Sentences all have --src-len and --tgt-len tokens, so there is no padding.

    python benchmarks/lstm_limit.py --sentences 512                   # every style and dtype
    python benchmarks/lstm_limit.py --sentences 1100 --src-len 14 --tgt-len 15 --styles fused

Prints one JSON object: a row per (style, dtype) with step time, target tokens/s and the
achieved GFLOP/s by common.flops_per_tgt_token (the same count as train_speed.py).
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace
from typing import Any

from common import emit, flops_per_tgt_token, log, machine


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sentences", type=int, default=512, help="sentences per batch")
    ap.add_argument("--src-len", type=int, default=14)
    ap.add_argument("--tgt-len", type=int, default=14)
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--embed", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=512, help="decoder size")
    ap.add_argument("--enc-hidden", type=int, default=256, help="encoder size per direction")
    ap.add_argument("--enc-layers", type=int, default=2)
    ap.add_argument("--styles", default="fused,stepwise")
    ap.add_argument("--dtypes", default="", help="comma-separated bf16,fp32 (default: both on a GPU, fp32 on a CPU)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=0, help="timed steps (0: 10 on a GPU, 3 on a CPU)")
    return ap.parse_args()


def build(args: argparse.Namespace) -> Any:
    import torch
    from torch import nn

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            V, E, H, h = args.vocab, args.embed, args.hidden, args.enc_hidden
            self.se, self.te = nn.Embedding(V, E), nn.Embedding(V, E)
            self.enc = nn.LSTM(E, h, args.enc_layers, batch_first=True, bidirectional=True)
            self.bridge = nn.Linear(2 * h, H)
            self.dec = nn.LSTM(E, H, 1, batch_first=True)
            self.cell = nn.LSTMCell(E + H, H)
            self.key = nn.Linear(2 * h, H, bias=False)
            self.comb = nn.Linear(2 * h + H, H)
            self.out = nn.Linear(H, V)

        def forward(self, src: Any, tgt_in: Any, fused: bool) -> Any:
            mem, (hn, _) = self.enc(self.se(src))
            h0 = torch.tanh(self.bridge(torch.cat([hn[-2], hn[-1]], -1)))
            c0 = torch.zeros_like(h0)
            keys = self.key(mem)
            emb = self.te(tgt_in)
            if fused:
                q, _ = self.dec(emb, (h0[None].contiguous(), c0[None].contiguous()))
                a = torch.softmax(q @ keys.transpose(1, 2), -1) @ mem
                o = torch.tanh(self.comb(torch.cat([q, a], -1)))
            else:
                hs, cs, feed, outs = h0, c0, torch.zeros_like(h0), []
                for t in range(emb.size(1)):
                    hs, cs = self.cell(torch.cat([emb[:, t], feed], -1), (hs, cs))
                    a = (torch.softmax((keys @ hs[:, :, None]).squeeze(-1), -1)[:, None] @ mem).squeeze(1)
                    feed = torch.tanh(self.comb(torch.cat([hs, a], -1)))
                    outs.append(feed)
                o = torch.stack(outs, 1)
            return self.out(o)

    return Model()


def measure(args: argparse.Namespace, device: Any, fused: bool, dtype: Any, steps: int) -> float:
    """Seconds per training step (forward, loss, backward, Adam), best of the timed mean."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = build(args).to(device)
    opt = torch.optim.Adam(model.parameters(), 1e-3, fused=True)
    src = torch.randint(4, args.vocab, (args.sentences, args.src_len), device=device)
    tgt = torch.randint(4, args.vocab, (args.sentences, args.tgt_len + 1), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            logits = model(src, tgt[:, :-1], fused)
        loss = F.cross_entropy(logits.float().reshape(-1, args.vocab), tgt[:, 1:].reshape(-1), label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(3):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - start) / steps


def main() -> None:
    args = parse_args()
    import torch

    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    if device.type == "cuda":  # as lstmmt trains: TF32 for fp32 products
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    dtypes = args.dtypes.split(",") if args.dtypes else (["bf16", "fp32"] if device.type == "cuda" else ["fp32"])
    steps = args.steps or (10 if device.type == "cuda" else 3)
    tgt_tokens = args.sentences * args.tgt_len
    model = SimpleNamespace(embed_size=args.embed, hidden_size=args.hidden, encoder_layers=args.enc_layers,
                            decoder_layers=1, attention="luong", tie_embeddings=False, input_feeding=False)
    rows = []
    for style in args.styles.split(","):
        fused = style == "fused"
        flops = None  # the count assumes lstmmt's shape: encoder hidden_size / 2 per direction
        if 2 * args.enc_hidden == args.hidden:
            flops = flops_per_tgt_token(SimpleNamespace(**{**vars(model), "input_feeding": not fused}), args.vocab,
                                        args.src_len / args.tgt_len, args.src_len)
        for name in dtypes:
            seconds = measure(args, device, fused, {"bf16": torch.bfloat16, "fp32": torch.float32}[name], steps)
            row = {"style": style, "dtype": name, "sentences": args.sentences, "tgt_tokens_per_batch": tgt_tokens,
                   "step_ms": round(seconds * 1e3, 2), "tgt_tokens_per_s": round(tgt_tokens / seconds),
                   "flops_per_tgt_token": flops and round(flops),
                   "achieved_gflops": flops and round(flops * tgt_tokens / seconds / 1e9, 1)}
            log(f"{style} {name}: {row['step_ms']} ms a step, {row['tgt_tokens_per_s']:,} target tokens/s")
            rows.append(row)
    emit({"benchmark": "lstm_limit", "device": str(device), "machine": machine(str(device)),
          "model": {**vars(model), "vocab": args.vocab, "enc_hidden_per_direction": args.enc_hidden,
                    "src_len": args.src_len, "tgt_len": args.tgt_len},
          "timed_steps": steps, "results": rows})


if __name__ == "__main__":
    main()
