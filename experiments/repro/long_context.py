"""Long-context continuation: next-token loss at positions beyond the pretraining context.

The shared pretraining (context T) continues at 4T with the NTK-raised rotary base on the
general mixture with long documents up-sampled (``long``), and at T as a control (``control``),
for the same tokens. Every model is scored on held-out windows of 4T + 1 tokens cut from the
start of long validation documents; ``l_p`` is the mean loss of predicting token p + 1 from
tokens 0..p over windows, and a band's loss is the mean of ``l_p`` over its positions.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from cpt_jax.data.indexed import IndexedDataset
from cpt_jax.data.manifest import load_manifest, local_data_dir
from cpt_jax.errors import UserError
from cpt_jax.eval.report_plots import pyplot, save_figure
from experiments.repro import settings
from experiments.repro import stats
from experiments.repro.common import Context, Section, md_table, pm, rewarm_text

PART = "long_context"
WINDOWS_PER_DOMAIN = {"full": 16, "tiny": 4, "gpu": 16}
BATCH = 4
NONINFERIORITY = 0.1  # "falls to its level": beyond T at most 10% of the pretrained model's rise above


def heldout_windows(data_dir: str, domains: list[str], length: int, per_domain: int) -> np.ndarray:
    """``[N, length + 1]`` windows from validation documents of at least ``length + 1`` tokens:
    consecutive non-overlapping windows from each document's start, taken round-robin over a
    domain's documents (first windows first), at most ``per_domain`` per domain."""
    root = local_data_dir(data_dir)
    manifest = load_manifest(data_dir)
    out = []
    for d in domains:
        ds = IndexedDataset(root / manifest["domains"][d]["val"])
        docs = [np.asarray(ds[i], np.int32) for i in range(len(ds))]
        slots = [(k, doc) for doc in docs for k in range(len(doc) // (length + 1))]
        slots.sort(key=lambda s: s[0])  # stable: every document's first window, then second ...
        out += [doc[k * (length + 1):(k + 1) * (length + 1)] for k, doc in slots[:per_domain]]
    if not out:
        raise UserError(f"no held-out document of {length + 1} tokens in {', '.join(domains)}")
    return np.stack(out)


def position_losses(model: str, windows: np.ndarray, cache: Path, name: str, **change) -> np.ndarray:
    """Per-position next-token losses ``[N, L]`` of ``model`` (run dir or checkpoint) on
    ``windows``, with ``change`` applied to its config (e.g. ``rotary_emb_base``); cached."""
    import jax

    from cpt_jax.losses import next_token_losses
    from cpt_jax.model.checkpoint import load_params

    summary = Path(model) / "summary.json"
    key = {"model": str(model), "change": change, "shape": list(windows.shape),
           "sum": int(windows.astype(np.int64).sum()),
           "stamp": summary.stat().st_mtime_ns if summary.is_file() else 0}
    path = cache / f"{name}.npz"
    if path.is_file():
        saved = np.load(path)
        if json.loads(str(saved["key"])) == key:
            return saved["losses"]
    params, config = load_params(model)
    config = dataclasses.replace(config, **change)
    fn = jax.jit(lambda p, t: next_token_losses(p, t, config, vocab_chunk=128))
    losses = np.concatenate([np.asarray(fn(params, windows[i:i + BATCH]))
                             for i in range(0, len(windows), BATCH)])
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, losses=losses, key=json.dumps(key))
    return losses


def bands(seq_len: int) -> dict[str, tuple[int, int]]:
    """Position bands for a pretraining context T: inside it, its second half, and beyond."""
    t = seq_len
    return {f"0-{t - 1}": (0, t), f"{t // 2}-{t - 1}": (t // 2, t),
            f"{t}-{2 * t - 1}": (t, 2 * t), f"{2 * t}-{4 * t - 1}": (2 * t, 4 * t)}


def band_means(losses: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Per-window mean loss over positions ``lo..hi-1``."""
    return losses[:, lo:hi].mean(axis=1)


def collect(ctx: Context) -> dict[str, Any]:
    """Train (or re-read) long and control per seed; per-position losses of every model."""
    pretrained = ctx.pretrained("cosine")
    shared, runs, _ = ctx.experiment(PART, extra=[f"train.init_from={pretrained}"])
    t = int(shared.train.seq_len)
    long_set = next(r["set"] for r in runs if r["name"].startswith("long"))
    long_t, long_base = int(long_set["train.seq_len"]), float(long_set["model.rotary_emb_base"])
    if long_t != 4 * t:
        raise UserError(f"{PART}: the long run's T {long_t} is not 4 x {t}")
    windows = heldout_windows(ctx.data_dir, list(settings.UPSTREAM), long_t, WINDOWS_PER_DOMAIN[ctx.size])
    root = ctx.part_dir(PART)
    cache = root / "positions"
    arms: dict[str, dict[int, np.ndarray]] = {}
    for r in runs:
        arm, seed = r["name"].rsplit("_s", 1)
        arms.setdefault(arm, {})[int(seed)] = position_losses(str(root / r["name"]), windows, cache, r["name"])
    return {"shared": shared, "t": t, "long_t": long_t, "base": long_base, "windows": len(windows),
            "pretrained": position_losses(pretrained, windows, cache, "pretrained"),
            "raised": position_losses(pretrained, windows, cache, "pretrained_raised", rotary_emb_base=long_base),
            "arms": arms}


def judge(m: dict[str, Any]) -> dict[str, Any]:
    """Precondition: the pretrained model's loss rises beyond T (there is something to repair).
    Sub-claims (paired over seeds, Holm): the long continuation's loss beyond T is below the
    control's, and not above its own loss at positions T/2..T-1 by more than ``NONINFERIORITY`` of
    the pretrained model's rise."""
    t, long_t = m["t"], m["long_t"]
    end_old, beyond = (t // 2, t), (t, long_t)
    pre_gap = band_means(m["pretrained"], *beyond) - band_means(m["pretrained"], *end_old)
    rise = stats.one_sample(pre_gap, "pretrained: beyond T minus positions T/2..T-1, over windows")
    stats.decide([rise])
    seeds = sorted(set(m["arms"]["long"]) & set(m["arms"]["control"]))
    beyond_of = {a: [float(band_means(m["arms"][a][s], *beyond).mean()) for s in seeds] for a in m["arms"]}
    gap_long = [float((band_means(m["arms"]["long"][s], *beyond) - band_means(m["arms"]["long"][s], *end_old)).mean())
                for s in seeds]
    margin = NONINFERIORITY * max(rise.effect, 0.0)
    flat = stats.one_sample([margin - g for g in gap_long], f"margin {margin:.4f} minus (long: beyond T - T/2..T-1)")
    tests = [stats.paired(beyond_of["control"], beyond_of["long"], "beyond T: control minus long"), flat]
    checks = [stats.Precondition("the pretrained model gets worse beyond T", rise.verdict == stats.REPRODUCED,
                                 rise.text()),
              stats.seed_check({a: len(v) for a, v in m["arms"].items()})]
    verdict, why = stats.verdict_with(checks, tests)
    return {"verdict": verdict, "why": why, "tests": tests, "pre_gap": rise.effect, "gap_long": gap_long,
            "beyond": beyond_of, "margin": margin}


def run(ctx: Context) -> Section:
    m = collect(ctx)
    return write(ctx, m, judge(m))


def _models(m: dict[str, Any]) -> dict[str, np.ndarray]:
    """Per-position losses by label: the pretrained model, with the raised base, and the seed
    mean of each continued arm (windows x positions, averaged over seeds)."""
    t, long_t, base = m["t"], m["long_t"], m["base"]
    return {"pretrained (base 10000)": m["pretrained"], f"pretrained, base raised to {base:g}": m["raised"],
            f"control: continued at T = {t}": np.mean(list(m["arms"]["control"].values()), axis=0),
            f"continued at T = {long_t}, base {base:g}": np.mean(list(m["arms"]["long"].values()), axis=0)}


def write(ctx: Context, m: dict[str, Any], j: dict[str, Any]) -> Section:
    t, long_t, shared = m["t"], m["long_t"], m["shared"]
    models = _models(m)
    b = bands(t)
    rows = []
    for name, losses in models.items():
        rows.append([name, *[f"{band_means(losses, *r).mean():.3f}" for r in b.values()]])
    table = md_table(["model", *[f"positions {k}" for k in b]], rows)
    table += (f"\n\nContinued models: the mean over seeds {', '.join(map(str, sorted(m['arms']['long'])))}. "
              f"Beyond {t}: control {pm(j['beyond']['control'])}, long {pm(j['beyond']['long'])}.")
    why = (f"Rule: paired t tests over the seeds (the pretrained model's rise over the {m['windows']} held-out "
           f"windows), Holm-corrected over the two sub-claims at level {stats.ALPHA}; \"not above\" is a "
           f"non-inferiority test with margin {100 * NONINFERIORITY:g}% of the pretrained model's rise. {j['why']}")
    image = _plot(ctx, models, t)
    rotary = int(shared.model.hidden_size // shared.model.num_heads * shared.model.rotary_pct)
    setting = (f"{ctx.pretraining(f'at T = {t}, rotary base 10000, {rotary} rotary dims per head')} continued "
               f"{int(shared.train.steps)} steps on the five general domains (equal shares), documents shorter "
               f"than {shared.data.long_threshold} tokens kept with p = {shared.data.long_keep:g}, "
               f"{rewarm_text(shared)}: at T = {long_t} (batch {max(1, shared.train.batch_size // 4)}, "
               f"base {m['base']:g} by the NTK rule b' = b s^(r/(r-2)), s = 4) and, as the control, at "
               f"T = {t} (batch {shared.train.batch_size}): the same tokens; three seeds each. Per-position "
               f"loss on {m['windows']} windows of {long_t + 1} tokens from the start of held-out documents of "
               "the general domains; \"base raised\" is the pretrained model with the new base before "
               "any training.")
    return Section(
        part=PART, title="Long-context continuation: loss beyond the pretraining context",
        claim=("A short continuation at the longer length, with a raised RoPE base and long documents "
               "up-sampled within each source, extends the usable context: the loss at positions "
               "beyond the old context falls to (or below) its level within it, while a model "
               "trained only at the old length gets worse there."),
        source="Fu et al. 2024, Data Engineering for Scaling Language Models to 128K Context (Sections 3-4)",
        setting=setting, table=table, verdict=j["verdict"], why=why, images=[str(image)],
        numbers={"bands": {n: {k: float(band_means(x, *r).mean()) for k, r in b.items()} for n, x in models.items()},
                 "gap_long": j["gap_long"], "gap_pretrained": j["pre_gap"], "beyond": j["beyond"],
                 "windows": m["windows"], "tests": [vars(x) for x in j["tests"]]})


def _plot(ctx: Context, models: dict[str, np.ndarray], t: int) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = max(1, t // 4)
    styles = [("tab:gray", "-"), ("tab:purple", "--"), ("tab:blue", "-"), ("tab:orange", "-")]
    for (name, losses), (color, ls) in zip(models.items(), styles):
        curve = losses.mean(axis=0)
        smooth = np.convolve(curve, np.ones(width) / width, mode="valid")
        ax.plot(np.arange(len(smooth)) + (width - 1) / 2, smooth, color=color, ls=ls, label=name)
    ax.axvline(t, color="k", ls=":", lw=1, label=f"pretraining context T = {t}")
    ax.set_xlabel("position in the held-out window (tokens of context)")
    ax.set_ylabel(f"next-token loss (nats), {width}-position moving mean")
    ax.set_title("held-out loss by position")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = ctx.image(PART, "position_loss")
    save_figure(fig, path)
    return path
