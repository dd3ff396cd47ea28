"""`cpt-jax report` on synthetic run directories: tables equal the files' last values, PNGs exist."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from cpt_jax import cli
from cpt_jax.errors import UserError
from cpt_jax.eval import report, runs

DOMAINS = ("books", "legal", "code")


def fake_run(path, peak: float, seed: int, doremi: bool = False, lawa: bool = False, eval_json: bool = False,
             steps: int = 200):
    """A continual-pretraining arm: code (downstream) improves, books/legal (upstream) drift up
    more with a higher re-warmed peak learning rate."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True)
    cfg = {"model": {"hidden_size": 64}, "optim": {"peak_lr": peak},
           "data": {"upstream": "books,legal", "downstream": "code"}}
    (path / "config.json").write_text(json.dumps(cfg))
    lines = []
    for step in range(10, steps + 1, 10):
        frac = step / steps
        lr = peak * (min(1.0, step / 20) * 0.5 * (1 + math.cos(math.pi * frac)) * 0.9 + 0.1)
        rec = {"step": step, "train/loss": 2.2 + 1.5 * math.exp(-5 * frac) + 0.03 * rng.standard_normal(),
               "lr": lr, "grad_norm": 0.5, "tokens": step * 512}
        if doremi:
            a = rng.dirichlet([5, 5, 5])
            rec.update({f"doremi/alpha/{d}": float(x) for d, x in zip(DOMAINS, a)})
        lines.append(rec)
        if step % 50 == 0:
            forget = peak * 400 * frac
            ev = {"step": step, "eval/books/loss": 2.9 + forget, "eval/legal/loss": 2.6 + 0.8 * forget,
                  "eval/code/loss": 2.0 + 1.2 * math.exp(-3 * frac) - 100 * peak}
            ev["eval/avg/loss"] = float(np.mean([ev[f"eval/{d}/loss"] for d in DOMAINS]))
            if lawa:
                ev.update({f"eval_lawa/{d}/loss": ev[f"eval/{d}/loss"] - 0.05 for d in DOMAINS})
            lines.append(ev)
    lines.append({"step": steps, "eval/books/ppl": 20.0})  # a later record without losses
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    final = [r for r in lines if "train/loss" in r][-1]["train/loss"]
    (path / "summary.json").write_text(json.dumps({"steps": steps, "final_train_loss": final}))
    if eval_json:
        (path / "eval.json").write_text(json.dumps({"tasks": {
            "piqa": {"acc": 0.5312, "acc_norm": 0.5204, "n": 1838, "chance": 0.5},
            "arc_easy": {"acc": 0.2711, "acc_norm": 0.2622, "n": 570, "chance": 0.2497}}}))
    return lines


def test_report_tables_equal_last_values_and_plots_exist(tmp_path):
    arms = {"const": (1e-4, {}), "rewarm_3e-4": (3e-4, {"lawa": True, "eval_json": True}),
            "rewarm_6e-4": (6e-4, {"doremi": True})}
    logs = {name: fake_run(tmp_path / "runs" / name, peak, i, **kw)
            for i, (name, (peak, kw)) in enumerate(arms.items())}
    out = tmp_path / "report"
    assert cli.main(["report", *[str(tmp_path / "runs" / n) for n in arms], "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    for png in ("train_loss.png", "eval_loss.png", "tradeoff.png", "forgetting_learning.png", "lr.png",
                "doremi_weights.png", "lawa.png"):
        assert (out / png).stat().st_size > 10_000 and f"]({png})" in text

    final = text.split("## Final validation loss")[1].split("\n## ")[0]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in final.splitlines() if line.startswith("| ")}
    header = rows.pop("run")
    for name, lines in logs.items():
        last = {k: [r[k] for r in lines if k in r][-1] for k in ("train/loss", *(f"eval/{d}/loss" for d in DOMAINS))}
        cells = dict(zip(header, rows[name]))
        assert cells["train loss"] == f"{last['train/loss']:.4f}"
        for d in DOMAINS:
            assert cells[d] == f"{last[f'eval/{d}/loss']:.4f}"
        losses = [last[f"eval/{d}/loss"] for d in DOMAINS]
        assert cells["avg"] == f"{np.mean(losses):.4f}"
        assert cells["upstream"] == f"{np.mean(losses[:2]):.4f}" and cells["downstream"] == f"{losses[2]:.4f}"
        worst = DOMAINS[int(np.argmax(losses))]
        assert cells["worst"] == f"{worst} ({max(losses):.4f})"
    assert re.search(r"\| rewarm_3e-4 \| 0\.5312 / 0\.5204 \(n=1838\) \| 0\.2711 / 0\.2622 \(n=570\) \|", text)
    lawa_avg = np.mean([logs["rewarm_3e-4"][-2][f"eval_lawa/{d}/loss"] for d in DOMAINS])
    assert dict(zip(header, rows["rewarm_3e-4"]))["LAWA avg"] == f"{lawa_avg:.4f}"


def test_report_without_optional_keys_and_bad_dirs(tmp_path):
    run = tmp_path / "plain"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "train/loss": 3.0, "lr": 1e-3}) + "\n")
    path = report.write_report([str(run)], tmp_path / "out")
    assert (tmp_path / "out" / "train_loss.png").is_file() and not (tmp_path / "out" / "lawa.png").exists()
    assert "| plain | 1 | 3.0000 |" in path.read_text()
    with pytest.raises(UserError, match="no metrics.jsonl"):
        runs.load_run(tmp_path / "out")


def test_report_bits_per_byte_and_accuracy_stderr(tmp_path):
    """bpb from metrics (last eval/<d>/bpb) or from eval.json's domains; avg = numpy mean;
    accuracies with their harness standard errors."""
    a = tmp_path / "a"
    fake_run(a, 1e-4, 0)
    bpb = {"books": [1.31, 1.27], "legal": [1.11, 1.02], "code": [0.91, 0.88]}
    extra = [{"step": s, **{f"eval/{d}/bpb": v[i] for d, v in bpb.items()}} for i, s in enumerate((100, 200))]
    with open(a / "metrics.jsonl", "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in extra))
    b = tmp_path / "b"
    fake_run(b, 3e-4, 1)
    n = 1838
    se = math.sqrt(0.53 * 0.47 / (n - 1))
    (b / "eval.json").write_text(json.dumps({
        "domains": {"books": {"loss": 3.0, "bpb": 1.4}, "code": {"loss": 2.0, "bpb": 0.95}},
        "tasks": {"piqa": {"acc": 0.53, "acc_stderr": se, "acc_norm": 0.53, "acc_norm_stderr": se,
                           "n": n, "chance": 0.5}}}))
    text = report.write_report([str(a), str(b)], tmp_path / "out").read_text()
    section = text.split("## Bits per byte")[1].split("\n## ")[0]
    assert "| run | books | legal | code | avg |" in section
    want_avg = np.mean([v[-1] for v in bpb.values()])
    assert f"| a | 1.2700 | 1.0200 | 0.8800 | {want_avg:.4f} |" in section
    assert "| b | 1.4000 | – | 0.9500 | – |" in section  # avg only over complete rows
    assert f"| b | 0.5300 ± {se:.4f} / 0.5300 ± {se:.4f} (n=1838) |" in text


def test_continuations_are_drawn_after_the_run_they_start_from(tmp_path):
    base = tmp_path / "pretrain"
    fake_run(base, 3e-4, 0, steps=200)
    arm = tmp_path / "arm"
    fake_run(arm, 1e-4, 1, steps=100)
    cfg = json.loads((arm / "config.json").read_text())
    cfg["train"] = {"init_from": str(base)}
    (arm / "config.json").write_text(json.dumps(cfg))
    loaded = {r.name: r for r in runs.load_runs([str(base), str(arm)])}
    assert loaded["pretrain"].step_offset == 0 and loaded["arm"].step_offset == 200
    steps, _ = loaded["arm"].series("train/loss")
    assert list(steps) == [200 + s for s in range(10, 101, 10)]
    assert runs.load_runs([str(arm)])[0].step_offset == 0  # its start is not in this report


def test_report_harness_table_from_eval_json_or_training_metrics(tmp_path):
    """eval.json's harness results, else the last harness/<task>/<metric> of metrics.jsonl."""
    a, b = tmp_path / "a", tmp_path / "b"
    fake_run(a, 1e-4, 0)
    fake_run(b, 3e-4, 1)
    with open(a / "metrics.jsonl", "a") as f:
        for step, acc in ((100, 0.41), (200, 0.47)):
            f.write(json.dumps({"step": step, "harness/tiny/acc": acc, "harness/tiny/acc_stderr": 0.1}) + "\n")
    (b / "eval.json").write_text(json.dumps({"harness": {
        "tiny": {"acc": 0.5, "acc_stderr": 0.1}, "wiki": {"word_perplexity": 31.25}}}))
    text = report.write_report([str(a), str(b)], tmp_path / "out").read_text()
    section = text.split("## lm-evaluation-harness")[1].split("\n## ")[0]
    assert "| run | tiny/acc | wiki/word_perplexity |" in section
    assert "| a | 0.4700 | – |" in section and "| b | 0.5000 | 31.2500 |" in section
