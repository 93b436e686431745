"""The backtest report: one self-contained HTML file (figures inlined as PNG) and the PNGs beside it.

People look, not read: the figures come first (equity, drawdown, rolling Sharpe, exposure, calibration,
feature importance, train-vs-test AUC per window), the tables after them.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on a cluster node
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from tickray.backtest.core import Rules
from tickray.backtest.metrics import drawdown

METRICS = ("total_return", "annual_return", "sharpe", "sortino", "max_drawdown", "max_drawdown_periods", "calmar",
           "trades", "hit_rate", "profit_factor", "turnover", "exposure", "costs", "cost_share")
PERCENT = {"total_return", "annual_return", "max_drawdown", "hit_rate", "exposure", "costs", "cost_share"}


def _fmt(key: str, v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if key in PERCENT:
        return f"{v:+.2%}" if key.endswith("return") else f"{v:.2%}"
    if key in ("trades", "max_drawdown_periods"):
        return f"{int(v):,}"
    return f"{v:,.2f}"


def _strategies(curves: pd.DataFrame) -> list[str]:
    return [c for c in curves.columns if not c.endswith("__exposure")]


def _rolling_sharpe(r: pd.Series, periods_per_year: float) -> pd.Series:
    w = max(20, len(r) // 20)
    return r.rolling(w).mean() / r.rolling(w).std() * math.sqrt(periods_per_year)


def figures(report, cfg) -> dict[str, plt.Figure]:
    hs = report.horizons
    out = {}

    def grid(title: str):
        fig, axes = plt.subplots(len(hs), 1, figsize=(10, 3.2 * len(hs)), squeeze=False, sharex=False)
        fig.suptitle(title)
        return fig, axes[:, 0]

    for name, title, values in (
            ("equity", "Equity (out of sample, after costs)", lambda r: np.cumprod(1 + r)),
            ("drawdown", "Drawdown", lambda r: -drawdown(r)[1])):
        fig, axes = grid(title)
        for ax, h in zip(axes, hs):
            c = report.curves[h]
            for m in _strategies(c):
                ax.plot(c.index, values(c[m].to_numpy()), label=m, lw=1.6 if m == "ensemble" else 0.9)
            ax.set_title(f"horizon {h}s")
            ax.legend(fontsize=7, ncol=3)
        out[name] = fig

    fig, axes = grid("Rolling Sharpe (annualised)")
    for ax, h in zip(axes, hs):
        c = report.curves[h]
        for m in ("ensemble", "logistic", "buy_and_hold"):
            if m in c:
                ax.plot(c.index, _rolling_sharpe(c[m], cfg.annual_periods), label=m, lw=0.9)
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_title(f"horizon {h}s")
        ax.legend(fontsize=7)
    out["rolling_sharpe"] = fig

    fig, axes = grid("Ensemble: gross exposure (mean |position| over symbols)")
    for ax, h in zip(axes, hs):
        c = report.curves[h]
        ax.fill_between(c.index, c["ensemble__exposure"].to_numpy(), step="post", alpha=0.5)
        ax.set_ylim(0, cfg.strategy.max_position * 1.05)
        ax.set_title(f"horizon {h}s")
    out["exposure"] = fig

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", lw=0.5)
    for h in hs:
        c = report.calibration[h]
        ax.plot(c["predicted"], c["observed"], marker="o", label=f"{h}s")
    ax.set_xlabel("predicted P(up)")
    ax.set_ylabel("observed up-rate")
    ax.set_title("Ensemble calibration (reliability)")
    ax.legend()
    out["calibration"] = fig

    if report.importance:
        fig, axes = plt.subplots(1, len(report.importance), figsize=(5 * len(report.importance), 4), squeeze=False)
        for ax, (m, imp) in zip(axes[0], report.importance.items()):
            top = sorted(imp.items(), key=lambda kv: kv[1])[-15:]
            ax.barh([k for k, _ in top], [v for _, v in top])
            ax.set_title(f"{m}: feature importance")
            ax.tick_params(labelsize=7)
        fig.tight_layout()
        out["importance"] = fig

    fig, ax = plt.subplots(figsize=(8, 4))
    h = hs[0]
    labels = [f"w{w['window']}" + ("" if w["symbols"] == "all" else f" {w['symbols']}") for w in report.windows]
    for m in report.scores:  # the models themselves (their cost-aware variants trade the same predictions)
        if m == "prior":
            continue
        line = ax.plot(labels, [w["train_auc"][f"{m}_{h}s"] for w in report.windows], ls="--", marker=".")
        ax.plot(labels, [w["test_auc"][f"{m}_{h}s"] for w in report.windows], marker="o", color=line[0].get_color(),
                label=m)
    ax.axhline(0.5, color="grey", lw=0.5)
    ax.set_title(f"AUC per window at {h}s: trained-on rows (dashed) against the next window (solid)")
    ax.tick_params(axis="x", labelsize=7, rotation=45)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out["overfitting"] = fig
    return out


def _table(header: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def write_report(report, cfg, path: Path) -> tuple[Path, dict[str, Path]]:
    """Write ``path`` (HTML) and ``<stem>_figures/*.png``; returns the HTML path and the PNG paths."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig_dir = path.parent / f"{path.stem}_figures"
    fig_dir.mkdir(exist_ok=True)
    pngs, parts = {}, []
    for name, fig in figures(report, cfg).items():
        pngs[name] = fig_dir / f"{name}.png"
        fig.savefig(pngs[name], dpi=90, bbox_inches="tight")
        plt.close(fig)
        data = base64.b64encode(pngs[name].read_bytes()).decode()
        parts.append(f'<figure><img alt="{name}" src="data:image/png;base64,{data}"></figure>')

    tables = []
    for h in report.horizons:
        r = report.rules[h]
        tables.append(f"<h3>Horizon {h}s: {html.escape(Rules(**r).describe())}; returns per {report.clock_s:g} s, "
                      f"{report.performance['buy_and_hold'][h]['periods_per_year']:,.0f} periods a year</h3>")
        rows = []
        for m in [*report.models, "buy_and_hold"]:
            p = report.performance[m][h]
            auc = report.scores[m][h]["auc"] if m in report.scores else float("nan")
            brier = report.scores[m][h]["brier"] if m in report.scores else float("nan")
            rows.append([m, _fmt("auc", auc), _fmt("brier", brier), *(_fmt(k, p[k]) for k in METRICS)])
        tables.append(_table(["model", "AUC", "Brier", *METRICS], rows))
    stab = [[m, f"{s['mean_abs_change']:.4f}", f"{s['position_flips']:.2%}"] for m, s in report.stability.items()]
    h = report.horizons[0]
    chosen = ["cost-aware thresholds"] if "thresholds" in report.windows[0] else []
    gaps = [[f"{w['window']}", w["symbols"], w["start"][:19], w["end"][:19], f"{w['rows']:,}", f"{w['fit_seconds']:.1f}",
             *(f"{w['train_auc'][f'{m}_{h}s']:.3f} / {w['test_auc'][f'{m}_{h}s']:.3f}" for m in report.scores),
             *([", ".join(f"{m} {t[0]:g}" for m, t in w["thresholds"].items())] if chosen else [])]
            for w in report.windows]
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(report.name)} backtest</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}img{{max-width:100%}}
table{{border-collapse:collapse;font-size:12px;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}}
figure{{margin:1em 0}}</style></head><body>
<h1>{html.escape(report.name)}: walk-forward backtest</h1>
<p>{report.rows:,} out-of-sample rows, {len(report.windows)} walk-forward shards; source {cfg.data.source}
{'(' + cfg.data.timeframe + ' bars)' if cfg.data.source == 'bars' else '(one-second tick grid)'};
venue {html.escape(cfg.costs.venue)}; every model retrained on the past only in each window.</p>
{''.join(parts)}
<h2>Performance</h2>{''.join(tables)}
<h2>Stability under perturbed inputs (noise {cfg.validation.noise_std:g} std)</h2>
{_table(['model', 'mean |Δp|', 'positions changed'], stab)}
<h2>Windows: AUC on trained-on rows / next window at {h}s</h2>
{_table(['window', 'symbols', 'from', 'to', 'rows', 'fit s', *report.scores, *chosen], gaps)}
</body></html>"""
    path.write_text(doc)
    return path, pngs
