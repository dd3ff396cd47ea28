"""Peak host memory of the offline LAWA average for k = 2 and k = 8 on the same checkpoints.

Writes N checkpoints of random fp32 params with a Pythia preset's shapes in the training-run layout
(``RUN/checkpoints/<step>/{params,opt_state,extras,meta}``), then runs ``lawa.average`` over the
last k in a fresh subprocess per k and reports the rise of the process's peak RSS
(``VmHWM``, reset through ``/proc/self/clear_refs`` just before averaging) over the RSS then.
Streaming means the rise is about two
copies of the params (running sum + one restored checkpoint) whatever k is.

    .venv/bin/python bench/lawa_memory.py [--preset 14m] [--ks 2,8] [--dir /tmp/lawa_bench]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CHILD = r"""
import json, sys, time
import numpy as np
from cpt_jax import lawa, tree_io
run, k = sys.argv[1], int(sys.argv[2])
steps = lawa.select_steps(lawa.run_steps(run), last=k)
sources = lawa.run_sources(run, steps)
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
tree_io.restore_numpy(sys.argv[3])  # warm orbax / tensorstore on a tiny item
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak-RSS mark (VmHWM) to the current RSS
before = status("VmRSS")
t = time.perf_counter()
avg = lawa.average(sources)
sec = time.perf_counter() - t
peak = status("VmHWM")
nbytes = sum(x.nbytes for x in tree_io.flatten(avg).values())
print(json.dumps({"k": k, "rise": peak - before, "params": nbytes, "seconds": sec}))
"""


def pythia_shapes(preset: str) -> tuple[dict, dict]:
    """``({leaf path: shape}, model.json dict)`` of a Pythia preset's params (fp32)."""
    import dataclasses

    import jax

    from cpt_jax import config as config_lib
    from cpt_jax.model import pythia

    cfg = config_lib.defaults()
    cfg.model.preset = preset
    mcfg = pythia.PythiaConfig.from_config(cfg.model)
    tree = jax.eval_shape(lambda: pythia.init_params(mcfg, jax.random.key(0)))
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    shapes = {"/".join(str(k.key) for k in path): leaf.shape for path, leaf in flat}
    return shapes, dataclasses.asdict(mcfg)


def write_run(run_dir: str, n: int, preset: str, seed: int = 0) -> None:
    """N checkpoints (steps 1..N) of random params with a preset's shapes, engine layout."""
    import numpy as np
    import orbax.checkpoint as ocp

    from cpt_jax.tree_io import unflatten

    shapes, model = pythia_shapes(preset)
    rng = np.random.default_rng(seed)
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "model.json"), "w") as f:
        json.dump(model, f)
    mngr = ocp.CheckpointManager(
        os.path.join(os.path.abspath(run_dir), "checkpoints"),
        options=ocp.CheckpointManagerOptions(max_to_keep=None, enable_async_checkpointing=False),
    )
    for step in range(1, n + 1):
        params = unflatten({p: rng.standard_normal(s, np.float32) for p, s in shapes.items()})
        mngr.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            opt_state=ocp.args.StandardSave({"count": np.zeros(1, np.int32)}),
            extras=ocp.args.JsonSave({}),
            meta=ocp.args.JsonSave({"step": step}),
        ))
        del params
    mngr.wait_until_finished()
    mngr.close()
    with ocp.StandardCheckpointer() as ckptr:  # the tiny warm-up item
        ckptr.save(os.path.join(os.path.abspath(run_dir), "warm"), {"x": np.zeros(4, np.float32)})
        ckptr.wait_until_finished()


def measure(run_dir: str, k: int) -> dict:
    """Run one average of the last k in a fresh interpreter; its peak-RSS rise in bytes."""
    out = subprocess.run(
        [sys.executable, "-c", CHILD, run_dir, str(k), os.path.join(os.path.abspath(run_dir), "warm")],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="14m", help="Pythia size whose param shapes to use")
    ap.add_argument("--ks", default="2,8")
    ap.add_argument("--dir", default="/tmp/lawa_bench")
    args = ap.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    run_dir = os.path.join(args.dir, f"run_{args.preset}")
    if not os.path.isdir(os.path.join(run_dir, "checkpoints")):
        t = time.perf_counter()
        write_run(run_dir, max(ks), args.preset)
        print(f"wrote {max(ks)} checkpoints of Pythia-{args.preset} shapes in {time.perf_counter() - t:.1f}s")
    print("| k | params MB | peak RSS rise MB | rise / params | seconds |")
    print("|---|---|---|---|---|")
    for k in ks:
        r = measure(run_dir, k)
        mb = 2**20
        print(f"| {k} | {r['params'] / mb:.1f} | {r['rise'] / mb:.1f} | {r['rise'] / r['params']:.2f} "
              f"| {r['seconds']:.2f} |")


if __name__ == "__main__":
    main()
