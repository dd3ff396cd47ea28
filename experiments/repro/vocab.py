"""Vocabulary expansion: bits per byte on a domain's held-out text with Pythia's tokenizer and
with domain tokens added (``cpt-jax vocab extend``, subword-mean initialisation of the new rows).

1. The extension learns ``NEW_TOKENS`` BPE tokens from the domain's *training* documents only and
   resizes the shared pretraining's embeddings.
2. The domain is re-tokenized with the extended tokenizer into ``runs/repro/vocab/data``; the
   held-out split is by document index (``is_val_document``), so both tokenizations hold the same
   training and validation documents (checked: same counts, same decoded validation text).
3. Two continuations per seed, same steps x batch x T: ``base`` (Pythia's tokenizer) and
   ``extended``. Held-out bits per byte ``bpb = sum_t l_t / (B ln 2)`` over the whole validation
   text (B its UTF-8 bytes) compare the two tokenizers; tokens per byte measure compression.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from cpt_jax.data.indexed import IndexedDataset
from cpt_jax.data.manifest import load_manifest, local_data_dir
from cpt_jax.data.tokenize import is_val_document, load_token_bytes
from cpt_jax.errors import UserError
from cpt_jax.eval.report_plots import pyplot, save_figure
from cpt_jax.vocab import extend_checkpoint
from experiments.repro import common, corpus_bpe, settings, stats, vocab_eval
from experiments.repro.common import Context, Section, md_table, mean_sd, rewarm_text

PART = "vocab"
STEP0_MAX = 0.75  # "well below uniform": the step-0 loss at most 0.75 ln V
NONINFERIORITY = 0.02  # "matches": the extended bpb at most 2% above the base


def prepare(ctx: Context, domain: str, pretrained: str) -> dict:
    """Extend the tokenizer on the domain's training documents, re-tokenize the domain, check
    that both tokenizations split the same documents. Returns paths and counts."""
    from cpt_jax.data.tokenizer import PYTHIA_TOKENIZER_NAME, fetch_assets, file_sha256

    work = ctx.part_dir(PART)
    manifest = load_manifest(ctx.data_dir)
    entry = manifest["domains"][domain]
    name = manifest["tokenizer"]["name"]
    base_tok = Path(name) if Path(name).is_file() else None
    if base_tok is None and name == PYTHIA_TOKENIZER_NAME:
        base_tok = fetch_assets(log=ctx.log).tokenizer
    if base_tok is None or file_sha256(base_tok) != manifest["tokenizer"]["sha256"]:
        raise UserError(f"{ctx.data_dir}: the tokenizer {name} is not available with the manifest's sha256")
    n_val, frac = entry["val_documents"], corpus_bpe.split_fraction(entry, domain)
    all_file, train_file = work / "raw" / f"{domain}.jsonl.gz", work / "raw" / "train_only.jsonl.gz"
    if not (all_file.is_file() and train_file.is_file()):
        docs, _ = corpus_bpe.raw_documents(ctx.data_dir, domain)
        corpus_bpe.write_jsonl(train_file, [d for i, d in enumerate(docs) if not is_val_document(i, domain, frac)])
        corpus_bpe.write_jsonl(all_file, docs)
    ext = work / "extend"
    if not (ext / "vocab.json").is_file():
        new_tokens = ctx.module(PART).NEW_TOKENS[ctx.size]
        extend_checkpoint(pretrained, [str(train_file)], new_tokens, str(ext), base_tokenizer=str(base_tok))
    data = work / "data"
    corpus_bpe.tokenize_like(all_file, domain, data, ext / "tokenizer.json", entry, ctx.log)
    base_val = vocab_eval.val_text(ctx.data_dir, domain, base_tok)
    ext_val = vocab_eval.val_text(str(data), domain, ext / "tokenizer.json")
    if base_val != ext_val:
        raise UserError(f"re-tokenized {domain}: the validation documents differ from the base data's")
    info = json.loads((ext / "vocab.json").read_text())
    return {"ext": str(ext), "data": str(data), "val_fraction": frac, "val_documents": n_val,
            "val_bytes": sum(len(t.encode("utf-8")) for t in base_val),
            "added": len(info["new_rows"]), "vocab_size": info["vocab_size"],
            "tpb_train": info["tokens_per_byte"], "examples": [t["text"] for t in info["new_tokens"][:12]]}


def tokens_per_byte(data_dir: str, domain: str) -> float:
    """Validation tokens (EOS excluded) per UTF-8 byte of the validation text."""
    ds = IndexedDataset(local_data_dir(data_dir) / domain / "val")
    tb = load_token_bytes(local_data_dir(data_dir))
    toks = np.concatenate([np.asarray(ds[i]) for i in range(len(ds))])
    nbytes = int(tb[toks].sum())
    return float(np.count_nonzero(tb[toks])) / nbytes if nbytes else float("nan")


def run(ctx: Context) -> Section:
    pretrained = ctx.pretrained("cosine")
    shared = ctx.load(PART)
    domain = shared.data.domains
    prep = prepare(ctx, domain, pretrained)
    ext_ctx = dataclasses.replace(ctx, data_dir=prep["data"])
    seeds = ctx.module(PART).SEEDS
    base_runs = [f"base_s{s}" for s in seeds]
    ext_runs = [f"extended_s{s}" for s in seeds]
    ctx.experiment(PART, extra=[f"train.init_from={pretrained}"], only=base_runs)
    ext_ctx.experiment(PART, extra=[f"train.init_from={prep['ext']}"], only=ext_runs)
    root = ctx.part_dir(PART)
    seq = int(shared.train.seq_len)
    cache = root / "heldout"
    bpb = {name: vocab_eval.heldout_bpb(str(root / name), data, domain, seq, cache)
           for names, data in ((base_runs, ctx.data_dir), (ext_runs, prep["data"])) for name in names}
    step0 = {"base": vocab_eval.heldout(pretrained, ctx.data_dir, domain, seq, cache, "pretrained"),
             "extended": vocab_eval.heldout(prep["ext"], prep["data"], domain, seq, cache, "extended_init")}
    tpb = {"base": tokens_per_byte(ctx.data_dir, domain), "extended": tokens_per_byte(prep["data"], domain)}
    m = {"shared": shared, "domain": domain, "prep": prep, "bpb": bpb, "step0": step0, "tpb": tpb,
         "base_runs": base_runs, "ext_runs": ext_runs, "uniform": math.log(settings.vocab_rows(ctx.data_dir))}
    return write(ctx, m, judge(m))


def judge(m: dict[str, Any]) -> dict[str, Any]:
    """Precondition: the pretrained model's per-token loss on the domain at step 0 is well below
    uniform (``STEP0_MAX`` x ln V). Then: tokens per byte fall (measured exactly) and the extended
    model's bpb is no worse than the base model's by more than ``NONINFERIORITY`` of it (Welch
    t test over seeds, non-inferiority)."""
    base = [m["bpb"][r] for r in m["base_runs"]]
    ext = [m["bpb"][r] for r in m["ext_runs"]]
    margin = NONINFERIORITY * float(np.mean(base))
    diff = stats.welch(base, ext, "bpb, base minus extended")
    test = stats.Test(f"bpb, base minus extended plus a margin of {margin:.4f}", diff.effect + margin, diff.se, diff.df)
    loss0, uniform = m["step0"]["base"]["loss"], m["uniform"]
    checks = [stats.Precondition("per-token loss at step 0 well below uniform", loss0 <= STEP0_MAX * uniform,
                                 f"{loss0:.3f} nats vs ln V = {uniform:.3f}, needed <= {STEP0_MAX:g} ln V"),
              stats.seed_check({"base": len(base), "extended": len(ext)})]
    verdict, why = stats.verdict_with(checks, [test])
    compressed = m["tpb"]["extended"] < m["tpb"]["base"]
    if verdict != stats.CANNOT_TEST and not compressed:
        verdict = stats.NOT_REPRODUCED
    return {"verdict": verdict, "why": why, "test": test, "diff": -diff.effect, "margin": margin,
            "base": base, "ext": ext, "compressed": compressed}


def write(ctx: Context, m: dict[str, Any], j: dict[str, Any]) -> Section:
    shared, domain, prep, tpb = m["shared"], m["domain"], m["prep"], m["tpb"]
    start = {k: v["bpb"] for k, v in m["step0"].items()}
    base, ext, diff = j["base"], j["ext"], j["diff"]
    (mb, sb), (me, se) = mean_sd(base), mean_sd(ext)
    base_runs, ext_runs, verdict = m["base_runs"], m["ext_runs"], j["verdict"]
    steps, batch, seq = int(shared.train.steps), int(shared.train.batch_size), int(shared.train.seq_len)
    tokens = steps * batch * seq
    rows = [
        ["base", f"{tpb['base']:.4f}", f"{start['base']:.4f}", common.pm(base, 4),
         f"{tokens / tpb['base']:,.0f}"],
        [f"extended (+{prep['added']} {domain} tokens)", f"{tpb['extended']:.4f}", f"{start['extended']:.4f}",
         common.pm(ext, 4), f"{tokens / tpb['extended']:,.0f}"],
    ]
    table = md_table(["tokenizer", "tokens / byte (held-out)", "bpb at step 0", f"bpb after {steps} steps",
                      "bytes of text trained on"], rows)
    change = 100 * (tpb["extended"] / tpb["base"] - 1)
    why = (f"Tokens per byte on the held-out math text: {tpb['base']:.4f} -> {tpb['extended']:.4f} "
           f"({change:+.1f}%). Held-out bits per byte after {steps} steps: base {mb:.4f} ± {sb:.4f}, "
           f"extended {me:.4f} ± {se:.4f} (mean ± sd over {len(base)} seeds); extended - base = {diff:+.4f}. "
           f"Rule: reproduced when tokens per byte fall and the extended model's bpb is no worse than the "
           f"base model's by more than {100 * NONINFERIORITY:g}% ({j['margin']:.4f} bpb), a non-inferiority "
           f"Welch t test over seeds at level {stats.ALPHA}; not reproduced when tokens per byte do not fall "
           f"or the extended model is significantly worse beyond the margin. {j['why']} "
           f"At step 0 (new rows = mean of their pieces' rows) extended - base = "
           f"{start['extended'] - start['base']:+.4f} bpb. The plot's curves are the training loop's "
           "own evals (its first held-out batches, which cover different text under the two "
           "tokenizers) and can order the arms differently; the stars and the table score all of "
           "the held-out text and decide.")
    image = _plot(ctx, domain, (base_runs, ext_runs), tpb, prep["added"], (start, (mb, me), steps))
    general = [tokens_per_byte(ctx.data_dir, d) for d in settings.UPSTREAM]
    examples = ", ".join(f"`{t.strip()}`" for t in prep["examples"] if t.strip() and "\ufffd" not in t)
    setting = (f"{ctx.pretraining('on the five general domains')} continued "
               f"on `{domain}` ({tpb['base']:.2f} tokens per byte under the base tokenizer, against "
               f"{min(general):.2f}-{max(general):.2f} for the general domains) for {steps} steps of "
               f"{batch} x {seq} tokens, {rewarm_text(shared)}, seeds "
               f"{', '.join(r.rsplit('_s', 1)[1] for r in base_runs)}: once with the base tokenizer and once with "
               f"`cpt-jax vocab extend` adding {prep['added']} tokens learnt on math's training "
               f"documents only (vocabulary rows {prep['vocab_size']}; new rows of `embed_in` and "
               f"`embed_out` = mean of their old pieces' rows; first tokens: "
               f"{examples}). Both "
               f"tokenizations hold the same {prep['val_documents']} held-out documents "
               f"({prep['val_bytes']:,} bytes, checked text for text); bits per byte are over all of them. "
               "Same tokens per step in both arms, so the extended arm reads more text.")
    return Section(
        part=PART, title="Vocabulary expansion: compression and bits per byte",
        claim=("Adding domain tokens (initialised as the mean of their subword pieces) makes the "
               "domain's text shorter in tokens, so training and inference are cheaper, and after "
               "continued pretraining the model matches or beats the base tokenizer in bits per "
               "byte; with little training the new embeddings can lag."),
        source=("practice of vocabulary expansion for continual pretraining (e.g. Chinese LLaMA, "
                "Cui et al. 2023; subword-mean initialisation)"),
        setting=setting, table=table, verdict=verdict, why=why, images=[str(image)],
        numbers={"tokens_per_byte": tpb, "bpb_before": start, "bpb_after": m["bpb"],
                 "loss_step0": {k: v["loss"] for k, v in m["step0"].items()},
                 "diff": diff, "margin": j["margin"], "test": vars(j["test"]), "added": prep["added"]})


def _plot(ctx: Context, domain: str, runs, tpb, added, whole) -> Path:
    """Engine-eval bpb curves per seed, whole-text bpb (step 0 and the seed mean at the end) as
    stars, and tokens per byte as bars."""
    base_runs, ext_runs = runs
    start, (end_base, end_ext), steps = whole
    plt = pyplot()
    root = ctx.part_dir(PART)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [2.2, 1]})
    for names, color, label in ((base_runs, "tab:blue", "base tokenizer"),
                                (ext_runs, "tab:orange", f"+{added} {domain} tokens")):
        for i, name in enumerate(names):
            curve = common.eval_curve(root / name, f"eval/{domain}/bpb")
            ax.plot(list(curve), list(curve.values()), color=color, marker="o", ms=3,
                    ls="-" if i == 0 else "--", label=f"{label}, seed {name.rsplit('_s', 1)[1]}")
    for arm, end, color in (("base", end_base, "tab:blue"), ("extended", end_ext, "tab:orange")):
        ax.plot([0, steps], [start[arm], end], ls="none", marker="*", ms=13, color=color,
                markeredgecolor="black", label=f"{arm}: all held-out text")
    ax.set_xlabel("continued-pretraining step")
    ax.set_ylabel(f"held-out {domain} bits per byte (engine eval)")
    ax.set_title("bits per byte during the continuation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    bars = bx.bar(["base", f"+{added}"], [tpb["base"], tpb["extended"]], color=["tab:blue", "tab:orange"])
    bx.bar_label(bars, fmt="%.3f")
    bx.set_ylabel(f"tokens per byte, held-out {domain}")
    bx.set_title("compression")
    path = ctx.image(PART, "bpb")
    save_figure(fig, path)
    return path
