"""The report's LR figure starts at step 0 with the start LR; step ticks are whole numbers."""

from cpt_jax import config as config_lib
from cpt_jax.eval import report_plots
from cpt_jax.eval.runs import Run


def test_lr_curve_starts_at_the_start_lr(tmp_path):
    cfg = config_lib.defaults()
    cfg.train.steps, cfg.optim.peak_lr = 10, 1e-3
    cfg.schedule.start_lr, cfg.schedule.warmup_steps = 1e-4, 4
    run = Run("arm", tmp_path, config_lib.to_dict(cfg), [{"step": s, "lr": 1e-3} for s in (5, 10)])
    steps, lr = report_plots._schedule_curve(run)
    assert list(steps) == list(range(11))
    # linear warmup from start_lr to the peak over 4 steps (independent formula)
    for k in range(5):
        assert abs(lr[k] - (1e-4 + (1e-3 - 1e-4) * k / 4)) < 1e-9
    assert report_plots.lr_schedule([run], tmp_path / "lr.png") and (tmp_path / "lr.png").stat().st_size > 0
