"""`cpt-jax dcpt fit|ratio`: fit the D-CPT law to sweep results; choose the domain ratio."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from cpt_jax import dcpt, dcpt_plots, dcpt_ratio
from cpt_jax.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dcpt", help="D-CPT scaling law: fit sweep results, choose the domain ratio")
    verbs = p.add_subparsers(dest="dcpt_verb", metavar="ACTION")
    verbs.required = True

    f = verbs.add_parser("fit", help="fit L(N, D, r) to the general and the domain loss")
    f.add_argument("results", help="results CSV with columns run,N,D,r,general_loss,domain_loss")
    f.add_argument("--out", default=None, help="FIT.json to write (default: beside the CSV)")
    f.add_argument("--holdout", nargs="+", default=[], metavar="SPEC",
                   help="rows kept out of the fit: a run name, or N=<v>, D=<v>, r=<v>")
    f.add_argument("--eps", type=float, default=None, help="eps of C/(r+eps)^gamma (default 0.01)")
    f.add_argument("--starts", type=int, default=None,
                   help="L-BFGS runs from the best grid points (default 8; 0 = whole grid)")
    f.add_argument("--plot", default=None, metavar="PNG", help="predicted vs measured losses")
    f.add_argument("--base", default=None, metavar="FIT_JSON",
                   help="few-shot fit of a new domain: keep this fit's parameters except --refit")
    f.add_argument("--refit", default=None, metavar="NAMES",
                   help="with --base: the parameters re-fitted (default E,B,C)")
    f.set_defaults(func=run_fit)

    r = verbs.add_parser("ratio", help="domain ratio minimising the predicted domain loss while "
                                       "the general loss stays within tolerance")
    r.add_argument("--fit", required=True, help="FIT.json written by `cpt-jax dcpt fit`")
    r.add_argument("--N", type=float, required=True, help="model parameters")
    r.add_argument("--D", type=float, default=None, help="CPT tokens (general + domain)")
    r.add_argument("--compute", type=float, default=None, metavar="FLOPS",
                   help="compute budget C instead of --D: D = C / (6 N)")
    r.add_argument("--domain-tokens", type=float, default=None, metavar="D_DOM",
                   help="domain tokens available (used once): D = D_dom / r")
    r.add_argument("--tolerance", type=float, default=0.03, help="T: L_g <= (1 + T) * L_g0")
    r.add_argument("--pre-cpt-loss", type=float, default=None, metavar="L_G0",
                   help="general loss before CPT (default: the CSV's D=0 row for this N)")
    r.add_argument("--out", "--plot", dest="out", default=None, metavar="PNG",
                   help="plot both predicted losses against r, the feasible region shaded")
    r.set_defaults(func=run_ratio)


def _positive(name: str, value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise UserError(f"{name} must be a positive number, got {value}")


def run_fit(args: argparse.Namespace) -> int:
    _positive("--eps", args.eps)
    results = dcpt.read_results(args.results)
    kwargs = {}
    if args.eps is not None:
        kwargs["eps"] = args.eps
    if args.refit and not args.base:
        raise UserError("--refit needs --base (the fit whose other parameters are kept)")
    if args.base:
        kwargs["base"] = _load_fit(args.base)
        kwargs["refit"] = _refit_names(args.refit) if args.refit else dcpt.DOMAIN_SPECIFIC
    fit = dcpt.fit(results, holdout=args.holdout, starts=args.starts, **kwargs)
    fit["csv"] = str(args.results)
    out = Path(args.out) if args.out else Path(args.results).with_suffix(".fit.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(fit, indent=2) + "\n")
    print(f"{len(results)} CPT rows, eps {fit['eps']}, Huber delta {fit['huber_delta']}")
    if args.base:
        print(f"few-shot: re-fitted {','.join(fit['refit'])}; the rest from {args.base}")
    for col, term in (("N", "A/N^alpha"), ("D", "B*r^eta/D^beta")):
        if len(set(getattr(results, col).tolist())) == 1:
            print(f"note: one value of {col}: {term} is not identified; do not predict at other {col}")
    for kind in dcpt.LOSSES:
        e = fit[kind]
        print(f"{kind} loss (r = {e['ratio']}):")
        print("  " + "  ".join(f"{k}={v:.5g}" for k, v in e["params"].items()))
        for part in ("fit", "holdout"):
            if part in e:
                q = e[part]
                print(f"  {part:8s} points {q['points']:4d}  huber {q['huber']:.3e}  R^2 {q['r2']:.4f}")
    if fit["pre_cpt_general_loss"]:
        pre = ", ".join(f"N={float(k):.4g}: {v:.4f}" for k, v in fit["pre_cpt_general_loss"].items())
        print(f"pre-CPT general loss (D=0 rows): {pre}")
    print(f"wrote {out}")
    if args.plot:
        dcpt_plots.plot_fit(fit, results, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _load_fit(path: str) -> dict:
    try:
        fit = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such fit file") from None
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: not a FIT.json ({err})") from None
    if not isinstance(fit, dict) or "eps" not in fit or any(
            set(dcpt.PARAM_NAMES) - set(fit.get(k, {}).get("params", {})) for k in dcpt.LOSSES):
        raise UserError(f"{path}: not a FIT.json written by `cpt-jax dcpt fit`")
    return fit


def _refit_names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in dcpt.PARAM_NAMES]
    if bad or not names:
        raise UserError(f"--refit {text!r}: give parameter names from {','.join(dcpt.PARAM_NAMES)}")
    return names


def _cases(args: argparse.Namespace) -> dict[str, tuple[float | None, float | None]]:
    """label -> (D, D_dom) for each budget the user gave."""
    if args.D is not None and args.compute is not None:
        raise UserError("give --D or --compute, not both")
    cases: dict[str, tuple[float | None, float | None]] = {}
    if args.D is not None:
        cases["fixed D"] = (args.D, None)
    if args.compute is not None:
        cases[f"compute {args.compute:.3g} FLOPs"] = (dcpt_ratio.allocate_compute(args.compute, args.N),
                                                     None)
    if args.domain_tokens is not None:
        cases["limited domain data"] = (None, args.domain_tokens)
    if not cases:
        raise UserError("give --D (CPT tokens), --compute (FLOPs) and/or --domain-tokens "
                        "(limited domain data)")
    return cases


def run_ratio(args: argparse.Namespace) -> int:
    for name in ("N", "D", "compute", "domain_tokens", "pre_cpt_loss"):
        _positive("--" + name.replace("_", "-"), getattr(args, name))
    if not (math.isfinite(args.tolerance) and args.tolerance >= 0):
        raise UserError(f"--tolerance must be >= 0, got {args.tolerance}")
    cases = _cases(args)
    fit = _load_fit(args.fit)
    L_g0 = args.pre_cpt_loss or dcpt_ratio.pre_cpt_general_loss(fit, args.N)
    if L_g0 is None:
        raise UserError(f"no pre-CPT general loss for N={args.N:g}: pass --pre-cpt-loss or add a "
                        "D=0 row for this N to the results CSV")
    limit = (1 + args.tolerance) * L_g0
    print(f"N={args.N:.4g}  L_g0={L_g0:.4f}  limit (1+T)*L_g0 = {limit:.4f}  (T={args.tolerance})")
    chosen = {}
    for label, (D, D_dom) in cases.items():
        c = dcpt_ratio.best_domain_ratio(fit, args.N, args.tolerance, L_g0, D=D, domain_tokens=D_dom)
        chosen[label] = (D, D_dom, c)
        if c is None:
            print(f"{label}: no domain ratio keeps the predicted general loss within {limit:.4f}")
            continue
        g_max, m_max = (float(v) for v in dcpt_ratio.curves(fit, args.N, c.r_max, D, D_dom))
        print(f"{label}: r* = {c.r:.4f}  D = {c.D:.4g}  predicted general {c.general:.4f}  "
              f"domain {c.domain:.4f}  (largest feasible r = {c.r_max:.4f}: general {g_max:.4f}  "
              f"domain {m_max:.4f})")
    if args.out:
        dcpt_plots.plot_ratio(fit, args.N, L_g0, args.tolerance, chosen, args.out)
        print(f"wrote {args.out}")
    return 0
