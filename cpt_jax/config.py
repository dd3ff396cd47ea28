"""Experiment configuration: ml-collections defaults, experiment files, overrides, validation.

An experiment file in ``configs/`` defines ``get_config()`` returning ``defaults()`` with some
fields changed. Overrides follow the ml-collections convention
(``--config.optim.peak_lr=6e-4``). Every key must exist in ``defaults()`` and keep its type;
anything else stops with one line that names the key.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
from typing import Any

import ml_collections

from cpt_jax.errors import UserError

ConfigDict = ml_collections.ConfigDict

def defaults() -> ConfigDict:
    """All configuration keys with their defaults (a tiny CPU model, synthetic data)."""
    c = ConfigDict()
    c.seed = 0
    c.run_dir = "runs/default"

    c.model = ConfigDict()
    c.model.preset = ""  # "14m" ... "12b"; when set, fills the shape fields below
    # a checkpoint (params, run, step or Hugging Face dir) or "train.init_from" whose model.json /
    # config.json fills the shape fields below when the config is loaded
    c.model.from_checkpoint = ""
    c.model.vocab_size = 512
    c.model.hidden_size = 64  # d
    c.model.num_layers = 2  # L
    c.model.num_heads = 4  # H
    c.model.intermediate_size = 0  # 0 means 4 * d
    c.model.rotary_pct = 0.25
    c.model.rotary_emb_base = 10000.0
    c.model.rope_scaling = 1.0  # position interpolation factor (> 1 stretches positions)
    c.model.use_parallel_residual = True
    c.model.layer_norm_eps = 1e-5
    c.model.attention_bias = True
    c.model.hidden_act = "gelu"  # exact erf GELU, as HF's "gelu"
    c.model.max_position_embeddings = 2048  # train.seq_len <= this x rope_scaling (docs/long_context.md)
    c.model.param_dtype = "float32"
    c.model.compute_dtype = "float32"
    c.model.attention = "auto"  # auto | xla | cudnn | chunked | splash (Pallas TPU kernel)
    c.model.attention_chunk = 512  # query block size for "chunked"
    c.model.attention_block_q = 512  # splash: query tile (multiple of 128)
    c.model.attention_block_kv = 512  # splash: key/value tile (multiple of 128)
    c.model.remat = "none"  # none | full | dots (save matmul outputs)
    c.model.scan_layers = True

    c.train = ConfigDict()
    c.train.steps = 100
    c.train.batch_size = 8  # global sequences per optimizer step
    c.train.seq_len = 64  # T; batches carry T + 1 tokens
    c.train.micro_batches = 1  # gradient accumulation inside the jitted step
    c.train.train_only_new_rows = ""  # a `cpt-jax vocab extend` dir: train only its new embedding rows
    c.train.vocab_chunk = 0  # > 0: loss over blocks of this many positions, never full [B, T, V] logits
    c.train.init_from = ""  # orbax params checkpoint to continue from (fresh optimizer state)
    c.train.allow_config_change = False  # resume even when model/data/batch/seq_len/seed changed
    c.train.force = False  # train again a run whose summary says it finished (`train --force`)
    c.train.lease_timeout_s = 300.0  # a run dir's lease is taken over after this long without heartbeat
    c.train.log_every = 10
    c.train.eval_every = 0  # 0: evaluate only at the end
    c.train.eval_steps = ""  # extra eval steps, comma-separated (e.g. dense early: "5,10,20,40")
    c.train.eval_batches = 4
    c.train.progress = True

    c.optim = ConfigDict()
    c.optim.peak_lr = 1e-3  # eta_max
    c.optim.b1 = 0.9
    c.optim.b2 = 0.95
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.1  # matrices only, never biases or LayerNorm
    c.optim.grad_clip = 1.0  # global norm; 0 disables
    c.optim.skip_nonfinite = 0  # batches with a non-finite loss/gradient skipped before stopping

    c.schedule = ConfigDict()
    c.schedule.name = "cosine"  # cosine | constant | wsd | infinite
    c.schedule.warmup_frac = 0.01  # W as a fraction of the phase's steps
    c.schedule.warmup_steps = -1  # W in steps; overrides warmup_frac when >= 0
    c.schedule.start_lr = 0.0  # eta at t = 0 (re-warm from Pythia's final LR 0.1 x peak)
    c.schedule.min_lr_ratio = 0.1  # eta_min / eta_max
    c.schedule.decay_frac = 0.1  # WSD: share of steps spent decaying
    c.schedule.decay_shape = "linear"  # WSD: linear | sqrt | exp
    c.schedule.cooldown_frac = 0.2  # infinite: share of steps cooling eta_max -> eta_const
    c.schedule.cooldown_shape = "cosine"  # infinite: cosine | inv_sqrt
    c.schedule.inv_sqrt_alpha = 10.0  # infinite: a in h(x) = 1/sqrt(1 + a x) - 1
    c.schedule.const_lr_ratio = 0.5  # infinite: eta_const / eta_max
    c.schedule.anneal_frac = 0.0  # infinite: final share annealing eta_const -> eta_min
    c.schedule.rewarm = True  # infinite: false = no warmup/cooldown, start at eta_const (later tasks)
    c.schedule.phases = ""  # "NAME:STEPS[,key=value...];..." chained phases (docs/schedules.md)

    c.mesh = ConfigDict()
    c.mesh.data = 1
    c.mesh.fsdp = -1  # -1: all remaining devices
    c.mesh.tensor = 1
    c.mesh.distributed = "auto"  # auto | on | off: jax.distributed.initialize()
    c.mesh.init_timeout_s = 300  # multi-process: wait this long for every process to connect
    c.mesh.heartbeat_timeout_s = 100  # a process silent this long is dead: the others stop
    c.mesh.shutdown_timeout_s = 300  # at exit, wait this long for the other processes

    c.checkpoint = ConfigDict()
    c.checkpoint.every = 0  # 0: only at the end
    c.checkpoint.keep = 3
    c.checkpoint.keep_steps = ""  # comma-separated steps never deleted
    c.checkpoint.async_save = True

    c.storage = ConfigDict()
    c.storage.timeout_s = 300.0  # a storage step (open, save, sync, restore) longer than this: exit 75

    c.data = ConfigDict()
    c.data.source = "synthetic"  # synthetic | tokenized
    c.data.dir = ""  # DATA_DIR written by `cpt-jax tokenize` / `cpt-jax corpus`
    c.data.domains = ""  # comma-separated domain names ("" = all in the manifest)
    c.data.weights = "proportional"  # proportional | uniform | "a=0.5,b=0.5" | path.json
    c.data.phases = ""  # "STEP:a=0.7,b=0.3;STEP:..." weights from STEP on
    c.data.replay_domains = ""  # comma-separated old-data domains
    c.data.replay_fraction = 0.0  # share of replayed sequences (a quota exact over steps)
    c.data.upstream = ""  # domains whose loss measures forgetting
    c.data.downstream = ""  # domains whose loss measures learning
    c.data.workers = 0  # grain worker processes (0: threads in this process)
    c.data.prefetch = 4  # batches buffered ahead (per worker)
    c.data.replay_weights = "proportional"  # weights among replay_domains (same forms as weights)
    c.data.synthetic_tokens = 1 << 20  # synthetic source: train tokens per domain
    c.data.long_threshold = 0  # > 0: documents shorter than this are kept with long_keep
    c.data.long_keep = 1.0  # keep probability of short documents (long-context up-sampling)

    c.doremi = ConfigDict()  # cpt-jax doremi (docs/doremi.md)
    c.doremi.eta = 1.0  # step size of the alpha update
    c.doremi.c = 1e-3  # smoothing towards uniform: alpha = (1 - c) alpha' + c / k
    c.doremi.normalization = "domain"  # domain: sum_i alpha_i mean_i (paper) | token (official code)
    c.doremi.absent = "previous"  # lambda_i of a domain with no token in the batch: previous | zero
    c.doremi.reference = ""  # params checkpoint / run dir of a ready reference ("" = train one)
    # where reference and proxy both start: scratch (train.seed) | train.init_from
    c.doremi.init_from = "scratch"
    c.doremi.reference_weights = "proportional"  # mixture of the round-1 reference run
    c.doremi.proxy_weights = "uniform"  # the proxy's fixed (stratified) mixture
    c.doremi.reference_steps = 0  # 0: train.steps
    c.doremi.proxy_steps = 0  # 0: train.steps
    c.doremi.rounds = 1  # iterated DoReMi: round k's reference trains on round k-1's weights
    c.doremi.tolerance = 1e-3  # stop iterating when max_i |alpha_bar_i - previous| < tolerance
    c.doremi.main = True  # train the main model on alpha_bar (train.steps)
    c.doremi.baseline = True  # and a baseline on reference_weights with the same budget

    c.lawa = ConfigDict()  # online latest-weight averaging (docs/lawa.md)
    c.lawa.k = 0  # window: average of the k latest snapshots (0 = off)
    c.lawa.every = 10  # nu: a snapshot every nu optimizer steps
    c.lawa.store = "host"  # host: snapshots in host memory | disk: params items under RUN/lawa/
    c.lawa.ema = 0.0  # beta of an EMA of the params updated every step (0 = off)

    c.eval = ConfigDict()  # cpt-jax eval: zero-shot tasks (docs/evaluation.md)
    c.eval.tasks = "piqa,arc_easy,arc_challenge,sciq,hellaswag,winogrande"  # names or JSONL paths
    c.eval.limit = 0  # first N examples per task (0 = all)
    c.eval.batch_size = 32  # sequences per scoring batch
    # lm-evaluation-harness tasks run in process at the training eval cadence ("" = none;
    # pip install 'cpt-jax[harness]'); logged as harness/<task>/<metric>; eval.limit applies
    c.eval.harness_tasks = ""
    c.eval.harness_include = ""  # a folder of your own harness YAML tasks
    c.eval.harness_tokenizer = ""  # tokenizer.json ("" = the run's: its data's, its init_from's)

    c.logging = ConfigDict()
    c.logging.tensorboard = True
    c.logging.wandb_project = ""  # Weights & Biases project ("" = off; pip install 'cpt-jax[wandb]')
    return c


# ---------------------------------------------------------------------------------------
# loading


def load(path: str, overrides: list[str] | tuple[str, ...] = ()) -> ConfigDict:
    """Load ``get_config()`` from an experiment file, apply overrides, validate.

    ``path`` may be ``FILE:ARG`` (ml-collections' config string): ``get_config(ARG)`` is called."""
    path, arg = split_spec(path)
    module = load_module(path)
    if not hasattr(module, "get_config"):
        raise UserError(f"{path} defines no get_config()")
    try:
        cfg = module.get_config() if arg is None else module.get_config(arg)
    except (AttributeError, TypeError, ValueError) as err:
        raise UserError(f"{path}: {_first_line(err)}") from None
    except Exception as err:
        raise UserError(f"{path}: get_config() raised {type(err).__name__}: {_first_line(err)}") from None
    if not isinstance(cfg, ConfigDict):
        raise UserError(f"{path}: get_config() returned {type(cfg).__name__}, not a ConfigDict")
    apply_overrides(cfg, overrides)
    model_from_checkpoint(cfg)
    validate(cfg)
    return cfg


def load_module(path: str) -> Any:
    """The Python module of an experiment file (``FILE`` or ``FILE:ARG``); errors in one line."""
    path, _ = split_spec(path)
    if not os.path.isfile(path):
        raise UserError(f"config file not found: {path}")
    spec = importlib.util.spec_from_file_location("_cpt_jax_experiment", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except (AttributeError, TypeError, ValueError) as err:  # unknown key / wrong type on a locked ConfigDict
        raise UserError(f"{path}: {_first_line(err)}") from None
    except SyntaxError as err:
        raise UserError(f"{path}:{err.lineno}: syntax error: {err.msg}") from None
    except Exception as err:
        raise UserError(f"{path}: {type(err).__name__}: {_first_line(err)}") from None
    return module


def split_spec(text: str) -> tuple[str, str | None]:
    """``("FILE", "ARG")`` of a ``FILE:ARG`` config string; ``(text, None)`` when ``text`` is a
    file or has no ``:`` after an existing file name."""
    if os.path.isfile(text) or ":" not in text:
        return text, None
    file, arg = text.rsplit(":", 1)
    return (file, arg) if os.path.isfile(file) else (text, None)


# model fields model.from_checkpoint takes from the checkpoint; a config value other than the
# default must agree with it (a different shape cannot load those weights)
_SHAPE_FIELDS = ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                 "rotary_pct", "use_parallel_residual", "layer_norm_eps", "attention_bias",
                 "hidden_act")
# taken from the checkpoint unless the config changes them (a long-context continuation does)
_CONTEXT_FIELDS = ("rotary_emb_base", "rope_scaling", "max_position_embeddings")


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
    from cpt_jax.model.checkpoint import source_config

    found, ref, m = source_config(src), defaults().model, cfg.model
    with m.unlocked():
        for name in _SHAPE_FIELDS + _CONTEXT_FIELDS:
            value = type(ref[name])(getattr(found, name))
            if m[name] == ref[name] or m[name] == value:
                m[name] = value
            elif name in _SHAPE_FIELDS:
                raise UserError(f"model.{name} is {m[name]!r} in the config but {value!r} in "
                                f"model.from_checkpoint {src}")
        m.from_checkpoint = ""


def base() -> ConfigDict:
    """``defaults()`` locked, for experiment files: assigning an unknown key raises."""
    cfg = defaults()
    cfg.lock()
    return cfg


def apply_overrides(cfg: ConfigDict, overrides: list[str] | tuple[str, ...]) -> None:
    """Apply ``--config.a.b=value`` strings (the value parsed to the field's type)."""
    for item in overrides:
        body = item[2:] if item.startswith("--") else item
        if "=" not in body or not body.startswith("config."):
            raise UserError(f"override {item!r}: expected --config.KEY=VALUE")
        key, text = body[len("config.") :].split("=", 1)
        set_value(cfg, key, text)


def set_value(cfg: ConfigDict, key: str, text: str) -> None:
    """Set dotted ``key`` from its command-line text, keeping the default's type."""
    *parents, leaf = key.split(".")
    node = cfg
    for name in parents:
        if not isinstance(node, ConfigDict) or name not in node:
            raise UserError(f"unknown config key '{key}'{did_you_mean(key)}")
        node = node[name]
    if not isinstance(node, ConfigDict) or leaf not in node:
        raise UserError(f"unknown config key '{key}'{did_you_mean(key)}")
    current = node[leaf]
    with node.unlocked():
        node[leaf] = _parse_like(current, text, key)


def _parse_like(current: Any, text: str, key: str) -> Any:
    if isinstance(current, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise UserError(f"config key '{key}' expects true or false, got {text!r}")
    if isinstance(current, int):
        try:
            return int(text)
        except ValueError:
            raise UserError(f"config key '{key}' expects an integer, got {text!r}") from None
    if isinstance(current, float):
        try:
            return float(text)
        except ValueError:
            raise UserError(f"config key '{key}' expects a number, got {text!r}") from None
    if isinstance(current, str):
        return text
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise UserError(f"config key '{key}' cannot parse {text!r}") from None


# ---------------------------------------------------------------------------------------
# validation


def validate(cfg: ConfigDict) -> None:
    """Check keys and types against ``defaults()``, then each section's values by the module
    that uses them; raise one ``UserError``. (Those modules import jax, hence the late imports.)"""
    _check_keys(cfg, defaults(), "")
    from cpt_jax import checks, doremi_workflow, lawa_online, optim, schedules, sharding
    from cpt_jax.data import pipeline
    from cpt_jax.eval import runner
    from cpt_jax.model import hf, pythia
    from cpt_jax.train import checkpoint, loop

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
    doremi_workflow.check_section(cfg.doremi, t.init_from)
    lawa_online.check_section(cfg.lawa)
    runner.check_section(cfg.eval)


def _check_keys(cfg: ConfigDict, ref: ConfigDict, prefix: str) -> None:
    for key in cfg.keys():
        name = prefix + key
        if key not in ref:
            raise UserError(f"unknown config key '{name}'{did_you_mean(name)}")
        value, default = cfg[key], ref[key]
        if isinstance(default, ConfigDict):
            if not isinstance(value, ConfigDict):
                raise UserError(f"config key '{name}' must be a section, got {value!r}")
            _check_keys(value, default, name + ".")
        elif not _same_type(value, default):
            raise UserError(
                f"config key '{name}' expects {type(default).__name__}, got {value!r}"
            )


def _same_type(value: Any, default: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


def _first_line(err: Exception) -> str:
    """ml-collections' locked-key error, reduced to one line naming the key."""
    text = str(err).strip().strip("'\"").replace("\\n", "\n")
    unknown = re.search(r'Key "([^"]+)" does not exist', text)
    if unknown:
        hint = re.search(r'Did you mean "([^"]+)"', text)
        suffix = f" (did you mean '{hint.group(1)}'?)" if hint else ""
        return f"unknown config key '{unknown.group(1)}'{suffix}"
    return text.splitlines()[0] if text else type(err).__name__


def did_you_mean(key: str) -> str:
    """`` (did you mean 'x.y'?)`` naming the closest known key to a mistyped one, or ``""``."""
    import difflib

    def flat(node: ConfigDict, prefix: str) -> list[str]:
        out = []
        for k, v in node.items():
            out += flat(v, f"{prefix}{k}.") if isinstance(v, ConfigDict) else [prefix + k]
        return out

    keys = flat(defaults(), "")
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if not close:  # a typo in the leaf name alone: compare leaves under the same section
        leaf = key.rsplit(".", 1)[-1]
        by_leaf = {k.rsplit(".", 1)[-1]: k for k in keys if k.rsplit(".", 1)[0] == key.rsplit(".", 1)[0]}
        close = [by_leaf[c] for c in difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.6)]
    return f" (did you mean '{close[0]}'?)" if close else ""


def comma_list(text: str) -> list[str]:
    """The items of a comma-separated config value (``data.domains``, ``data.upstream``, ...),
    stripped, empty ones dropped, in order."""
    return [item.strip() for item in text.split(",") if item.strip()]


def to_dict(cfg: ConfigDict) -> dict:
    """A plain, JSON-serialisable copy (what a run writes to ``RUN_DIR/config.json``)."""
    return cfg.to_dict()
