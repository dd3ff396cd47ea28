"""Reproductions: each paper's headline finding re-measured at CPU scale, in one report.

``cpt-jax reproduce`` (``bash scripts/reproduce.sh``) runs the parts below on the ten-domain
corpus of ``cpt-jax corpus`` from a checkout (this package is not installed with cpt-jax). Each
part is a module whose ``run(ctx) -> Section`` is collect (train, or re-read when finished, the
runs of ``configs/repro_<part>.py``: a part resumes where it stopped) -> judge (the design's
preconditions, then t tests over seeds by :mod:`experiments.repro.stats`) -> write (table, plots,
verdict). ``report.write`` gathers every saved section into ``docs/reproductions.md``.
"""

PARTS: tuple[str, ...] = ("rewarm", "replay", "doremi", "lawa", "dcpt", "vocab", "long_context")
