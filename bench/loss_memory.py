"""Peak memory and time of the distillation loss step: plain vs chunked vs fused.

    python -m bench.loss_memory            # full: 2,048 tokens x vocab 128,256 (about 2 min 45 s on 2 cores)
    python -m bench.loss_memory --quick    # small sizes, about 6 s

The "loss step" is forward + backward of the loss only, starting from tensors that already exist:

* scenario ``logits`` (given student logits [N, V] and teacher logits [N, V]):
  ``plain`` = :class:`~litdistill.losses.ForwardKL`, ``chunked`` = :class:`~litdistill.losses.ChunkedDivergence`.
* scenario ``hidden`` (given student hidden states [N, H], the LM-head weight [V, H] and teacher
  logits [N, V]): ``plain`` and ``chunked`` first compute ``logits = h @ W.T`` (and back-propagate
  through it), ``fused`` = :class:`~litdistill.losses.FusedLinearKD` never builds them.

Each measurement runs in a fresh process (one step, after a tiny warm-up of the same code so
library code pages and thread pools are already resident). Memory: the kernel's peak-RSS counter
``VmHWM`` is reset after the inputs exist (``echo 5 > /proc/self/clear_refs``) and read after the
step; "added peak" = VmHWM - RSS before the step, i.e. what the loss step adds on top of its
inputs, including the gradients it produces. Where ``clear_refs`` is not writable the fallback is
``ru_maxrss`` minus the RSS before the step (inputs are created without temporaries so the
earlier high-water mark is the inputs themselves). torch CPU allocations are invisible to
tracemalloc, hence RSS. glibc's mmap threshold is fixed at 128 KiB in each measuring process so
freed blocks go back to the OS and RSS tracks live tensor bytes. Repetitions are interleaved (rep 1
of every variant, then rep 2, ...) and medians reported, with the target (chunked/fused: added
peak <= 1/5 of plain at <= 1.2x its time) evaluated at the full size. ``--dtype bfloat16`` makes
every input bf16. Results: ``bench/results/loss_memory[_quick][_bfloat16].json`` and, in full mode,
the matching ``.md`` table.

Fresh processes are forked from the command-line process (torch imported, no torch thread pool
started yet). ``main(argv)`` called from another Python process (e.g. ``python -m bench``), which
may already have run torch and so must not fork, runs the command line in one fresh interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import cpu_model

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = ("logits/plain", "logits/chunked", "hidden/plain", "hidden/chunked", "hidden/fused")
FULL = dict(tokens=2048, vocab=128256, hidden=512, reps=3, chunk_size=None, fused_chunk_size=None)  # None: auto
QUICK = dict(tokens=512, vocab=16384, hidden=128, reps=3, chunk_size=32, fused_chunk_size=64)
MiB = 1024 * 1024


# ---- worker (one variant, one step, fresh process) -------------------------------------------
def _status_mib(key: str) -> float | None:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _fix_malloc_threshold() -> bool:
    """glibc: serve every allocation >= 128 KiB by mmap and return it to the OS on free.

    Setting M_MMAP_THRESHOLD disables glibc's dynamic threshold, which otherwise rises to the size
    of the largest freed block (up to 32 MiB) and keeps later blocks of that size in the heap, so
    RSS would keep freed chunk temporaries and over-state small-size peaks. With it, the RSS peak
    tracks the peak of live tensor bytes (like a caching allocator's "allocated" peak).
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, 128 * 1024))  # M_MMAP_THRESHOLD = -3
    except (OSError, AttributeError):
        return False


def _random(rows: int, cols: int, g, dim: int, dtype=None, block: int = 8192):
    """Normal samples: a random block of at most ``block`` columns (dim=1) or rows (dim=0), tiled.

    Drawing 2 x 1 GiB of fresh normal samples costs ~3 s per process, a tiled block ~0.2 s; the
    time and memory of the loss step do not depend on the values. Written in place: no temporary
    of the full size, so the inputs leave no high-water mark above themselves.
    """
    import torch

    out = torch.empty(rows, cols, dtype=dtype or torch.float32)
    size = cols if dim == 1 else rows
    width = min(size, block)
    src = torch.randn((rows, width) if dim == 1 else (width, cols), generator=g)
    for start in range(0, size, width):
        n = min(width, size - start)
        out.narrow(dim, start, n).copy_(src.narrow(dim, 0, n))
    return out


def _make_inputs(scenario: str, n: int, v: int, h: int, seed: int = 0, dtype: str = "float32"):
    import torch

    g = torch.Generator().manual_seed(seed)
    dt = getattr(torch, dtype)
    if scenario == "logits":
        student = _random(n, v, g, dim=1, dtype=dt).mul_(2).requires_grad_()
        teacher = _random(n, v, g, dim=1, dtype=dt).mul_(2)
        return {"student": student, "teacher": teacher}
    hidden = torch.randn(n, h, generator=g).to(dt).requires_grad_()
    weight = _random(v, h, g, dim=0, dtype=dt).mul_(2 * h**-0.5).requires_grad_()  # logits ~ N(0, 4) like above
    teacher = _random(n, v, g, dim=1, dtype=dt).mul_(2)
    return {"hidden": hidden, "weight": weight, "teacher": teacher}


def _step(variant: str, x: dict, chunk_size: int | None, fused_chunk_size: int | None) -> float:
    """Forward + backward of the loss; returns the loss value."""
    from litdistill.core.outputs import ModelOutputs
    from litdistill.losses import ChunkedDivergence, ForwardKL, FusedLinearKD

    scenario, kind = variant.split("/")
    if kind == "fused":
        n = x["hidden"].shape[0]
        loss = FusedLinearKD("forward_kl", chunk_size=fused_chunk_size)(
            ModelOutputs(features={"lm_head_input": x["hidden"][None], "lm_head_weight": x["weight"]}),
            ModelOutputs(logits=x["teacher"][None]),
            {"token_mask": x["hidden"].new_ones(1, n, dtype=bool)},
        )
    else:
        logits = x["student"] if scenario == "logits" else x["hidden"] @ x["weight"].T
        fn = ForwardKL() if kind == "plain" else ChunkedDivergence("forward_kl", chunk_size=chunk_size)
        loss = fn(ModelOutputs(logits=logits), ModelOutputs(logits=x["teacher"]), {})
        del logits
    loss.backward()
    return loss.item()


def measure(
    variant: str,
    tokens: int,
    vocab: int,
    hidden: int,
    threads: int,
    chunk_size: int | None,
    fused_chunk_size: int | None,
    fix_malloc: bool = True,
    dtype: str = "float32",
) -> dict:
    """One loss step of ``variant`` in THIS process (call it in a fresh one): time and added peak."""
    import torch

    malloc_fixed = _fix_malloc_threshold() if fix_malloc else False
    torch.set_num_threads(threads)
    scenario = variant.split("/")[0]
    # Warm-up on tiny inputs: load the kernels' code and start the thread pool before measuring.
    _step(variant, _make_inputs(scenario, 8, 64, 16, seed=1, dtype=dtype), 4, 4)
    x = _make_inputs(
        scenario, tokens, vocab, hidden, dtype=dtype
    )  # no gc.collect(): ~1 s over the imported heap, and no cycles here
    inputs_mib = sum(t.numel() * t.element_size() for t in x.values()) / MiB
    reset = _reset_peak()
    before = _status_mib("VmRSS")
    t0 = time.perf_counter()
    value = _step(variant, x, chunk_size, fused_chunk_size)
    seconds = time.perf_counter() - t0
    if reset:
        peak, method = _status_mib("VmHWM"), "VmHWM after clear_refs"
    else:
        # An upper bound if the step stayed below an earlier high-water mark of this process.
        peak, method = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "ru_maxrss"
    return {
        "variant": variant,
        "seconds": seconds,
        "added_peak_mib": peak - before,
        "rss_before_mib": before,
        "inputs_mib": inputs_mib,
        "loss": value,
        "method": method,
        "mmap_threshold_fixed": malloc_fixed,
    }


def worker(args: argparse.Namespace) -> None:
    print(
        json.dumps(
            measure(
                args.worker,
                args.tokens,
                args.vocab,
                args.hidden,
                args.threads,
                args.chunk_size,
                args.fused_chunk_size,
                dtype=args.dtype,
            )
        )
    )


# ---- driver --------------------------------------------------------------------------------------
def _run_forked(variant: str, cfg: dict, args: argparse.Namespace) -> dict:
    """Measure in a forked child of this process (torch and litdistill already imported, no torch
    thread pool started yet): a fresh address-space accounting without paying the imports again."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_fd)
        code = 0
        try:
            payload = json.dumps(
                measure(
                    variant,
                    cfg["tokens"],
                    cfg["vocab"],
                    cfg["hidden"],
                    args.threads,
                    cfg["chunk_size"],
                    cfg["fused_chunk_size"],
                    dtype=cfg["dtype"],
                )
            )
        except BaseException:  # report any failure to the parent
            import traceback

            payload, code = json.dumps({"error": traceback.format_exc()}), 1
        with os.fdopen(write_fd, "w") as f:
            f.write(payload)
        os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd) as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    result = json.loads(data) if data else {"error": f"child exited with status {status} and no output"}
    if "error" in result:
        raise RuntimeError(f"measurement of {variant} failed:\n{result['error']}")
    return result


def _run_subprocess(variant: str, cfg: dict, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "bench.loss_memory",
        "--worker",
        variant,
        "--tokens",
        str(cfg["tokens"]),
        "--vocab",
        str(cfg["vocab"]),
        "--hidden",
        str(cfg["hidden"]),
        "--threads",
        str(args.threads),
        "--dtype",
        cfg["dtype"],
    ]
    if cfg["chunk_size"]:
        cmd += ["--chunk-size", str(cfg["chunk_size"])]
    if cfg["fused_chunk_size"]:
        cmd += ["--fused-chunk-size", str(cfg["fused_chunk_size"])]
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH", "")]))}
    out = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"worker {variant} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


TARGET_MEM, TARGET_TIME = 0.2, 1.2  # chunked/fused: added peak <= 1/5 of plain at <= 1.2x its time


def evaluate_targets(summary: dict, cfg: dict | None = None) -> list[dict]:
    """One row per (non-plain variant, quantity) in the shape ``bench/__main__`` collects.

    The targets are for the full size (2,048 tokens x vocab 128,256); at smaller sizes fixed
    overheads dominate, so ``met`` is None there (measured values still reported)."""
    full = cfg is None or (cfg.get("tokens"), cfg.get("vocab")) == (FULL["tokens"], FULL["vocab"])
    out = []
    for variant, row in summary.items():
        if variant.endswith("/plain"):
            continue
        for key, bound, what in (("mem_ratio", TARGET_MEM, "added peak"), ("time_ratio", TARGET_TIME, "time")):
            value = row.get(key)
            met = None if value is None or value != value or not full else bool(value <= bound)
            row_out = {
                "target": f"{variant}: {what} <= {bound}x plain",
                "bound": bound,
                "measured": value,
                "unit": "x",
                "met": met,
            }
            if not full:
                row_out["note"] = "target applies at 2,048 x 128,256 only"
            out.append(row_out)
    return out


def _table(summary: dict, cfg: dict) -> str:
    lines = [
        f"Loss step (forward + backward of ForwardKL, T=1) on {cfg['tokens']:,} tokens x vocab {cfg['vocab']:,}"
        f" (hidden {cfg['hidden']}), {cfg['dtype']} inputs, {cfg['threads']} CPU threads; median of {cfg['reps']} "
        "interleaved runs,"
        " each in a fresh process.",
        "",
        "| scenario | variant | added peak (MiB) | vs plain | time (s) | vs plain |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for variant, row in summary.items():
        scenario, kind = variant.split("/")
        lines.append(
            f"| {scenario} | {kind} | {row['added_peak_mib']:,.0f} | {row['mem_ratio']:.3f} | {row['seconds']:.2f} | "
            f"{row['time_ratio']:.2f} |"
        )
    return "\n".join(lines)


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None, allow_fork: bool = False, runner=None) -> dict | None:
    """Run the benchmark. ``allow_fork`` only from a fresh interpreter (the command line): forking a
    process whose torch/OpenMP thread pool already ran deadlocks the child, so callers inside a
    process that used torch get one fresh interpreter per measurement instead. ``runner(variant,
    cfg, args) -> dict`` replaces the fresh-process runner (tests: in-process, tiny sizes)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes, < 20 s")
    p.add_argument("--tokens", type=int)
    p.add_argument("--vocab", type=int)
    p.add_argument("--hidden", type=int)
    p.add_argument("--reps", type=int)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--dtype", choices=["float32", "bfloat16"], default="float32", help="dtype of all inputs (logits, hidden, head)"
    )
    p.add_argument("--chunk-size", type=int, default=None, help="rows per chunk for 'chunked' (default: auto, ~2^24/V)")
    p.add_argument("--fused-chunk-size", type=int, default=None, help="rows per chunk for 'fused' (default: auto)")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/loss_memory[_quick].json)")
    p.add_argument("--no-fork", action="store_true", help="fresh interpreter per measurement instead of fork (slower)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return None

    cfg = dict(QUICK if args.quick else FULL)
    for key in ("tokens", "vocab", "hidden", "reps", "chunk_size", "fused_chunk_size"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    cfg["threads"] = args.threads
    cfg["dtype"] = args.dtype
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variants {sorted(unknown)}; valid: {list(VARIANTS)}")

    if not allow_fork and runner is None and hasattr(os, "fork") and not args.no_fork:
        # Called from a process that may have run torch already: run the command line (which forks
        # its measurements) in one fresh interpreter instead of one interpreter per measurement.
        return _rerun_as_command(argv if argv is not None else sys.argv[1:], args, cfg)
    use_fork = allow_fork and hasattr(os, "fork") and not args.no_fork
    if use_fork:
        import torch  # noqa: F401  (imported once here; children fork from this process)

        import litdistill.losses  # noqa: F401
    run = runner or (_run_forked if use_fork else _run_subprocess)
    start = time.perf_counter()
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for rep in range(cfg["reps"]):  # interleaved: every variant once per repetition
        for variant in variants:
            r = run(variant, cfg, args)
            runs[variant].append(r)
            print(
                f"rep {rep + 1}/{cfg['reps']} {variant:15s} {r['seconds']:7.2f} s  +{r['added_peak_mib']:8.0f} MiB",
                file=sys.stderr,
            )

    summary: dict[str, dict] = {}
    for variant in variants:
        rs = runs[variant]
        summary[variant] = {
            "seconds": statistics.median(r["seconds"] for r in rs),
            "added_peak_mib": statistics.median(r["added_peak_mib"] for r in rs),
            "loss": rs[0]["loss"],
        }
    for variant, row in summary.items():
        base = summary.get(variant.split("/")[0] + "/plain")
        row["mem_ratio"] = (
            row["added_peak_mib"] / base["added_peak_mib"] if base and base["added_peak_mib"] > 0 else float("nan")
        )
        row["time_ratio"] = row["seconds"] / base["seconds"] if base and base["seconds"] > 0 else float("nan")
        if base and abs(row["loss"] - base["loss"]) > 1e-4 * max(1.0, abs(base["loss"])):
            raise RuntimeError(f"{variant} loss {row['loss']} != plain {base['loss']}")

    table = _table(summary, cfg)
    result = {
        "config": cfg,
        "method": runs[variants[0]][0]["method"],
        "process": "custom" if runner else "fork" if use_fork else "subprocess",
        "inputs_mib": {v: runs[v][0]["inputs_mib"] for v in variants},
        "summary": summary,
        "targets": evaluate_targets(summary, cfg),
        "runs": runs,
        "platform": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "processor": cpu_model(),
            "torch": _torch_version(),
        },
        "wall_seconds": time.perf_counter() - start,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    suffix = ("_quick" if args.quick else "") + ("" if cfg["dtype"] == "float32" else "_" + cfg["dtype"])
    out = _default_out(args, cfg)
    _write_atomic(out, json.dumps(result, indent=2) + "\n")
    if not args.quick and args.out is None:
        command = "python -m bench.loss_memory" + ("" if cfg["dtype"] == "float32" else f" --dtype {cfg['dtype']}")
        if args.variants != ",".join(VARIANTS):
            command += f" --variants {args.variants}"
        _write_atomic(
            RESULTS / f"loss_memory{suffix}.md", f"# Loss-step memory benchmark\n\n`{command}`\n\n" + table + "\n"
        )
    print(table)
    print(f"\nwrote {out} ({result['wall_seconds']:.0f} s)")
    return result


def _default_out(args: argparse.Namespace, cfg: dict) -> Path:
    suffix = ("_quick" if args.quick else "") + ("" if cfg["dtype"] == "float32" else "_" + cfg["dtype"])
    return args.out or RESULTS / f"loss_memory{suffix}.json"


def _rerun_as_command(argv: list[str], args: argparse.Namespace, cfg: dict) -> dict:
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH", "")]))}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.loss_memory", *argv],
        cwd=root,
        env=env,
        check=False,
        stdout=subprocess.PIPE,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"python -m bench.loss_memory {' '.join(argv)} failed with status {proc.returncode}")
    print(proc.stdout, end="")
    return json.loads(_default_out(args, cfg).read_text())


def _torch_version() -> str:
    import torch

    return torch.__version__


if __name__ == "__main__":
    main(allow_fork=True)
