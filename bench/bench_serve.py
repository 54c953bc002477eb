"""Requests/s of `zoo serve` with and without micro-batching, measured in one run.

    python bench/bench_serve.py                                    # rotnet_nin_fmnist, 8 clients
    python bench/bench_serve.py --model random:sela_resnet50 --clients 16 --requests 96

Builds an index of the shipped photos (`zoo extract MODEL` + `zoo index build`), starts three
`zoo serve` processes on loopback over it, one with `--max-batch 1` (every request its own engine
call), one with the defaults (`--max-batch 32 --batch-wait-ms 5`) and one with `--batch-wait-ms 0`
(only what is queued already is batched), then sends them the same load in alternating rounds, so that a burst of load from other processes hits both alike: CLIENTS
threads, each posting REQUESTS/CLIENTS photos (small JPEGs of the model's input size, so that the
engine rather than JPEG decoding is what is measured) to `POST /search?k=5` one after another.
The best round of each is kept. Prints the CPU (model name and the flags that matter for
inference), requests/s of each, their ratio and the mean batch the batched service logged.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def _cpu() -> str:
    name, flags = platform.processor(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return f"{name}; flags: {' '.join(f for f in FLAGS if f in flags) or 'none of ' + '/'.join(FLAGS)}"


def _zoo(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "zoo", *args], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(index: Path, log: Path, extra: list[str]) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "zoo", "serve", str(index), "--port", str(port), *extra],
                            cwd=ROOT, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            urllib.request.urlopen(base + "/health", timeout=5).read()
            return proc, base
        except OSError:
            if proc.poll() is not None:
                sys.exit(f"zoo serve exited: {log.read_text()}")
            time.sleep(0.2)
    sys.exit(f"zoo serve did not answer: {log.read_text()}")


def _post(base: str, image: bytes) -> None:
    request = urllib.request.Request(base + "/search?k=5", data=image, method="POST",
                                     headers={"Content-Type": "image/jpeg"})
    with urllib.request.urlopen(request, timeout=120) as r:
        json.loads(r.read())


def _round(base: str, images: list[bytes], clients: int, requests: int) -> float:
    """Requests/s of CLIENTS threads sending REQUESTS in all."""
    per_client = max(1, requests // clients)

    def client(c: int) -> None:
        for i in range(per_client):
            _post(base, images[(c + i) % len(images)])
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return clients * per_client / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="rotnet_nin_fmnist")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=64, help="per round and service")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="each service's --threads [default: its own]")
    args = parser.parse_args()

    from PIL import Image

    from zoo.photos import load_photos
    from zoo.registry import get_model_entry

    size = get_model_entry(args.model.removeprefix("random:")).input.size
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        (work / "photos").mkdir()
        images = []
        for name, photo in load_photos().items():
            buffer = io.BytesIO()
            Image.fromarray(photo).resize((size, size)).save(buffer, "JPEG", quality=90)
            (work / "photos" / f"{name}.jpg").write_bytes(buffer.getvalue())
            images.append(buffer.getvalue())
        _zoo("extract", args.model, str(work / "photos"), "-o", str(work / "emb"), "--no-progress")
        _zoo("index", "build", str(work / "emb"), "-o", str(work / "ix"))
        settings = {"max-batch 1": ["--max-batch", "1"], "micro-batched (defaults)": [],
                    "batch-wait-ms 0": ["--batch-wait-ms", "0"]}
        threads = ["--threads", str(args.threads)] if args.threads else []
        servers = {name: _start(work / "ix", work / f"{i}.log", extra + threads) for i, (name, extra) in enumerate(settings.items())}
        try:
            best = dict.fromkeys(settings, 0.0)
            for name, (_, base) in servers.items():  # warm-up
                _round(base, images, args.clients, args.clients)
            for _ in range(args.rounds):
                for name, (_, base) in servers.items():
                    best[name] = max(best[name], _round(base, images, args.clients, args.requests))
        finally:
            for proc, _ in servers.values():
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=120)
        batches = [int(b) for b in re.findall(r"\(batch of (\d+)\)", (work / "1.log").read_text())]
    command = " ".join(["python", "bench/bench_serve.py", *sys.argv[1:]])
    print(f"command: {command}\nCPU: {_cpu()}\nmodel {args.model}, {size}x{size} JPEG uploads, {args.clients} clients, "
          f"{args.requests} requests per round, best of {args.rounds} alternating rounds, "
          f"{args.threads or 'default'} engine threads")
    for name, rate in best.items():
        print(f"  {name:26s} {rate:8.1f} requests/s")
    unbatched = best["max-batch 1"]
    print("vs max-batch 1: " + ", ".join(f"{name} {rate / unbatched:.2f}x" for name, rate in best.items()
                                         if name != "max-batch 1")
          + f"; mean batch of the service with the defaults {sum(batches) / max(1, len(batches)):.1f} over "
          f"{len(batches)} searches")


if __name__ == "__main__":
    main()
