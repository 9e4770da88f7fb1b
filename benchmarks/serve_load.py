"""Load on `cnnapps serve` over loopback: micro-batching against one request at a time, in one run.

For each server setting (``--max-batch 1`` and ``--max-batch 16 --max-wait-ms 5``) and each client count
(8 and 32), clients post scikit-image's photos to ``/v1/classify`` as fast as answers come back for a
bounded time; one request in ten is malformed (plain text, a truncated JPEG, wrong content type) and must
get a 4xx while the rest succeed. Reports throughput of good answers, p50/p99 latency, errors (anything
unexpected: a 5xx, a dropped connection, a malformed request that was not refused), and whether the
server still answers /healthz at the end.

    python benchmarks/serve_load.py [--seconds 15] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time

import cv2
import httpx
import numpy as np
from recording import record
from skimage import data

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")


def _jpegs() -> list[bytes]:
    return [cv2.imencode(".jpg", getattr(data, n)()[:, :, ::-1])[1].tobytes() for n in PHOTOS]


def _malformed(jpeg: bytes, n: int) -> dict:
    kinds = [
        {"files": {"image": ("x.jpg", b"this is not a picture", "image/jpeg")}},
        {"files": {"image": ("x.jpg", jpeg[: len(jpeg) // 4], "image/jpeg")}},
        {"content": jpeg, "headers": {"content-type": "image/jpeg"}},
    ]
    return kinds[n % len(kinds)]


async def _load(url: str, clients: int, seconds: float, jpegs: list[bytes]) -> dict:
    latencies: list[float] = []
    counts = {"ok": 0, "refused": 0, "errors": 0}
    stop = time.perf_counter() + seconds

    async def client(k: int, http: httpx.AsyncClient) -> None:
        n = k
        while time.perf_counter() < stop:
            n += 1
            bad = n % 10 == 0
            jpeg = jpegs[n % len(jpegs)]
            request = _malformed(jpeg, n // 10) if bad else {"files": {"image": ("p.jpg", jpeg, "image/jpeg")}}
            started = time.perf_counter()
            try:
                response = await http.post(f"{url}/v1/classify", **request)
            except httpx.HTTPError:
                counts["errors"] += 1
                continue
            if bad:
                counts["refused" if 400 <= response.status_code < 500 else "errors"] += 1
            elif response.status_code == 200:
                counts["ok"] += 1
                latencies.append(time.perf_counter() - started)
            else:
                counts["errors"] += 1

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(k, http) for k in range(clients)))
        elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {**counts, "rps": counts["ok"] / elapsed, "p50": float(np.percentile(ms, 50)),
            "p99": float(np.percentile(ms, 99))}  # fmt: skip


def _serve(max_batch: int, max_wait_ms: float, engine: str = "auto") -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [sys.executable, "-m", "cnnapps", "serve", "--port", str(port), "--max-batch", str(max_batch),
            "--max-wait-ms", str(max_wait_ms), "--engine", engine]  # fmt: skip
    server = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return server, url
        except httpx.HTTPError:
            time.sleep(0.1)
    server.kill()
    raise RuntimeError(f"the server did not start: {server.stderr.read()[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0, help="load per setting and client count")
    parser.add_argument("--clients", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--write", action="store_true", help="record in benchmarks/RESULTS.md")
    args = parser.parse_args()
    jpegs = _jpegs()
    settings = {"one at a time (--max-batch 1)": (1, 0.0), "micro-batching (--max-batch 16 --max-wait-ms 5)": (16, 5.0)}
    rows, rps = [], {}
    for label, (max_batch, wait) in settings.items():
        server, url = _serve(max_batch, wait)
        try:
            asyncio.run(_load(url, 4, 2.0, jpegs))  # warm the connection pool and caches
            for clients in args.clients:
                r = asyncio.run(_load(url, clients, args.seconds, jpegs))
                alive = httpx.get(f"{url}/healthz", timeout=10).status_code == 200
                rps[(max_batch, clients)] = r["rps"]
                rows.append(f"| {label} | {clients} | {r['rps']:.1f} | {r['p50']:.0f} | {r['p99']:.0f} | "
                            f"{r['errors']} | {r['refused']} | {'yes' if alive else 'NO'} |")  # fmt: skip
        finally:
            server.terminate()
            server.wait(timeout=30)
    ratios = ", ".join(f"{c} clients {rps[(16, c)] / rps[(1, c)]:.2f}x" for c in args.clients)
    body = (
        "## HTTP service under load (benchmarks/serve_load.py)\n\n"
        f"`cnnapps serve` with the bundled EfficientNet-Lite0 on loopback, {os.cpu_count()} CPU cores shared by "
        f"server and clients, no GPU; clients post 4 scikit-image photos (JPEG) to `/v1/classify` for "
        f"{args.seconds:.0f} s per row, one request in ten malformed (text, a truncated JPEG, a wrong content "
        "type). Throughput counts good answers; errors are 5xx, dropped connections or malformed requests "
        "not refused; refused are the malformed ones answered 4xx.\n\n"
        "| server | clients | answers/s | p50 ms | p99 ms | errors | refused | alive after |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n" + "\n".join(rows) + "\n\n"
        f"Micro-batching over one at a time: {ratios}.\n"
    )
    record("HTTP service under load (benchmarks/serve_load.py)", body, args.write)


if __name__ == "__main__":
    main()
