"""Load on `sd-keras serve`: throughput, latency, 503s and memory under many concurrent clients.

Each scenario starts its own server (loopback only) with the model, warms it up with a short burst (so every
batch size it will use is compiled), then measures CLIENTS concurrent clients sending REQUESTS txt2img requests
each, without retrying a 503 (a compile during the measurement would show as a latency spike). Scenarios:

- ``no-batching``: ``--max-batch 1``, a queue big enough for every client;
- ``batching``: ``--max-batch 4``, same queue: compatible waiting requests share one batch;
- ``small-queue``: ``--max-batch 4 --queue-size 4``: the queue overflows and answers 503 with Retry-After.

Usage:
    KERAS_BACKEND=jax python benchmarks/server_load.py                 # writes benchmarks/results/server_load_jax.json
    KERAS_BACKEND=tensorflow python benchmarks/server_load.py --clients 16 --requests 4 --steps 8
"""

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time

import httpx

from sd_keras.server.process import ServerProcess

KEY = "benchmark-key-0123"
SCENARIOS = {
    "no-batching": ["--max-batch", "1", "--queue-size", "256"],
    "batching": ["--max-batch", "4", "--queue-size", "256"],
    "small-queue": ["--max-batch", "4", "--queue-size", "4"],
}


def percentile(values, fraction):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def metric_value(text, name):
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def burst(url, clients, requests, body):
    """``clients`` threads × ``requests`` POSTs; (status, seconds) for each, and the wall time."""
    results, lock = [], threading.Lock()

    def client(index):
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=3600) as http:
            for number in range(requests):
                started = time.monotonic()
                response = http.post("/sdapi/v1/txt2img", json={**body, "seed": index * requests + number})
                with lock:
                    results.append((response.status_code, time.monotonic() - started))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, time.monotonic() - started


def run_scenario(name, args):
    body = {"prompt": "a red circle on a blue background", "steps": args.steps, "width": args.size,
            "height": args.size, "sampler_name": args.sampler, "cfg_scale": 7.0}
    with ServerProcess("-m", args.model, "--api-key", KEY, *SCENARIOS[name], "--log-level", "warning") as server:
        # compile before measuring: every batch size's loop and decoder, then the text encoder's batch sizes
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=3600) as http:
            for batch_size in range(1, 5):
                http.post("/sdapi/v1/txt2img", json={**body, "batch_size": batch_size}).raise_for_status()
        for _ in range(2):
            burst(server.url, args.clients, 2, body)
        def batched_jobs():
            metrics = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
            return metric_value(metrics, "sd_keras_batched_jobs_total")

        batched_before, rss_before = batched_jobs(), server.rss_bytes()
        results, wall = burst(server.url, args.clients, args.requests, body)
        batched, rss_after = batched_jobs() - batched_before, server.rss_bytes()
    ok = [seconds for status, seconds in results if status == 200]
    statuses = sorted({status for status, _ in results})
    return {
        "scenario": name,
        "server_args": SCENARIOS[name],
        "requests": len(results),
        "status_counts": {str(s): sum(1 for status, _ in results if status == s) for s in statuses},
        "wall_seconds": round(wall, 3),
        "images_per_second": round(len(ok) / wall, 3),
        "latency_200_seconds": {"p50": percentile(ok, 0.5), "p95": percentile(ok, 0.95), "max": max(ok, default=None),
                                "mean": statistics.fmean(ok) if ok else None},
        "jobs_run_in_shared_batches": batched,
        "rss_mb_before": round(rss_before / 2**20, 1),
        "rss_mb_after": round(rss_after / 2**20, 1),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=8, help="requests per client")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--sampler", default="Euler", help="a sampler without per-step noise can be batched")
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    parser.add_argument("--output", help="JSON file (default benchmarks/results/server_load_<backend>.json)")
    args = parser.parse_args(argv)

    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    report = {
        "benchmark": "server_load",
        "backend": backend,
        "model": args.model,
        "clients": args.clients,
        "requests_per_client": args.requests,
        "steps": args.steps,
        "size": args.size,
        "sampler": args.sampler,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d"),
        "scenarios": [],
    }
    for name in args.scenarios:
        result = run_scenario(name, args)
        report["scenarios"].append(result)
        latency = result["latency_200_seconds"]
        print(f"{name:12s} {result['status_counts']}  {result['images_per_second']:.2f} img/s  "
              f"p50 {latency['p50'] or 0:.2f} s  p95 {latency['p95'] or 0:.2f} s  "
              f"batched {result['jobs_run_in_shared_batches']:.0f}  "
              f"RSS {result['rss_mb_before']} -> {result['rss_mb_after']} MB", flush=True)
    output = args.output or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                         f"server_load_{backend}.json")
    os.makedirs(os.path.dirname(output), exist_ok=True)
    temporary = output + ".tmp"
    with open(temporary, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    os.replace(temporary, output)
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
