"""More of the bad-input table (tests/bad_input_cases.py): what an operator mistypes or a disk
holds for generate, compile, verify, eval --harness, doremi, sweep, dcpt, vocab extend and
tokenize, and config values that cannot be right. ``MORE[name] = (argv maker, text the one
error line must name)``; each runs in its own empty folder ``r``."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from bad_input_cases import MODEL, TINY, ckpt_with, fake_run, hf_dir, mkdir, sched, tok, write
from conftest import save_word_level_tokenizer, word_level_vocab


def gen(*extra: str, ckpt=None):
    """`generate` of a checkpoint (a missing one unless ``ckpt`` makes one) with ``extra``."""
    return lambda r: ["generate", "--checkpoint", str(ckpt(r) if ckpt else r / "ck"), *extra]


def comp(*extra: str, config: str = TINY):
    return lambda r: ["compile", "--config", config, *extra]


def csv(text: str):
    return write("runs.csv", text)


def fit(make_csv, *extra: str):
    return lambda r: ["dcpt", "fit", str(make_csv(r)), "--out", str(r / "fit.json"), *extra]


def ratio(make_fit, *extra: str):
    return lambda r: ["dcpt", "ratio", "--fit", str(make_fit(r)), *extra]


def vocab(*extra: str, corpus=None, ckpt=None):
    def argv(r: Path):
        base = save_word_level_tokenizer(r / "base.json", word_level_vocab(["hello", "world"]))
        c = corpus(r) if corpus else write("c.txt", "hello world\n" * 20)(r)
        return ["vocab", "extend", "--base-tokenizer", str(base), "--corpus", str(c), "--new-tokens", "4",
                "--checkpoint", str(ckpt(r) if ckpt else r / "ck"), "--out", str(r / "out"), *extra]
    return argv


def sweep_file(body: str):
    return lambda r: ["sweep", "--config", str(write("sweep.py", body)(r)), "--print-commands"]


def doremi_with(*overrides: str):
    return lambda r: ["doremi", "--config", str(Path(TINY).parent / "doremi_demo.py"),
                      f"--config.run_dir={r / 'dr'}", *[f"--config.{o}" for o in overrides]]


GOOD_CSV = "run,N,D,r,general_loss,domain_loss\n" + "".join(
    f"r{i},{n},{d},{r},{3 + 1e3 / n + 1e4 / d:.4f},{3.5 - r:.4f}\n"
    for i, (n, d, r) in enumerate((n, d, r) for n in (1e6, 4e6) for d in (1e8, 3e8) for r in (0.1, 0.3, 0.5)))
FIT = {"E": 1.0, "A": 1.0, "alpha": 0.3, "B": 1.0, "beta": 0.3, "C": 0.1, "gamma": 0.5, "eps": 0.01}


def txt(text: str, name: str = "in.txt"):
    return write(name, text)


MORE = {
    # generate
    **{f"generate {flag} {v}": (gen("--prompt", "x", flag, v), name) for flag, v, name in [
        ("--max-new-tokens", "0", "--max-new-tokens"), ("--max-new-tokens", "-3", "--max-new-tokens"),
        ("--top-k", "-1", "top_k"), ("--top-p", "1.5", "top_p"), ("--top-p", "nan", "top_p"),
        ("--temperature", "nan", "temperature"), ("--temperature", "inf", "temperature"),
        ("--batch-size", "0", "--batch-size"), ("--batch-size", "-2", "--batch-size")]},
    "generate checkpoint missing": (gen("--prompt", "x"), "ck"),
    "generate checkpoint is a file": (gen("--prompt", "x", ckpt=write("ck", "x")), "ck"),
    "generate checkpoint empty dir": (gen("--prompt", "x", ckpt=mkdir("ck")), "ck"),
    "generate checkpoint model.json garbage": (gen("--prompt", "x", ckpt=ckpt_with("{oops")), "model.json"),
    "generate checkpoint model.json zero heads": (gen("--prompt", "x", ckpt=ckpt_with({**MODEL, "num_heads": 0})),
                                                  "num_heads"),
    "generate HF dir without weights": (gen("--prompt", "x", ckpt=lambda r: hf_dir(r, "ck")), "ck"),
    "generate prompts file not JSON": (lambda r: ["generate", "--checkpoint", str(r / "ck"), "--prompts-file",
                                                  str(txt("hello\n", "p.jsonl")(r))], "p.jsonl line 1"),
    "generate prompts file is a folder": (lambda r: ["generate", "--checkpoint", str(r / "ck"), "--prompts-file",
                                                     str(mkdir("p")(r))], "p"),
    "generate max-new-tokens not a number": (gen("--prompt", "x", "--max-new-tokens", "ten"), "--max-new-tokens"),
    # compile
    "compile unknown topology": (comp("--topology", "v9z-8"), "v9z-8"),
    "compile empty topology": (comp("--topology", ""), "topology"),
    "compile zero chips": (comp("--topology", "0xh100"), "0xh100"),
    "compile config missing": (lambda r: ["compile", "--config", str(r / "nope.py"), "--topology", "v5e-8"],
                               "nope.py"),
    "compile fit unknown": (comp("--topology", "v5e-8", "--fit", "lr"), "--fit"),
    "compile without topology": (comp(), "--topology"),
    # verify
    "verify a params dir with garbage model.json": (lambda r: ["verify", str(ckpt_with("{x")(r))], "model.json"),
    "verify a params dir with a list model.json": (lambda r: ["verify", str(ckpt_with("[]")(r))], "model.json"),
    "verify a run of metrics only": (lambda r: ["verify", str(fake_run("metrics.jsonl")(r))], "run"),
    "verify a run whose steps are files": (lambda r: ["verify", str(_steps_are_files(r))], "no complete checkpoint"),
    # eval --harness
    "eval harness empty task list": (lambda r: ["eval", "--checkpoint", str(r), "--harness", ","], "harness"),
    "eval harness fewshot not a number": (lambda r: ["eval", "--checkpoint", str(r), "--harness", "x",
                                                     "--harness-fewshot", "two"], "--harness-fewshot"),
    "eval tasks file missing": (lambda r: ["eval", "--checkpoint", str(r / "ck"), "--tasks", str(r / "t.jsonl")],
                                "t.jsonl"),
    "eval limit not a number": (lambda r: ["eval", "--checkpoint", "x", "--limit", "all"], "--limit"),
    "eval config missing": (lambda r: ["eval", "--checkpoint", str(r), "--config", str(r / "c.json")], "c.json"),
    "eval config garbage": (lambda r: ["eval", "--checkpoint", str(r), "--config", str(txt("{", "c.json")(r))],
                            "c.json"),
    "eval domains without config": (lambda r: ["eval", "--checkpoint", str(r), "--domains", "a,b"], "--domains"),
    # doremi
    "doremi config missing": (lambda r: ["doremi", "--config", str(r / "nope.py")], "nope.py"),
    "doremi unknown stage": (lambda r: ["doremi", "--config", TINY, "--stage", "final"], "--stage"),
    # sweep
    "sweep config missing": (lambda r: ["sweep", "--config", str(r / "nope.py")], "nope.py"),
    "sweep without get_grid": (sweep_file("from cpt_jax.config import base\n\n\ndef get_config():\n"
                                          "    return base()\n"), "get_grid"),
    "sweep syntax error": (sweep_file("def get_config(:\n"), "syntax"),
    # dcpt fit / ratio
    "dcpt fit CSV missing": (fit(lambda r: r / "none.csv"), "none.csv"),
    "dcpt fit CSV empty": (fit(csv("")), "runs.csv"),
    "dcpt fit CSV header only": (fit(csv("run,N,D,r,general_loss,domain_loss\n")), "runs.csv"),
    "dcpt fit CSV missing column": (fit(csv("run,N,D,general_loss,domain_loss\na,1,1,3,3\n")), "r"),
    "dcpt fit CSV not numbers": (fit(csv("run,N,D,r,general_loss,domain_loss\na,big,1e8,0.1,3,3\n")), "runs.csv"),
    "dcpt fit CSV negative N": (fit(csv("run,N,D,r,general_loss,domain_loss\na,-1e6,1e8,0.1,3,3\n")), "N"),
    "dcpt fit CSV ratio above 1": (fit(csv("run,N,D,r,general_loss,domain_loss\na,1e6,1e8,1.5,3,3\n")), "r"),
    "dcpt fit CSV NaN loss": (fit(csv("run,N,D,r,general_loss,domain_loss\na,1e6,1e8,0.1,nan,3\n")), "loss"),
    "dcpt fit eps zero": (fit(csv(GOOD_CSV), "--eps", "0"), "eps"),
    "dcpt fit base missing": (fit(csv(GOOD_CSV), "--base", "nofit.json"), "nofit.json"),
    "dcpt fit holdout unknown": (fit(csv(GOOD_CSV), "--holdout", "Q=1"), "Q=1"),
    "dcpt ratio fit missing": (ratio(lambda r: r / "fit.json", "--N", "1e6", "--D", "1e8"), "fit.json"),
    "dcpt ratio fit garbage": (ratio(txt("{", "fit.json"), "--N", "1e6", "--D", "1e8"), "fit.json"),
    "dcpt ratio fit not an object": (ratio(txt("[1]", "fit.json"), "--N", "1e6", "--D", "1e8"), "fit.json"),
    "dcpt ratio N zero": (ratio(txt(json.dumps(FIT), "fit.json"), "--N", "0", "--D", "1e8"), "N"),
    "dcpt ratio N not a number": (ratio(txt(json.dumps(FIT), "fit.json"), "--N", "big", "--D", "1e8"), "--N"),
    "dcpt ratio D and compute": (ratio(txt(json.dumps(FIT), "fit.json"), "--N", "1e6", "--D", "1e8",
                                       "--compute", "1e18"), "--compute"),
    "dcpt ratio negative tolerance": (ratio(txt(json.dumps(FIT), "fit.json"), "--N", "1e6", "--D", "1e8",
                                            "--tolerance", "-0.1"), "tolerance"),
    # vocab extend
    "vocab extend corpus missing": (vocab(corpus=lambda r: r / "none.txt"), "none.txt"),
    "vocab extend checkpoint missing": (vocab(), "ck"),
    "vocab extend checkpoint is a file": (vocab(ckpt=write("ck", "x")), "ck"),
    "vocab extend base tokenizer garbage": (lambda r: ["vocab", "extend", "--base-tokenizer",
                                                       str(txt("{", "base.json")(r)), "--corpus", "c.txt",
                                                       "--new-tokens", "2", "--checkpoint", "ck", "--out", "o"],
                                            "base.json"),
    "vocab extend negative tokens": (lambda r: ["vocab", "extend", "--corpus", "c.txt", "--new-tokens", "-2",
                                                "--checkpoint", "x", "--out", "y"], "--new-tokens"),
    "vocab extend jsonl without the field": (vocab(corpus=write("c.jsonl", '{"body": "hello"}\n')), "text"),
    "vocab extend empty corpus": (vocab(corpus=write("c.txt", "")), "no documents"),
    # tokenize
    "tokenize input missing": (tok(lambda r: r / "none.txt"), "none.txt"),
    "tokenize empty folder": (tok(mkdir("in")), "in"),
    "tokenize val fraction above 1": (tok(txt("hello world\n"), "--val-fraction", "1.5"), "val_fraction"),
    "tokenize val fraction negative": (tok(txt("hello world\n"), "--val-fraction", "-0.1"), "val_fraction"),
    "tokenize zero workers": (tok(txt("hello world\n"), "--workers", "0"), "workers"),
    "tokenize zero max tokens": (tok(txt("hello world\n"), "--max-tokens", "0"), "max_tokens"),
    "tokenize negative eos": (tok(txt("hello world\n"), "--eos-id", "-1"), "EOS id -1 is not a token"),
    "tokenize eos beyond the vocab": (tok(txt("hello world\n"), "--eos-id", "999999"), "999999"),
    "tokenize jsonl without the field": (tok(write("in.jsonl", '{"body": "hello"}\n')), "text"),
    "tokenize jsonl bad line": (tok(write("in.jsonl", '{"text": "hello"}\n{oops\n')), "in.jsonl"),
    "tokenize gz truncated": (tok(write("in.txt.gz", gzip.compress(b"hello world " * 1000)[:60])), "in.txt.gz"),
    "tokenize parquet garbage": (tok(write("in.parquet", b"PAR1 not really")), "in.parquet"),
    "tokenize unknown extension": (tok(write("in.docx", "hello")), "in.docx"),
    "tokenize domain with a slash": (lambda r: _tokenize_into(r / "data", r, "../evil"), "domain"),
    "tokenize out is a file": (lambda r: _tokenize_into(write("data", "x")(r), r), "data"),
    "tokenize tokenizer missing": (lambda r: ["tokenize", "--input", str(txt("hello\n")(r)), "--domain", "d",
                                              "--out", str(r / "data"), "--tokenizer", str(r / "t.json")], "t.json"),
    # config values (one key each)
    **{f"override {o}": (sched(o), o.split("=")[0]) for o in [
        "optim.peak_lr=-1", "optim.peak_lr=nan", "schedule.name=cosinee",
        "model.attention=fastest", "model.remat=sometimes", "model.param_dtype=float13",
        "mesh.distributed=maybe", "mesh.heartbeat_timeout_s=0", "mesh.init_timeout_s=-1",
        "data.source=ftp", "train.steps=0", "train.log_every=0",
        "model.attention_chunk=0", "train.steps=many"]},
    **{f"override {o}": (sched(o), o.split("=")[0].split(".")[1]) for o in [
        "schedule.warmup_frac=1.5", "schedule.min_lr_ratio=-0.1", "schedule.decay_shape=zigzag",
        "model.hidden_act=relu9", "schedule.cooldown_frac=2"]},
    "doremi override of an unknown key": (doremi_with("doremi.nonsense=1"), "doremi.nonsense"),
}


def _steps_are_files(r: Path) -> Path:
    run = fake_run("checkpoints")(r)
    (run / "checkpoints" / "2").write_text("not a step")
    return run


def _tokenize_into(out: Path, r: Path, domain: str = "d") -> list[str]:
    tk = save_word_level_tokenizer(r / "tok.json", word_level_vocab(["hello", "world"]))
    return ["tokenize", "--input", str(txt("hello world\n")(r)), "--domain", domain, "--out", str(out),
            "--tokenizer", str(tk), "--workers", "1"]


def _step_without_params(r: Path) -> Path:
    step = fake_run("checkpoints")(r) / "checkpoints" / "4"
    step.mkdir()
    (step / "meta.json").write_text('{"step": 4}')
    return step


# damaged checkpoints `verify` is asked about: the answer is a report (exit 1, one FAILED line
# naming the checkpoint on stdout), not a refusal of the input
REPORTED = {
    "verify a step dir without params": (lambda r: ["verify", str(_step_without_params(r))], "FAILED"),
    "verify a params checkpoint with an empty params item": (lambda r: ["verify", str(ckpt_with(MODEL)(r))],
                                                            "FAILED"),
}
