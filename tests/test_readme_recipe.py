"""The README's "Continue pretraining a Hugging Face Pythia" recipe, run as written at tiny scale:
a tiny transformers GPT-NeoX -> convert -> tokenize -> train -> convert back -> transformers."""

import glob
import json
import os
import re
import shlex
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPTNeoXConfig, GPTNeoXForCausalLM

from conftest import save_bpe_tokenizer
from cpt_jax import cli
from cpt_jax.model import checkpoint, pythia

jax.config.update("jax_default_matmul_precision", "highest")
torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
# what makes the recipe tiny: appended to its `train` line
TINY = ["--config.train.steps=12", "--config.train.batch_size=10", "--config.train.seq_len=16",
        "--config.train.eval_every=6", "--config.train.eval_batches=1", "--config.train.log_every=3",
        "--config.schedule.warmup_steps=2", "--config.model.compute_dtype=float32",
        "--config.mesh.fsdp=1", "--config.checkpoint.every=6"]
WORDS = {"mydomain": "def return lambda import yield class self none true false".split(),
         "general": "the a of and to in is was for on with as by at from".split()}


def recipe() -> tuple[list[str], str]:
    """The README section's shell commands (continuation lines joined) and its Python snippet."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Continue pretraining a Hugging Face Pythia", 1)[1].split("\n## ", 1)[0]
    bash = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    python = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    return bash.replace("\\\n", " ").strip().splitlines(), python


def _inputs(tmp: Path) -> None:
    rng = np.random.RandomState(0)
    for domain, folder in (("mydomain", "my_domain"), ("general", "general")):
        (tmp / folder).mkdir()
        docs = [" ".join(rng.choice(WORDS[domain], 40)) for _ in range(300)]
        with open(tmp / folder / "part0.jsonl", "w") as f:
            f.writelines(json.dumps({"text": d}) + "\n" for d in docs)


def _pythia_folder(path: Path) -> GPTNeoXForCausalLM:
    """Stands in for path/to/pythia-410m: a tiny GPT-NeoX and its byte-level BPE tokenizer."""
    torch.manual_seed(0)
    cfg = GPTNeoXConfig(vocab_size=320, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, bos_token_id=0, eos_token_id=0)
    model = GPTNeoXForCausalLM(cfg).eval()
    model.save_pretrained(path)
    texts = [" ".join(w) for w in WORDS.values()] * 50
    save_bpe_tokenizer(path / "tokenizer.json", texts, vocab_size=300)
    return model


def _run(line: str, hf: Path) -> None:
    args = shlex.split(line.replace("path/to/pythia-410m", str(hf)))
    assert args[0] == "cpt-jax"
    args = [m for a in args[1:] for m in (sorted(glob.glob(a)) if "*" in a else [a])]
    if args[0] == "train":
        args += TINY
    assert cli.main(args) == 0, line


@pytest.mark.slow
def test_readme_recipe_end_to_end(tmp_path, monkeypatch, capsys):
    lines, python = recipe()
    assert [shlex.split(x)[1] for x in lines] == ["convert", "tokenize", "tokenize", "train", "convert"]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    _inputs(tmp_path)
    start = _pythia_folder(tmp_path / "hf")
    for line in lines:
        _run(line, tmp_path / "hf")
    err = capsys.readouterr().err
    assert "runs/pythia-410m-mine" in err and "starting" in err

    run = tmp_path / "runs" / "pythia-410m-mine"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["hidden_size"] == 32 and cfg["model"]["vocab_size"] == 320  # from the checkpoint
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    step0 = next(r for r in records if r["step"] == 0)
    assert {"eval/general/loss", "eval/mydomain/loss"} <= set(step0)  # the starting point

    # the exported folder: transformers' logits equal our forward of the trained params
    out = tmp_path / "out" / "pythia-410m-mine"
    # found through the run's data dir manifest: the HF folder's own tokenizer.json
    assert (out / "tokenizer.json").read_bytes() == (tmp_path / "hf" / "tokenizer.json").read_bytes()
    params, mcfg = checkpoint.load_params(run)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("def return lambda the of")["input_ids"]
    hf_model = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        got = hf_model(torch.tensor([ids])).logits.numpy()
        before = start(torch.tensor([ids])).logits.numpy()
    ours = np.asarray(pythia.forward(params, np.asarray([ids], np.int32), mcfg))
    np.testing.assert_allclose(got, ours, atol=1e-4)
    assert np.abs(got - before).max() > 1e-3  # training moved the weights

    # the README's Python snippet, verbatim but for the folder's path
    exec(python.replace('"out/pythia-410m-mine"', repr(os.fspath(out))), {})
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert printed.startswith("The")
