"""Learning vs forgetting of an arm that starts from a checkpoint outside the experiment."""

import json

from cpt_jax import experiment


def test_arm_from_a_checkpoint_uses_its_step0_eval(tmp_path):
    run = tmp_path / "arm"
    run.mkdir()
    lines = [{"step": 0, "eval/web/loss": 3.0, "eval/code/loss": 5.0, "eval/avg/loss": 4.0},
             {"step": 10, "train/loss": 2.0},
             {"step": 20, "eval/web/loss": 3.4, "eval/code/loss": 4.1}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    summaries = {"arm": {"run_dir": str(run), "final_eval": {"web": {"loss": 3.4}, "code": {"loss": 4.1}}},
                 "scratch": {"run_dir": str(tmp_path / "none"), "final_eval": {"web": {"loss": 9.0}}}}
    runs = [{"name": "scratch"}, {"name": "arm"}]
    [row] = experiment.learning_forgetting(summaries, runs, ["web"], ["code"])
    assert row["run"] == "arm" and row["from"] == "step 0"
    assert abs(row["forgetting"] - 0.4) < 1e-12 and abs(row["learning"] - 0.9) < 1e-12
