"""Load test of `dawnpipe serve` on loopback against calling Predictor in-process on the same images.

    python bench/serve.py ARTIFACT [--requests 400] [--concurrency 1,8,32] [--max-wait-ms 5] [--seconds 120]
                                   [--backend auto|onnxruntime|openvino|torch]

The server runs in its own process (as deployed); the load comes from this one: at each concurrency level a
fixed number of requests (one distinct test image each, PNG), bounded by --seconds. Every answer is checked
against the in-process Predictor's class for the image that request sent, so a lost request or an answer
delivered to the wrong sender is counted, not missed. Reported per level: requests/s, p50/p99 latency, the
mean images per model call (from the server's /metrics), errors and mismatches. The baseline is Predictor
called in this process one image at a time. Server and load generator share this machine's cores.
"""

from __future__ import annotations

import argparse
import io
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from bench.common import write_result  # noqa: E402
from dawnpipe.export.onnx_export import read_metadata  # noqa: E402
from dawnpipe.infer.predict import Predictor  # noqa: E402
from dawnpipe.train.data import load_cifar  # noqa: E402


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def _level(url: str, pngs: list[bytes], want: list[str], concurrency: int, seconds: float) -> dict:
    deadline = time.perf_counter() + seconds
    before = httpx.get(url + "/metrics").text
    clients = [httpx.Client(base_url=url, timeout=60) for _ in range(concurrency)]

    def ask(i: int) -> tuple[float, str | None]:
        if time.perf_counter() > deadline:
            return float("nan"), "skipped (time bound)"
        start = time.perf_counter()
        try:
            r = clients[i % concurrency].post(
                "/v1/predict?top_k=1", content=pngs[i], headers={"content-type": "image/png"}
            )
        except httpx.HTTPError as err:
            return time.perf_counter() - start, type(err).__name__
        if r.status_code != 200:
            return time.perf_counter() - start, f"HTTP {r.status_code}"
        got = r.json()["predictions"][0]["top"][0]["class"]
        return time.perf_counter() - start, None if got == want[i] else "mismatch"

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(ask, range(len(pngs))))
    wall = time.perf_counter() - started
    for client in clients:
        client.close()
    after = httpx.get(url + "/metrics").text
    done = np.array([s for s, e in results if e is None]) * 1000
    calls = _metric(after, "dawnpipe_batch_images_count") - _metric(before, "dawnpipe_batch_images_count")
    served = _metric(after, "dawnpipe_batch_images_sum") - _metric(before, "dawnpipe_batch_images_sum")
    problems = [e for _, e in results if e is not None]
    return {
        "concurrency": concurrency,
        "requests": len(pngs),
        "answered_correctly": int(len(done)),
        "problems": {p: problems.count(p) for p in set(problems)},
        "requests_per_s": len(done) / wall,
        "p50_ms": float(np.percentile(done, 50)) if len(done) else None,
        "p99_ms": float(np.percentile(done, 99)) if len(done) else None,
        "mean_images_per_model_call": served / calls if calls else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--max-wait-ms", type=float, default=0.0)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--backend", default="auto", help="the runtime the server and the baseline use")
    args = parser.parse_args()
    meta = read_metadata(args.artifact)
    images = load_cifar(meta["data"]["source"], trusted_sha256=meta["data"]["sha256"], test_limit=args.requests).test_x
    pngs = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    with Predictor(args.artifact, threads=args.threads, backend=args.backend) as predictor:
        described = predictor.backend.describe()
        want = [p.top[0][0] for p in predictor.predict_arrays(images)]
        single = []
        for i in range(len(images)):
            start = time.perf_counter()
            predictor.predict_arrays(images[i : i + 1])
            single.append(time.perf_counter() - start)
    baseline = np.array(single) * 1000
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "dawnpipe", "serve", str(args.artifact), "--port", str(port), "--threads",
         str(args.threads), "--max-wait-ms", str(args.max_wait_ms), "--max-batch", str(args.max_batch),
         "--backend", args.backend],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        levels = [_level(url, pngs, want, int(c), args.seconds) for c in args.concurrency.split(",")]
    finally:
        server.terminate()
        server.wait(timeout=60)
    write_result(
        f"serve-{described['backend']}-{described['precision']}-wait{args.max_wait_ms:g}ms",
        {
            "artifact": str(args.artifact),
            "backend": described["backend"],
            "precision": described["precision"],
            "openvino": described.get("openvino"),
            "max_wait_ms": args.max_wait_ms,
            "max_batch": args.max_batch,
            "threads": args.threads,
            "in_process_predictor_batch1": {
                "requests_per_s": len(baseline) / (baseline.sum() / 1000),
                "p50_ms": float(np.percentile(baseline, 50)),
                "p99_ms": float(np.percentile(baseline, 99)),
            },
            "levels": levels,
            "server_exit_code": server.returncode,
        },
    )


if __name__ == "__main__":
    main()
