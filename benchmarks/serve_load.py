"""Load on `lstmmt serve`: N concurrent clients x M requests of Multi30k sentences.

Starts `lstmmt serve RUN --port 0` on 127.0.0.1 (once with batching across requests and once
with --no-batching, unless --batching says otherwise), and for each client count runs N
threads, each sending M LibreTranslate requests (`POST /translate`, one test_2016_flickr
sentence each, JSON) over its own keep-alive connection, the next as soon as the last is
answered. Reports per configuration: requests/s, latency p50/p95/p99/max, errors, the
server's peak RSS over that configuration (VmHWM, reset before it), and how many requests
the server searched per batch (from GET /health). Bounded: each configuration stops sending
after --time-limit seconds (reported as stopped_early) and every request has a timeout.

    python benchmarks/serve_load.py --run runs/en-de                       # 1, 8, 32 clients, batching on and off
    python benchmarks/serve_load.py --run runs/en-de --clients 8 --requests 200 --batching on
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from common import DEFAULT_DATA, emit, exit_on_sigterm, log, lstmmt_cmd, machine, read_test_source, thread_env


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="trained run directory to serve")
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="Multi30k folder with test_2016_flickr.en[.gz]")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32], help="concurrent client counts")
    ap.add_argument("--requests", type=int, default=50, help="requests per client")
    ap.add_argument("--batching", choices=["on", "off"], nargs="+", default=["on", "off"])
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--checkpoint", default="best")
    ap.add_argument("--threads", type=int, default=0, help="the server's --threads (0: torch's default)")
    ap.add_argument("--serve-args", default="", help="more `lstmmt serve` options, space-separated")
    ap.add_argument("--time-limit", type=float, default=300.0,
                    help="seconds per configuration before clients stop sending")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds one request may take")
    ap.add_argument("--warmup", type=int, default=5, help="requests sent before measuring, one at a time")
    return ap.parse_args()


class Served:
    """The server subprocess, its address read from stderr."""

    def __init__(self, args: argparse.Namespace, batching: bool, queue_size: int):
        cmd = lstmmt_cmd("serve", str(args.run), "--port", "0", "--device", args.device,
                         "--checkpoint", args.checkpoint, "--beam", str(args.beam), "--queue-size", str(queue_size),
                         *args.serve_args.split())
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        if not batching:
            cmd.append("--no-batching")
        log(" ".join(cmd[1:]))
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, env=thread_env(args.threads or None))
        self.stderr: list[str] = []
        for line in self.proc.stderr:
            self.stderr.append(line.rstrip())
            match = re.search(r"Listening on http://([^:/\s]+):(\d+)", line)
            if match:
                self.host, self.port = match.group(1), int(match.group(2))
                break
        else:
            raise SystemExit(f"the server exited {self.proc.wait()}:\n" + "\n".join(self.stderr))
        threading.Thread(target=lambda: [self.stderr.append(line.rstrip()) for line in self.proc.stderr],
                         daemon=True).start()

    def reset_peak(self) -> None:
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
        return float("nan")

    def health(self) -> dict[str, Any]:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            connection.request("GET", "/health")
            return json.loads(connection.getresponse().read())
        finally:
            connection.close()

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def client(served: Served, sentences: list[str], start: int, count: int, deadline: float, timeout: float,
           latencies: list[float], errors: list[str]) -> None:
    connection: http.client.HTTPConnection | None = None
    for i in range(count):
        if time.monotonic() > deadline:
            return
        body = json.dumps({"q": sentences[(start + i) % len(sentences)], "source": "en", "target": "de"})
        began = time.perf_counter()
        try:
            if connection is None:
                connection = http.client.HTTPConnection(served.host, served.port, timeout=timeout)
            connection.request("POST", "/translate", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            answer = response.read()
            if response.status != 200 or "translatedText" not in json.loads(answer):
                errors.append(f"{response.status} {answer[:200]!r}")
                continue
        except (OSError, http.client.HTTPException, ValueError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            if connection is not None:
                connection.close()
            connection = None
            continue
        latencies.append(time.perf_counter() - began)
    if connection is not None:
        connection.close()


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))] * 1000, 1)


def measure(served: Served, sentences: list[str], clients: int, args: argparse.Namespace) -> dict[str, Any]:
    before = served.health()["served"]
    served.reset_peak()
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + args.time_limit
    threads = [threading.Thread(target=client, args=(served, sentences, n * args.requests, args.requests, deadline,
                                                     args.timeout, latencies, errors)) for n in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    after = served.health()["served"]
    batches = after["batches"] - before["batches"]
    return {
        "clients": clients, "requests": len(latencies) + len(errors), "ok": len(latencies), "errors": len(errors),
        "error_examples": sorted(set(errors))[:3],
        "stopped_early": len(latencies) + len(errors) < clients * args.requests,
        "wall_s": round(wall, 2), "requests_per_s": round(len(latencies) / wall, 2),
        "latency_ms": {"mean": round(statistics.fmean(latencies) * 1000, 1) if latencies else None,
                       "p50": percentile(latencies, 50), "p95": percentile(latencies, 95),
                       "p99": percentile(latencies, 99),
                       "max": round(max(latencies) * 1000, 1) if latencies else None},
        "requests_per_batch": round((after["requests"] - before["requests"]) / batches, 2) if batches else None,
        "server_peak_rss_mb": served.peak_rss_mb(),
    }


def main() -> None:
    exit_on_sigterm()
    args = parse_args()
    sentences = read_test_source(args.data_dir)
    result: dict[str, Any] = {"benchmark": "serve_load", "run": str(args.run), "beam": args.beam, "device": args.device,
                              "requests_per_client": args.requests, "time_limit_s": args.time_limit,
                              "machine_before": machine(args.device), "results": []}
    for mode in args.batching:
        served = Served(args, mode == "on", queue_size=max(64, 2 * max(args.clients)))
        try:
            for i in range(args.warmup):
                client(served, sentences, 10_000 + i, 1, time.monotonic() + args.time_limit, args.timeout, [], [])
            result.setdefault("servers", {})[mode] = {
                "health": {k: v for k, v in served.health().items() if k not in ("queue", "served")},
                "stderr_head": served.stderr[:2]}
            for clients in args.clients:
                log(f"batching {mode}: {clients} clients x {args.requests} requests")
                figures = {"batching": mode, **measure(served, sentences, clients, args)}
                shown = ("requests_per_s", "latency_ms", "errors", "requests_per_batch")
                log(json.dumps({k: figures[k] for k in shown}))
                result["results"].append(figures)
        finally:
            result.setdefault("server_exit", {})[mode] = served.stop()
    result["machine_after"] = {"loadavg_1_5_15": machine(args.device)["loadavg_1_5_15"]}
    emit(result)


if __name__ == "__main__":
    sys.exit(main())
