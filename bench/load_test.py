"""`python -m bench.load_test --index GALLERY.faiss [--checkpoint CKPT] [--requests N] [--clients 1 8 32]`:
a bounded load test of `python -m udon_fast.serve` on 127.0.0.1 only.

Starts the service as a subprocess on a free loopback port, then for each number of concurrent
clients sends `--requests` POST /search requests in all (one gallery image each, cycling through
the gallery), the clients each waiting for their reply before sending the next; reports p50 and p99
latency, throughput and errors per level as a Markdown table, and exits 1 on any error.  Every loop
is bounded by a request count and `--timeout` seconds; nothing is sent anywhere but 127.0.0.1.
"""

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

HOST = "127.0.0.1"


async def load(url: str, images: list[tuple[str, bytes]], clients: int, requests: int, timeout: float = 60.0) -> dict:
    """Send `requests` POST /search requests from `clients` concurrent clients; returns {"clients",
    "requests", "errors", "p50_ms", "p99_ms", "per_s", "seconds", "self_first"} where self_first counts
    replies whose top hit is the uploaded gallery image itself."""
    latencies, errors, self_first = [], [], 0
    counter = iter(range(requests))

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal self_first
        for i in counter:
            path, data = images[i % len(images)]
            started = time.perf_counter()
            try:
                reply = await http.post(f"{url}/search", files={"images": (Path(path).name, data, "image/jpeg")})
                latencies.append(time.perf_counter() - started)
                if reply.status_code != 200:
                    errors.append(f"{reply.status_code} {reply.text[:200]}")
                elif reply.json()["results"][0]["neighbours"][0]["path"] == path:
                    self_first += 1
            except httpx.HTTPError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=clients)) as http:
        await asyncio.wait_for(asyncio.gather(*(client(http) for _ in range(clients))), timeout)
    seconds = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {
        "clients": clients,
        "requests": requests,
        "errors": errors,
        "seconds": seconds,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "per_s": len(latencies) / seconds,
        "self_first": self_first,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the service exited with code {process.returncode}")
        try:
            return httpx.get(f"{url}/healthz", timeout=2).json()
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"the service did not answer {url}/healthz within {timeout:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load_test", description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", required=True)
    parser.add_argument("--checkpoint")
    parser.add_argument("--requests", type=int, default=256, help="requests per concurrency level")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per level at most")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    paths = json.loads(Path(args.index + ".meta.json").read_text())["paths"]
    images = [(p, Path(p).read_bytes()) for p in paths[:64]]
    port = free_port()
    url = f"http://{HOST}:{port}"
    command = [sys.executable, "-m", "udon_fast.serve", "--index", args.index, "--host", HOST, "--port", str(port)]
    process = subprocess.Popen(command + (["--checkpoint", args.checkpoint] if args.checkpoint else []))
    try:
        health = wait_healthy(url, process, 120)
        asyncio.run(load(url, images, 1, 8))  # warm-up, not reported
        levels = [asyncio.run(load(url, images, clients, args.requests, args.timeout)) for clients in args.clients]
        health = httpx.get(f"{url}/healthz", timeout=5).json()
    finally:
        process.terminate()
        process.wait(timeout=30)
    print(
        f"gallery of {health['gallery']} images; {health['batches']} embedding batches for {health['images']} "
        f"images in all (warm-up included)\n"
    )
    print("| clients | requests | p50 latency (ms) | p99 latency (ms) | throughput (requests/s) | errors |")
    print("|---|---|---|---|---|---|")
    for level in levels:
        print(
            f"| {level['clients']} | {level['requests']} | {level['p50_ms']:.1f} | {level['p99_ms']:.1f} | "
            f"{level['per_s']:.1f} | {len(level['errors'])} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"levels": levels, "health": health}, indent=1))
    failed = [e for level in levels for e in level["errors"]]
    for error in failed[:5]:
        print(f"error: {error}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
