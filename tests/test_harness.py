"""lm-evaluation-harness in process (`cpt-jax eval --harness`) against `lm_eval --model hf` on the
exported folder: local YAML tasks over local JSONL, one per request type, offline."""

import glob
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from conftest import TINY_TEXTS, tiny_pythia
from cpt_jax import cli
from cpt_jax import generate as gen
from cpt_jax.errors import UserError
from cpt_jax.eval import harness, tasks
from cpt_jax.eval import multiple_choice as mc

jax.config.update("jax_default_matmul_precision", "highest")
TASKS = "tiny_mc,tiny_ppl,tiny_gen"
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": "1"}


def _write_tasks(root: Path) -> Path:
    """Three YAML tasks over JSONL files in ``root/tasks``."""
    rng = np.random.default_rng(0)
    words = sorted({w for t in TINY_TEXTS for w in t.split()})
    phrase = lambda n: " ".join(rng.choice(words, n))
    d = root / "tasks"
    d.mkdir()
    rows = {
        "mc": [{"question": phrase(int(rng.integers(2, 9))), "choices": [phrase(int(rng.integers(1, 5)))
                                                                         for _ in range(4)],
                "label": int(rng.integers(4))} for _ in range(16)],
        "ppl": [{"text": phrase(int(n))} for n in (3, 12, 40, 70, 25)] + [{"text": TINY_TEXTS[3] * 3}],
        "gen": [{"prompt": phrase(int(rng.integers(1, 7))), "answer": phrase(1)} for _ in range(7)]
        + [{"prompt": TINY_TEXTS[3], "answer": "x"}],
    }
    for name, docs in rows.items():
        (d / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in docs))
    common = lambda name: (f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {d / name}.jsonl\n"
                           "test_split: test\n")
    (d / "tiny_mc.yaml").write_text(
        "task: tiny_mc\n" + common("mc") + "output_type: multiple_choice\ndoc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{label}}'\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    (d / "tiny_ppl.yaml").write_text(
        "task: tiny_ppl\n" + common("ppl") + "output_type: loglikelihood_rolling\ndoc_to_text: ''\n"
        "doc_to_target: '{{text}}'\nmetric_list:\n  - metric: word_perplexity\n"
        "  - metric: byte_perplexity\n  - metric: bits_per_byte\n")
    (d / "tiny_gen.yaml").write_text(
        "task: tiny_gen\n" + common("gen") + "output_type: generate_until\ndoc_to_text: '{{prompt}}'\n"
        "doc_to_target: '{{answer}}'\ngeneration_kwargs:\n  until: ['e']\n  do_sample: false\n"
        "  max_gen_toks: 12\nmetric_list:\n  - metric: exact_match\n")
    return d


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same tasks through `lm_eval --model hf` on the exported folder and `cpt-jax eval
    --harness` on the checkpoint."""
    root = tmp_path_factory.mktemp("harness")
    ckpt, hf_dir, params, config = tiny_pythia(root, max_len=48)
    task_dir = _write_tasks(root)
    env = {**os.environ, **OFFLINE, "HF_HOME": str(root / "hf_home")}
    cmd = [str(Path(sys.executable).parent / "lm_eval"), "--model", "hf", "--model_args",
           f"pretrained={hf_dir},dtype=float32", "--tasks", TASKS, "--include_path", str(task_dir),
           "--batch_size", "4", "--device", "cpu", "--output_path", str(root / "peer"), "--log_samples"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    peer = json.loads(Path(glob.glob(str(root / "peer" / "**" / "results_*.json"), recursive=True)[0]).read_text())
    samples = {t: [json.loads(line) for line in Path(glob.glob(str(root / "peer" / "**" / f"samples_{t}_*.jsonl"),
                                                               recursive=True)[0]).read_text().splitlines()]
               for t in TASKS.split(",")}
    for key, value in OFFLINE.items():
        os.environ.setdefault(key, value)
    os.environ["HF_HOME"] = str(root / "hf_home")
    out, ours_json = root / "ours.json", root / "eval.json"
    assert cli.main(["eval", "--checkpoint", str(ckpt), "--tokenizer", str(root / "tokenizer.json"),
                     "--harness", TASKS, "--harness-include", str(task_dir), "--harness-out", str(out),
                     "--out", str(ours_json), "--batch-size", "3"]) == 0
    lm = harness.HarnessLM(str(ckpt), tokenizer=str(root / "tokenizer.json"), batch_size=3)
    return SimpleNamespace(peer=peer, samples=samples, ours=json.loads(out.read_text()),
                           eval=json.loads(ours_json.read_text()), lm=lm, root=root, params=params,
                           config=config, task_dir=task_dir)


def _requests(sample):
    """The harness's requests of one logged document: ``args`` tuples, in order."""
    return [SimpleNamespace(args=tuple(v for _, v in sorted(a.items())))
            for _, a in sorted(sample["arguments"].items(), key=lambda kv: int(kv[0].rsplit("_", 1)[1]))]


def test_per_request_loglikelihoods_agree(runs):
    mc_samples = runs.samples["tiny_mc"]
    ours = runs.lm.loglikelihood([r for s in mc_samples for r in _requests(s)])
    peer = [r[0] for s in mc_samples for r in s["resps"]]  # [ll, is_greedy] as strings
    np.testing.assert_allclose([o[0] for o in ours], [float(p[0]) for p in peer], rtol=0, atol=1e-4)
    assert [o[1] for o in ours] == [p[1] == "True" for p in peer]
    assert np.std([float(p[0]) for p in peer]) > 1.0

    ppl_samples = runs.samples["tiny_ppl"]
    ours = runs.lm.loglikelihood_rolling([r for s in ppl_samples for r in _requests(s)])
    peer = [float(s["resps"][0][0]) for s in ppl_samples]
    # a document's sum reaches -2000, where the peer's fp32 number itself has steps of 1.2e-4
    np.testing.assert_allclose(ours, peer, rtol=float(np.finfo(np.float32).eps), atol=1e-4)
    n_tokens = [len(runs.lm.tok_encode(_requests(s)[0].args[0])) for s in ppl_samples]
    assert max(n_tokens) > 2 * runs.config.max_position_embeddings  # several rolling windows


def test_metrics_agree(runs):
    for task, metrics in (("tiny_mc", ("acc", "acc_norm")),
                          ("tiny_ppl", ("word_perplexity", "byte_perplexity", "bits_per_byte")),
                          ("tiny_gen", ("exact_match",))):
        for m in metrics:
            key = f"{m},none"
            np.testing.assert_allclose(runs.ours["results"][task][key], runs.peer["results"][task][key], rtol=1e-5)
            assert runs.eval["harness"][task][m] == runs.ours["results"][task][key]
    assert 0 < runs.peer["results"]["tiny_mc"]["acc,none"] < 1


def test_greedy_generations_are_identical(runs):
    samples = runs.samples["tiny_gen"]
    reqs = [r for s in samples for r in _requests(s)]
    ours = runs.lm.generate_until(reqs)
    assert ours == [s["resps"][0][0] for s in samples]
    full = gen.generate_text(runs.params, runs.config, runs.lm.tokenizer, [r.args[0] for r in reqs], 12)
    assert any("e" in f for f in full) and any(o != f for o, f in zip(ours, full))  # the stop string cut some
    assert any(o for o in ours)


def _builtin_scores(runs, params, config, path, limit=None):
    """The built-in scorer's result on tiny_mc's documents, written as a JSONL task of its own
    (each choice behind the harness's target delimiter, a space)."""
    docs = [json.loads(line) for line in (runs.task_dir / "mc.jsonl").read_text().splitlines()][:limit]
    path.write_text("".join(json.dumps({"context": d["question"], "choices": [" " + c for c in d["choices"]],
                                        "label": d["label"]}) + "\n" for d in docs))
    task = tasks.load_task(str(path))
    return mc.evaluate_tasks(params, config, [task], runs.lm.tokenizer, 4)[task.name]


def test_builtin_scorer_agrees_on_the_multiple_choice_task(runs):
    res = _builtin_scores(runs, runs.params, runs.config, runs.root / "mc_builtin.jsonl")
    assert res["acc"] == runs.peer["results"]["tiny_mc"]["acc,none"]
    assert res["acc_norm"] == runs.peer["results"]["tiny_mc"]["acc_norm,none"]


def test_unknown_task_and_missing_extra_are_one_line(runs, monkeypatch):
    with pytest.raises(UserError, match="unknown cpt-jax model argument 'chekpoint'"):
        harness.HarnessLM.create_from_arg_string("chekpoint=x", {"batch_size": 1, "device": "cpu"})
    with pytest.raises(UserError, match="unknown harness task 'nope'"):
        harness.evaluate(runs.lm, ["nope"], str(runs.task_dir))
    monkeypatch.setattr(harness, "register_model", None)
    with pytest.raises(UserError, match=r"pip install 'cpt-jax\[harness\]'"):
        harness.require()


def test_harness_tasks_during_training(runs, tmp_path, capsys):
    from cpt_jax.model import checkpoint
    from cpt_jax.train import loop
    from train_worker import load_cfg

    cfg = load_cfg(str(tmp_path / "run"), [
        "train.steps=2", "train.eval_every=1", "train.progress=true", "eval.harness_tasks=tiny_mc", "eval.limit=6",
        f"eval.harness_include={runs.task_dir}", f"eval.harness_tokenizer={runs.root / 'tokenizer.json'}"])
    loop.run(cfg, eval_sets={})
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = {r["step"]: r for r in records if "harness/tiny_mc/acc" in r}
    assert sorted(logged) == [1, 2] and "harness/tiny_mc/acc_norm_stderr" in logged[2]
    # the final params, scored by the built-in scorer on the same six documents
    params, mcfg = checkpoint.load_params(tmp_path / "run")
    res = _builtin_scores(runs, params, mcfg, tmp_path / "mc6.jsonl", limit=6)
    assert logged[2]["harness/tiny_mc/acc"] == res["acc"]
    assert logged[2]["harness/tiny_mc/acc_norm"] == res["acc_norm"]
    assert f"harness step 2 | tiny_mc/acc {res['acc']:.4f} | tiny_mc/acc_norm {res['acc_norm']:.4f}" \
        in capsys.readouterr().err


def test_registered_model_from_an_argument_string(runs):
    from lm_eval.api.registry import get_model

    cls = get_model("cpt-jax")
    assert cls is harness.HarnessLM
    lm = cls.create_from_arg_string(f"checkpoint={runs.root / 'ckpt'},tokenizer={runs.root / 'tokenizer.json'}",
                                    {"batch_size": 2, "max_batch_size": None, "device": "cpu"})
    reqs = [r for s in runs.samples["tiny_mc"][:2] for r in _requests(s)]
    assert lm.batch_size == 2 and lm.loglikelihood(reqs) == runs.lm.loglikelihood(reqs)
    res = harness.evaluate(lm, ["tiny_mc"], str(runs.task_dir), limit=3, num_fewshot=2, log_samples=True)
    assert res["n-shot"]["tiny_mc"] == 2
    context = res["samples"]["tiny_mc"][0]["arguments"][0][0]  # (context, continuation) of choice 0
    assert context.count("\n\n") == 2  # two solved examples before the question
