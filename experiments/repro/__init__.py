"""Reproductions: each paper's headline finding re-measured at CPU scale, in one report.

``cpt-jax reproduce`` (``bash scripts/reproduce.sh``) runs the parts below on the ten-domain
corpus of ``cpt-jax corpus``; each part is a module with ``run(ctx) -> Section``, trains its
runs from ``configs/repro_<part>.py`` (finished runs are skipped, so a part resumes where it
stopped) and returns a table, plots and a verdict. ``report.write`` gathers every saved section
into ``docs/reproductions.md``.
"""

PARTS: tuple[str, ...] = ("rewarm", "replay", "doremi", "lawa", "dcpt", "vocab", "long_context")
