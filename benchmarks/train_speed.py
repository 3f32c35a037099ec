"""Training throughput of lstmmt on Multi30k en-de: tokens/s, steps/s, peak memory.

Preprocesses Multi30k once (joint unigram SentencePiece, 8k) into a cached run directory,
then runs lstmmt's own `Trainer.train_step` in this process: W warm-up steps, then N timed
steps over the trainer's real token-budget batches (collation included in the time, as in
`lstmmt train`). The model defaults to the comparison model (embeddings 256,
BiLSTM encoder 2 layers x 256 per direction, one decoder layer of 512, Luong attention,
4096-token batches); `--set` changes any config key.

    python benchmarks/train_speed.py                                 # CPU, defaults
    python benchmarks/train_speed.py --set model.input_feeding=true  # step-by-step decoder
    python benchmarks/train_speed.py --device cuda --set train.precision=bf16
    python benchmarks/train_speed.py --profile 3                     # + torch profiler top ops

Prints one JSON object on stdout; progress on stderr. Its `efficiency` part compares the
model's training FLOPs (common.flops_per_tgt_token, counted from the config) times target
tokens/s with the device's peak, measured in the same run by fp32 and bf16 matmuls of
--peak-size (the training precision's peak is the denominator). On CUDA the device is
prepared as `lstmmt train` prepares it (TF32 matmuls), and so is the fp32 peak.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from common import (
    CACHE,
    DEFAULT_DATA,
    cpu_seconds,
    efficiency,
    emit,
    ensure_preprocessed,
    flops_per_tgt_token,
    log,
    machine,
    peak_rss_mb,
    reset_peak_rss,
)

COMPARISON_MODEL = [
    "model.embed_size=256", "model.hidden_size=512", "model.encoder_layers=2", "model.decoder_layers=1",
    "model.attention=luong", "train.batch_tokens=4096",
]
"""Laid under the user's --set values, so the benchmark keeps measuring the same model if lstmmt's defaults change."""


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA,
                    help="folder with Multi30k train/val/test_2016_flickr .en/.de(.gz)")
    ap.add_argument("--run", type=Path, default=CACHE / "m30k-8k", help="preprocessed run directory (made if missing)")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="config override (repeatable)")
    ap.add_argument("--steps", type=int, default=60, help="timed steps")
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--profile", type=int, default=0, metavar="K",
                    help="after timing, profile K more steps and report the top ops")
    ap.add_argument("--profile-json", type=Path, default=None, metavar="FILE",
                    help="with --profile: every op's self time to FILE")
    ap.add_argument("--peak-size", type=int, default=0, metavar="N",
                    help="N x N matmuls for the measured peak (0: 4096 on a GPU, 2048 on a CPU); "
                         "-1 skips the efficiency figure")
    ap.add_argument("--peak-repeats", type=int, default=5, help="timed matmuls per dtype (the best counts)")
    return ap.parse_args()


def sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profile_steps(trainer: Any, batches: Any, steps: int, device: Any, top: int = 15,
                  raw_json: Path | None = None) -> list[dict[str, Any]]:
    """Top ops by self time over `steps` training steps (self CPU time; CUDA time too on a GPU).
    With `raw_json`, every op's self time and calls, the steps' wall time and target tokens
    go to that file too (profile_peers.py reads it)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    tokens, start = 0, time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            batch, weight, _ = next(batches)
            tokens += batch.tgt_tokens
            trainer.train_step(batch, weight)
        sync(device)
    wall_s = time.perf_counter() - start
    if raw_json is not None:
        ops = [{"op": e.key, "self_us": e.self_cpu_time_total, "calls": e.count} for e in prof.key_averages()]
        raw_json.write_text(json.dumps({"steps": steps, "wall_s": wall_s, "tgt_tokens": tokens, "ops": ops}))
    return top_ops(prof, steps, device, top)


def top_ops(prof: Any, steps: int, device: Any, top: int) -> list[dict[str, Any]]:
    # Device time is `self_device_time_total` (torch >= 2.4; the old `self_cuda_time_total` is
    # gone in newer releases). A missing field is an error here, not a silent column of zeros.
    sort_key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, sort_key), reverse=True)
    total = sum(getattr(e, sort_key) for e in events) or 1
    table = prof.key_averages().table(sort_by=sort_key, row_limit=top)
    log(f"profile (totals over {steps} steps or batches):\n" + table)
    rows = []
    for event in events[:top]:
        self_us = getattr(event, sort_key)
        rows.append({"op": event.key, "self_ms_per_step": round(self_us / 1000 / steps, 3),
                     "share": round(self_us / total, 4), "calls_per_step": round(event.count / steps, 1)})
    return rows


def attended_positions(batch: Any) -> int:
    """Sum over a batch's sentences of target tokens x source tokens: the (query, key) pairs
    attention scores, pads excluded (for the FLOP count)."""
    from lstmmt.tokenizer import PAD

    tgt_lengths = (batch.tgt_out != PAD).sum(dim=1)
    return int((tgt_lengths * batch.src_lengths.to(tgt_lengths.device)).sum())


def main() -> None:
    args = parse_args()
    run_dir = ensure_preprocessed(args.run, args.data_dir)

    import torch

    from lstmmt.config import Config
    from lstmmt.device import prepare_device, resolve_device
    from lstmmt.model import count_parameters
    from lstmmt.rundir import RunDir
    from lstmmt.train import Trainer

    if args.threads:
        torch.set_num_threads(args.threads)
    run = RunDir(run_dir)
    config = Config.load(run.config).with_overrides(COMPARISON_MODEL + args.sets)
    device = resolve_device(args.device)
    prepare_device(device)  # as `lstmmt train` does: TF32 on CUDA
    trainer = Trainer(run, config, device)
    trainer.model.train()
    batches = trainer.batches()
    log(f"{count_parameters(trainer.model):,} parameters on {device}, {torch.get_num_threads()} threads; "
        f"{args.warmup} warm-up + {args.steps} timed steps")

    for _ in range(args.warmup):
        trainer.train_step(*next(batches)[:2])
    sync(device)

    rss_reset = reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    totals = {"sentences": 0, "src_tokens": 0, "tgt_tokens": 0, "padded_src": 0, "padded_tgt": 0, "attended": 0}
    loss, collate_s = torch.zeros((), device=device), 0.0
    load_before = machine()["loadavg_1_5_15"]
    cpu0, start = cpu_seconds(), time.perf_counter()
    for _ in range(args.steps):
        fetch = time.perf_counter()
        batch, weight, _ = next(batches)
        collate_s += time.perf_counter() - fetch
        totals["sentences"] += batch.src.size(0)
        totals["src_tokens"] += int(batch.src_lengths.sum())
        totals["tgt_tokens"] += batch.tgt_tokens
        totals["padded_src"] += batch.src.numel()
        totals["padded_tgt"] += batch.tgt_out.numel()
        totals["attended"] += attended_positions(batch)
        loss += trainer.train_step(batch, weight)[0]
    sync(device)
    seconds = time.perf_counter() - start
    cpu = cpu_seconds() - cpu0
    mean_loss = loss.item() / max(totals["tgt_tokens"], 1)

    result: dict[str, Any] = {
        "benchmark": "train_speed",
        "device": str(device),
        "machine": machine(str(device)),
        "loadavg_before": load_before,
        "config": {"model": config.to_dict()["model"], "batch_tokens": config.train.batch_tokens,
                   "precision": config.train.precision, "sets": args.sets},
        "parameters": count_parameters(trainer.model),
        "warmup_steps": args.warmup,
        "steps": args.steps,
        "seconds": round(seconds, 3),
        "steps_per_s": round(args.steps / seconds, 4),
        "src_tokens_per_s": round(totals["src_tokens"] / seconds, 1),
        "tgt_tokens_per_s": round(totals["tgt_tokens"] / seconds, 1),
        "tgt_tokens_per_cpu_s": round(totals["tgt_tokens"] / cpu, 1),
        "sentences_per_s": round(totals["sentences"] / seconds, 2),
        "tgt_tokens_per_step": round(totals["tgt_tokens"] / args.steps, 1),
        "padding_share": {"src": round(1 - totals["src_tokens"] / totals["padded_src"], 4),
                          "tgt": round(1 - totals["tgt_tokens"] / totals["padded_tgt"], 4)},
        "collate_share": round(collate_s / seconds, 4),
        "cpu_s": round(cpu, 2),
        "mean_train_loss": round(mean_loss, 4),
    }
    if device.type == "cuda":
        result["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    result["peak_rss_mb" if rss_reset else "peak_rss_mb_process_lifetime"] = round(peak_rss_mb(), 1)
    if args.peak_size >= 0:
        per_tgt = {key: totals[key] / totals["tgt_tokens"] for key in ("src_tokens", "attended")}
        flops = flops_per_tgt_token(config.model, trainer.tokenizer.tgt_vocab_size, per_tgt["src_tokens"],
                                    per_tgt["attended"])
        size = args.peak_size or (4096 if device.type == "cuda" else 2048)
        result["precision_run"] = trainer.precision.name
        result["efficiency"] = achieved = efficiency(flops, result["tgt_tokens_per_s"], trainer.precision.name, device,
                                                     size, args.peak_repeats)
        log(f"{achieved['achieved_gflops']:,.1f} GFLOP/s achieved, {achieved['efficiency']:.1%} of the "
            f"measured {trainer.precision.name} peak")
    if args.profile:
        result["profile_top_ops"] = profile_steps(trainer, batches, args.profile, device, raw_json=args.profile_json)
    result["loadavg_after"] = machine()["loadavg_1_5_15"]
    log(f"{result['tgt_tokens_per_s']:,.0f} target tokens/s, {result['steps_per_s']:.3f} steps/s")
    emit(result)


if __name__ == "__main__":
    main()
