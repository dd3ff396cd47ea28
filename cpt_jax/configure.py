"""A whole config composed at the top: load, fill the model from a checkpoint, validate.

``cpt_jax.config`` is the data (defaults, experiment files, overrides, key and type checks);
this module adds what needs the rest of the library: ``model.from_checkpoint`` reads a
checkpoint, and every section's values are checked by the module that uses them, through its
``check_section`` (the layout levanter's ``TrainLmConfig`` follows: each part owns its checks,
the top composes them).
"""

from __future__ import annotations

import os
from typing import Any

from cpt_jax import checks, config, doremi, lawa_online, optim, schedules, sharding, storage
from cpt_jax.config import ConfigDict
from cpt_jax.data import pipeline
from cpt_jax.errors import UserError
from cpt_jax.eval import multiple_choice
from cpt_jax.model import hf, pythia
from cpt_jax.model.checkpoint import source_config
from cpt_jax.run_dir import CONFIG
from cpt_jax.train import checkpoint, loop

# model fields model.from_checkpoint takes from the checkpoint; a config value other than the
# default must agree with it (a different shape cannot load those weights)
_SHAPE_FIELDS = ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                 "rotary_pct", "use_parallel_residual", "layer_norm_eps", "attention_bias",
                 "hidden_act")
# taken from the checkpoint unless the config changes them (a long-context continuation does)
_CONTEXT_FIELDS = ("rotary_emb_base", "rope_scaling", "max_position_embeddings")


def load_with_module(path: str, overrides: list[str] | tuple[str, ...] = ()) -> tuple[ConfigDict, Any]:
    """The validated config of an experiment file and the file's module (executed once: an
    experiment or sweep file's ``get_runs`` / ``get_grid`` come from the same module)."""
    file, arg = config.split_spec(path)
    module = config.load_module(file)
    cfg = config.from_module(module, file, arg)
    config.apply_overrides(cfg, overrides)
    model_from_checkpoint(cfg)
    validate(cfg)
    return cfg, module


def load(path: str, overrides: list[str] | tuple[str, ...] = ()) -> ConfigDict:
    """Load ``get_config()`` from an experiment file, apply overrides, validate.

    ``path`` may be ``FILE:ARG`` (ml-collections' config string): ``get_config(ARG)`` is called."""
    return load_with_module(path, overrides)[0]


def config_from_json(path: str | os.PathLike) -> ConfigDict:
    """A validated config from a run's resolved ``config.json`` (keys unknown today are dropped)."""
    cfg = config.from_values(storage.read_json(path), os.fspath(path))
    validate(cfg)
    return cfg


def load_config(path: str, overrides: list[str] | tuple[str, ...] = ()) -> ConfigDict:
    """An experiment file (``.py``) or a run's ``config.json`` (or its run dir), with
    ``--config.*`` overrides."""
    if path.endswith(".json") or storage.path(path).is_dir():
        cfg = config_from_json(path if path.endswith(".json") else storage.path(path) / CONFIG)
        config.apply_overrides(cfg, overrides)
        validate(cfg)
        return cfg
    return load(path, overrides)


def model_from_checkpoint(cfg: ConfigDict) -> None:
    """Fill the model's shape from ``model.from_checkpoint`` (then cleared: the run's config
    records the shape itself, and ``train.init_from`` where it came from)."""
    src = cfg.model.from_checkpoint
    if not src:
        return
    if src == "train.init_from":
        src = cfg.train.init_from
        if not src:
            raise UserError("model.from_checkpoint = 'train.init_from' needs train.init_from to be set")
    if cfg.model.preset:
        raise UserError("model.preset and model.from_checkpoint are both set: choose one")
    found, ref, m = source_config(src), config.defaults().model, cfg.model
    with m.unlocked():
        for name in _SHAPE_FIELDS + _CONTEXT_FIELDS:
            value = type(ref[name])(getattr(found, name))
            if m[name] == ref[name] or m[name] == value:
                m[name] = value
            elif name in _SHAPE_FIELDS:
                raise UserError(f"model.{name} is {m[name]!r} in the config but {value!r} in "
                                f"model.from_checkpoint {src}")
        m.from_checkpoint = ""


def validate(cfg: ConfigDict) -> None:
    """Check keys and types against ``defaults()``, then each section's values by the module
    that uses them; raise one ``UserError``."""
    config.check_keys(cfg)
    t = cfg.train
    pipeline.check_section(cfg.data)
    pythia.check_section(cfg.model, t.seq_len, t.init_from)
    loop.check_section(t)
    optim.check_section(cfg.optim)
    schedules.check_section(cfg.schedule, cfg.optim.peak_lr, t.steps)
    sharding.check_section(cfg.mesh)
    checkpoint.check_section(cfg.checkpoint)
    checks.positive_number("storage.timeout_s", cfg.storage.timeout_s)
    hf.check_values(dict(cfg.model), "model")  # NaN or <= 0 eps and the like, as in a config.json
    doremi.check_section(cfg.doremi, t.init_from)
    lawa_online.check_section(cfg.lawa)
    multiple_choice.check_section(cfg.eval)
    if cfg.eval.harness_tasks:  # lm-eval is a heavy import: only for a config that uses it
        from cpt_jax.eval import harness

        harness.check_section(cfg.eval)
