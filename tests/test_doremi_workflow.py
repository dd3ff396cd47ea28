"""The DoReMi workflow on three synthetic domains, and its tables and comparison."""

import json

import numpy as np
import pytest

from cpt_jax import config as C
from cpt_jax import configure
from cpt_jax import doremi_workflow as wf
from cpt_jax.errors import UserError


def tiny(run_dir) -> C.ConfigDict:
    c = C.base()
    c.run_dir = str(run_dir)
    c.model.vocab_size = 16
    c.model.hidden_size = 32
    c.model.num_layers = 2
    c.model.num_heads = 2
    c.train.steps = 400  # the reference (a good reference makes pattern's excess stand out)
    c.train.batch_size = 16
    c.train.seq_len = 32
    c.train.log_every = 50
    c.train.eval_batches = 1
    c.train.progress = False
    c.optim.peak_lr = 1e-2
    c.data.synthetic_tokens = 1 << 15
    c.logging.tensorboard = False
    c.checkpoint.async_save = False
    c.doremi.proxy_steps = 120
    c.doremi.main = False
    c.doremi.baseline = False
    configure.validate(c)
    return c


def test_three_synthetic_domains_learnable_gets_most_weight(tmp_path):
    """noise (unlearnable), pattern (learnable, not trivial), trivial (one repeated token)."""
    cfg = tiny(tmp_path)
    logs = []
    report = wf.run_workflow(cfg, log=logs.append)
    saved = json.loads((tmp_path / "domain_weights.json").read_text())
    assert saved == json.loads((tmp_path / "round1" / "proxy" / "domain_weights.json").read_text())
    avg, fin = saved["average"], saved["final"]
    assert list(avg) == ["noise", "pattern", "trivial"]
    assert abs(sum(avg.values()) - 1) < 1e-5 and abs(sum(fin.values()) - 1) < 1e-5
    # eta = 1 (the paper's): seeds 0 and 2 give alpha_bar pattern 0.74 / 0.66, noise 0.22 / 0.31,
    # trivial 0.039 / 0.031, and alpha_T(trivial) 0.0028 / 0.0022 against the floor c/k = 3.3e-4.
    # alpha_T of noise vs pattern swings with eta = 1 and 16 sequences a step (docs/doremi.md).
    floor = cfg.doremi.c / 3
    assert avg["pattern"] == max(avg.values()) and avg["pattern"] > 0.55
    assert avg["trivial"] == min(avg.values()) and avg["trivial"] < 0.06
    assert floor <= fin["trivial"] < 30 * floor
    assert report["rounds"] == [saved]
    print("weights", saved)
    assert any("domain weights" in line for line in logs)
    # a second call finds every stage finished and changes nothing
    n = len(logs)
    again = wf.run_workflow(cfg, log=logs.append)
    assert again["rounds"] == [saved]
    assert sum("skipped" in line for line in logs[n:]) == 2  # reference and proxy


def test_weights_table_comparison_and_tolerance(tmp_path):
    rounds = [{"average": {"a": 0.7, "b": 0.3}, "final": {"a": 0.9, "b": 0.1}},
              {"average": {"a": 0.6, "b": 0.4}, "final": {"a": 0.5, "b": 0.5}}]
    table = wf.weights_table({"a": 0.5, "b": 0.5}, rounds)
    assert "| a | 0.5000 | 0.7000 | 0.9000 | 0.6000 | 0.5000 |" in table
    assert wf.max_change(rounds[0]["average"], rounds[1]["average"]) == pytest.approx(0.1)
    main_dir = tmp_path / "main"
    main_dir.mkdir()
    lines = [{"step": 10, "eval/avg/loss": 2.5}, {"step": 20, "eval/avg/loss": 1.9},
             {"step": 30, "eval/avg/loss": 1.7}]
    (main_dir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    main = {"final_eval": {"a": {"loss": 1.5}, "b": {"loss": 1.9}}}
    base = {"final_eval": {"a": {"loss": 1.8}, "b": {"loss": 2.1}}}
    cmp = wf.compare(main, base, main_dir, ["a", "b"])
    assert cmp["average"] == {"baseline": pytest.approx(1.95), "doremi": pytest.approx(1.7)}
    assert cmp["worst"] == {"baseline": 2.1, "doremi": 1.9}
    assert cmp["steps_to_baseline_average"] == 20  # first eval with avg <= 1.95
    assert "| average | 1.9500 | 1.7000 | -0.2500 |" in wf.comparison_table(cmp)


def test_bad_stage_and_missing_reference(tmp_path):
    cfg = tiny(tmp_path)
    with pytest.raises(UserError, match="stage"):
        wf.run_workflow(cfg, "everything")
    with cfg.unlocked():
        cfg.doremi.reference = str(tmp_path / "nope")
    with pytest.raises(UserError, match="does not exist"):
        wf.reference_source(cfg, 1, print)
    np.testing.assert_equal(wf.STAGES[0], "all")


def test_iterated_rounds_chain_references_and_stop_at_tolerance(tmp_path, monkeypatch):
    cfg = tiny(tmp_path)
    with cfg.unlocked():
        cfg.doremi.rounds = 4
        cfg.doremi.tolerance = 0.05
    # round k's reference trains on round k-1's alpha_bar
    assert wf.reference_config(cfg, 1).data.weights == "proportional"
    assert wf.reference_config(cfg, 3).data.weights == str(tmp_path / "round2" / "proxy" / "domain_weights.json")
    assert wf.reference_config(cfg, 3).run_dir == str(tmp_path / "round3" / "reference")
    assert wf.proxy_config(cfg, 2).data.weights == "uniform" and wf.proxy_config(cfg, 2).train.steps == 120
    # eta, c, rounds ... concern the proxy only: changing them keeps finished references valid
    assert wf.proxy_config(cfg, 1).doremi.rounds == 4 and wf.reference_config(cfg, 1).doremi.rounds == 1
    fake = [{"a": 0.5, "b": 0.5}, {"a": 0.8, "b": 0.2}, {"a": 0.78, "b": 0.22}, {"a": 0.0, "b": 1.0}]
    calls = []
    monkeypatch.setattr(wf, "reference_source", lambda c, k, log: calls.append(("ref", k)) or f"r{k}")
    monkeypatch.setattr(wf, "run_proxy", lambda c, k, ref, log: calls.append(("proxy", k, ref))
                        or {"average": fake[k - 1], "final": fake[k - 1]})
    rounds = wf.run_rounds(cfg, print)
    # change 0.3 after round 2, 0.02 < 0.05 after round 3: stop before round 4
    assert [r["average"] for r in rounds] == fake[:3]
    assert calls == [("ref", 1), ("proxy", 1, "r1"), ("ref", 2), ("proxy", 2, "r2"), ("ref", 3), ("proxy", 3, "r3")]
    assert json.loads((tmp_path / "domain_weights.json").read_text())["average"] == fake[2]


def test_doremi_config_is_validated(tmp_path):
    for key, value, msg in [("normalization", "mean", "doremi.normalization"), ("c", 1.5, "doremi.c"),
                            ("eta", 0.0, "doremi.eta"), ("rounds", 0, "doremi.rounds"),
                            ("absent", "stale", "doremi.absent")]:
        cfg = tiny(tmp_path)
        with cfg.unlocked():
            cfg.doremi[key] = value
        with pytest.raises(UserError, match=msg):
            configure.validate(cfg)


def test_uniform_proxy_batches_hold_every_domain(tmp_path):
    """The stratified mixture puts each domain in every proxy batch (B = 16 >= k = 3), so the
    absent-domain rule never fires; counts stay within one sequence of B / k."""
    from cpt_jax.data.pipeline import TrainData

    data = TrainData.from_config(wf.proxy_config(tiny(tmp_path), 1))
    for step in range(0, 400, 7):
        counts = np.bincount(data.batch(step)["domain"], minlength=3)
        assert counts.min() >= 5 and counts.max() <= 6, (step, counts)


def _params(path):
    import jax

    from cpt_jax.model.checkpoint import load_params

    return jax.tree.map(np.asarray, load_params(path)[0])


def _assert_same(a, b, same=True):
    """Equal to 1e-20 (one step at LR 1e-30 moves zero-initialised biases by ~1e-30)."""
    import jax

    eq = jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.allclose(x, y, rtol=0, atol=1e-20)),
                                      a, b))
    assert all(eq) if same else not all(eq)


def test_reference_and_proxy_share_their_start(tmp_path):
    """Step-0 params of reference and proxy are equal: scratch (same seed) by default, and both
    the train.init_from checkpoint with doremi.init_from = train.init_from. One step at LR 1e-30
    leaves each run's params at its step-0 params."""
    from cpt_jax.train.loop import run

    pre = tiny(tmp_path / "pre")
    with pre.unlocked():
        pre.train.steps = 2
        pre.schedule.warmup_steps = 0
    run(pre)
    pretrained = _params(tmp_path / "pre")
    starts = {}
    for mode in ("scratch", "train.init_from"):
        cfg = tiny(tmp_path / mode)
        with cfg.unlocked():
            cfg.train.init_from = str(tmp_path / "pre")
            cfg.doremi.init_from = mode
            cfg.doremi.reference_steps = cfg.doremi.proxy_steps = 1
            cfg.schedule.warmup_steps = 0
            cfg.optim.peak_lr = 1e-30
        configure.validate(cfg)
        want = "" if mode == "scratch" else str(tmp_path / "pre")
        assert wf.reference_config(cfg, 1).train.init_from == want
        assert wf.proxy_config(cfg, 1).train.init_from == want
        wf.run_rounds(cfg, lambda _: None, "proxy")
        ref = _params(tmp_path / mode / "round1" / "reference" / "checkpoints" / "1")
        proxy = _params(tmp_path / mode / "round1" / "proxy" / "checkpoints" / "1")
        _assert_same(ref, proxy)
        starts[mode] = ref
    _assert_same(starts["train.init_from"], pretrained)
    _assert_same(starts["scratch"], pretrained, same=False)
    # the round-1 reference is the baseline only when both start from the same place
    assert wf.main_configs(cfg)[2] is False
    with cfg.unlocked():
        cfg.doremi.init_from = "scratch"
        cfg.train.init_from = ""
    assert wf.main_configs(cfg)[2] is False  # 1 reference step vs train.steps = 400
    with cfg.unlocked():
        cfg.doremi.reference_steps = 0
    assert wf.main_configs(cfg)[2] is True
    with cfg.unlocked():
        cfg.doremi.init_from = "train.init_from"
    with pytest.raises(UserError, match="needs train.init_from"):
        configure.validate(cfg)
