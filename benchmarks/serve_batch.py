"""Answers/s of `cnnapps serve` when each request carries several images, against one image per request.

One server (the bundled EfficientNet-Lite0, micro-batching ``--max-batch 16 --max-wait-ms 5``), the same number
of clients both ways, each posting scikit-image's photos to ``/v1/classify`` as fast as answers come back:
either one image per request or ``--images`` images per request (repeated multipart ``images`` fields). The
answers/s count images answered (every one checked to be a 200 with predictions); the two ways alternate
(``--repeats``), best of each.

    python benchmarks/serve_batch.py [--clients 1 4] [--images 8] [--seconds 15] [--engine auto] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

import httpx
from recording import record
from serve_load import _jpegs, _serve


async def _load(url: str, clients: int, per_request: int, seconds: float, jpegs: list[bytes]) -> dict:
    counts = {"images": 0, "requests": 0, "errors": 0}
    stop = time.perf_counter() + seconds

    async def client(k: int, http: httpx.AsyncClient) -> None:
        n = k
        while time.perf_counter() < stop:
            batch = [jpegs[(n + i) % len(jpegs)] for i in range(per_request)]
            n += per_request
            field = "image" if per_request == 1 else "images"
            files = [(field, (f"p{i}.jpg", jpeg, "image/jpeg")) for i, jpeg in enumerate(batch)]
            try:
                response = await http.post(f"{url}/v1/classify", files=files)
            except httpx.HTTPError:
                counts["errors"] += 1
                continue
            if response.status_code != 200:
                counts["errors"] += 1
                continue
            answers = response.json()
            answers = answers if isinstance(answers, list) else [answers]
            good = [a for a in answers if a.get("predictions")]
            counts["images"] += len(good)
            counts["errors"] += per_request - len(good)
            counts["requests"] += 1

    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=clients)) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(k, http) for k in range(clients)))
        elapsed = time.perf_counter() - started
    return {**counts, "answers_per_s": counts["images"] / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4], help="concurrent clients, both ways [1 4]")
    parser.add_argument("--images", type=int, default=8, help="images per request in the batched way [8]")
    parser.add_argument("--seconds", type=float, default=15.0, help="load per row [15]")
    parser.add_argument("--repeats", type=int, default=2, help="alternations of the two ways; best of each [2]")
    parser.add_argument("--engine", default="auto", help="the server's --engine [auto]")
    parser.add_argument("--write", action="store_true", help="record in benchmarks/RESULTS.md")
    args = parser.parse_args()
    jpegs = _jpegs()
    server, url = _serve(16, 5.0, args.engine)
    best: dict[tuple[int, int], dict] = {}
    try:
        asyncio.run(_load(url, 2, 1, 2.0, jpegs))  # warm the connection pool and caches
        for _ in range(args.repeats):
            for clients in args.clients:
                for per_request in (1, args.images):
                    r = asyncio.run(_load(url, clients, per_request, args.seconds, jpegs))
                    print(f"{clients} clients, {per_request} image(s) per request: {r['answers_per_s']:.1f} answers/s, "
                          f"{r['errors']} errors")  # fmt: skip
                    key = (clients, per_request)
                    if key not in best or r["answers_per_s"] > best[key]["answers_per_s"]:
                        best[key] = r
    finally:
        server.terminate()
        server.wait(timeout=60)
    rows = [
        f"| {c} | {n} | {best[(c, n)]['answers_per_s']:.1f} | {best[(c, n)]['requests']} | {best[(c, n)]['errors']} |"
        for c in args.clients
        for n in (1, args.images)
    ]
    ratios = ", ".join(
        f"{c} client{'s' if c > 1 else ''}: "
        f"{best[(c, args.images)]['answers_per_s'] / best[(c, 1)]['answers_per_s']:.2f}x"
        for c in args.clients
    )
    body = (
        "## HTTP service: several images per request (benchmarks/serve_batch.py)\n\n"
        f"`cnnapps serve --max-batch 16 --max-wait-ms 5{'' if args.engine == 'auto' else ' --engine ' + args.engine}` "
        "with the bundled EfficientNet-Lite0 on loopback, "
        f"{os.cpu_count()} CPU cores shared by server and clients, no GPU; clients post scikit-image photos (JPEG) "
        f"to `/v1/classify` for {args.seconds:.0f} s per row, best of {args.repeats}, the ways alternating.\n\n"
        "| clients | images per request | answers/s | requests | errors |\n| ---: | ---: | ---: | ---: | ---: |\n"
        + "\n".join(rows)
        + f"\n\n{args.images} images per request over one image per request, in images answered per second: {ratios}.\n"
    )
    record("HTTP service: several images per request (benchmarks/serve_batch.py)", body, args.write)


if __name__ == "__main__":
    main()
