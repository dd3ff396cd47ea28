"""DoReMi weights after N proxy steps: 1 device == 8 CPU devices (fsdp, data) == 4 micro-batches
== a run stopped after 2 steps and resumed from its checkpoint.

Every run goes through the engine (``cpt_jax.train.loop.run``) with ``DoReMiObjective``; the
8-device runs happen in a subprocess with ``--xla_force_host_platform_device_count=8``.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

STEPS = 3
SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax
    from cpt_jax import config as C, doremi
    from cpt_jax import configure
    from cpt_jax.model import pythia

    def run(run_dir, data=1, fsdp=1, micro=1, stop=0, steps=%d):
        from cpt_jax.train import loop
        c = C.defaults()
        c.run_dir = run_dir
        c.model.vocab_size = 16; c.model.hidden_size = 32; c.model.num_layers = 1; c.model.num_heads = 2
        c.train.steps = steps; c.train.batch_size = 8; c.train.seq_len = 16; c.train.log_every = 1
        c.train.micro_batches = micro; c.train.progress = False
        c.mesh.data = data; c.mesh.fsdp = fsdp
        c.data.synthetic_tokens = 1 << 12; c.logging.tensorboard = False
        c.checkpoint.async_save = False
        c.schedule.name = "constant"  # a run stopped at `stop` and resumed sees the same eta_t
        configure.validate(c)
        mcfg = pythia.PythiaConfig.from_config(c.model)
        ref = pythia.init_params(mcfg, jax.random.key(7))
        obj = doremi.DoReMiObjective(mcfg, 3, ref, 1.0, 1e-3, domains=["noise", "pattern", "trivial"],
                                     micro_batches=micro)
        if stop:  # stop early, then resume from the checkpoint (alpha, alpha_sum, t in extras)
            with c.unlocked():
                c.train.steps = stop
            loop.run(c, objective=obj, eval_sets={})
            with c.unlocked():
                c.train.steps = steps
        loop.run(c, objective=obj, eval_sets={})
        out = []
        for line in open(run_dir + "/metrics.jsonl"):
            r = json.loads(line)
            out.append([r["doremi/alpha/" + d] for d in ("noise", "pattern", "trivial")]
                       + [r["doremi/alpha_avg/" + d] for d in ("noise", "pattern", "trivial")]
                       + [r["doremi/lambda/" + d] for d in ("noise", "pattern", "trivial")])
        return out

    root = sys.argv[1]
    runs = {name: run(root + "/" + name, *shape) for name, shape in json.loads(sys.argv[2]).items()}
    print("RESULT" + json.dumps(runs))
    """
    % STEPS
)


def _run(tmp_path: Path, shapes: dict, devices: int) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), json.dumps(shapes)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT")][-1]
    return {k: np.array(v) for k, v in json.loads(line[len("RESULT"):]).items()}


def test_weights_equal_on_1_and_8_devices_and_with_4_micro_batches(tmp_path):
    one = _run(tmp_path / "one", {"single": [1, 1, 1], "micro4": [1, 1, 4], "resumed": [1, 1, 1, 2]}, 1)
    eight = _run(tmp_path / "eight", {"fsdp8": [1, 8, 1], "data8": [8, 1, 1]}, 8)
    ref = one["single"]
    assert ref.shape == (STEPS, 9)
    np.testing.assert_allclose(ref[:, 0:3].sum(1), 1.0, rtol=1e-6)
    assert np.abs(ref[-1, 0:3] - 1 / 3).max() > 1e-3  # the weights did move
    for name, got in [("micro4", one["micro4"]), ("resumed", one["resumed"])] + list(eight.items()):
        np.testing.assert_allclose(got, ref, rtol=2e-5, atol=1e-6, err_msg=name)
