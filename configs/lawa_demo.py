"""LAWA demo (CPU, minutes): does the average of the latest checkpoints beat the latest one?

A tiny Pythia trains at a high, constant learning rate (after a short warmup), where LAWA's
gains are largest (Sanyal et al. 2023). Online LAWA keeps k = 5 snapshots every nu = 10 steps
and an EMA (beta = 0.98) for comparison; at every eval the raw model, the LAWA average and
the EMA are scored on each domain's held-out batches (``eval/``, ``eval_lawa/``, ``eval_ema/``
in metrics.jsonl).

Data: the demo corpus when it is built (``$DATA_DIR`` or ``data/demo`` with a manifest.json,
see ``scripts/demo.sh``), otherwise the synthetic domains (noise / pattern / trivial).

    .venv/bin/python configs/lawa_demo.py            # train (or reuse a finished run) + summary
    cpt-jax train --config configs/lawa_demo.py      # train only
    cpt-jax average --run runs/lawa_demo --last 2 --windows --out runs/lawa_demo_windows  # offline
    cpt-jax report --out runs/lawa_demo_report runs/lawa_demo  # lawa.png: raw vs LAWA per domain
"""

from __future__ import annotations

import json
import os
import sys

from cpt_jax.config import base

HERE = os.path.dirname(os.path.abspath(__file__))


def data_dir() -> str:
    """The built demo corpus, or "" when there is none (then the data is synthetic)."""
    for path in (os.environ.get("DATA_DIR", ""), os.path.join(HERE, "..", "data", "demo")):
        if path and os.path.isfile(os.path.join(path, "manifest.json")):
            return os.path.abspath(path)
    return ""


def get_config():
    c = base()
    c.run_dir = "runs/lawa_demo"
    c.model.hidden_size = 64
    c.model.num_layers = 2
    c.model.num_heads = 4
    c.train.steps = 400
    c.train.batch_size = 16
    c.train.seq_len = 64
    c.train.log_every = 50
    c.train.eval_every = 25
    c.train.eval_batches = 4
    c.optim.peak_lr = 1e-2  # high: ten times Pythia-14m's peak
    c.schedule.name = "constant"
    c.schedule.warmup_frac = 0.02
    c.checkpoint.every = 100
    c.checkpoint.keep = 0  # keep all: `cpt-jax average --windows` can replay LAWA offline
    c.lawa.k = 5
    c.lawa.every = 10
    c.lawa.ema = 0.98
    found = data_dir()
    if found:
        c.data.source = "tokenized"
        c.data.dir = found
        c.model.vocab_size = 50304  # Pythia's tokenizer padded to a multiple of 128
    else:
        c.data.source = "synthetic"
        c.model.vocab_size = 512
    return c


def compare(run_dir: str) -> list[dict]:
    """Per eval step with a full LAWA window: raw, LAWA and EMA mean held-out loss."""
    rows = []
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if "eval_lawa/avg/loss" in r:
                rows.append({"step": r["step"], "raw": r["eval/avg/loss"], "lawa": r["eval_lawa/avg/loss"],
                             "ema": r.get("eval_ema/avg/loss", float("nan"))})
    return rows


def main(argv: list[str]) -> int:
    from cpt_jax import configure
    from cpt_jax.train import loop

    cfg = configure.load(os.path.abspath(__file__), argv)
    summary_path = os.path.join(cfg.run_dir, "summary.json")
    if os.path.exists(summary_path) and json.load(open(summary_path)).get("steps") == cfg.train.steps:
        print(f"{cfg.run_dir} is finished; summarising it (delete it to train again)")
    else:
        loop.run(cfg)
    rows = compare(cfg.run_dir)
    if not rows:
        print("no eval with a full LAWA window: raise train.steps or lower lawa.k * lawa.every")
        return 1
    print(f"data: {cfg.data.source}{' ' + cfg.data.dir if cfg.data.dir else ''}; "
          f"peak LR {cfg.optim.peak_lr:g} ({cfg.schedule.name}); LAWA k={cfg.lawa.k} nu={cfg.lawa.every}; "
          f"EMA beta={cfg.lawa.ema:g}")
    print("| step | latest (raw) | LAWA | EMA | LAWA - raw |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['step']} | {r['raw']:.4f} | {r['lawa']:.4f} | {r['ema']:.4f} | {r['lawa'] - r['raw']:+.4f} |")
    wins = sum(r["lawa"] < r["raw"] for r in rows)
    last = rows[-1]
    verdict = "beat" if last["lawa"] < last["raw"] else "did not beat"
    print(f"LAWA {verdict} the latest checkpoint on held-out loss at the final step {last['step']} "
          f"({last['lawa']:.4f} vs {last['raw']:.4f}); it was lower at {wins} of {len(rows)} evals.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
