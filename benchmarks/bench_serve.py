"""Serving throughput: requests/s and generated tokens/s of `mlx-plamo serve` at 1, 4 and 8
concurrent clients, batched (--max-batch 8) against sequential (--max-batch 1), beside
`mlx_lm.server` on the same converted model.

Run from the repository root:
    python -m benchmarks.bench_serve [--models tiny,real] [--layers 2] [--clients 1,4,8]

Models (random weights, written as a Hugging Face checkpoint and converted by `python -m
convert`, so both servers load the same directory; throughput does not depend on the values):
- tiny: the test checkpoint (convert/tiny.py), 4 layers of width 64.
- real: the real 2B width (benchmarks/common.py) with --layers layers; the tiny tokenizer's
  vocabulary is padded with unused pieces to the model's 107,520 rows, so every id decodes.

Each server runs as a child process on 127.0.0.1. Per case, `clients` threads of the official
openai client each send --requests chat requests one after another (a closed loop), greedy, with
max_tokens --max-tokens; every request's question is distinct (no prompt-cache hits). Measured:
wall time from the first request to the last reply, requests/s, generated tokens/s (the
servers' own usage counts) and the median request latency. One untimed request warms each
server up. "same replies" compares each reply's text with what the sequential server answered
to the same question (greedy decoding must not depend on the batch).
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    WorkDir,
    add_common_args,
    add_shape_arg,
    blas_note,
    median,
    mlx_device,
    print_table,
    python_command,
    ratio,
    real_config,
    shape_label,
    write_report,
)
from convert.convert import convert_checkpoint
from convert.tiny import TINY_CONFIG, tiny_weights
from convert.tiny_vocab import write_tiny_tokenizer
from mlx_plamo3.loading import DTYPES
from mlx_plamo3.tokenizer import VOCAB_FILE

NAME = "bench_serve"
SERVERS = {
    "ours-batched": ["--max-batch", "8"],
    "ours-sequential": ["--max-batch", "1"],
    "mlx_lm.server": [],
}
SEQUENTIAL = "ours-sequential"


def write_model(hf_dir: Path, mlx_dir: Path, config: dict[str, Any], dtype: str) -> None:
    """A random checkpoint of `config` with the tiny tokenizer (padded with unused pieces to
    the model's vocabulary), converted to `mlx_dir`."""
    hf_dir.mkdir(parents=True, exist_ok=True)
    rows = write_tiny_tokenizer(hf_dir)
    vocab = config.get("vocab_size") or rows
    if vocab < rows:
        raise SystemExit(f"vocab_size {vocab} is smaller than the tiny tokenizer's {rows}")
    with (hf_dir / VOCAB_FILE).open("a") as vocab_file:
        for token_id in range(rows, vocab):
            vocab_file.write(json.dumps([f"<|plamo:unused_{token_id}|>", 0.0, "UNUSED"]) + "\n")
    config = {**config, "vocab_size": vocab, "torch_dtype": "float32"}
    from safetensors.numpy import save_file

    save_file(tiny_weights(config, seed=0), str(hf_dir / "model.safetensors"), {"format": "pt"})
    (hf_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    convert_checkpoint(hf_dir, mlx_dir, dtype=dtype, progress=lambda x, **_: x)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """A server child on a free local port, stopped on exit; its output goes to a temp file."""

    def __init__(self, name: str, model_dir: Path, max_clients: int):
        self.port = free_port()
        where = ["--model", str(model_dir), "--host", "127.0.0.1", "--port", str(self.port)]
        if name == "mlx_lm.server":
            concurrency = ["--decode-concurrency", str(max_clients)]
            concurrency += ["--prompt-concurrency", str(max_clients)]
            self.command = python_command("-m", "mlx_lm", "server", *where, *concurrency)
        else:
            queue = ["--max-queue", str(max_clients)]
            self.command = python_command("-m", "commands", "serve", *where, *SERVERS[name])
            self.command += queue
        self.model_name = model_dir.name if name != "mlx_lm.server" else str(model_dir)
        self.log = tempfile.TemporaryFile(mode="w+b")  # noqa: SIM115 (closed in __exit__)
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> ServerProcess:
        self.process = subprocess.Popen(self.command, stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 300
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.command} exited:\n{self.output()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.command} did not start") from None
                time.sleep(0.2)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def question(client: int, request: int) -> str:
    return f"Client {client} asks question {request}: what is the weather in Osaka today?"


def run_case(server: ServerProcess, clients: int, requests: int, max_tokens: int) -> dict:
    """`clients` threads, each sending `requests` greedy requests in turn; the timings and
    every reply (text, completion tokens) by (client, request)."""
    import openai

    url = f"http://127.0.0.1:{server.port}/v1"
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=3600)

    def ask(text: str) -> tuple[str, int]:
        reply = client.chat.completions.create(
            model=server.model_name,
            messages=[{"role": "user", "content": text}],
            max_tokens=max_tokens,
            temperature=0,
        )
        return reply.choices[0].message.content or "", reply.usage.completion_tokens

    replies: dict[tuple[int, int], tuple[str, int]] = {}
    latencies: list[float] = []
    errors: list[str] = []

    def client_loop(index: int) -> None:
        for request in range(requests):
            start = time.perf_counter()
            try:
                replies[index, request] = ask(question(index, request))
            except Exception as exc:  # reported, not fatal: the table shows the failures
                errors.append(f"{type(exc).__name__}: {exc}")
            latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    tokens = sum(count for _, count in replies.values())
    return {
        "clients": clients,
        "requests": len(replies),
        "errors": errors[:5],
        "seconds": seconds,
        "requests_per_second": len(replies) / seconds,
        "generated_tokens": tokens,
        "tokens_per_second": tokens / seconds,
        "median_latency_seconds": median(latencies),
        "replies": {f"{c},{r}": reply for (c, r), reply in sorted(replies.items())},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser, NAME, repeats=None)
    add_shape_arg(parser)
    parser.add_argument("--models", default="tiny,real", help="comma-separated: tiny, real")
    parser.add_argument("--layers", type=int, default=2, help="layers of the real-width model")
    parser.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default="bfloat16",
        help="dtype the checkpoints are converted to [%(default)s]",
    )
    parser.add_argument("--clients", default="1,4,8", help="comma-separated concurrent clients")
    parser.add_argument("--requests", type=int, default=2, help="requests each client sends")
    parser.add_argument("--max-tokens", type=int, default=32, help="max_tokens of each request")
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated servers")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    clients = [int(c) for c in args.clients.split(",")]
    servers = args.servers.split(",")
    unknown = sorted(set(servers) - set(SERVERS))
    if unknown:
        raise SystemExit(f"unknown servers {unknown}; choose from {sorted(SERVERS)}")
    print(f"device: {mlx_device()}, dtype {args.dtype}, {blas_note()}")

    results: list[dict[str, Any]] = []
    rows = []
    with WorkDir(args.work_dir, "bench_serve_") as work:
        for model_name in args.models.split(","):
            if model_name == "tiny":
                config, label = dict(TINY_CONFIG), "tiny (4 x 64)"
            elif model_name == "real":
                config = real_config(args.layers, args.shape)
                label = shape_label(config, args.shape)
            else:
                raise SystemExit(f"unknown model {model_name!r}")
            model_dir = work / model_name / "mlx"
            if not (model_dir / "config.json").exists():
                write_model(work / model_name / "hf", model_dir, config, args.dtype)
            by_server: dict[str, dict[int, dict]] = {}
            for server_name in servers:
                by_server[server_name] = {}
                try:
                    with ServerProcess(server_name, model_dir, max(clients)) as server:
                        run_case(server, 1, 1, args.max_tokens)  # warm-up
                        for count in clients:
                            case = run_case(server, count, args.requests, args.max_tokens)
                            by_server[server_name][count] = case
                            print(f"done: {label}, {server_name}, {count} clients", flush=True)
                except RuntimeError as exc:  # a server that cannot run here is reported
                    print(f"{server_name} failed: {exc}", flush=True)
                    results.append({"model": model_name, "server": server_name, "error": str(exc)})
            for server_name, cases in by_server.items():
                for count, case in cases.items():
                    sequential = by_server.get(SEQUENTIAL, {}).get(count)
                    same = None
                    if sequential is not None:
                        same = all(
                            sequential["replies"].get(key, [None])[0] == reply[0]
                            for key, reply in case["replies"].items()
                        )
                    results.append(
                        {"model": model_name, "label": label, "server": server_name, **case}
                        | {"same_replies_as_sequential": same}
                    )
                    base = sequential["requests_per_second"] if sequential else float("nan")
                    rows.append(
                        [
                            label,
                            server_name,
                            count,
                            case["requests"],
                            case["requests_per_second"],
                            case["tokens_per_second"],
                            case["median_latency_seconds"],
                            ratio(case["requests_per_second"], base),
                            "-" if same is None else ("yes" if same else "no"),
                        ]
                    )
    print()
    print_table(
        [
            "model",
            "server",
            "clients",
            "requests",
            "req/s",
            "gen tok/s",
            "median latency s",
            "vs sequential",
            "same replies",
        ],
        rows,
        title=f"Serving on {mlx_device()} ({args.dtype}, {blas_note()}; greedy, max_tokens "
        f"{args.max_tokens}, {args.requests} requests per client)",
    )
    write_report(
        args.out,
        NAME,
        {
            "models": args.models,
            "shape": args.shape,
            "layers": args.layers,
            "dtype": args.dtype,
            "clients": clients,
            "requests_per_client": args.requests,
            "max_tokens": args.max_tokens,
            "servers": {name: SERVERS[name] for name in servers},
            "device": mlx_device(),
            "blas": blas_note(),
        },
        {"runs": results},
        [
            "closed loop: each client sends its next request when the last reply came",
            "tokens/s counts the servers' own usage.completion_tokens; a random model may stop "
            "early at a stop token, so counts can differ between servers",
            "mlx_lm.server renders the same chat template with its own tokenizer wrapper and "
            "stops at its own end tokens",
        ],
        started,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
