"""D-CPT law: recover known parameters from noisy synthetic sweeps; the ratio; bad CSVs."""

import csv
import json
import math

import numpy as np
import pytest

from cpt_jax import cli, dcpt, dcpt_ratio
from cpt_jax.errors import UserError

TRUE = {
    "general": dict(E=1.8, A=250.0, alpha=0.35, B=300.0, eta=0.4, beta=0.3, C=0.15, gamma=0.5),
    "domain": dict(E=1.2, A=400.0, alpha=0.4, B=500.0, eta=0.3, beta=0.35, C=0.3, gamma=0.35),
}
EPS = 0.01
NS, DS, RS = (1e7, 3e7, 1e8, 3e8), (1e8, 3e8, 1e9), (0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 0.9)
L_G0 = 2.75  # pre-CPT general loss of the N=3e8 model (the D=0 row)


def law(p, N, D, r):
    """The law written out term by term (r: the ratio of the modelled corpus)."""
    return p["E"] + p["A"] / N ** p["alpha"] + p["B"] * r ** p["eta"] / D ** p["beta"] \
        + p["C"] / (r + EPS) ** p["gamma"]


def write_csv(path, noise=3e-4, seed=0):
    rng = np.random.default_rng(seed)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(dcpt.CSV_COLUMNS)
        w.writerow(["base-3e8", 3e8, 0, 0, L_G0, 3.3])
        for N in NS:
            for D in DS:
                for r in RS:
                    g = law(TRUE["general"], N, D, 1 - r) * math.exp(rng.normal(0, noise))
                    d = law(TRUE["domain"], N, D, r) * math.exp(rng.normal(0, noise))
                    w.writerow([f"n{N:g}-d{D:g}-r{r}", N, D, r, g, d])
    return path


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    path = write_csv(tmp_path_factory.mktemp("dcpt") / "results.csv")
    results = dcpt.read_results(path)
    return path, results, dcpt.fit(results, holdout=["N=300000000"], eps=EPS)


def test_read_results_splits_pre_cpt_rows(fitted):
    _, results, _ = fitted
    assert len(results) == len(NS) * len(DS) * len(RS)
    assert results.pre_cpt_general == {3e8: L_G0}


def test_predict_matches_formula():
    N, D, r = np.array([1e7, 2e8]), np.array([3e8, 1e9]), np.array([0.0, 0.4])
    for kind, p in TRUE.items():
        got = dcpt.predict(p, N, D, r, EPS)
        want = [p["E"] + p["A"] / N[0] ** p["alpha"] + p["C"] / EPS ** p["gamma"],  # r = 0
                law(p, N[1], D[1], r[1])]
        np.testing.assert_allclose(got, want, rtol=1e-12)


def test_parameters_recovered(fitted):
    _, _, fit = fitted
    for kind, true in TRUE.items():
        got = fit[kind]["params"]
        for name in ("alpha", "eta", "beta", "gamma"):
            assert abs(got[name] - true[name]) < 0.03, (kind, name, got[name])
        assert abs(got["E"] - true["E"]) < 0.05 * true["E"], (kind, got["E"])
        for name in ("A", "B", "C"):
            assert abs(math.log(got[name] / true[name])) < 0.3, (kind, name, got[name])
        # the fitted law predicts the true one on and beyond the grid (N = 1e9 extrapolates)
        N, D, r = np.meshgrid([1e7, 1e8, 1e9], [1e8, 2e9], np.linspace(0.02, 0.98, 25))
        rr = r if kind == "domain" else 1 - r
        np.testing.assert_allclose(dcpt.predict(got, N, D, rr, EPS), law(true, N, D, rr),
                                   rtol=5e-3)
        assert fit[kind]["fit"]["r2"] > 0.999 and fit[kind]["holdout"]["r2"] > 0.999
        assert fit[kind]["holdout"]["points"] == len(DS) * len(RS)


def test_huber_and_r2_against_hand_computation():
    obs, pred = np.array([2.0, 3.0, 4.0]), np.array([2.001, 3.0, 3.9])
    res = np.abs(np.log(pred / obs))
    hub = np.mean([0.5 * x * x if x <= 1e-3 else 1e-3 * (x - 5e-4) for x in res])
    assert dcpt.huber_loss(pred, obs) == pytest.approx(hub, rel=1e-12)
    assert dcpt.r_squared(pred, obs) == pytest.approx(1 - (1e-6 + 0.01) / 2.0, rel=1e-12)


def true_max_ratio(N, tol, L0, D=None, D_dom=None):
    """Brute force on a 1e-6 grid with the true general law."""
    r = np.linspace(0.0, 1.0, 1_000_001)
    with np.errstate(divide="ignore"):
        d = np.full_like(r, D) if D is not None else D_dom / r
        g = np.where(r < 1, TRUE["general"]["B"] * (1 - r) ** TRUE["general"]["eta"]
                     / d ** TRUE["general"]["beta"], 0.0)
    g = g + TRUE["general"]["E"] + TRUE["general"]["A"] / N ** TRUE["general"]["alpha"] \
        + TRUE["general"]["C"] / (1 - r + EPS) ** TRUE["general"]["gamma"]
    return float(r[np.flatnonzero(g <= (1 + tol) * L0)[-1]])


@pytest.mark.parametrize("tol", [0.03, 0.05])
def test_ratio_recovered(fitted, tol):
    _, _, fit = fitted
    L0 = dcpt_ratio.pre_cpt_general_loss(fit, 3e8)
    assert L0 == L_G0
    r_fixed = dcpt_ratio.max_domain_ratio(fit, 3e8, tol, L0, D=1e9)
    r_true = true_max_ratio(3e8, tol, L0, D=1e9)
    assert 0.2 < r_true < 0.99 and abs(r_fixed - r_true) < 0.01, (r_fixed, r_true)
    # at r* the predicted general loss sits on the limit
    g = dcpt_ratio.predicted(fit, "general", 3e8, 1e9, r_fixed)
    assert g == pytest.approx((1 + tol) * L0, rel=1e-9)
    r_lim = dcpt_ratio.max_domain_ratio(fit, 3e8, tol, L0, domain_tokens=2e8)
    r_lim_true = true_max_ratio(3e8, tol, L0, D_dom=2e8)
    assert abs(r_lim - r_lim_true) < 0.01, (r_lim, r_lim_true)
    assert dcpt_ratio.max_domain_ratio(fit, 3e8, tol, 1.0, D=1e9) is None  # unreachable limit


def test_cli_fit_and_ratio(fitted, tmp_path, capsys):
    path, _, _ = fitted
    out = tmp_path / "fit.json"
    png = tmp_path / "fit.png"
    assert cli.main(["dcpt", "fit", str(path), "--out", str(out), "--starts", "2",
                     "--holdout", "N=1e7", "--plot", str(png)]) == 0
    fit = json.loads(out.read_text())
    assert set(fit["general"]["params"]) == set(dcpt.PARAM_NAMES)
    assert png.stat().st_size > 10_000
    assert cli.main(["dcpt", "ratio", "--fit", str(out), "--N", "3e8", "--D", "1e9",
                     "--tolerance", "0.03"]) == 0
    text = capsys.readouterr().out
    r = float(text.split("r* = ")[1].split()[0])
    assert abs(r - true_max_ratio(3e8, 0.03, L_G0, D=1e9)) < 0.01
    # no D=0 row for this N: a one-line error naming the fix
    assert cli.main(["dcpt", "ratio", "--fit", str(out), "--N", "1e8", "--D", "1e9"]) == 2
    err = capsys.readouterr().err
    assert "no pre-CPT general loss for N=1e+08" in err and err.count("\n") == 1


@pytest.mark.parametrize("header,row,message", [
    ("run,N,D,r,general_loss", "a,1e7,1e8,0.5,3.0", "missing column 'domain_loss'"),
    ("run,N,D,r,general_loss,domain_loss", "a,1e7,1e8,half,3.0,2.0",
     "row 2 (run 'a'): column 'r' = 'half' is not a number"),
    ("run,N,D,r,general_loss,domain_loss", "a,1e7,1e8,1.5,3.0,2.0",
     "row 2 (run 'a'): column 'r' = 1.5 is not a ratio in [0, 1]"),
    ("run,N,D,r,general_loss,domain_loss", "a,1e7,1e8,0.5,3.0", "row 2 (run 'a'): wrong number"),
    ("run,N,D,r,general_loss,domain_loss", "a,-5,1e8,0.5,3.0,2.0", "column 'N' = -5 must be > 0"),
])
def test_bad_csv(tmp_path, header, row, message):
    path = tmp_path / "bad.csv"
    path.write_text(f"{header}\n{row}\n")
    with pytest.raises(UserError) as info:
        dcpt.read_results(path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_holdout_must_match(fitted):
    _, results, _ = fitted
    with pytest.raises(UserError, match="--holdout N=5 matches no CPT row"):
        dcpt.match_holdout(results, ["N=5"])


# A planted law whose domain loss rises again at high r (B large): the constrained argmin of the
# domain loss (r ~ 0.456 at D = 1e9, T = 3%) is far from the largest feasible ratio (~ 0.941).
PLANTED = {"general": TRUE["general"], "domain": dict(TRUE["domain"], B=800.0)}


def fit_json_of(params, L0=L_G0, N=3e8):
    return {"eps": EPS, "pre_cpt_general_loss": {repr(N): L0},
            **{k: {"params": dict(v)} for k, v in params.items()}}


def brute_force(params, N, tol, L0, D=None, D_dom=None):
    """(argmin of the domain loss over the feasible 1e-6 grid, largest feasible r), numpy only."""
    r = np.linspace(0.0, 1.0, 1_000_001)
    with np.errstate(divide="ignore"):
        d = np.full_like(r, D) if D is not None else D_dom / r  # r = 0: D = inf, data term 0
    g, m = law(params["general"], N, d, 1 - r), law(params["domain"], N, d, r)
    ok = np.flatnonzero(g <= (1 + tol) * L0)
    return float(r[ok[np.argmin(m[ok])]]), float(r[ok[-1]])


@pytest.mark.parametrize("params,tol,D,D_dom", [
    (PLANTED, 0.03, 1e9, None),     # fixed D: interior minimum of the domain loss
    (TRUE, 0.05, None, 2e8),        # domain-token budget: D = D_dom / r
    (TRUE, 0.03, 1e9, None),        # monotone case: the argmin is the largest feasible r
])
def test_best_ratio_is_the_constrained_argmin(params, tol, D, D_dom):
    fit = fit_json_of(params)
    c = dcpt_ratio.best_domain_ratio(fit, 3e8, tol, L_G0, D=D, domain_tokens=D_dom)
    r_star, r_max = brute_force(params, 3e8, tol, L_G0, D=D, D_dom=D_dom)
    assert c.r == pytest.approx(r_star, abs=2e-6) and c.r_max == pytest.approx(r_max, abs=2e-6)
    d = D if D is not None else D_dom / c.r
    assert c.D == pytest.approx(d, rel=1e-12)
    assert c.domain == pytest.approx(law(params["domain"], 3e8, d, c.r), rel=1e-12)
    assert c.general == pytest.approx(law(params["general"], 3e8, d, 1 - c.r), rel=1e-12)
    assert c.general <= (1 + tol) * L_G0 + 1e-12
    if D is None or params is PLANTED:
        assert r_max - r_star > 0.4  # the planted cases really differ from the old rule
    assert dcpt_ratio.best_domain_ratio(fit, 3e8, tol, 1.0, D=1e9) is None  # unreachable limit


def test_cli_ratio_prints_argmin_and_largest_feasible(tmp_path, capsys):
    path = tmp_path / "planted.json"
    path.write_text(json.dumps(fit_json_of(PLANTED)))
    png = tmp_path / "ratio.png"
    assert cli.main(["dcpt", "ratio", "--fit", str(path), "--N", "3e8", "--D", "1e9",
                     "--domain-tokens", "2e8", "--tolerance", "0.03", "--out", str(png)]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "r* = " in ln]
    assert [ln.split(":")[0] for ln in lines] == ["fixed D", "limited domain data"]
    for line, (D, D_dom) in zip(lines, [(1e9, None), (None, 2e8)]):
        r_star, r_max = brute_force(PLANTED, 3e8, 0.03, L_G0, D=D, D_dom=D_dom)
        assert float(line.split("r* = ")[1].split()[0]) == pytest.approx(r_star, abs=1e-4)
        got_max = float(line.split("largest feasible r = ")[1].split(":")[0])
        assert got_max == pytest.approx(r_max, abs=1e-4)
    assert png.stat().st_size > 10_000
    # a compute budget C is the fixed-D case with D = C / (6 N)
    assert cli.main(["dcpt", "ratio", "--fit", str(path), "--N", "3e8", "--compute",
                     str(6 * 3e8 * 1e9)]) == 0
    line = capsys.readouterr().out.splitlines()[1]
    assert line.startswith("compute 1.8e+18 FLOPs: r* = ")
    assert float(line.split("r* = ")[1].split()[0]) == pytest.approx(
        brute_force(PLANTED, 3e8, 0.03, L_G0, D=1e9)[0], abs=1e-4)
    assert cli.main(["dcpt", "ratio", "--fit", str(path), "--N", "3e8"]) == 2
    assert "give --D (CPT tokens), --compute" in capsys.readouterr().err


def test_few_shot_refit_of_a_new_domain(tmp_path, capsys):
    """A new domain shares the exponents, A and alpha; six runs pin its E, B and C."""
    new = {k: dict(v, E=v["E"] * 1.1, B=v["B"] * 0.6, C=v["C"] * 1.5) for k, v in TRUE.items()}
    path = tmp_path / "new.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(dcpt.CSV_COLUMNS)
        for D in (1e8, 1e9):
            for r in (0.1, 0.4, 0.8):
                w.writerow([f"new-d{D:g}-r{r}", 3e8, D, r, law(new["general"], 3e8, D, 1 - r),
                            law(new["domain"], 3e8, D, r)])
    base = tmp_path / "base.json"
    base.write_text(json.dumps(fit_json_of(TRUE)))
    out = tmp_path / "new.json"
    assert cli.main(["dcpt", "fit", str(path), "--base", str(base), "--out", str(out),
                     "--starts", "2"]) == 0
    assert "few-shot: re-fitted E,B,C" in capsys.readouterr().out
    fit = json.loads(out.read_text())
    assert fit["refit"] == ["E", "B", "C"] and fit["pre_cpt_general_loss"] == {repr(3e8): L_G0}
    for kind in dcpt.LOSSES:
        got, want = fit[kind]["params"], new[kind]
        for name in dcpt.PARAM_NAMES:
            assert got[name] == pytest.approx(want[name], rel=1e-3), (kind, name)
        for name in ("A", "alpha", "eta", "beta", "gamma"):
            assert got[name] == TRUE[kind][name]  # kept exactly
    assert cli.main(["dcpt", "fit", str(path), "--refit", "E"]) == 2
    assert cli.main(["dcpt", "fit", str(path), "--base", str(base), "--refit", "E,zeta"]) == 2
    assert "--refit 'E,zeta'" in capsys.readouterr().err
