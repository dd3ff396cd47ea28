"""configs/tpu_pythia_*.py load, validate, and lay a mesh over a v4-8 / v5e-8's devices."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cpt_jax import configure

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"tpu_pythia_410m.py": ("410m", "dots"), "tpu_pythia_1p4b.py": ("1.4b", "full")}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_tpu_config_loads_and_validates(name):
    c = configure.load(str(ROOT / "configs" / name))
    configure.validate(c)
    preset, remat = CONFIGS[name]
    assert c.model.preset == preset and c.model.remat == remat
    assert c.model.attention == "splash" and c.model.compute_dtype == "bfloat16"
    assert (c.mesh.data, c.mesh.fsdp, c.mesh.tensor) == (1, -1, 1)
    assert c.train.seq_len == 2048 and c.data.source == "tokenized"
    assert c.train.init_from == "" and c.data.dir == ""  # placeholders, set on the command line
    # the global batch splits evenly over 4 (v4-8) and 8 (v5e-8) chips
    assert c.train.batch_size % 8 == 0


def test_tpu_configs_mesh_on_4_and_8_devices():
    """mesh.fsdp=-1 takes all of 4 or 8 devices (forced host devices in a subprocess)."""
    code = textwrap.dedent(f"""
        import jax
        from cpt_jax import config as config_lib, sharding
        from cpt_jax import configure
        for name in {sorted(CONFIGS)!r}:
            c = configure.load({str(ROOT / "configs")!r} + "/" + name)
            for n in (4, 8):
                mesh = sharding.make_mesh(c.mesh, jax.devices()[:n])
                assert dict(mesh.shape) == {{"data": 1, "fsdp": n, "tensor": 1}}, mesh.shape
                sharding.check_batch(mesh, c.train.batch_size, c.train.micro_batches)
        print("ok")
        """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")
