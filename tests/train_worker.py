"""Subprocess body for the engine tests that need several fake CPU devices or a real signal.

    python tests/train_worker.py '[{"mode": ..., "run_dir": ..., "overrides": [...]}, ...]'

Set ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` in the environment. Runs the jobs in
order and prints one line ``RESULT [...]`` (one result per job). Modes: ``train`` (a run of
configs/tiny.py with the overrides), ``sigterm`` (the same, but the process sends itself SIGTERM
while batch ``stop_at`` is read; ``sigkill``: SIGKILL instead), ``bytes`` (per-device parameter
bytes under the mesh), ``cli`` (``cpt-jax train``).
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_cfg(run_dir: str, overrides: list[str]):
    from cpt_jax import configure

    base = [f"--config.run_dir={run_dir}", "--config.train.log_every=1",
            "--config.train.progress=false", "--config.logging.tensorboard=false"]
    return configure.load(str(ROOT / "configs" / "tiny.py"), base + [f"--config.{o}" for o in overrides])


class KillAt:
    """The configured data, but ``sig`` (SIGTERM) arrives at this process while batch ``at`` is read."""

    def __init__(self, data, at: int, sig: int = signal.SIGTERM):
        self.data, self.at, self.domains, self.sig = data, at, data.domains, sig

    def batch(self, step: int):
        if step == self.at:
            os.kill(os.getpid(), self.sig)
        return self.data.batch(step)


def job(spec: dict) -> dict:
    import jax

    from cpt_jax.train import loop

    cfg = load_cfg(spec["run_dir"], spec.get("overrides", []))
    if spec["mode"] == "train":
        return loop.run(cfg, eval_sets={})
    if spec["mode"] == "cli":  # the `cpt-jax train` verb; its JSON summary is on stdout
        import contextlib
        import io

        from cpt_jax import cli

        base = [f"--config.run_dir={spec['run_dir']}", "--config.train.log_every=1",
                "--config.train.progress=false", "--config.logging.tensorboard=false"]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = cli.main(["train", "--config", str(ROOT / "configs" / "tiny.py"), *base,
                             *[f"--config.{o}" for o in spec.get("overrides", [])]])
        return {"code": code, "summary": json.loads(out.getvalue())}
    if spec["mode"] in ("sigterm", "sigkill"):  # sigkill: a hard kill, nothing runs after it
        from cpt_jax.data.pipeline import TrainData

        sig = signal.SIGTERM if spec["mode"] == "sigterm" else signal.SIGKILL
        return loop.run(cfg, data=KillAt(TrainData.from_config(cfg), int(spec["stop_at"]), sig), eval_sets={})
    if spec["mode"] == "bytes":  # real arrays, placed without compiling anything
        import numpy as np

        from cpt_jax import sharding
        from cpt_jax.model import pythia

        mesh = sharding.make_mesh(cfg.mesh)
        mcfg = pythia.PythiaConfig.from_config(cfg.model)
        shapes = jax.eval_shape(lambda: pythia.init_params(mcfg, jax.random.key(0)))
        shard = sharding.param_shardings(shapes, pythia.logical_axes(shapes), mesh)
        host = jax.tree.map(lambda s: np.ones(s.shape, s.dtype), shapes)
        params = sharding.put_global(host, shard)
        per_device = {str(d.id): 0 for d in jax.devices()}
        for x in jax.tree.leaves(params):
            for s in x.addressable_shards:
                per_device[str(s.device.id)] += s.data.nbytes
        axes = jax.tree.leaves(pythia.logical_axes(shapes), is_leaf=lambda x: isinstance(x, tuple))
        leaves = [(math.prod(x.shape) * x.dtype.itemsize, names) for x, names in zip(jax.tree.leaves(shapes), axes)]
        return {"per_device": per_device, "leaves": leaves}
    raise SystemExit(f"unknown mode {spec['mode']}")


def main() -> None:
    results = [job(spec) for spec in json.loads(sys.argv[1])]
    print("RESULT " + json.dumps(results, default=float), flush=True)


if __name__ == "__main__":
    main()
