"""`cpt-jax info`: a config's model shape, parameter count and one forward pass."""

from __future__ import annotations

import argparse
import time


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="show a config's model and run one forward pass")
    p.add_argument("--config", required=True, help="experiment file defining get_config()")
    p.set_defaults(func=run, takes_config=True)


def run(args: argparse.Namespace) -> int:
    import jax
    import numpy as np

    from cpt_jax import configure
    from cpt_jax.model import pythia

    cfg = configure.load(args.config, args.config_overrides)
    mcfg = pythia.PythiaConfig.from_config(cfg.model)
    n = pythia.count_params(mcfg)
    print(f"model: L={mcfg.num_layers} d={mcfg.hidden_size} H={mcfg.num_heads} hd={mcfg.head_dim} "
          f"r={mcfg.rotary_dim} V={mcfg.vocab_size}  params={n:,}")
    params = pythia.init_params(mcfg, jax.random.key(cfg.seed))
    tokens = np.random.RandomState(cfg.seed).randint(0, mcfg.vocab_size, (1, cfg.train.seq_len))
    start = time.perf_counter()
    logits = jax.block_until_ready(jax.jit(pythia.forward, static_argnums=2)(params, tokens, mcfg))
    print(f"forward [1, {cfg.train.seq_len}] -> logits {tuple(logits.shape)} on {jax.default_backend()} "
          f"in {time.perf_counter() - start:.2f}s (with compile)")
    return 0
