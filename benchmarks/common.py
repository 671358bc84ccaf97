"""Shared helpers for the benchmarks: the real 2B shapes, timing with medians, peak memory of
child processes, machine facts, table printing and JSON output.

Every benchmark prints a table and writes a JSON document with the same top-level layout:
`{"benchmark", "command", "machine", "settings", "results", "notes", "wall_seconds"}`.
Numbers are medians over repeats; the raw per-repeat values are kept in the JSON.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlx_plamo3.io import atomic_write_json
from train.batches import Example

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REPORT_DIR = Path("artifacts") / "reports"

# --------------------------------------------------------------------------------------------
# The real pfnet/plamo-3-nict-2b-base shapes: the one place the benchmarks take them from.
#
# No checkpoint was downloaded; public sources read with the search tools:
#   [shards]     The checkpoint's own file sizes, from Hugging Face download bars stored in the
#                notebook shu65/plamo-3-inference plamo_3_hf_inference_example.ipynb: five bf16
#                shards of 880,809,608 / 2,044,726,424 / 1,730,153,144 / 550,502,536 / 524,568
#                bytes. Each is whole tensors plus a small JSON header, and only one set of shapes
#                splits them cleanly: shard 4 = one [107520, 2560] tensor (the embedding; no
#                lm_head anywhere, so tied), shard 1 = 24 x (qkv [4096, 2560] + o [2560, 3072])
#                (so 24 query heads of 128), shards 2 and 3 = 13 and 11 x (gate_up [20480, 2560]
#                + down [2560, 10240]), shard 5 = the 145 norms. Total 2,603,344,384 parameters.
#   [mesh-llm]   A family support matrix naming mmnga-o/plamo-3-nict-2b-base-gguf: 24 layers,
#                "activation width 2560" (the GGUF's hidden size).
#   [llama.cpp]  ggml-org/llama.cpp src/models/plamo3.cpp: 24 layers is the "2B" layer count;
#                sliding-window pattern read from the GGUF, default period 8.
#   [openvino]   Intel's OpenVINO PLaMo-3 sample for pfnet/plamo-3-nict-2b-base: a KV cache of
#                24 layers shaped [1, 4 KV heads, seq, head_dim 128]; max_position_embeddings
#                4096, window_size 2048.
#   [vllm/sglang] Plamo3Config of the family: rms eps 1e-6, rope_theta 1e6, rope_local_theta
#                1e4, sliding_window_pattern 8 (defaults, not read from the 2B's config.json).
# --------------------------------------------------------------------------------------------
REAL_2B_CONFIG: dict[str, Any] = {
    "architectures": ["Plamo3ForCausalLM"],
    "model_type": "plamo3",
    "num_hidden_layers": 24,  # [shards] + [llama.cpp] + [openvino] + [mesh-llm]
    "hidden_size": 2560,  # [shards] + [mesh-llm]
    "num_attention_heads": 24,  # [shards] (query width 3072, not hidden_size)
    "num_key_value_heads": 4,  # [shards] + [openvino]
    "head_dim": 128,  # [shards] + [openvino]
    "intermediate_size": 10240,  # [shards]
    "vocab_size": 107_520,  # [shards]
    "tie_word_embeddings": True,  # [shards]
    "window_size": 2048,  # [openvino]
    "max_position_embeddings": 4096,  # [openvino]
    "sliding_window_pattern": 8,  # [llama.cpp] default period + [vllm/sglang]
    "rms_norm_eps": 1e-6,  # [vllm/sglang] default
    "rope_theta": 1_000_000.0,  # [vllm/sglang] default
    "rope_local_theta": 10_000.0,  # [vllm/sglang] default
    "rope_scaling_factor": 1.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 3,
    "torch_dtype": "bfloat16",
}
# The checkpoint's five shard sizes in bytes (see [shards]); tests check the shapes above against
# them, header bytes aside.
REAL_2B_SHARD_BYTES = (880_809_608, 2_044_726_424, 1_730_153_144, 550_502_536, 524_568)
REAL_2B_SOURCES = {
    "shards": "the checkpoint's safetensors shard sizes, from the Hugging Face download bars "
    "stored in shu65/plamo-3-inference plamo_3_hf_inference_example.ipynb",
    "mesh-llm": "a mesh-llm family support matrix: mmnga-o/plamo-3-nict-2b-base-gguf, 24 "
    "layers, activation width 2560",
    "llama.cpp": "ggml-org/llama.cpp src/models/plamo3.cpp, llama_model_plamo3::load_arch_hparams"
    " (24 layers -> LLM_TYPE_2B)",
    "openvino": "Intel OpenVINO PLaMo-3 sample for pfnet/plamo-3-nict-2b-base, README.md and "
    "convert_to_ov.py (24 layers, 4 KV heads, head_dim 128, window 2048, context 4096)",
    "vllm/sglang": "Plamo3Config defaults of the family (norm eps, RoPE bases, window pattern)",
}


# The same architecture scaled down (4-bit-quantizable widths, a vocabulary that holds the
# tiny test tokenizer), so every benchmark runs end to end in seconds; the test suite does.
SMALL_OVERRIDES: dict[str, Any] = {
    "num_hidden_layers": 2,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "window_size": 64,
    "max_position_embeddings": 1024,
    "sliding_window_pattern": 2,
    "hidden_size": 128,
    "num_attention_heads": 6,  # query width 192 != hidden_size, as in the real shape
    "intermediate_size": 256,
    "vocab_size": 1024,
}
SHAPES = {"real": {}, "small": SMALL_OVERRIDES}


def real_config(layers: int | None = None, shape: str = "real", **overrides: Any) -> dict[str, Any]:
    """The real 2B config (or the small smoke-test shape), optionally with fewer layers or
    other overrides."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose from {sorted(SHAPES)}")
    config = {**REAL_2B_CONFIG, **SHAPES[shape]}
    if layers is not None:
        config["num_hidden_layers"] = layers
    config.update(overrides)
    return config


def v2_length_mix_steps(
    n_steps: int, seed: int = 0, vocab: int | None = None
) -> list[list[Example]]:
    """Optimizer steps of eight examples of 300-610 tokens with 30-79 supervised targets
    (seeded), the length mix of the study's v2 data. Ids are 0, 1, 2, ... unless `vocab` is
    given, then random ids drawn apart from the lengths, so the lengths never depend on it."""
    import numpy as np

    lengths = np.random.default_rng(seed)
    ids = np.random.default_rng(seed + 1)
    steps = []
    for step in range(n_steps):
        examples = []
        for slot, length in enumerate(lengths.integers(300, 611, 8)):
            supervised = int(lengths.integers(30, 80))
            mask = tuple([False] * (int(length) + 1 - supervised) + [True] * supervised)
            tokens = (
                tuple(range(int(length) + 1))
                if vocab is None
                else tuple(int(i) for i in ids.integers(4, vocab, int(length) + 1))
            )
            examples.append(Example(step * 8 + slot, tokens, mask))
        steps.append(examples)
    return steps


def shape_label(config: dict[str, Any], shape: str) -> str:
    """How a table title names the model: the 2B width, or the small smoke-test shape."""
    name = "2B width" if shape == "real" else f"small shape (width {config['hidden_size']})"
    return f"{name}, {config['num_hidden_layers']} layer(s)"


def add_shape_arg(parser) -> None:
    parser.add_argument(
        "--shape",
        choices=sorted(SHAPES),
        default="real",
        help="real: the 2B shapes above; small: the same architecture scaled down, for a "
        "quick check that the benchmark runs (its numbers mean nothing)",
    )


def param_count(config: dict[str, Any]) -> dict[str, int]:
    """Parameters of a PLaMo 3 config by part (tied embeddings counted once)."""
    hidden, inter, head_dim = config["hidden_size"], config["intermediate_size"], config["head_dim"]
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    qkv = hidden * (heads + 2 * kv_heads) * head_dim
    o_proj = heads * head_dim * hidden
    mlp = hidden * 2 * inter + inter * hidden
    norms = 4 * hidden + 2 * head_dim
    per_layer = qkv + o_proj + mlp + norms
    embed = config["vocab_size"] * hidden
    lm_head = 0 if config.get("tie_word_embeddings", True) else embed
    total = embed + lm_head + config["num_hidden_layers"] * per_layer + hidden
    return {"embedding": embed, "per_layer": per_layer, "lm_head": lm_head, "total": total}


def lora_param_count(config: dict[str, Any], r: int = 16) -> int:
    """LoRA parameters with rank r on all four linear layers of every layer."""
    hidden, inter, head_dim = config["hidden_size"], config["intermediate_size"], config["head_dim"]
    q_dim = config["num_attention_heads"] * head_dim
    kv_dim = config["num_key_value_heads"] * head_dim
    shapes = [
        (hidden, q_dim + 2 * kv_dim),
        (q_dim, hidden),
        (hidden, 2 * inter),
        (inter, hidden),
    ]
    return config["num_hidden_layers"] * sum(r * (i + o) for i, o in shapes)


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def summary(values: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and the raw values (seconds, bytes, whatever was measured)."""
    values = [float(v) for v in values]
    return {
        "median": median(values),
        "min": min(values) if values else None,
        "max": max(values) if values else None,
        "values": values,
    }


def time_calls(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    """Wall seconds of `repeats` calls of fn after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def fit_over_depth(values_by_depth: Mapping[int, float]) -> tuple[float, float]:
    """(fixed, per layer): the least-squares line of a measurement (seconds, bytes) over depth,
    for predicting a depth too slow to run from shallower ones."""
    depths = sorted(values_by_depth)
    if len(depths) < 2:
        raise ValueError("a fit over depth needs at least two depths")
    mean_d = sum(depths) / len(depths)
    mean_v = sum(values_by_depth[d] for d in depths) / len(depths)
    slope = sum((d - mean_d) * (values_by_depth[d] - mean_v) for d in depths) / sum(
        (d - mean_d) ** 2 for d in depths
    )
    return mean_v - slope * mean_d, slope


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("nan")


# --------------------------------------------------------------------------------------------
# Child processes: wall time and peak resident memory
# --------------------------------------------------------------------------------------------


def _maxrss_bytes(ru_maxrss: int) -> int:
    # Linux reports kilobytes, macOS bytes.
    return int(ru_maxrss) if sys.platform == "darwin" else int(ru_maxrss) * 1024


@dataclass
class ChildResult:
    command: list[str]
    returncode: int
    seconds: float
    # The child's own peak RSS: its VmHWM polled from /proc on Linux (wait4's maxrss there
    # also counts the parent's memory at fork time), else wait4's maxrss (macOS).
    peak_rss_bytes: int
    peak_tree_rss_bytes: int  # max over time of the summed RSS of the child and its children
    output: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _vm_hwm_bytes(pid: int) -> int | None:
    """The kernel's high-water mark of a process's resident memory (Linux /proc), in bytes."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _poll_memory(pid: int, stop: threading.Event, peaks: dict[str, int], interval: float) -> None:
    """Track the child's VmHWM (Linux) and the summed RSS of its process tree (psutil)."""
    try:
        import psutil

        root = psutil.Process(pid)
    except (ImportError, Exception):
        root = None
    while not stop.is_set():
        hwm = _vm_hwm_bytes(pid)
        if hwm is not None:
            peaks["hwm"] = max(peaks["hwm"], hwm)
        if root is not None:
            total = 0
            try:
                procs = [root, *root.children(recursive=True)]
            except Exception:
                procs = []
            for proc in procs:
                with contextlib.suppress(Exception):
                    total += proc.memory_info().rss
            peaks["tree"] = max(peaks["tree"], total)
        stop.wait(interval)


def run_child(
    command: Sequence[str],
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float | None = None,
    poll_interval: float = 0.05,
) -> ChildResult:
    """Run a command to completion; its wall time and peak RSS (VmHWM or wait4, and psutil).

    On Linux VmHWM is polled every `poll_interval` seconds; being a high-water mark, it is exact
    once the child lives one interval past its peak (benchmark children live seconds longer).

    stdout and stderr are captured to a temporary file (not a pipe, so a chatty child cannot
    block) and returned as text."""
    import tempfile

    full_env = {**os.environ, **(env or {})}
    with tempfile.TemporaryFile(mode="w+b") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(
            list(command), cwd=cwd or REPO_ROOT, env=full_env, stdout=log, stderr=log
        )
        stop, peaks = threading.Event(), {"hwm": 0, "tree": 0}
        poller = threading.Thread(
            target=_poll_memory, args=(proc.pid, stop, peaks, poll_interval), daemon=True
        )
        poller.start()
        deadline = None if timeout is None else start + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                break
            if deadline is not None and time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.01)
        seconds = time.perf_counter() - start
        stop.set()
        poller.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        output = log.read().decode("utf-8", "replace")
    return ChildResult(
        command=list(command),
        returncode=proc.returncode,
        seconds=seconds,
        peak_rss_bytes=peaks["hwm"] or _maxrss_bytes(usage.ru_maxrss),
        peak_tree_rss_bytes=peaks["tree"],
        output=output,
    )


def python_command(*args: str) -> list[str]:
    """`python <args>` with this interpreter."""
    return [sys.executable, *args]


def parse_result_line(output: str, tag: str = "BENCH_RESULT") -> dict[str, Any]:
    """The JSON a worker child printed on a line starting with `tag`."""
    for line in reversed(output.splitlines()):
        if line.startswith(tag + " "):
            return json.loads(line[len(tag) + 1 :])
    raise RuntimeError(f"the child printed no {tag} line; its output ends with:\n{output[-3000:]}")


def emit_result(doc: dict[str, Any], tag: str = "BENCH_RESULT") -> None:
    """What a worker child prints for its parent (one line of JSON)."""
    print(f"{tag} {json.dumps(doc)}", flush=True)


def own_peak_rss_bytes() -> int:
    """This process's peak RSS: VmHWM on Linux (resettable), else getrusage's maxrss."""
    hwm = _vm_hwm_bytes(os.getpid())
    if hwm is not None:
        return hwm
    import resource

    return _maxrss_bytes(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def reset_own_peak_rss() -> bool:
    """Restart this process's RSS high-water mark (Linux: clear_refs 5); False if unsupported."""
    try:
        Path(f"/proc/{os.getpid()}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# Devices and machine facts
# --------------------------------------------------------------------------------------------


def mlx_device() -> str:
    """MLX's default device (Metal GPU on Apple silicon, CUDA where built, else CPU)."""
    import mlx.core as mx

    return str(mx.default_device())


def torch_device() -> str:
    """cuda, then mps, then cpu."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _cpu_model() -> str:
    if sys.platform == "darwin":
        try:
            return subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _total_ram_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _version(module: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """What a reader needs to compare numbers across machines."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "ram_bytes": _total_ram_bytes(),
        "python": platform.python_version(),
        "mlx": _version("mlx"),
        "mlx_lm": _version("mlx-lm"),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "peft": _version("peft"),
        "ld_preload": os.environ.get("LD_PRELOAD", ""),
    }
    try:
        info["mlx_device"] = mlx_device()
    except ImportError:
        info["mlx_device"] = None
    return info


def blas_note() -> str:
    preload = os.environ.get("LD_PRELOAD", "")
    if "openblas" in preload.lower():
        return "OpenBLAS preloaded (LD_PRELOAD)"
    return "default BLAS of the mlx wheel"


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def gib(nbytes: float | None) -> str:
    return "-" if nbytes is None else f"{nbytes / 2**30:.2f}"


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> str:
    """A Markdown table on stdout (and returned), so it pastes into BENCHMARKS.md as is."""
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = []
    if title:
        lines += [title, ""]
    lines.append("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        lines.append("| " + " | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + " |")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def command_line() -> str:
    """How this process was started (with `-m module` when it was), for the report."""
    argv = list(getattr(sys, "orig_argv", [])) or [sys.executable, *sys.argv]
    argv[0] = Path(argv[0]).name
    return " ".join(shlex.quote(a) for a in argv)


def write_report(
    out: Path | None,
    name: str,
    settings: dict[str, Any],
    results: Any,
    notes: Sequence[str] = (),
    started: float | None = None,
) -> Path:
    """Write the benchmark's JSON document (default artifacts/reports/<name>.json)."""
    path = out or DEFAULT_REPORT_DIR / f"{name}.json"
    doc = {
        "benchmark": name,
        "command": command_line(),
        "machine": machine_info(),
        "settings": settings,
        "results": results,
        "notes": list(notes),
        "wall_seconds": None if started is None else time.perf_counter() - started,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_json(path, doc)
    print(f"wrote {path}", flush=True)
    return path


def add_common_args(parser, name: str, repeats: int | None, work_dir: bool = True) -> None:
    """--out; --repeats unless `repeats` is None; --work-dir where big inputs are written."""
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"JSON results file [default: {DEFAULT_REPORT_DIR / (name + '.json')}]",
    )
    if repeats is not None:
        parser.add_argument("--repeats", type=int, default=repeats, help="timed repeats per case")
    if work_dir:
        parser.add_argument(
            "--work-dir",
            type=Path,
            default=None,
            help="where big inputs go (kept); default a temporary directory, removed at the end",
        )


class WorkDir:
    """`--work-dir` if given (kept), else a temporary directory removed on exit."""

    def __init__(self, path: Path | None, prefix: str):
        self.given = path
        self.prefix = prefix
        self._tmp = None

    def __enter__(self) -> Path:
        if self.given is not None:
            self.given.mkdir(parents=True, exist_ok=True)
            return self.given
        import tempfile

        self._tmp = tempfile.TemporaryDirectory(prefix=self.prefix)
        return Path(self._tmp.name)

    def __exit__(self, *exc: object) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
