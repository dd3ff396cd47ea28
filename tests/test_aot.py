"""`cpt-jax compile`: the train step compiled for real TPU slices and GPU hosts on this CPU host.

Each platform's compiles run in one subprocess (libtpu and the CUDA plugin stay out of the test
process) and report the compiler's own figures; the tests check the fused attention kernels,
the sharded bytes per device, the activation layout under fsdp and the ``--json`` fields.
"""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cpt_jax.aot import CUDA_COMPILER_DIR
from cpt_jax.aot import plan as plan_lib
from cpt_jax.aot import topology
from cpt_jax.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
HAS_CUDA = os.path.isdir(os.path.join(CUDA_COMPILER_DIR, "jax_plugins", "xla_cuda12"))
needs_libtpu = pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu (pip install 'jax[tpu]') is not installed")
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="the CUDA compiler plugin and cuDNN are not installed")

# a small Pythia whose heads (hd = 128) the splash kernel takes; bf16 compute
SMALL = ["--config.model.hidden_size=256", "--config.model.num_heads=2", "--config.model.vocab_size=1024",
         "--config.model.compute_dtype=bfloat16", "--config.train.seq_len=256"]
FIELDS = ("topology", "chips", "hbm_bytes_per_chip", "argument_bytes", "temp_bytes", "output_bytes",
          "alias_bytes", "peak_bytes", "fits", "flops_per_chip", "attention", "collectives")


def _env() -> dict:
    return dict(os.environ, JAX_PLATFORMS="cpu")


def _compile_cli(tmp_path: Path, topo: str) -> tuple[subprocess.CompletedProcess, dict]:
    """``cpt-jax compile --json`` of the small config for ``topo``: the process and the JSON."""
    out = tmp_path / "plan.json"
    args = [sys.executable, "-m", "cpt_jax.cli", "compile", "--config", "configs/tiny.py", "--topology", topo,
            "--json", str(out), *SMALL]
    proc = subprocess.run(args, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc, json.loads(out.read_text())


def _compile_many(cases: dict[str, tuple[str, list[str], dict]]) -> dict[str, dict]:
    """``{name: (topology, overrides, options)}`` -> ``{name: Plan as dict}``, one subprocess."""
    code = textwrap.dedent(f"""
        import dataclasses, json, sys
        from cpt_jax.aot import plan, topology  # first: the CUDA compiler's path before jax loads
        from cpt_jax import config as config_lib, layout
        from cpt_jax import configure
        out = {{}}
        for name, (topo, overrides, opts) in json.loads(sys.argv[1]).items():
            if opts.get("unconstrained"):  # the control: activations left to the partitioner
                layout.constrain = lambda x, *names: x
                layout.constrain_params = lambda tree, axes: tree
            cfg = configure.load({str(ROOT / "configs" / "tiny.py")!r}, overrides)
            p = plan.compile_plan(cfg, topology.parse(topo), opts.get("doremi", False), roofline=False)
            out[name] = dataclasses.asdict(p)
        print("PLANS" + json.dumps(out))
        """)
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(cases)], env=_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.split("PLANS", 1)[1])


@pytest.fixture(scope="module")
def tpu_plans():
    if not HAS_LIBTPU:
        pytest.skip("libtpu is not installed")
    return _compile_many({
        "fsdp": ("v5e-4", SMALL + ["--config.model.attention=splash", "--config.train.batch_size=8"], {}),
        "one_chip": ("v5e-1", SMALL + ["--config.model.attention=splash", "--config.train.batch_size=2"], {}),
        "one_chip_ema": ("v5e-1", SMALL + ["--config.model.attention=splash", "--config.train.batch_size=2",
                                           "--config.lawa.ema=0.99"], {}),
        "data_tensor": ("v5e-4", SMALL + ["--config.model.attention=splash", "--config.train.batch_size=8",
                                          "--config.mesh.data=2", "--config.mesh.fsdp=1",
                                          "--config.mesh.tensor=2"], {}),
        "doremi": ("v5e-4", SMALL + ["--config.model.attention=splash", "--config.train.batch_size=8",
                                     "--config.data.domains=a,b,c"], {"doremi": True}),
    })


@pytest.fixture(scope="module")
def gpu_plans():
    if not HAS_CUDA:
        pytest.skip("the CUDA compiler plugin is not installed")
    rows = ["--config.train.seq_len=512", "--config.model.remat=dots", "--config.train.vocab_chunk=128",
            "--config.model.attention=cudnn"]
    return _compile_many({
        "one_gpu": ("1xh100", SMALL + rows + ["--config.train.batch_size=4"], {}),
        "fsdp8": ("8xh100", SMALL + rows + ["--config.train.batch_size=32"], {}),
        "fsdp8_unconstrained": ("8xh100", SMALL + rows + ["--config.train.batch_size=32"], {"unconstrained": True}),
    })


@needs_libtpu
@pytest.mark.parametrize("case", ["fsdp", "one_chip", "data_tensor", "doremi"])
def test_tpu_step_compiles_with_the_splash_kernel(tpu_plans, case):
    p = tpu_plans[case]
    assert p["fits"] and not p["refused"]
    assert p["attention"].startswith("splash (tpu_custom_call x") and not p["attention"].endswith("x0)")
    assert p["peak_bytes"] == p["argument_bytes"] + p["temp_bytes"] + p["output_bytes"] - p["alias_bytes"]


@needs_libtpu
def test_the_plan_counts_the_params_ema_the_step_carries(tpu_plans):
    """``lawa.ema`` puts an fp32 copy of the params (and its update count) in the train state:
    on one chip the step's arguments grow by 4 bytes per parameter, plus the count and the TPU's
    padding of small arrays (under 1%)."""
    from cpt_jax import configure
    from cpt_jax.model import pythia

    cfg = configure.load(str(ROOT / "configs" / "tiny.py"), SMALL)
    n = pythia.count_params(pythia.PythiaConfig.from_config(cfg.model))
    grown = tpu_plans["one_chip_ema"]["argument_bytes"] - tpu_plans["one_chip"]["argument_bytes"]
    assert 4 * n <= grown <= 4 * n * 1.01, (grown, 4 * n)


@needs_libtpu
def test_tpu_meshes_and_bytes_per_chip_scale_as_sharded(tpu_plans):
    fsdp, one, dt = tpu_plans["fsdp"], tpu_plans["one_chip"], tpu_plans["data_tensor"]
    assert fsdp["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
    assert dt["mesh"] == {"data": 2, "fsdp": 1, "tensor": 2}
    # the state is sharded 4 ways under fsdp: a quarter of one chip's, give or take replicated scalars
    assert 3.8 < one["argument_bytes"] / fsdp["argument_bytes"] < 4.05
    # data x tensor shards only heads / MLP / vocabulary weights: between the two
    assert fsdp["argument_bytes"] < dt["argument_bytes"] < one["argument_bytes"]
    assert fsdp["collectives"]["all-gather"] > 0 and one["collectives"] == dict.fromkeys(plan_lib.COLLECTIVES, 0)


@needs_libtpu
def test_tpu_flops_follow_the_mfu_convention(tpu_plans):
    p = tpu_plans["fsdp"]
    d, layers, v, t, b = 256, 2, 1024, 256, 8
    n_matmul = layers * (12 * d * d + 13 * d) + 2 * d + v * d  # qkv/out/fc1/fc2 + biases + LNs, final LN, embed_out
    assert p["flops_per_chip"] == pytest.approx((6 * n_matmul + 12 * layers * t * d) * b * t / 4, rel=1e-9)
    assert tpu_plans["doremi"]["flops_per_chip"] == pytest.approx(p["flops_per_chip"] * 4 / 3, rel=1e-9)


@needs_cuda
def test_gpu_step_compiles_with_cudnn_flash_attention(gpu_plans):
    for name in ("one_gpu", "fsdp8"):
        assert gpu_plans[name]["fits"]
        assert gpu_plans[name]["attention"].startswith("cudnn (__cudnn$fmha x")
        assert not gpu_plans[name]["attention"].endswith("x0)")


@needs_cuda
def test_activations_under_fsdp_take_one_device_worth_of_memory(gpu_plans):
    """At the same rows per GPU, fsdp over 8 needs at most 15% more temporaries than one GPU;
    left to the partitioner (no activation constraints) it needs several times more."""
    one, fsdp, free = gpu_plans["one_gpu"], gpu_plans["fsdp8"], gpu_plans["fsdp8_unconstrained"]
    assert fsdp["temp_bytes"] <= 1.15 * one["temp_bytes"]
    assert free["temp_bytes"] > 2 * one["temp_bytes"]


@needs_cuda
def test_compile_cli_writes_every_json_field_and_exits_by_fit(tmp_path):
    proc, plan = _compile_cli(tmp_path, "1xh100")
    assert set(FIELDS) <= set(plan) and plan["fits"] is True and plan["chips"] == 1
    assert plan["hbm_bytes_per_chip"] == topology.CHIPS["h100"].hbm_bytes
    assert plan["mfu_ceiling"] is None  # no cost analysis from the GPU compiler without a device
    assert "peak/GPU" in proc.stdout and "fits" in proc.stdout and "roofline     not available" in proc.stdout


@needs_libtpu
def test_roofline_bounds_the_step_from_unrolled_compiles(tmp_path):
    """On a TPU slice the bound is max(FLOPs / peak, bytes / bandwidth) of the extrapolated
    compiler counts, so the MFU ceiling is at most 1 and the compiler's FLOPs (with the
    recomputation of remat) are at least the model's."""
    proc, p = _compile_cli(tmp_path, "v5e-1")
    chip = topology.CHIPS["v5e"]
    assert p["bytes_accessed_per_chip"] > 0 and 0 < p["mfu_ceiling"] <= 1
    assert p["step_time_bound_s"] >= max(p["flops_per_chip"] / chip.peak_flops,
                                         p["bytes_accessed_per_chip"] / chip.hbm_bandwidth) * (1 - 1e-9)
    assert "roofline" in proc.stdout and "MFU <=" in proc.stdout


@needs_cuda
def test_fit_batch_finds_the_largest_batch_that_fits(tmp_path):
    """Full fp32 logits at the 50k vocabulary make the batch the limit: the batch found fits,
    one row more does not."""
    from cpt_jax import configure

    heavy = ["--config.model.vocab_size=50304", "--config.train.seq_len=2048", "--config.model.hidden_size=64",
             "--config.model.num_heads=1"]
    cfg = configure.load(str(ROOT / "configs" / "tiny.py"), heavy)
    code = textwrap.dedent(f"""
        import json, sys
        from cpt_jax.aot import plan, topology  # first: the CUDA compiler's path before jax loads
        from cpt_jax import configure
        cfg = configure.load({str(ROOT / "configs" / "tiny.py")!r}, {heavy!r})
        topo = topology.parse("1xh100")
        best, p = plan.fit_batch(cfg, topo, cache={str(tmp_path)!r})
        cfg.train.batch_size = best + 1
        over = plan.compile_plan(cfg, topo, roofline=False)
        print("FIT" + json.dumps([best, p.fits, p.peak_bytes, over.fits, over.peak_bytes, p.hbm_bytes_per_chip]))
        """)
    proc = subprocess.run([sys.executable, "-c", code], env=_env(), cwd=ROOT, capture_output=True, text=True,
                          timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    best, fits, peak, over_fits, over_peak, hbm = json.loads(proc.stdout.split("FIT", 1)[1])
    assert cfg.train.batch_size < best < 256 and fits and peak <= hbm
    assert not over_fits and over_peak > hbm
    assert len(list(tmp_path.glob("*.json"))) >= 5  # each compile cached by config and topology


@needs_libtpu
def test_splash_kernel_runs_per_shard_without_gathering_qkv():
    """Compiled for a real 2x2 v5e slice (batch over data, heads over tensor), the splash
    kernel is a TPU custom call and no all-gather moves q, k or v."""
    code = textwrap.dedent("""
        import jax, jax.numpy as jnp
        from jax.sharding import NamedSharding, PartitionSpec as P
        from cpt_jax import sharding
        from cpt_jax.aot import topology
        from cpt_jax.model import attention
        devices = topology.parse("v5e-4").devices()
        mesh = sharding.make_mesh({"data": 2, "fsdp": 1, "tensor": 2}, devices)
        spec = NamedSharding(mesh, P(("data", "fsdp"), None, "tensor", None))
        x = jax.ShapeDtypeStruct((4, 512, 4, 128), jnp.bfloat16, sharding=spec)
        f = lambda q, k, v: attention.causal_attention(q, k, v, "splash")
        loss = jax.jit(jax.grad(lambda q, k, v: f(q, k, v).astype(jnp.float32).sum(), argnums=(0, 1, 2)))
        with jax.set_mesh(mesh):
            hlo = loss.lower(x, x, x).compile().as_text()
        print("HLO", hlo.count("tpu_custom_call"), hlo.count(" all-gather(") + hlo.count(" all-gather-start("))
        """)
    if not HAS_LIBTPU:
        pytest.skip("libtpu is not installed")
    proc = subprocess.run([sys.executable, "-c", code], env=_env(), cwd=ROOT, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    kernels, gathers = map(int, proc.stdout.split("HLO", 1)[1].split())
    assert kernels >= 3 and gathers == 0  # forward, dq and dkv kernels


# ---------------------------------------------------------------------------------------
# names, parsing and messages (no compiler needed)


@pytest.mark.parametrize("name,chips,shape", [
    ("v4-8", 4, (2, 2, 1)), ("v4-32", 16, (2, 2, 4)), ("v4-256", 128, (4, 4, 8)), ("v5e-1", 1, (1, 1)),
    ("v5e-8", 8, (2, 4)), ("v5litepod-16", 16, (4, 4)), ("v5e-256", 256, (16, 16)), ("v5p-8", 4, (2, 2, 1)),
    ("v6e-8", 8, (2, 4)), ("2xv5e-256", 512, (16, 16)), ("8xh100", 8, ()), ("2x8xh100", 16, ()),
])
def test_slice_names_as_users_type_them(name, chips, shape):
    t = topology.parse(name)
    assert (t.chips, t.shape) == (chips, shape)


@pytest.mark.parametrize("name,words", [("v5e-3", "power of two"), ("v4-4", "multiple of 8"),
                                        ("v9-8", "unknown TPU"), ("8xk80", "unknown GPU"),
                                        ("16xh100", "1 to 8 GPUs"), ("pod", "not a slice name")])
def test_bad_slice_names_are_one_line_errors(name, words):
    with pytest.raises(UserError, match=words):
        topology.parse(name)


def test_the_cli_loads_no_jax_before_a_verb_runs():
    """`cpt-jax compile` puts its CUDA compiler on the path before jax loads (cuDNN is found
    only then), so importing the CLI with all its verbs must not import jax."""
    code = "import sys, cpt_jax.cli; print(sorted(m for m in sys.modules if m.split('.')[0] == 'jax'))"
    out = subprocess.run([sys.executable, "-c", code], env=_env(), cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout[-500:] + out.stderr[-1000:]


def test_the_cuda_plugin_stays_out_of_other_processes():
    """Only processes that import cpt_jax.aot see the CUDA compiler: a plain jax import on this
    GPU-less host prints nothing about CUDA drivers."""
    proc = subprocess.run([sys.executable, "-c", "import jax, jax.numpy as jnp; jnp.ones(2).block_until_ready()"],
                          env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "cuda" not in proc.stderr.lower()


def test_missing_compiler_says_how_to_install_it(monkeypatch):
    import jax

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    tpu = topology.missing_compiler(topology.parse("v5e-8"))
    gpu = topology.missing_compiler(topology.parse("8xh100"))
    assert tpu == (f"compiling for v5e-8 needs the TPU compiler (libtpu, no TPU needed): "
                   f"pip install 'jax[tpu]=={jax.__version__}'")
    assert "\n" not in gpu and f"jax-cuda12-plugin=={jax.__version__}" in gpu and "nvidia-cudnn-cu12" in gpu
    assert f"--target {CUDA_COMPILER_DIR}" in gpu


def test_gpu_target_config_carries_the_vendor_figures():
    text = topology.gpu_target_config("h100")
    assert "core_count: 132" in text and "cuda_compute_capability { major: 9 minor: 0 }" in text
    assert f"device_memory_size: {81559 << 20}" in text and 'device_description_str: "NVIDIA H100 80GB HBM3"' in text


def test_collectives_are_counted_by_kind_once_per_async_pair():
    hlo = textwrap.dedent("""
        %all-gather.1 = f32[8] all-gather(%p), dimensions={0}
        %ag = (f32[2], f32[8]) all-gather-start(%q), dimensions={0}
        %agd = f32[8] all-gather-done(%ag)
        %rs = f32[2] reduce-scatter(%r), dimensions={0}
        %ar = f32[] all-reduce(%s), to_apply=%add
        """)
    assert plan_lib.count_collectives(hlo) == {"all-gather": 2, "all-reduce": 1, "reduce-scatter": 1,
                                               "all-to-all": 0, "collective-permute": 0}


def test_refused_programs_keep_the_temporaries_the_compiler_names():
    msg = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
           "temporaries (22.10G) exceeds available HBM (15.75G).")
    assert plan_lib._refused_temp_bytes(msg) == int(22.10 * (1 << 30))
    assert plan_lib._refused_temp_bytes("some other failure") is None
