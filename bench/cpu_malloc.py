"""CPU training wall time with glibc's default malloc vs the tuning in ``scripts/venv.sh``.

XLA on the CPU allocates each step's large buffers (the logits alone are B x T x V fp32: 206 MB
at 8 x 128 x 50,304) with malloc. glibc serves requests above its mmap threshold (at most
32 MiB) with a fresh ``mmap`` and unmaps them on free, so the kernel zeroes those pages again
every step. One arena, no per-buffer mmap and no trimming keep the freed memory for reuse.

Each trial is a separate ``cpt-jax train`` process (synthetic tokens, the reproductions' model:
d = 64, L = 2, Pythia's 50,304-row vocabulary, 8 x 128 tokens per step); the two settings
alternate so that machine noise hits both. Usage::

    .venv/bin/python bench/cpu_malloc.py              # --steps 60 --trials 3
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

MODEL = ["--config.model.vocab_size=50304", "--config.model.hidden_size=64", "--config.model.num_layers=2",
         "--config.model.num_heads=4", "--config.train.batch_size=8", "--config.train.seq_len=128"]


def script_tunables() -> str:
    """The ``GLIBC_TUNABLES`` that ``tune_malloc_for_cpu_training`` in ``scripts/venv.sh`` sets."""
    shell = "unset GLIBC_TUNABLES; source scripts/venv.sh; tune_malloc_for_cpu_training; echo $GLIBC_TUNABLES"
    return subprocess.run(["bash", "-c", shell], check=True, capture_output=True, text=True).stdout.strip()


def trial(tunables: str, steps: int, run_dir: str) -> dict[str, float]:
    """Wall, user and system seconds and minor page faults of one ``cpt-jax train`` process."""
    shutil.rmtree(run_dir, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if tunables:
        env["GLIBC_TUNABLES"] = tunables
    cmd = [sys.executable, "-m", "cpt_jax.cli", "train", "--config", "configs/tiny.py", *MODEL,
           f"--config.train.steps={steps}", f"--config.train.log_every={steps}", "--config.train.progress=False",
           "--config.checkpoint.every=0", f"--config.run_dir={run_dir}"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        sys.exit(f"cpt-jax train failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"wall": wall, "user": after.ru_utime - before.ru_utime, "sys": after.ru_stime - before.ru_stime,
            "faults": after.ru_minflt - before.ru_minflt}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--trials", type=int, default=3)
    args = ap.parse_args()
    settings = {"glibc default": "", "tuned (scripts/venv.sh)": script_tunables()}
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in settings}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.trials):
            for name, tunables in settings.items():
                rows[name].append(trial(tunables, args.steps, os.path.join(tmp, "run")))
    print(f"{args.steps} steps, {args.trials} trials each (median)")
    print("| malloc | wall s | user s | sys s | minor page faults |")
    print("|---|---|---|---|---|")
    for name, trials in rows.items():
        med = {k: sorted(t[k] for t in trials)[len(trials) // 2] for k in trials[0]}
        print(f"| {name} | {med['wall']:.1f} | {med['user']:.1f} | {med['sys']:.1f} | {med['faults'] / 1e6:.2f} M |")


if __name__ == "__main__":
    main()
