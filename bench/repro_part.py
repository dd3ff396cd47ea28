"""One reproduction part at accelerator scale: Pythia-70m's shape (``--size gpu``: d = 512, L = 6,
16 x 512 tokens per step, twice the CPU scale's steps) on a synthetic ten-domain corpus made on
the machine (``experiments.repro.synthetic``: no downloads, an 8k byte-level BPE trained on it),
judged and reported by the same code as ``cpt-jax reproduce``. Each part is one command, meant to
fit in 9 minutes on one H100; ``--size tiny`` runs the same pipeline in a minute or two on a CPU.

    python bench/repro_part.py rewarm --out $OUT/repro                 # one H100
    python bench/repro_part.py lawa --size tiny --out /tmp/repro_tiny  # CPU check

Writes ``OUT/reproductions.md``, ``OUT/images/``, the runs under ``OUT/runs`` (a second call
skips finished runs) and ``OUT/<part>_timing.json`` (wall seconds, corpus and part apart).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: cpt_jax and experiments

PARTS = ("rewarm", "replay", "doremi", "lawa", "dcpt", "vocab", "long_context")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("part", choices=PARTS)
    p.add_argument("--size", choices=("gpu", "tiny"), default="gpu")
    p.add_argument("--out", default="runs/repro_bench", help="corpus, runs, report and timings go here")
    args = p.parse_args(argv)

    from cpt_jax.cli import main as cli
    from cpt_jax.commands.reproduce import experiments_package

    experiments_package()
    from experiments.repro import synthetic

    out = Path(args.out)
    t0 = time.time()
    data = synthetic.build(out, args.size)
    t1 = time.time()
    code = cli(["reproduce", "--size", args.size, "--parts", args.part, "--data", str(data),
                "--runs", str(out / "runs"), "--out", str(out / "reproductions.md"),
                "--images", str(out / "images")])
    t2 = time.time()
    timing = {"part": args.part, "size": args.size, "corpus_s": round(t1 - t0, 1), "part_s": round(t2 - t1, 1)}
    (out / f"{args.part}_timing.json").write_text(json.dumps(timing) + "\n")
    print(json.dumps(timing), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
