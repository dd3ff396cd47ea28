"""The bad-input table of tests/test_bad_inputs.py: ``CASES[name] = (argv maker, text the one
error line must name)``, and the crafted files (torch ``.bin`` pickles, safetensors headers,
Hugging Face folders, run directories) the cases are made of."""

from __future__ import annotations

import gzip
import json
import os
import struct
import time
import zipfile
from pathlib import Path

import numpy as np

from conftest import save_word_level_tokenizer, word_level_vocab

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.py")


# ---- crafted files ---------------------------------------------------------------------------

def _int(n: int) -> bytes:
    return b"I" + str(n).encode() + b"\n"


def _str(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _tuple(items) -> bytes:
    return b"(" + b"".join(_int(i) for i in items) + b"t"


def craft_pickle(tensors, extra_global: bytes = b"") -> bytes:
    """A torch.save data.pkl: {name: _rebuild_tensor_v2(storage(key, numel), offset, shape, stride)}."""
    out = b"\x80\x02}"
    for name, key, numel, offset, shape, stride in tensors:
        pid = b"(" + _str("storage") + b"ctorch\nFloatStorage\n" + _str(key) + _str("cpu") + _int(numel) + b"tQ"
        out += _str(name) + b"ctorch._utils\n_rebuild_tensor_v2\n(" + pid + _int(offset) + _tuple(shape) \
            + _tuple(stride) + b"\x89}tRs"
    return out + extra_global + b"."


def craft_bin(path: Path, tensors, storages: dict[str, bytes], compress: bool = False,
              extra_global: bytes = b"") -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", craft_pickle(tensors, extra_global))
        z.writestr("archive/byteorder", "little")
        for key, raw in storages.items():
            z.writestr(f"archive/data/{key}", raw)
    return path


def craft_safetensors(path: Path, header: dict, data: bytes, n: int | None = None) -> Path:
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    path.write_bytes(struct.pack("<Q", len(h) if n is None else n) + h + data)
    return path


HF_CONFIG = {"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "vocab_size": 64,
             "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 64, "rotary_pct": 0.25, "rotary_emb_base": 10000,
             "max_position_embeddings": 64, "layer_norm_eps": 1e-5, "use_parallel_residual": True,
             "hidden_act": "gelu", "tie_word_embeddings": False}


def hf_dir(root: Path, name: str, config=HF_CONFIG) -> Path:
    d = root / name
    d.mkdir()
    (d / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    return d


F4 = np.arange(4, dtype="<f4").tobytes()


def make_hf_bin(root: Path, name: str, **kw) -> Path:
    d = hf_dir(root, name)
    craft_bin(d / "pytorch_model.bin", **kw)
    return d


def make_hf_st(root: Path, name: str, header, data, n=None) -> Path:
    d = hf_dir(root, name)
    craft_safetensors(d / "model.safetensors", header, data, n)
    return d


# ---- the table -------------------------------------------------------------------------------

def cfg_file(root: Path, body: str, name: str = "exp.py") -> str:
    p = root / name
    p.write_text("from cpt_jax.config import base\n\n\ndef get_config():\n    c = base()\n"
                 + "".join(f"    {line}\n" for line in body.splitlines()) + "    return c\n")
    return str(p)


def sched(*overrides: str):
    return lambda r: ["schedule", "--config", TINY, "--out", str(r / "s.png"),
                      *[f"--config.{o}" for o in overrides]]


def sched_file(body: str):
    return lambda r: ["schedule", "--config", cfg_file(r, body), "--out", str(r / "s.png")]


def tok(make_input, *extra: str):
    def argv(r: Path):
        tk = save_word_level_tokenizer(r / "tok.json", word_level_vocab(["hello", "world"]))
        return ["tokenize", "--input", str(make_input(r)), "--domain", "d", "--out", str(r / "data"),
                "--tokenizer", str(tk), "--workers", "1", *extra]
    return argv


def write(name: str, data: bytes | str):
    def make(r: Path) -> Path:
        p = r / name
        p.write_bytes(data if isinstance(data, bytes) else data.encode())
        return p
    return make


def conv(make_src, flag="--from-hf"):
    return lambda r: ["convert", flag, str(make_src(r)), "--to", str(r / "out")]


GZ = gzip.compress(np.random.RandomState(0).bytes(50000))
ok_tensor = [("gpt_neox.embed_in.weight", "0", 4, 0, (2, 2), (2, 1))]

CASES = {
    # configs
    "config file missing": (lambda r: ["schedule", "--config", str(r / "nope.py")], "nope.py"),
    "config syntax error": (lambda r: ["schedule", "--config", str(write("e.py", "def get_config(:\n")(r))], "syntax"),
    "config without get_config": (lambda r: ["schedule", "--config", str(write("e.py", "x = 1\n")(r))], "get_config"),
    "get_config returns None": (lambda r: ["schedule", "--config", str(write("e.py", "def get_config():\n    return None\n")(r))], "NoneType"),
    "wrong type in config file": (sched_file('c.train.steps = "abc"'), "steps"),
    "unknown key in config file": (sched_file("c.train.stepz = 3"), "stepz"),
    "section replaced by a scalar": (sched_file("c.unlock()\nc.train = 3"), "train"),
    "config file raises": (sched_file("raise RuntimeError('boom')"), "boom"),
    "unknown override": (sched("train.nope=1"), "train.nope"),
    "override bad int": (sched("train.steps=ten"), "train.steps"),
    "override bad bool": (sched("train.progress=maybe"), "train.progress"),
    "override bad float": (sched("optim.peak_lr=fast"), "optim.peak_lr"),
    "log_every 0": (sched("train.log_every=0"), "train.log_every"),
    "steps 0": (sched("train.steps=0"), "train.steps"),
    "batch not divisible": (sched("train.micro_batches=3"), "micro_batches"),
    "negative lr": (sched("optim.peak_lr=-1"), "optim.peak_lr"),
    "nan lr": (sched("optim.peak_lr=nan"), "optim.peak_lr"),
    "b1 of 1": (sched("optim.b1=1.0"), "optim.b1"),
    "unknown schedule": (sched("schedule.name=bogus"), "schedule.name"),
    "warmup_frac 2": (sched("schedule.warmup_frac=2"), "warmup_frac"),
    "start_lr without warmup": (sched("schedule.start_lr=1e-4"), "start_lr"),
    "heads do not divide d": (sched("model.num_heads=5"), "num_heads"),
    "unknown preset": (sched("model.preset=huge"), "model.preset"),
    "unknown data source": (sched("data.source=web"), "data.source"),
    "replay fraction 1": (sched("data.replay_fraction=1.0"), "replay_fraction"),
    "mesh axis 0": (sched("mesh.data=0"), "mesh.data"),
    "negative workers": (sched("data.workers=-1"), "data.workers"),
    "negative skip_nonfinite": (sched("optim.skip_nonfinite=-1"), "skip_nonfinite"),
    "negative eval_every": (sched("train.eval_every=-1"), "eval_every"),
    "ema of 1": (sched("lawa.ema=1.0"), "lawa.ema"),
    "rotary_pct 2": (sched("model.rotary_pct=2"), "rotary_pct"),
    "seq_len over context": (sched("train.seq_len=4096"), "seq_len"),
    "unknown dtype": (sched("model.param_dtype=float8"), "param_dtype"),
    "bad schedule phases": (sched("schedule.phases=cosine:x"), "phase"),
    # data files
    "input missing": (tok(lambda r: r / "missing.txt"), "missing.txt"),
    "input of unknown type": (tok(write("a.csv", "x")), "a.csv"),
    "input dir without text": (tok(lambda r: (r / "empty").mkdir() or r / "empty"), "empty"),
    "whitespace-only input": (tok(write("a.txt", " \n\n\t\n")), "no non-empty document"),
    "non-UTF-8 with --strict": (tok(write("a.txt", b"hello \xff world"), "--strict"), "UTF-8"),
    "truncated .txt.gz": (tok(write("a.txt.gz", GZ[:3000])), "a.txt.gz"),
    "truncated .jsonl.gz": (tok(write("a.jsonl.gz", GZ[:3000])), "a.jsonl.gz"),
    "invalid JSON line": (tok(write("a.jsonl", '{oops\n{"text": "hello"}\n')), "a.jsonl:1"),
    "JSON line without text": (tok(write("a.jsonl", '{"body": "hello"}\n')), "text"),
    "not a parquet file": (tok(write("a.parquet", "PAR1 nope")), "a.parquet"),
    "val fraction 1.5": (tok(write("a.txt", "hello"), "--val-fraction", "1.5"), "val_fraction"),
    "workers 0": (lambda r: tok(write("a.txt", "hello"))(r)[:-2] + ["--workers", "0"], "workers"),
    "max tokens 0": (tok(write("a.txt", "hello"), "--max-tokens", "0"), "max_tokens"),
    "bad domain name": (lambda r: [a if a != "d" else "a/b" for a in tok(write("a.txt", "hello"))(r)], "a/b"),
    "empty doc separator": (tok(write("a.txt", "hello"), "--doc-sep", ""), "doc-sep"),
    "tokenizer missing": (lambda r: tok(write("a.txt", "hello"))(r)[:-4] + ["--tokenizer", str(r / "t.json"), "--workers", "1"], "t.json"),
    # Hugging Face folders and checkpoints
    "hf dir missing": (conv(lambda r: r / "nohf"), "nohf"),
    "hf dir without config": (conv(lambda r: (r / "hf").mkdir() or r / "hf"), "hf"),
    "hf config not JSON": (conv(lambda r: hf_dir(r, "hf", "{nope")), "hf"),
    "hf config not an object": (conv(lambda r: hf_dir(r, "hf", "[1, 2]")), "hf"),
    "hf dir without weights": (conv(lambda r: hf_dir(r, "hf")), "no weights"),
    "bin tensor beyond storage": (conv(lambda r: make_hf_bin(r, "hf", tensors=[("w", "0", 4, 0, (1000, 1000), (1000, 1))], storages={"0": F4})), "beyond its storage"),
    "bin offset beyond storage": (conv(lambda r: make_hf_bin(r, "hf", tensors=[("w", "0", 4, 3, (2,), (1,))], storages={"0": F4})), "beyond its storage"),
    "bin negative stride": (conv(lambda r: make_hf_bin(r, "hf", tensors=[("w", "0", 4, 3, (4,), (-1,))], storages={"0": F4})), "stride"),
    "bin negative offset": (conv(lambda r: make_hf_bin(r, "hf", tensors=[("w", "0", 4, -2, (2,), (1,))], storages={"0": F4})), "offset"),
    "bin huge shape overflow": (conv(lambda r: make_hf_bin(r, "hf", tensors=[("w", "0", 4, 0, (2**62, 2**62), (0, 0))], storages={"0": F4})), "beyond its storage"),
    "bin storage shorter than numel": (conv(lambda r: make_hf_bin(r, "hf", tensors=ok_tensor, storages={"0": F4[:8]})), "storage 0"),
    "bin zip bomb": (conv(lambda r: make_hf_bin(r, "hf", tensors=[("w", "0", 2**23, 0, (2**23,), (1,))], storages={"0": bytes(2**25)}, compress=True)), "out of proportion"),
    "bin storage member missing": (conv(lambda r: make_hf_bin(r, "hf", tensors=ok_tensor, storages={})), "missing"),
    "bin pickle runs code": (conv(lambda r: make_hf_bin(r, "hf", tensors=[], storages={}, extra_global=b"0cos\nsystem\n(X\x04\x00\x00\x00trueCtR")), "os.system"),
    "bin not a zip": (conv(lambda r: (lambda d: (d / "pytorch_model.bin").write_bytes(b"\x80\x02}.") and d)(hf_dir(r, "hf"))), "pytorch_model.bin"),
    "safetensors negative offset": (conv(lambda r: make_hf_st(r, "hf", {"w": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}}, F4)), "model.safetensors"),
    "safetensors overlapping": (conv(lambda r: make_hf_st(r, "hf", {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, F4)), "model.safetensors"),
    "safetensors beyond file": (conv(lambda r: make_hf_st(r, "hf", {"w": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}}, F4)), "model.safetensors"),
    "safetensors header too large": (conv(lambda r: make_hf_st(r, "hf", {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, F4, n=10**12)), "model.safetensors"),
    "safetensors shape mismatch": (conv(lambda r: make_hf_st(r, "hf", {"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}}, F4)), "model.safetensors"),
    "safetensors unknown dtype": (conv(lambda r: make_hf_st(r, "hf", {"w": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 16]}}, F4)), "model.safetensors"),
    "shard index not JSON": (conv(lambda r: (lambda d: (d / "model.safetensors.index.json").write_text("{") and d)(hf_dir(r, "hf"))), "index.json"),
    "shard missing": (conv(lambda r: (lambda d: (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "s1.safetensors"}})) and d)(hf_dir(r, "hf"))), "s1.safetensors"),
    "checkpoint missing": (conv(lambda r: r / "ckpt", "--from"), "ckpt"),
    "checkpoint is a file": (conv(write("ckpt", "x"), "--from"), "ckpt"),
    "checkpoint dir of nothing": (conv(lambda r: (r / "ckpt").mkdir() or r / "ckpt", "--from"), "ckpt"),
    "checkpoint model.json garbage": (conv(lambda r: ((r / "ckpt" / "params").mkdir(parents=True), (r / "ckpt" / "model.json").write_text("{x"))[0] or r / "ckpt", "--from"), "model.json"),
    # command-line arguments
    "unknown verb": (lambda r: ["fly"], "fly"),
    "missing required argument": (lambda r: ["convert", "--from-hf", str(r)], "--to"),
    "both sources": (lambda r: ["convert", "--from-hf", "a", "--from", "b", "--to", "c"], "--from"),
    "unknown option": (lambda r: ["schedule", "--config", TINY, "--bogus"], "--bogus"),
    "override on a verb without config": (lambda r: ["convert", "--from-hf", "a", "--to", "b", "--config.x=1"], "--config"),
    "average missing checkpoint": (lambda r: ["average", "--ckpt", str(r / "c1"), "--out", str(r / "avg")], "c1"),
    "average into a non-empty dir": (lambda r: (r / "avg").mkdir() or (r / "avg" / "x").write_text("keep") and ["average", "--ckpt", str(r / "c1"), "--out", str(r / "avg")], "avg"),
    "average out is a file": (lambda r: (r / "avg").write_text("keep") and ["average", "--ckpt", str(r / "c1"), "--out", str(r / "avg")], "avg"),
    "average run missing": (lambda r: ["average", "--run", str(r / "run"), "--last", "2", "--out", str(r / "avg")], "run"),
    "average steps not integers": (lambda r: ["average", "--run", str(r), "--steps", "a,b", "--out", str(r / "avg")], "--steps"),
    "eval without a checkpoint": (lambda r: ["eval"], "--checkpoint"),
    "eval harness-out without harness": (lambda r: ["eval", "--checkpoint", str(r), "--tasks", "none", "--harness-out", str(r / "h.json")], "--harness"),
    "eval harness-fewshot negative": (lambda r: ["eval", "--checkpoint", str(r), "--tasks", "none", "--harness", "x", "--harness-fewshot", "-1"], "--harness-fewshot"),
    "generate without prompts": (lambda r: ["generate", "--checkpoint", str(r / "ckpt")], "no prompts"),
    "generate negative temperature": (lambda r: ["generate", "--checkpoint", str(r / "ckpt"), "--prompt", "x", "--temperature", "-1"], "temperature"),
    "generate top-p zero": (lambda r: ["generate", "--checkpoint", str(r / "ckpt"), "--prompt", "x", "--top-p", "0"], "top_p"),
    "generate prompts file missing": (lambda r: ["generate", "--checkpoint", str(r / "ckpt"), "--prompts-file", str(r / "p.jsonl")], "p.jsonl"),
    "generate prompts file not strings": (lambda r: (r / "p.jsonl").write_text('"ok"\n[1]\n') and ["generate", "--checkpoint", str(r / "ckpt"), "--prompts-file", str(r / "p.jsonl")], "p.jsonl line 2"),
}


# ---- more: impossible model values, outputs that belong to someone else, damaged run dirs ------

def hf_with(**values):
    """An HF folder whose config.json has ``values`` changed (model values that cannot be right)."""
    return lambda r: hf_dir(r, "hf", {**HF_CONFIG, **values})


def ckpt_with(model) -> callable:
    """A params checkpoint folder with this model.json (and an empty params/)."""
    def make(r: Path) -> Path:
        (r / "ckpt" / "params").mkdir(parents=True)
        (r / "ckpt" / "model.json").write_text(model if isinstance(model, str) else json.dumps(model))
        return r / "ckpt"
    return make


MODEL = {"vocab_size": 64, "hidden_size": 16, "num_layers": 1, "num_heads": 2}


def fake_run(*markers: str):
    """A run directory holding ``markers`` (what a training run leaves: checkpoints/, metrics,
    summary, lease) beside its config.json."""
    def make(r: Path) -> Path:
        run = r / "run"
        run.mkdir()
        (run / "config.json").write_text('{"seed": 0}')
        for name in markers:
            if name == "checkpoints":
                (run / name).mkdir()
            else:
                (run / name).write_text('{"step": 1}\n')
        return run
    return make


def foreign(r: Path) -> Path:
    """A folder of files no cpt-jax verb wrote (a downloaded model, say)."""
    (r / "dl").mkdir()
    (r / "dl" / "config.json").write_text('{"model_type": "gpt_neox"}')
    (r / "dl" / "model.safetensors").write_bytes(b"weights")
    return r / "dl"


def verify(make):
    return lambda r: ["verify", str(make(r))]


def mkdir(name: str):
    return lambda r: (r / name).mkdir() or r / name


def train_into(make_run, *extra: str):
    return lambda r: ["train", "--config", TINY, f"--config.run_dir={make_run(r)}",
                      "--config.train.progress=false", *extra]


def finished_without_checkpoints(r: Path) -> Path:
    run = fake_run("checkpoints")(r)
    (run / "summary.json").write_text(json.dumps({"steps": 5, "interrupted": None}))
    return run


def file_where_checkpoints_go(r: Path) -> Path:
    run = fake_run("metrics.jsonl")(r)
    (run / "checkpoints").write_text("not a folder")
    return run


def held_lease(r: Path) -> Path:
    import socket

    run = r / "run"
    run.mkdir()
    (run / "lease.json").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                                "heartbeat": time.time(), "start": time.time()}))
    return run


def saved_run(config: str | None, step: int = 2):
    """A run dir holding ``config`` as config.json (None: none) and one complete step."""
    def make(r: Path) -> Path:
        run = r / "run"
        (run / "checkpoints" / str(step) / "params").mkdir(parents=True)
        if config is not None:
            (run / "config.json").write_text(config)
        return run
    return make


RUN_MARKERS = ("checkpoints", "metrics.jsonl", "summary.json", "lease.json")
CASES.update({
    **{f"hf {k} {v!r}": (conv(hf_with(**{k: v})), name) for k, v, name in [
        ("layer_norm_eps", float("nan"), "layer_norm_eps"), ("layer_norm_eps", 0, "layer_norm_eps"),
        ("layer_norm_eps", -1e-5, "layer_norm_eps"), ("layer_norm_eps", float("inf"), "layer_norm_eps"),
        ("layer_norm_eps", "abc", "config.json"), ("num_attention_heads", 0, "num_heads"),
        ("num_attention_heads", -2, "num_heads"), ("num_attention_heads", 3, "divisible"),
        ("num_hidden_layers", 0, "num_layers"), ("hidden_size", 0, "hidden_size"),
        ("vocab_size", -5, "vocab_size"), ("vocab_size", "many", "config.json"),
        ("max_position_embeddings", 0, "max_position_embeddings"), ("rotary_pct", 1.5, "rotary_pct"),
        ("rotary_pct", float("nan"), "rotary_pct"), ("rotary_emb_base", 0, "rotary_emb_base"),
        ("rotary_emb_base", float("inf"), "rotary_emb_base"), ("intermediate_size", -1, "intermediate_size"),
        ("hidden_act", "swish9", "hidden_act"), ("model_type", "llama", "model_type")]},
    **{f"model.json {k} {v!r}": (conv(ckpt_with({**MODEL, k: v}), "--from"), k) for k, v in [
        ("num_heads", 0), ("num_layers", -1), ("hidden_size", 0), ("vocab_size", 0),
        ("layer_norm_eps", float("nan")), ("layer_norm_eps", -1.0), ("rotary_pct", 3.0)]},
    "model.json a list": (conv(ckpt_with("[1, 2]"), "--from"), "model.json"),
    "model.json empty": (conv(ckpt_with(""), "--from"), "model.json"),
    # outputs that are a run, or belong to another verb
    **{f"convert {flag} into a run dir with {m}": (
        (lambda flag, m: lambda r: ["convert", "--from", str(r / "src"), flag, str(fake_run(m)(r))])(flag, m),
        "is a training run directory") for flag in ("--to", "--to-hf") for m in RUN_MARKERS},
    **{f"average into a run dir with {m}": (
        (lambda m: lambda r: ["average", "--ckpt", str(r / "c1"), "--out", str(fake_run(m)(r))])(m),
        "is a training run directory") for m in RUN_MARKERS},
    "average --to-hf into a run dir": (lambda r: ["average", "--ckpt", str(r / "c1"), "--out", str(r / "avg"),
                                                  "--to-hf", str(fake_run("checkpoints")(r))], "training run"),
    "convert over a downloaded model": (lambda r: ["convert", "--from", str(r / "src"), "--to-hf",
                                                   str(foreign(r))], "not written by convert"),
    "convert --to over foreign files": (lambda r: ["convert", "--from", str(r / "src"), "--to",
                                                   str(foreign(r))], "not written by convert"),
    "convert --to a file": (lambda r: ["convert", "--from", str(r / "src"), "--to",
                                       str(write("out", "keep")(r))], "not a folder"),
    "average over foreign files": (lambda r: ["average", "--ckpt", str(r / "c1"), "--out", str(foreign(r))],
                                   "not written by average"),
    "vocab extend into a run dir": (lambda r: ["vocab", "extend", "--corpus", str(write("c.txt", "hi")(r)),
                                               "--new-tokens", "3", "--checkpoint", str(r / "src"),
                                               "--out", str(fake_run("checkpoints")(r))], "training run"),
    "vocab extend over foreign files": (lambda r: ["vocab", "extend", "--corpus", str(write("c.txt", "hi")(r)),
                                                   "--new-tokens", "3", "--checkpoint", str(r / "src"),
                                                   "--out", str(foreign(r))], "not written by vocab extend"),
    "vocab extend zero tokens": (lambda r: ["vocab", "extend", "--corpus", "c.txt", "--new-tokens", "0",
                                            "--checkpoint", "x", "--out", "y"], "--new-tokens"),
    # verify
    "verify missing path": (verify(lambda r: r / "nothing"), "nothing"),
    "verify a file": (verify(write("f.bin", "x")), "f.bin"),
    "verify an empty folder": (verify(mkdir("empty")), "empty"),
    "verify a Hugging Face folder": (verify(lambda r: hf_dir(r, "hf")), "Hugging Face"),
    "verify a run without steps": (verify(fake_run("checkpoints")), "no complete checkpoint"),
    "verify a run whose checkpoints is a file": (verify(file_where_checkpoints_go), "not a folder"),
    # eval and average sources
    "eval checkpoint missing": (lambda r: ["eval", "--checkpoint", str(r / "gone"), "--tasks", "none"], "gone"),
    "eval checkpoint is a file": (lambda r: ["eval", "--checkpoint", str(write("ck", "x")(r)), "--tasks", "none"], "ck"),
    "eval checkpoint empty dir": (lambda r: ["eval", "--checkpoint", str(mkdir("ck")(r)), "--tasks", "none"], "ck"),
    "eval negative limit": (lambda r: ["eval", "--checkpoint", str(mkdir("ck")(r)), "--limit", "-1"], "--limit"),
    "eval zero batch": (lambda r: ["eval", "--checkpoint", str(mkdir("ck")(r)), "--batch-size", "0"], "--batch-size"),
    "eval model.json NaN eps": (lambda r: ["eval", "--checkpoint", str(ckpt_with({**MODEL, "layer_norm_eps": float("nan")})(r)),
                                           "--tasks", "none"], "layer_norm_eps"),
    "average ckpt is an HF dir": (lambda r: ["average", "--ckpt", str(hf_dir(r, "hf")), "--out", str(r / "avg")], "params"),
    "average ckpt is a file": (lambda r: ["average", "--ckpt", str(write("c1", "x")(r)), "--out", str(r / "avg")], "c1"),
    "average ckpt empty dir": (lambda r: ["average", "--ckpt", str(mkdir("c1")(r)), "--out", str(r / "avg")], "c1"),
    "average ckpt with --last": (lambda r: ["average", "--ckpt", "a", "--last", "2", "--out", str(r / "avg")], "--run"),
    "average run whose checkpoints is a file": (lambda r: ["average", "--run", str(file_where_checkpoints_go(r)),
                                                           "--last", "1", "--out", str(r / "avg")], "checkpoints"),
    # config values of the new sections
    "storage timeout 0": (sched("storage.timeout_s=0"), "storage.timeout_s"),
    "storage timeout negative": (sched("storage.timeout_s=-5"), "storage.timeout_s"),
    "storage timeout nan": (sched("storage.timeout_s=nan"), "storage.timeout_s"),
    "force not a bool": (sched("train.force=perhaps"), "train.force"),
    "lease timeout 0": (sched("train.lease_timeout_s=0"), "lease_timeout_s"),
    "negative checkpoint every": (sched("checkpoint.every=-2"), "checkpoint.every"),
    "keep_steps not integers": (sched("checkpoint.keep_steps=a,b"), "keep_steps"),
    "eval_steps outside the run": (sched("train.eval_steps=999999"), "eval_steps"),
    "eval_steps not numbers": (sched("train.eval_steps=soon"), "eval_steps"),
    "negative vocab_chunk": (sched("train.vocab_chunk=-1"), "vocab_chunk"),
    # values that cannot be right, one key at a time
    **{f"override {o}": (sched(o), o.split("=")[0]) for o in [
        "train.micro_batches=0", "train.batch_size=0", "train.seq_len=0", "train.seq_len=-64",
        "train.eval_batches=0", "optim.b2=1.0", "optim.b1=-0.1", "optim.eps=-1", "optim.eps=nan",
        "optim.weight_decay=-1", "optim.grad_clip=-1", "model.num_layers=0", "model.hidden_size=0",
        "model.vocab_size=0", "model.num_heads=0", "model.rotary_emb_base=0",
        "model.max_position_embeddings=0", "data.replay_fraction=-0.1", "eval.batch_size=0",
        "eval.limit=-1", "checkpoint.keep_steps=1;2", "mesh.tensor=0", "mesh.fsdp=-3",
        "lawa.every=-1", "data.workers=abc", "storage.timeout_s=inf"]},
    **{f"override {o}": (sched(o), o.split("=")[0].split(".")[1]) for o in [
        "model.layer_norm_eps=0", "model.layer_norm_eps=nan", "model.layer_norm_eps=-1e-5",
        "model.intermediate_size=-4", "model.rope_scaling=0"]},
    # train into damaged or occupied run dirs
    "train run_dir is a file": (train_into(write("runfile", "x")), "not a folder"),
    "train checkpoints is a file": (train_into(file_where_checkpoints_go), "not a folder"),
    "train run dir in use": (train_into(held_lease), "in use by pid"),
    "train resume changing the seed": (train_into(saved_run('{"seed": 0}'), "--config.seed=5"), "seed: 0 -> 5"),
    "train resume changing the batch": (train_into(saved_run('{"train": {"batch_size": 8}}'), "--config.train.batch_size=4"),
                                        "train.batch_size: 8 -> 4"),
    "train resume changing the model": (train_into(saved_run('{"model": {"hidden_size": 32}}')), "model.hidden_size: 32 -> 64"),
    "train resume changing the data": (train_into(saved_run('{"data": {"replay_fraction": 0.5}}')), "data.replay_fraction"),
    "train resume without config or record": (train_into(saved_run(None)), "holds no run record"),
    "train resume with damaged config and no record": (train_into(saved_run("{oops")), "config.json is damaged"),
    "train resume with config not an object": (train_into(saved_run("[1]")), "config.json is damaged"),
    "train checkpoint past train.steps": (train_into(saved_run('{"seed": 0}', 200), "--config.train.steps=5"),
                                          "past train.steps"),
    "train finished run without checkpoints": (train_into(finished_without_checkpoints, "--config.train.steps=5"),
                                               "finished at step 5 earlier"),
})
