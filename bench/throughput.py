"""Training throughput, ours vs the Hugging Face peer, same shapes, one process.

Ours: the engine's jitted, donated train step (``cpt_jax.train.step``) with our AdamW; bf16
compute with fp32 master weights on GPU, fp32 on CPU. Peer: ``GPTNeoXForCausalLM`` with SDPA,
``torch.compile``, bf16 autocast, fused AdamW (``bench/peer_hf.py``). Both get the same random
batches ``[B, T+1]`` (host numpy, copied each step) and the same optimizer numbers. After
``--warmup`` steps (compilation) ``--steps`` steps are timed end to end (device synchronised).

MFU uses the PaLM convention of ../shared/REFERENCE.md section 7:
``tokens/s * (6 N_matmul + 12 L T d) / peak`` with ``N_matmul`` = all params but ``embed_in``.
The peers run first (all presets), then ours: JAX keeps freed memory in its pool, torch gives
it back with ``empty_cache``. JAX's ``peak_bytes_in_use`` is process-wide (a running maximum
over presets); the compiled step's buffer assignment is reported per preset as well.

    python bench/throughput.py --presets tiny --seq 128 --batch 4 --steps 5          # CPU smoke
    python bench/throughput.py --presets 160m,410m,1.4b --xla-flags gpu --vocab-chunk 512 \
        --remat none,full,full --json $OUT/throughput.json                           # one H100
    python bench/throughput.py --presets 14m,160m,410m,1.4b,2.8b,6.9b --estimate-memory
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

GPU_FLAGS = (
    "--xla_gpu_enable_latency_hiding_scheduler=true",  # overlap async copies/collectives with compute
    "--xla_gpu_enable_triton_gemm=false",  # cuBLAS(Lt) for every GEMM
    "--xla_gpu_enable_while_loop_double_buffering=true",  # the layer scan: prefetch layer l+1
    "--xla_gpu_enable_highest_priority_async_stream=true",
)
DEFAULT_BATCH = {"tiny": 4, "14m": 32, "70m": 32, "160m": 32, "410m": 16, "1b": 8, "1.4b": 8, "2.8b": 4}


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", default="160m,410m,1.4b", help="comma list: tiny or Pythia sizes")
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--batch", default="", help="global batch, one value or one per preset")
    ap.add_argument("--steps", type=int, default=20, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps (compilation) first")
    ap.add_argument("--no-peer", action="store_true", help="ours only")
    ap.add_argument("--no-ours", action="store_true", help="peer only")
    ap.add_argument("--attention", default="auto", help="auto | xla | chunked | cudnn")
    ap.add_argument("--remat", default="", help="none | full | dots, one or one per preset "
                                                "(default: full on GPU, none on CPU)")
    ap.add_argument("--vocab-chunk", type=int, default=0, help="sequence block of the chunked CE (0: full logits)")
    ap.add_argument("--micro-batches", type=int, default=1)
    ap.add_argument("--dtype", default="auto", help="compute dtype: auto (bf16 on GPU, fp32 on CPU)")
    ap.add_argument("--xla-flags", default="none", help="none | gpu (the GPU_FLAGS preset)")
    ap.add_argument("--xla-extra", default="", help="more XLA flags, appended as given")
    ap.add_argument("--peer-compile", default="auto", help="auto (on GPU) | on | off")
    ap.add_argument("--peak-tflops", type=float, default=0.0,
                    help="peak FLOP/s per device in TFLOP/s for MFU (0: from the device kind; n/a on CPU)")
    ap.add_argument("--trace", default="", help="ours: write a jax.profiler trace of 3 more steps here")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--json", default="throughput.json", help="result file ('' for none)")
    ap.add_argument("--estimate-memory", action="store_true", help="print the memory estimate and exit")
    ap.add_argument("--estimate-compiled", action="store_true",
                    help="with --estimate-memory: also compile the step (no allocation) and read XLA's numbers")
    ap.add_argument("--budget-gib", type=float, default=79.0, help="device memory for --estimate-memory")
    return ap.parse_args(argv)


def per_preset(text: str, presets: list[str], default: Any, cast: Any = str) -> list[Any]:
    """One value for all presets, or a comma list with one value per preset."""
    if not text:
        return [default(p) if callable(default) else default for p in presets]
    vals = [cast(v) for v in text.split(",")]
    if len(vals) == 1:
        return vals * len(presets)
    if len(vals) != len(presets):
        raise SystemExit(f"{text!r}: give one value or {len(presets)} (one per preset)")
    return vals


def _flags_ok(flags: str) -> bool:
    env = dict(os.environ, XLA_FLAGS=flags)
    r = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], env=env,
                       capture_output=True, timeout=300)
    return r.returncode == 0


def set_xla_flags(preset: str, extra: str) -> list[str]:
    """Append the flag preset to XLA_FLAGS before jax is imported. Flags this jaxlib does not
    know abort XLA at start-up, so they are checked in a child process and dropped if unknown."""
    wanted = (list(GPU_FLAGS) if preset == "gpu" else []) + shlex.split(extra)
    if preset not in ("none", "gpu"):
        raise SystemExit(f"--xla-flags {preset!r}: none or gpu")
    if not wanted:
        return []
    base = os.environ.get("XLA_FLAGS", "")
    if not _flags_ok(" ".join([base, *wanted])):
        kept = [f for f in wanted if _flags_ok(f"{base} {f}")]
        print(f"dropped XLA flags this jaxlib rejects: {sorted(set(wanted) - set(kept))}", file=sys.stderr)
        wanted = kept
    os.environ["XLA_FLAGS"] = " ".join([base, *wanted]).strip()
    return wanted


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_peer(name: str, c: Any, batch: int, seq: int, args: argparse.Namespace, data: list) -> dict:
    import peer_hf

    dev = peer_hf.device()
    compile_ = {"auto": dev.type == "cuda", "on": True, "off": False}[args.peer_compile]
    if dev.type == "cpu":  # two OpenMP threads on a loaded 2-core host spin-wait: ~30x slower
        import torch

        torch.set_num_threads(1)
    peer_hf.reset_peak(dev)
    model = peer_hf.build_model(c, dev)
    opt = peer_hf.optimizer(model, args.lr, 0.9, 0.95, 1e-8, 0.1, fused=dev.type == "cuda")
    step = peer_hf.make_step(model, opt, 1.0, dev, bf16=dev.type == "cuda", compile_=compile_)
    t0 = time.perf_counter()
    for i in range(args.warmup):
        step(data[i % len(data)]["tokens"], args.lr)
    peer_hf.sync(dev)
    warm = time.perf_counter() - t0
    out = []
    t0 = time.perf_counter()
    for i in range(args.steps):
        out.append(step(data[i % len(data)]["tokens"], args.lr)[0])
    peer_hf.sync(dev)
    dt = time.perf_counter() - t0
    peak, what = peer_hf.peak_bytes(dev)
    losses = [float(x) for x in out]
    del model, opt, step, out
    peer_hf.release(dev)
    return {"side": "peer", "preset": name, "seconds": dt, "warmup_seconds": warm,
            "peak_bytes": peak, "peak_what": what, "first_loss": losses[0], "last_loss": losses[-1],
            "compiled": compile_, "bf16_autocast": dev.type == "cuda", "device": str(dev),
            "torch_threads": __import__("torch").get_num_threads()}


def run_ours(name: str, c: Any, batch: int, seq: int, args: argparse.Namespace, data: list) -> dict:
    import jax

    import memory_estimate
    import ours as ours_lib

    total = args.warmup + args.steps
    o = ours_lib.OptSettings(lr=args.lr)
    eng = ours_lib.build(c, o, batch, total, vocab_chunk=args.vocab_chunk,
                         micro_batches=args.micro_batches)
    t0 = time.perf_counter()
    compiled = eng.step.lower(eng.state, eng.put(data[0])).compile()  # AOT: one compile, its memory
    eng.step = compiled
    compile_s = time.perf_counter() - t0
    for i in range(args.warmup):
        eng.run(data[i % len(data)])
    jax.block_until_ready(eng.state)
    warm = time.perf_counter() - t0
    out = []
    t0 = time.perf_counter()
    for i in range(args.steps):
        out.append(eng.run(data[i % len(data)])["loss"])
    jax.block_until_ready((eng.state, out))
    dt = time.perf_counter() - t0
    if args.trace:  # after the timed window, so tracing costs nothing there
        jax.profiler.start_trace(str(Path(args.trace) / f"{name}-B{batch}"))
        for i in range(3):
            eng.run(data[i % len(data)])
        jax.block_until_ready(eng.state)
        jax.profiler.stop_trace()
    stats = jax.devices()[0].memory_stats() or {}
    losses = [float(x) for x in jax.device_get(out)]
    res = {"side": "ours", "preset": name, "seconds": dt, "warmup_seconds": warm,
           "compile_seconds": compile_s, "first_loss": losses[0], "last_loss": losses[-1],
           "compiled_memory": memory_estimate.memory_analysis(compiled),
           "attention": c.attention, "remat": c.remat, "compute_dtype": c.compute_dtype,
           "vocab_chunk": args.vocab_chunk, "micro_batches": args.micro_batches}
    if "peak_bytes_in_use" in stats:
        res["peak_bytes"], res["peak_what"] = int(stats["peak_bytes_in_use"]), \
            "jax peak_bytes_in_use (process-wide running max)"
    else:
        res["peak_bytes"] = _peak_rss()
        res["peak_what"] = "process peak RSS" + (" (includes the peer)" if not args.no_peer else "")
    del eng, compiled
    return res


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch shares the GPU
    flags = set_xla_flags(args.xla_flags, args.xla_extra)

    import jax

    import memory_estimate
    import ours as ours_lib
    from cpt_jax.train.metrics import flops_per_token, peak_flops

    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    on_gpu = jax.default_backend() == "gpu"
    gpu_like = on_gpu or args.estimate_memory  # an estimate is for a GPU: bf16 compute
    dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if gpu_like else "float32")
    remats = per_preset(args.remat, presets, "full" if gpu_like else "none")
    batches = per_preset(args.batch, presets, lambda p: DEFAULT_BATCH.get(p, 8), int)
    configs = [ours_lib.model_config(p, compute_dtype=dtype, attention=args.attention, remat=r,
                                     max_position_embeddings=max(2048, args.seq))
               for p, r in zip(presets, remats)]
    if args.estimate_memory:
        impl = "cudnn" if args.attention in ("auto", "cudnn") else args.attention
        rows = memory_estimate.report(presets, configs, batches, args.seq, args.vocab_chunk, impl,
                                      args.budget_gib, args.estimate_compiled)
        if args.json:
            Path(args.json).write_text(json.dumps({"memory_estimate": rows}, indent=1) + "\n")
        return {"memory_estimate": rows}

    peak = args.peak_tflops * 1e12 if args.peak_tflops > 0 else peak_flops(jax.devices()[0])
    peer_ok = not args.no_peer
    if peer_ok:
        try:
            import peer_hf  # noqa: F401
        except ImportError as err:
            print(f"peer skipped: {err}", file=sys.stderr)
            peer_ok = False
    results: list[dict] = []
    meta = {"command": " ".join(sys.argv), "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
            "backend": jax.default_backend(), "host": platform.node(), "jax": jax.__version__,
            "python": platform.python_version(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "flag_preset": flags, "peak_tflops_per_device": peak / 1e12 if peak else None}
    if peer_ok:
        import torch
        import transformers

        meta.update(torch=torch.__version__, transformers=transformers.__version__)

    def write(complete: bool) -> dict:
        """The JSON so far (rewritten after every result, so a killed run leaves its figures)."""
        out = {"date": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()), **meta, "complete": complete,
               "results": results, "ratios": _summary(results, presets)}
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
        return out

    sides = ([run_peer] if peer_ok else []) + ([] if args.no_ours else [run_ours])
    for fn in sides:  # every peer first, then ours (see the module docstring)
        for name, c, b in zip(presets, configs, batches):
            data = ours_lib.random_batches(4, b, args.seq, c.vocab_size, seed=1)
            try:
                r = fn(name, c, b, args.seq, args, data)
            except Exception as err:  # e.g. out of memory: record it, go on with the next preset
                msg = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:500]
                print(f"{fn.__name__[4:]:4} {name:>5} B={b}: FAILED {msg}", flush=True)
                results.append({"side": fn.__name__[4:], "preset": name, "batch": b, "error": msg})
                _free(fn.__name__[4:])
                write(False)
                continue
            n = ours_lib.n_params(c)
            tps = b * args.seq * args.steps / r["seconds"]
            r.update(batch=b, seq=args.seq, steps=args.steps, tokens_per_s=tps,
                     step_ms=1e3 * r["seconds"] / args.steps, n_params=n,
                     flops_per_token=flops_per_token(c, args.seq, n),
                     mfu=tps * flops_per_token(c, args.seq, n) / (peak * jax.device_count()) if peak else None)
            results.append(r)
            print(_line(r), flush=True)
            write(False)
    out = write(True)
    for s in out["ratios"]:
        print(f"{s['preset']}: ours/peer tokens/s = {s['ratio']:.3f}")
    if args.json:
        print(f"wrote {args.json}")
    return out


def _free(side: str) -> None:
    """Drop what a failed run left behind (torch's cached blocks, JAX's live buffers)."""
    import gc

    gc.collect()
    if side == "peer":
        import peer_hf

        peer_hf.release(peer_hf.device())


def _line(r: dict) -> str:
    mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "n/a"
    return (f"{r['side']:4} {r['preset']:>5} B={r['batch']} T={r['seq']}: {r['tokens_per_s']:,.0f} tokens/s, "
            f"{r['step_ms']:.1f} ms/step, MFU {mfu}, peak {r['peak_bytes'] / 2**30:.2f} GiB "
            f"({r['peak_what']}), loss {r['first_loss']:.3f} -> {r['last_loss']:.3f}")


def _summary(results: list[dict], presets: list[str]) -> list[dict]:
    by = {(r["side"], r["preset"]): r for r in results if "error" not in r}
    return [{"preset": p, "ratio": by[("ours", p)]["tokens_per_s"] / by[("peer", p)]["tokens_per_s"]}
            for p in presets if ("ours", p) in by and ("peer", p) in by]


if __name__ == "__main__":
    main()
