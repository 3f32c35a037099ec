"""Where a training step's time goes, lstmmt next to OpenNMT-py at equal architecture.

Both systems get peers.py's comparison model and settings (fp32, --threads threads), with
input feeding (`lstmmt-if` vs `opennmt`) or without (`lstmmt` vs `opennmt-noif`, the
default). Each trains W warm-up steps, then K steps run under torch.profiler: lstmmt in
this interpreter through train_speed.py's `--profile`, OpenNMT-py in peers.py's virtualenv
through a wrapper around its `Trainer._gradient_accumulation` (one call is one step). Op
times are self CPU times of the calling thread (an op's intra-op threads count as its own
time); everything else of a step's wall time is "outside ops" (Python, the autograd
engine's bookkeeping, data loading). Figures are per 1,000 target tokens, since the two
systems cut different batches.

    python benchmarks/profile_peers.py                      # without input feeding
    python benchmarks/profile_peers.py --input-feeding      # with it

Prints one JSON object: for each system its top ops, inside/outside-ops time, and the
ops whose time differs most between the two.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import peers
from common import CACHE, DEFAULT_DATA, emit, ensure_preprocessed, log, machine, thread_env

OPENNMT_WRAPPER = r"""
import json, sys, time
import torch
from torch.profiler import ProfilerActivity, profile
import onmt.trainer
from onmt.bin.train import main

warmup, steps, out_path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
sys.argv = ["onmt_train"] + sys.argv[4:]
original = onmt.trainer.Trainer._gradient_accumulation
state = {"calls": 0, "tokens": 0, "wall": 0.0}

def profiled(self, true_batches, *args, **kwargs):
    state["calls"] += 1
    if state["calls"] <= warmup:
        return original(self, true_batches, *args, **kwargs)
    tokens = sum(int(b["tgt"][:, 1:, 0].ne(self.train_loss.padding_idx).sum()) for b in true_batches)
    if state["calls"] == warmup + 1:
        state["profiler"] = profile(activities=[ProfilerActivity.CPU]).__enter__()
    start = time.perf_counter()
    result = original(self, true_batches, *args, **kwargs)
    state["wall"] += time.perf_counter() - start
    state["tokens"] += tokens
    if state["calls"] == warmup + steps:
        prof = state["profiler"]
        prof.__exit__(None, None, None)
        ops = [{"op": e.key, "self_us": e.self_cpu_time_total, "calls": e.count} for e in prof.key_averages()]
        json.dump({"steps": steps, "wall_s": state["wall"], "tgt_tokens": state["tokens"], "ops": ops},
                  open(out_path, "w"))
        sys.exit(0)
    return result

onmt.trainer.Trainer._gradient_accumulation = profiled
main()
"""


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--work", type=Path, default=CACHE / "peers",
                    help="peers.py's cache folder (its venv and data are reused)")
    ap.add_argument("--input-feeding", action="store_true", help="profile the input-feeding decoders")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5, help="profiled steps")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--top", type=int, default=12)
    return ap.parse_args()


def peer_args(args: argparse.Namespace) -> argparse.Namespace:
    """The namespace peers.py's System classes read, for a run of warmup + steps + 1 steps."""
    return argparse.Namespace(work=args.work.resolve(), train_steps=args.warmup + args.steps + 1, threads=args.threads,
                              device="cpu", torch="pip", beam=5)


def per_1k_tokens(ops: list[dict[str, Any]], tgt_tokens: int) -> dict[str, float]:
    """Each op's self time in ms per 1,000 target tokens."""
    return {op["op"]: op["self_us"] / 1000 * 1000.0 / tgt_tokens for op in ops}


def summarise(ops: list[dict[str, Any]], wall_s: float, tgt_tokens: int, top: int) -> dict[str, Any]:
    """Per-1,000-target-token figures: top ops, the time inside ops and outside them."""
    per_k = 1000.0 / tgt_tokens
    inside_ms = sum(op["self_us"] for op in ops) / 1000 * per_k
    ranked = sorted(ops, key=lambda op: -op["self_us"])
    return {
        "ms_per_1k_tgt_tokens": round(wall_s * 1000 * per_k, 1),
        "inside_ops_ms": round(inside_ms, 1),
        "outside_ops_ms": round(wall_s * 1000 * per_k - inside_ms, 1),
        "tgt_tokens_per_s": round(tgt_tokens / wall_s, 1),
        "top_ops": [{"op": op["op"], "ms": round(op["self_us"] / 1000 * per_k, 1),
                     "calls_per_1k": round(op["calls"] * per_k, 1)} for op in ranked[:top]],
    }


def profile_opennmt(system: peers.OpenNMT, args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, float]]:
    system.prepare()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "profile.json"
        cmd = [str(system.python), "-c", OPENNMT_WRAPPER, str(args.warmup), str(args.steps), str(out),
               "-config", str(system.dir / "config.yaml")]
        done = subprocess.run(cmd, env=system.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if not out.exists():
            raise RuntimeError(f"OpenNMT-py profile failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
        raw = json.loads(out.read_text())
    summary = summarise(raw["ops"], raw["wall_s"], raw["tgt_tokens"], args.top)
    return summary, per_1k_tokens(raw["ops"], raw["tgt_tokens"])


def profile_lstmmt(system: peers.Lstmmt, args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, float]]:
    """train_speed.py with the peers' lstmmt settings and --profile; its raw profile ops."""
    sets = system.train_cmd()
    sets = [sets[i + 1] for i, a in enumerate(sets) if a == "--set"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ops.json"
        cmd = [sys.executable, str(Path(__file__).with_name("train_speed.py")), "--threads", str(args.threads),
               "--warmup", str(args.warmup), "--steps", "1", "--profile", str(args.steps), "--profile-json", str(out),
               "--peak-size", "-1",
               *[x for s in sets for x in ("--set", s)]]
        done = subprocess.run(cmd, env=thread_env(args.threads), capture_output=True, text=True)
        if done.returncode != 0 or not out.exists():
            raise RuntimeError(f"lstmmt profile failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
        raw = json.loads(out.read_text())
    summary = summarise(raw["ops"], raw["wall_s"], raw["tgt_tokens"], args.top)
    return summary, per_1k_tokens(raw["ops"], raw["tgt_tokens"])


def main() -> None:
    args = parse_args()
    base_run = ensure_preprocessed(CACHE / "m30k-8k", args.data_dir)
    pargs = peer_args(args)
    data = pargs.work / "data"
    peers.export_data(base_run, args.data_dir, data)
    mine = (peers.LstmmtIF if args.input_feeding else peers.Lstmmt)(pargs, data, base_run)
    theirs = (peers.OpenNMT if args.input_feeding else peers.OpenNMTNoIF)(pargs, data, base_run)
    log(f"profiling {mine.name}")
    result: dict[str, Any] = {}
    result[mine.name], a = profile_lstmmt(mine, args)
    log(f"profiling {theirs.name}")
    result[theirs.name], b = profile_opennmt(theirs, args)
    differences = sorted(((op, a.get(op, 0.0) - b.get(op, 0.0)) for op in set(a) | set(b)), key=lambda kv: -abs(kv[1]))
    emit({
        "benchmark": "profile_peers", "machine": machine("cpu"), "input_feeding": args.input_feeding,
        "warmup": args.warmup, "steps": args.steps, "threads": args.threads, "systems": result,
        "largest_differences_ms_per_1k_tgt_tokens": [{"op": op, f"{mine.name}_minus_{theirs.name}": round(d, 1)}
                                                     for op, d in differences[: args.top]],
    })


if __name__ == "__main__":
    main()
