"""The memory plan tables of docs/launching.md, measured by the TPU and GPU compilers.

Each cell: the largest power-of-two rows per chip (sequences of 2048 tokens per batch shard)
whose train step -- full AdamW state, fp32 params, bf16 compute, splash (TPU) or cuDNN (GPU)
attention, ``train.vocab_chunk=512``, every chip on ``fsdp`` -- the compiler accepts and that
fits the chip's HBM, with the first remat policy of ``dots``, ``full`` that fits at least one
row (see ``fit_cell``). Every compile is cached by config and topology under ``--cache``, so
the tables can be filled piece by piece::

    python bench/memory_plan.py --tpu --gpu --cache bench/memory_plan_cache
    python bench/memory_plan.py --cells 410m@v5e-8,1.4b@v4-8 --cache bench/memory_plan_cache
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cpt_jax import configure  # noqa: E402
from cpt_jax.aot import plan as plan_lib  # noqa: E402
from cpt_jax.aot import topology  # noqa: E402
from cpt_jax.model import pythia  # noqa: E402

PRESETS = ("160m", "410m", "1.4b", "2.8b", "6.9b", "12b")
TPU_COLUMNS = ("v4-8", "v5e-8", "v5p-8", "v6e-8")
TPU_LARGE = {"6.9b": ("v5e-16", "v5e-32", "v4-16", "v4-32"), "12b": ("v5e-32", "v5e-64", "v4-32", "v4-64")}
GPU_COLUMNS = ("1xh100", "8xh100", "8xh200", "2x8xh100")
GIB = 1 << 30


def cell_config(preset: str, topo: topology.Topology, rows: int, remat: str):
    """configs/tpu_pythia_410m.py's recipe for ``preset`` with ``rows`` per chip on ``topo``."""
    attention = "splash" if topo.platform == "tpu" else "cudnn"
    overrides = [f"--config.model.preset={preset}", f"--config.model.remat={remat}",
                 f"--config.model.attention={attention}", f"--config.train.batch_size={rows * topo.chips}"]
    return configure.load(str(ROOT / "configs" / "tpu_pythia_410m.py"), overrides)


def fit_cell(preset: str, name: str, cache: str, most: int = 64) -> dict:
    """The largest power-of-two rows per chip that fit, and the first remat (dots, full) that
    fits one row (``_top_down`` on TPU, ``_bottom_up`` on GPU). A model whose state alone (16
    bytes per parameter over the chips) exceeds HBM is not compiled."""
    topo = topology.parse(name)
    hbm = topo.chip.hbm_bytes
    state = 16 * pythia.count_params(pythia.PythiaConfig.from_config(cell_config(preset, topo, 1, "dots").model))
    if state / topo.chips > hbm:
        return {"preset": preset, "topology": name, "rows_per_chip": 0, "why": "state exceeds HBM"}
    t0 = time.time()

    def trial(rows: int, remat: str) -> plan_lib.Plan:
        p = plan_lib.compile_plan(cell_config(preset, topo, rows, remat), topo, roofline=False, cache=cache)
        print(f"  {preset} @ {name} remat {remat} rows {rows}: peak {p.peak_bytes / GIB:.2f} GiB "
              f"{'fits' if p.fits else 'no'} ({p.compile_s:.0f} s)", flush=True)
        return p

    for remat in ("dots", "full"):
        if topo.platform == "tpu":
            found = _top_down(preset, topo, remat, hbm, most, trial)
        else:
            found = _bottom_up(remat, hbm, most, trial)
        if found is not None:
            rows, p = found
            return {"preset": preset, "topology": name, "rows_per_chip": rows, "remat": remat,
                    "peak_gib": round(p.peak_bytes / GIB, 2), "hbm_gib": round(hbm / GIB, 2),
                    "mesh": p.mesh, "attention": p.attention, "minutes": round((time.time() - t0) / 60, 1)}
    return {"preset": preset, "topology": name, "rows_per_chip": 0, "why": "one row does not fit"}


def _top_down(preset: str, topo: topology.Topology, remat: str, hbm: int, most: int, trial) -> tuple | None:
    """TPU: a refused program is quick and an accepted one slow, so start above the analytic
    estimate's largest power of two and halve until the compiler accepts."""
    rows = 1
    while 2 * rows <= most and estimate_gib(preset, 2 * rows, topo.chips, remat) * GIB <= 1.3 * hbm:
        rows *= 2
    rows = min(most, 2 * rows)
    while rows >= 1:
        p = trial(rows, remat)
        if p.fits:
            return rows, p
        rows //= 2
    return None


def _bottom_up(remat: str, hbm: int, most: int, trial) -> tuple | None:
    """GPU: every compile runs to the end, so predict from 1 and 2 rows (the peak is close to
    linear in the rows), check the largest power of two under the prediction, and go up
    while it fits."""
    one = trial(1, remat)
    if not one.fits:
        return None
    two = trial(2, remat)
    if not two.fits:
        return 1, one
    per_row = max(1, two.peak_bytes - one.peak_bytes)
    rows = 1 << (int(max(1, min(most, (hbm - one.peak_bytes) // per_row + 1))).bit_length() - 1)
    best = {1: one, 2: two}
    while rows > 2 and not (best.setdefault(rows, trial(rows, remat))).fits:
        rows //= 2
    while 2 * rows <= most:
        nxt = best.get(2 * rows) or trial(2 * rows, remat)
        if not nxt.fits:
            break
        rows, best[2 * rows] = 2 * rows, nxt
    return rows, best[rows]


def estimate_gib(preset: str, rows: int, chips: int, remat: str) -> float:
    """bench/memory_estimate.py's analytic figure for the same cell (fsdp over every chip)."""
    import memory_estimate
    import ours

    c = ours.model_config(preset, compute_dtype="bfloat16", remat=remat)
    return memory_estimate.per_chip(c, rows, 2048, chips, 1, 512)["total"] / GIB


def table(rows: list[dict], columns: tuple[str, ...]) -> str:
    """A markdown table: preset x topology, each cell rows per chip, remat, peak and the
    analytic estimate's ratio to it."""
    got = {}
    for r in rows:  # the first measurement of a cell counts
        got.setdefault((r["preset"], r["topology"]), r)
    out = ["| preset | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for preset in PRESETS:
        cells = []
        for name in columns:
            r = got.get((preset, name))
            if r is None:
                cells.append("not compiled yet")
            elif not r["rows_per_chip"]:
                cells.append(f"does not fit ({r.get('why', '')})")
            elif r["rows_per_chip"] >= 64:
                cells.append(f">= 64 rows (the search's cap), remat {r['remat']}, {r['peak_gib']:.1f} GiB at 64")
            else:
                est = estimate_gib(preset, r["rows_per_chip"], topology.parse(name).chips, r["remat"])
                n = r["rows_per_chip"]
                cells.append(f"{n} row{'s' if n > 1 else ''}, remat {r['remat']}, {r['peak_gib']:.1f} GiB "
                             f"(estimate x{est / r['peak_gib']:.2f})")
        out.append(f"| {preset} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tpu", action="store_true", help="every TPU cell")
    ap.add_argument("--gpu", action="store_true", help="every GPU cell")
    ap.add_argument("--cells", default="", help="PRESET@TOPOLOGY,... (e.g. 410m@v5e-8)")
    ap.add_argument("--cache", default=str(ROOT / "bench" / "memory_plan_cache"))
    ap.add_argument("--out", default="", help="append each cell as a JSON line here")
    ap.add_argument("--table", default="", help="print markdown tables of the cells in this JSON-lines file")
    args = ap.parse_args()
    if args.table:
        rows = [json.loads(line) for line in Path(args.table).read_text().splitlines() if line.strip()]
        tpu = tuple(dict.fromkeys(list(TPU_COLUMNS) + [r["topology"] for r in rows
                                                       if topology.parse(r["topology"]).platform == "tpu"]))
        print(table(rows, tpu) + "\n\n" + table(rows, GPU_COLUMNS))
        return
    cells = [tuple(c.split("@")) for c in args.cells.split(",") if c]
    if args.tpu:
        cells += [(p, t) for p in PRESETS for t in TPU_COLUMNS] + [(p, t) for p, ts in TPU_LARGE.items() for t in ts]
    if args.gpu:
        cells += [(p, t) for p in PRESETS for t in GPU_COLUMNS]
    for preset, name in cells:
        row = fit_cell(preset, name, args.cache)
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
