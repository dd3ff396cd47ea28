"""Mesh sizes, logical-axis rules and the one-line errors for impossible meshes (one CPU device;
the multi-device behaviour is in test_train_mesh.py)."""

import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from cpt_jax import config as config_lib
from cpt_jax import sharding
from cpt_jax.errors import UserError
from cpt_jax.model import pythia


def _mesh_cfg(data=1, fsdp=-1, tensor=1):
    return {"data": data, "fsdp": fsdp, "tensor": tensor}


@pytest.mark.parametrize("sizes,n,expected", [
    ((1, -1, 1), 8, (1, 8, 1)),
    ((2, -1, 2), 8, (2, 2, 2)),
    ((-1, 2, 1), 8, (4, 2, 1)),
    ((2, 2, 2), 8, (2, 2, 2)),
    ((1, -1, 1), 1, (1, 1, 1)),
])
def test_mesh_shape_fills_minus_one(sizes, n, expected):
    assert sharding.mesh_shape(_mesh_cfg(*sizes), n) == expected


@pytest.mark.parametrize("sizes,n,message", [
    ((2, 2, 1), 8, "mesh (data=2, fsdp=2, tensor=1) needs 4 devices but 8 are available"),
    ((3, -1, 1), 8, "mesh (data=3, fsdp=-1, tensor=1): 8 devices do not divide by the fixed axes' product 3"),
    ((-1, -1, 1), 8, "at most one axis may be -1"),
    ((1, 0, 1), 8, "sizes must be positive or -1"),
])
def test_impossible_mesh_is_one_line(sizes, n, message):
    with pytest.raises(UserError) as err:
        sharding.mesh_shape(_mesh_cfg(*sizes), n)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_make_mesh_on_this_host_rejects_too_many_devices():
    with pytest.raises(UserError, match="needs 2 devices but 1 are available"):
        sharding.make_mesh(_mesh_cfg(2, 1, 1))


def test_rules_give_the_expected_specs():
    cfg = pythia.PythiaConfig(vocab_size=64, hidden_size=16, num_layers=2, num_heads=2)
    shapes = jax.eval_shape(lambda: pythia.init_params(cfg, jax.random.key(0)))
    mesh = sharding.make_mesh(_mesh_cfg())
    specs = jax.tree.map(lambda s: s.spec, sharding.param_shardings(shapes, pythia.logical_axes(shapes), mesh))
    assert specs["embed_in"] == P("tensor", "fsdp")
    assert specs["layers"]["qkv"]["kernel"] == P(None, "fsdp", "tensor")
    assert specs["layers"]["qkv"]["bias"] == P(None, "tensor")
    assert specs["layers"]["fc2"]["kernel"] == P(None, "tensor", "fsdp")
    assert specs["final_ln"]["scale"] == P("fsdp")


def test_optimizer_state_follows_params():
    cfg = pythia.PythiaConfig(vocab_size=64, hidden_size=16, num_layers=2, num_heads=2)
    shapes = jax.eval_shape(lambda: pythia.init_params(cfg, jax.random.key(0)))
    mesh = sharding.make_mesh(_mesh_cfg())
    ps = sharding.param_shardings(shapes, pythia.logical_axes(shapes), mesh)
    opt = jax.eval_shape(optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3)).init, shapes)
    os_ = sharding.like_params(opt, shapes, ps, mesh)
    adam = os_[1][0]
    assert adam.mu["layers"]["fc1"]["kernel"].spec == P(None, "fsdp", "tensor")
    assert adam.nu["embed_out"].spec == P("tensor", "fsdp")
    assert adam.count.spec == P()


class _FakeMesh:
    """Only ``.shape`` is read by the divisibility check."""

    shape = {"data": 1, "fsdp": 3, "tensor": 1}


def test_indivisible_dimension_is_a_clear_error():
    cfg = pythia.PythiaConfig(vocab_size=64, hidden_size=16, num_layers=2, num_heads=2)
    shapes = jax.eval_shape(lambda: pythia.init_params(cfg, jax.random.key(0)))
    with pytest.raises(UserError, match=r"parameter embed_in dimension 1 \('embed', size 16\) does not "
                                        r"divide by mesh axis 'fsdp' of size 3"):
        sharding.param_shardings(shapes, pythia.logical_axes(shapes), _FakeMesh())


def test_batch_must_split_over_data_and_fsdp():
    mesh = sharding.make_mesh(_mesh_cfg())
    sharding.check_batch(mesh, 8, 4)
    with pytest.raises(UserError, match="train.batch_size 8 / train.micro_batches 3"):
        sharding.check_batch(mesh, 8, 3)


def test_global_batch_round_trips_on_one_process():
    mesh = sharding.make_mesh(_mesh_cfg())
    local = {"tokens": np.arange(12, dtype=np.int32).reshape(4, 3), "domain": np.arange(4, dtype=np.int32)}
    out = sharding.global_batch(local, mesh, 4)
    np.testing.assert_array_equal(np.asarray(out["tokens"]), local["tokens"])
    assert out["tokens"].sharding.spec == P(("data", "fsdp"))


def test_distributed_off_and_auto_without_env(monkeypatch):
    for var in ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "MEGASCALE_COORDINATOR_ADDRESS",
                "SLURM_JOB_ID", "SLURM_NTASKS", "TPU_WORKER_HOSTNAMES"):
        monkeypatch.delenv(var, raising=False)
    cfg = config_lib.defaults()
    assert sharding.maybe_initialize_distributed(cfg.mesh) is False
    cfg.mesh.distributed = "off"
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "localhost:1")
    assert sharding.maybe_initialize_distributed(cfg.mesh) is False


def test_global_batch_checks_the_process_rows():
    mesh = sharding.make_mesh(_mesh_cfg())
    np.testing.assert_array_equal(sharding.process_rows(mesh, 4), np.arange(4))
    with pytest.raises(UserError, match="batch 'tokens' has 2 rows on process 0, whose devices hold 4 "
                                        "of the 4 global rows"):
        sharding.global_batch({"tokens": np.zeros((2, 3), np.int32)}, mesh, 4)


@pytest.mark.parametrize("env,expected", [
    ({}, None),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, "coordinator"),
    ({"SLURM_JOB_ID": "7", "SLURM_PROCID": "1", "SLURM_NTASKS": "2"}, "slurm"),
    ({"SLURM_JOB_ID": "7", "SLURM_PROCID": "0", "SLURM_NTASKS": "16", "SLURM_STEP_NUM_TASKS": "1"}, None),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16"}, None),  # the batch script itself, not an srun task
    ({"TPU_WORKER_HOSTNAMES": "t1v-0,t1v-1"}, "tpu"),
    ({"TPU_WORKER_HOSTNAMES": "t1v-0"}, None),
    ({"TPU_WORKER_ID": "0"}, "tpu"),
    ({"TPU_ACCELERATOR_TYPE": "v5litepod-16"}, "tpu"),
])
def test_detect_cluster(env, expected):
    assert sharding.detect_cluster(env) == expected


def test_distributed_on_passes_the_configured_timeouts(monkeypatch):
    calls = []

    def initialize(coordinator_address=None, num_processes=None, process_id=None,
                   initialization_timeout=300, heartbeat_timeout_seconds=100, shutdown_timeout_seconds=300):
        calls.append(dict(locals()))

    monkeypatch.setattr(jax.distributed, "initialize", initialize)
    monkeypatch.setattr(sharding, "_already_initialized", lambda: False)
    for var, value in (("JAX_COORDINATOR_ADDRESS", "127.0.0.1:9"), ("JAX_NUM_PROCESSES", "2"),
                       ("JAX_PROCESS_ID", "1")):
        monkeypatch.setenv(var, value)
    cfg = config_lib.defaults()
    cfg.mesh.heartbeat_timeout_s = 7
    assert sharding.maybe_initialize_distributed(cfg.mesh) is True
    (kw,) = calls
    assert kw["coordinator_address"] == "127.0.0.1:9" and kw["num_processes"] == 2
    assert kw["process_id"] == 1 and kw["heartbeat_timeout_seconds"] == 7
    assert kw["shutdown_timeout_seconds"] == 300 and kw["initialization_timeout"] == 300
