"""`twinrank validate` (ranking quality against real results) and `twinrank utilization`
(data utilization law: exchange rates and the budget allocation). See selection/README.md."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import typer

from twinrank import output
from twinrank.output import console, fail


def _fmt(v: float | None, spec: str = ".3f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return format(v, spec)


def _eta(v: float) -> str:
    return "inf (no effect)" if math.isinf(v) else f"{v:+.3g}"


def validate(
    ranking: Path = typer.Argument(..., help="Ranking CSV: a 'checkpoint' column and score column(s)."),
    real: Path = typer.Option(
        ..., "--real", help="Real results CSV: checkpoint,real_success (or success), fractions in [0, 1]."
    ),
    column: str = typer.Option("score", help="Score column of the ranking CSV (higher = better)."),
    k: int = typer.Option(3, "--k", min=1, help="k of top-k recall."),
    json_out: Path = typer.Option(None, "--json", help="Also write the metrics to this JSON file."),
) -> None:
    """Rank-quality of a ranking score against real success: MMRV, Pearson, Spearman, Kendall, regret@1, top-k."""
    from selection.metrics import MetricWarning, SelectionMetricsError, compare_ranking, load_real_results, load_scores

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MetricWarning)
        try:
            scores = load_scores(ranking, column=column)
            real_results = load_real_results(real)
            cmp = compare_ranking(scores, real_results, k=k)
        except SelectionMetricsError as exc:
            fail(str(exc))
    for w in caught:
        if issubclass(w.category, MetricWarning):
            output.warn(str(w.message))
    if cmp.missing_real:
        output.warn(
            f"no real result for {len(cmp.missing_real)} ranked checkpoint(s), not scored: "
            f"{', '.join(cmp.missing_real)}"
        )
    m = cmp.metrics
    rows = [
        ("MMRV", m["mmrv"], "mean max rank violation (real-success units, 0 = perfect)"),
        ("Pearson", m["pearson"], "linear correlation score vs real"),
        ("Spearman", m["spearman"], "rank correlation"),
        ("Kendall tau-b", m["kendall_tau"], "pairwise order agreement"),
        ("regret@1", m["regret_at_1"], "best real success minus that of the score's top pick"),
        (f"top-{k} recall", m["topk_recall"], f"share of the real top-{k} in the score's top-{k}"),
    ]
    output.print_table(
        f"Ranking quality of {column!r} on {m['n']} checkpoints with real results",
        ("metric", "value", "meaning"),
        [(n, _fmt(v), meaning) for n, v, meaning in rows],
        right=("value",),
    )
    output.print_table(
        "Checkpoints by score",
        ("rank", "checkpoint", column, "real success"),
        [(str(i), c, f"{s:.4g}", f"{r:.3f}") for i, (c, s, r) in enumerate(zip(cmp.checkpoints, cmp.sim, cmp.real), 1)],
        right=("rank", column, "real success"),
    )
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"ranking": str(ranking), "real": str(real), "column": column, **cmp.to_dict()}
        json_out.write_text(json.dumps(payload, indent=2) + "\n")
        console.print(f"wrote {json_out}")


def utilization(
    table_csv: Path = typer.Argument(
        ..., help="Run table CSV: n_real,n_other,success (one row per training run; n_other = 0 for real-only runs)."
    ),
    budget_hours: float = typer.Option(None, help="Collection-time budget (hours) for the allocation."),
    cost_real: float = typer.Option(None, help="Seconds to collect one real sample."),
    cost_other: float = typer.Option(None, help="Seconds to collect one other (sim) sample."),
    n_real: float = typer.Option(
        None, help="Operating point for eta_local (default: the largest n_real run both with and without other data)."
    ),
    eta: float = typer.Option(None, help="Exchange rate for the allocation (default: eta_local)."),
    min_real: int = typer.Option(0, min=0, help="Real samples always collected (for fine-tuning)."),
    max_other: int = typer.Option(
        None,
        min=0,
        help="Most other samples to collect (default: the largest n_other in the table, where eta was measured).",
    ),
) -> None:
    """Data utilization law: eta_local, eta_global, the real-only power law, and a budget allocation."""
    from selection.utilization import (
        UtilizationError,
        UtilizationWarning,
        allocate_budget,
        fit_power_law,
        global_ratios,
        load_table,
        local_ratio_from_table,
    )

    budget_opts = {"--budget-hours": budget_hours, "--cost-real": cost_real, "--cost-other": cost_other}
    given = [k for k, v in budget_opts.items() if v is not None]
    if given and len(given) < 3:
        fail(
            f"{', '.join(given)} given without {', '.join(k for k in budget_opts if k not in given)}: "
            "the allocation needs all three"
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UtilizationWarning)
        try:
            runs = load_table(table_csv)
        except UtilizationError as exc:
            fail(str(exc))
        local = fit = None
        notes: list[str] = []
        try:
            local = local_ratio_from_table(runs, n_real=n_real)
        except UtilizationError as exc:
            notes.append(f"eta_local not computed: {exc}")
        try:
            fit = fit_power_law(runs)
            ratios = global_ratios(runs, fit)
        except UtilizationError as exc:
            notes.append(f"eta_global not computed: {exc}")
            ratios = []
    for w in caught:
        output.warn(str(w.message))
    for note in notes:
        output.warn(note)
    n_real_only = sum(1 for r in runs if r.real_only)
    console.print(
        f"{len(runs)} runs ({n_real_only} real-only, {len(runs) - n_real_only} with other data) from {table_csv}"
    )
    if fit is not None:
        console.print(
            f"power law (real-only): S = {fit.alpha:.4g} * N_real^{fit.beta:.4g}  "
            f"(R^2 log-log {fit.r2:.3f}, {fit.n_points} points, N_real {fit.n_min:g}..{fit.n_max:g})"
        )
    if local is not None:
        console.print(
            f"eta_local = {_eta(local.eta)} at N_real={local.n_real:g}: S {local.success_real:.3f} -> "
            f"{local.success_mix:.3f} with {local.n_other:g} other samples "
            f"(gamma_real {local.gamma_real:.3g}, gamma_other {local.gamma_other:.3g})"
        )
    if ratios:
        cols = ("n_real", "n_other", "success", "N_eq", "eta_global")
        output.print_table(
            "eta_global per mixed run (S = alpha N^beta inverted: N_eq real samples reach S_mix)",
            cols,
            [
                (f"{g.n_real:g}", f"{g.n_other:g}", f"{g.success:.3f}", f"{g.n_equivalent:.1f}", _eta(g.eta))
                for g in ratios
            ],
            right=cols,
        )
    if not given:
        return
    use_eta = eta if eta is not None else (local.eta if local is not None else None)
    if use_eta is None:
        fail("the allocation needs an exchange rate: add a real-only and a mixed run at the same n_real, or pass --eta")
    if max_other is None:
        mixed = [r.n_other for r in runs if not r.real_only]
        max_other = int(max(mixed)) if mixed else None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UtilizationWarning)
            alloc = allocate_budget(
                budget_hours,
                cost_real,
                cost_other,
                use_eta,
                fit=fit if fit is not None and fit.beta > 0 else None,
                min_real=min_real,
                max_other=max_other,
            )
    except UtilizationError as exc:
        fail(str(exc))
    for w in caught:
        output.warn(str(w.message))
    cols = ("mix", "n_real", "n_other", "hours", "real-equivalent N", "expected success")
    output.print_table(
        f"Allocation for {budget_hours:g} h (real {cost_real:g} s/sample, other {cost_other:g} s/sample)",
        cols,
        [
            (
                "chosen",
                str(alloc.n_real),
                str(alloc.n_other),
                f"{alloc.seconds_used / 3600:.2f}",
                f"{alloc.n_equivalent_real:.1f}",
                _fmt(alloc.expected_success),
            ),
            (
                "real only",
                str(alloc.all_real_n),
                "0",
                f"{alloc.all_real_n * cost_real / 3600:.2f}",
                f"{alloc.all_real_n:.1f}",
                _fmt(alloc.all_real_success),
            ),
        ],
        right=cols[1:],
    )
    verdict = "include other data" if alloc.include_other else "real data only"
    cap = f"; other data capped at {max_other}" if alloc.include_other and max_other is not None else ""
    console.print(output.styled("decision:", "bold", f"{verdict} — {alloc.reason}{cap}"))


def register(app: typer.Typer) -> None:
    app.command("validate")(validate)
    app.command("utilization")(utilization)
