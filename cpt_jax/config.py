"""Experiment configuration as data: ml-collections defaults, experiment files, overrides, key checks.

An experiment file in ``configs/`` defines ``get_config()`` returning ``defaults()`` with some
fields changed. Overrides follow the ml-collections convention
(``--config.optim.peak_lr=6e-4``). Every key must exist in ``defaults()`` and keep its type;
anything else stops with one line that names the key. This module is data and parsing only;
``cpt_jax.configure`` loads a config and has each section's owner check its values.
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
    for name, section in _SECTIONS:
        c[name] = section()
    return c


def _model() -> ConfigDict:
    """The ``model`` section: shape, numerics, attention kernel."""
    s = ConfigDict()
    s.preset = ""  # "14m" ... "12b"; when set, fills the shape fields below
    # a checkpoint (params, run, step or Hugging Face dir) or "train.init_from" whose model.json /
    # config.json fills the shape fields below when the config is loaded
    s.from_checkpoint = ""
    s.vocab_size = 512
    s.hidden_size = 64  # d
    s.num_layers = 2  # L
    s.num_heads = 4  # H
    s.intermediate_size = 0  # 0 means 4 * d
    s.rotary_pct = 0.25
    s.rotary_emb_base = 10000.0
    s.rope_scaling = 1.0  # position interpolation factor (> 1 stretches positions)
    s.use_parallel_residual = True
    s.layer_norm_eps = 1e-5
    s.attention_bias = True
    s.hidden_act = "gelu"  # exact erf GELU, as HF's "gelu"
    s.max_position_embeddings = 2048  # train.seq_len <= this x rope_scaling (docs/long_context.md)
    s.param_dtype = "float32"
    s.compute_dtype = "float32"
    s.attention = "auto"  # auto | xla | cudnn | chunked | splash (Pallas TPU kernel)
    s.attention_chunk = 512  # query block size for "chunked"
    s.attention_block_q = 512  # splash: query tile (multiple of 128)
    s.attention_block_kv = 512  # splash: key/value tile (multiple of 128)
    s.remat = "none"  # none | full | dots (save matmul outputs)
    s.scan_layers = True
    return s


def _train() -> ConfigDict:
    """The ``train`` section: steps, batch, evaluation cadence, continuation."""
    s = ConfigDict()
    s.steps = 100
    s.batch_size = 8  # global sequences per optimizer step
    s.seq_len = 64  # T; batches carry T + 1 tokens
    s.micro_batches = 1  # gradient accumulation inside the jitted step
    s.train_only_new_rows = ""  # a `cpt-jax vocab extend` dir: train only its new embedding rows
    s.vocab_chunk = 0  # > 0: loss over blocks of this many positions, never full [B, T, V] logits
    s.init_from = ""  # orbax params checkpoint to continue from (fresh optimizer state)
    s.allow_config_change = False  # resume even when model/data/batch/seq_len/seed changed
    s.force = False  # train again a run whose summary says it finished (`train --force`)
    s.lease_timeout_s = 300.0  # a run dir's lease is taken over after this long without heartbeat
    s.log_every = 10
    s.eval_every = 0  # 0: evaluate only at the end
    s.eval_steps = ""  # extra eval steps, comma-separated (e.g. dense early: "5,10,20,40")
    s.eval_batches = 4
    s.progress = True
    return s


def _optim() -> ConfigDict:
    """The ``optim`` section: AdamW."""
    s = ConfigDict()
    s.peak_lr = 1e-3  # eta_max
    s.b1 = 0.9
    s.b2 = 0.95
    s.eps = 1e-8
    s.weight_decay = 0.1  # matrices only, never biases or LayerNorm
    s.grad_clip = 1.0  # global norm; 0 disables
    s.skip_nonfinite = 0  # batches with a non-finite loss/gradient skipped before stopping
    return s


def _schedule() -> ConfigDict:
    """The ``schedule`` section: the learning-rate schedule."""
    s = ConfigDict()
    s.name = "cosine"  # cosine | constant | wsd | infinite
    s.warmup_frac = 0.01  # W as a fraction of the phase's steps
    s.warmup_steps = -1  # W in steps; overrides warmup_frac when >= 0
    s.start_lr = 0.0  # eta at t = 0 (re-warm from Pythia's final LR 0.1 x peak)
    s.min_lr_ratio = 0.1  # eta_min / eta_max
    s.decay_frac = 0.1  # WSD: share of steps spent decaying
    s.decay_shape = "linear"  # WSD: linear | sqrt | exp
    s.cooldown_frac = 0.2  # infinite: share of steps cooling eta_max -> eta_const
    s.cooldown_shape = "cosine"  # infinite: cosine | inv_sqrt
    s.inv_sqrt_alpha = 10.0  # infinite: a in h(x) = 1/sqrt(1 + a x) - 1
    s.const_lr_ratio = 0.5  # infinite: eta_const / eta_max
    s.anneal_frac = 0.0  # infinite: final share annealing eta_const -> eta_min
    s.rewarm = True  # infinite: false = no warmup/cooldown, start at eta_const (later tasks)
    s.phases = ""  # "NAME:STEPS[,key=value...];..." chained phases (docs/schedules.md)
    return s


def _mesh() -> ConfigDict:
    """The ``mesh`` section: devices and multi-process start."""
    s = ConfigDict()
    s.data = 1
    s.fsdp = -1  # -1: all remaining devices
    s.tensor = 1
    s.distributed = "auto"  # auto | on | off: jax.distributed.initialize()
    s.init_timeout_s = 300  # multi-process: wait this long for every process to connect
    s.heartbeat_timeout_s = 100  # a process silent this long is dead: the others stop
    s.shutdown_timeout_s = 300  # at exit, wait this long for the other processes
    return s


def _checkpoint() -> ConfigDict:
    """The ``checkpoint`` section: saving and keeping."""
    s = ConfigDict()
    s.every = 0  # 0: only at the end
    s.keep = 3
    s.keep_steps = ""  # comma-separated steps never deleted
    s.async_save = True
    return s


def _storage() -> ConfigDict:
    """The ``storage`` section: storage deadlines."""
    s = ConfigDict()
    s.timeout_s = 300.0  # a storage step (open, save, sync, restore) longer than this: exit 75
    return s


def _data() -> ConfigDict:
    """The ``data`` section: sources, mixture, replay, loader."""
    s = ConfigDict()
    s.source = "synthetic"  # synthetic | tokenized
    s.dir = ""  # DATA_DIR written by `cpt-jax tokenize` / `cpt-jax corpus`
    s.domains = ""  # comma-separated domain names ("" = all in the manifest)
    s.weights = "proportional"  # proportional | uniform | "a=0.5,b=0.5" | path.json
    s.phases = ""  # "STEP:a=0.7,b=0.3;STEP:..." weights from STEP on
    s.replay_domains = ""  # comma-separated old-data domains
    s.replay_fraction = 0.0  # share of replayed sequences (a quota exact over steps)
    s.upstream = ""  # domains whose loss measures forgetting
    s.downstream = ""  # domains whose loss measures learning
    s.workers = 0  # grain worker processes (0: threads in this process)
    s.prefetch = 4  # batches buffered ahead (per worker)
    s.replay_weights = "proportional"  # weights among replay_domains (same forms as weights)
    s.synthetic_tokens = 1 << 20  # synthetic source: train tokens per domain
    s.long_threshold = 0  # > 0: documents shorter than this are kept with long_keep
    s.long_keep = 1.0  # keep probability of short documents (long-context up-sampling)
    return s


def _doremi() -> ConfigDict:
    """The ``doremi`` section: cpt-jax doremi."""
    s = ConfigDict()  # cpt-jax doremi (docs/doremi.md)
    s.eta = 1.0  # step size of the alpha update
    s.c = 1e-3  # smoothing towards uniform: alpha = (1 - c) alpha' + c / k
    s.normalization = "domain"  # domain: sum_i alpha_i mean_i (paper) | token (official code)
    s.absent = "previous"  # lambda_i of a domain with no token in the batch: previous | zero
    s.reference = ""  # params checkpoint / run dir of a ready reference ("" = train one)
    # where reference and proxy both start: scratch (train.seed) | train.init_from
    s.init_from = "scratch"
    s.reference_weights = "proportional"  # mixture of the round-1 reference run
    s.proxy_weights = "uniform"  # the proxy's fixed (stratified) mixture
    s.reference_steps = 0  # 0: train.steps
    s.proxy_steps = 0  # 0: train.steps
    s.rounds = 1  # iterated DoReMi: round k's reference trains on round k-1's weights
    s.tolerance = 1e-3  # stop iterating when max_i |alpha_bar_i - previous| < tolerance
    s.main = True  # train the main model on alpha_bar (train.steps)
    s.baseline = True  # and a baseline on reference_weights with the same budget
    return s


def _lawa() -> ConfigDict:
    """The ``lawa`` section: online weight averaging."""
    s = ConfigDict()  # online latest-weight averaging (docs/lawa.md)
    s.k = 0  # window: average of the k latest snapshots (0 = off)
    s.every = 10  # nu: a snapshot every nu optimizer steps
    s.store = "host"  # host: snapshots in host memory | disk: params items under RUN/lawa/
    s.ema = 0.0  # beta of an EMA of the params updated every step (0 = off)
    return s


def _eval() -> ConfigDict:
    """The ``eval`` section: zero-shot tasks."""
    s = ConfigDict()  # cpt-jax eval: zero-shot tasks (docs/evaluation.md)
    s.tasks = "piqa,arc_easy,arc_challenge,sciq,hellaswag,winogrande"  # names or JSONL paths
    s.limit = 0  # first N examples per task (0 = all)
    s.batch_size = 32  # sequences per scoring batch
    # lm-evaluation-harness tasks run in process at the training eval cadence ("" = none;
    # pip install 'cpt-jax[harness]'); logged as harness/<task>/<metric>; eval.limit applies
    s.harness_tasks = ""
    s.harness_include = ""  # a folder of your own harness YAML tasks
    s.harness_tokenizer = ""  # tokenizer.json ("" = the run's: its data's, its init_from's)
    return s


def _logging() -> ConfigDict:
    """The ``logging`` section: TensorBoard, W&B."""
    s = ConfigDict()
    s.tensorboard = True
    s.wandb_project = ""  # Weights & Biases project ("" = off; pip install 'cpt-jax[wandb]')
    return s


_SECTIONS = (("model", _model), ("train", _train), ("optim", _optim), ("schedule", _schedule),
             ("mesh", _mesh), ("checkpoint", _checkpoint), ("storage", _storage), ("data", _data),
             ("doremi", _doremi), ("lawa", _lawa), ("eval", _eval), ("logging", _logging))


# ---------------------------------------------------------------------------------------
# loading


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


def from_module(module: Any, path: str, arg: str | None = None) -> ConfigDict:
    """``module.get_config()`` (``get_config(arg)`` for ``FILE:ARG``), its errors in one line."""
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
    return cfg


def from_values(values: Any, where: str) -> ConfigDict:
    """``defaults()`` with the values of a saved ``config.json`` dict (keys unknown today are
    dropped); ``where`` names the file in the error when ``values`` is no run config."""
    if not isinstance(values, dict) or "model" not in values:
        raise UserError(f"{where} is not a cpt-jax run config (no 'model' section)")
    cfg = defaults()

    def merge(node: ConfigDict, vals: dict) -> None:
        for key, value in vals.items():
            if key not in node:
                continue
            if isinstance(value, dict):
                merge(node[key], value)
            else:
                node[key] = value

    merge(cfg, values)
    return cfg


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


def check_keys(cfg: ConfigDict) -> None:
    """Every key of ``cfg`` exists in ``defaults()`` and keeps its type; one ``UserError``."""
    _check_keys(cfg, defaults(), "")


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


def to_dict(cfg: ConfigDict) -> dict:
    """A plain, JSON-serialisable copy (what a run writes to ``RUN_DIR/config.json``)."""
    return cfg.to_dict()
