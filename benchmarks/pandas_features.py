"""A straightforward pandas implementation of the tick-v2 feature set (resample to 1 s, groupby, rolling):
the baseline that bench_features.py measures the library against, and a second, independent writing of
the definitions that it checks the library's numbers with."""

from __future__ import annotations

import numpy as np
import pandas as pd

LEVELS = 5


def pandas_grid(trades: pd.DataFrame, book: pd.DataFrame) -> pd.DataFrame:
    book = book.set_index("ts").sort_index()
    start = book.index[0].floor("1s")
    end = max(book.index[-1], trades["ts"].max() if len(trades) else book.index[-1]).floor("1s")
    idx = pd.date_range(start, end, freq="1s")
    cols = [f"{s}_{k}_{i}" for s in ("bid", "ask") for k in ("px", "sz") for i in range(1, LEVELS + 1)]
    grid = book[cols].resample("1s").last().reindex(idx).ffill()
    t = trades[trades["ts"] >= start].copy()
    mids = ((book["bid_px_1"] + book["ask_px_1"]) / 2).rename("mid").reset_index()
    t = pd.merge_asof(t.sort_values("ts"), mids, on="ts", allow_exact_matches=False)  # strictly before
    t["buy_qty"] = t["qty"].where(t["side"] > 0, 0.0)
    t["sell_qty"] = t["qty"].where(t["side"] < 0, 0.0)
    t["notional"] = t["price"] * t["qty"]
    t["asof_qty"] = t["qty"].where(t["mid"].notna(), 0.0)
    t["asof_cost_bps"] = (t["qty"] * (t["price"] - t["mid"]).abs() / t["mid"] * 1e4).fillna(0.0)
    agg = t.set_index("ts").resample("1s").agg({"buy_qty": "sum", "sell_qty": "sum", "qty": ["count", "max"],
                                                "notional": "sum", "asof_qty": "sum", "asof_cost_bps": "sum"})
    agg.columns = ["buy_qty", "sell_qty", "n_trades", "max_qty", "notional", "asof_qty", "asof_cost_bps"]
    return grid.join(agg.reindex(idx).fillna(0.0))


def pandas_features(g: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame(index=g.index)
    b, a, qb, qa = g["bid_px_1"], g["ask_px_1"], g["bid_sz_1"], g["ask_sz_1"]
    mid = (b + a) / 2
    logmid = np.log(mid)
    bid_sz = g[[f"bid_sz_{i}" for i in range(1, LEVELS + 1)]]
    ask_sz = g[[f"ask_sz_{i}" for i in range(1, LEVELS + 1)]]
    db, da = bid_sz.sum(axis=1, skipna=False), ask_sz.sum(axis=1, skipna=False)
    out["spread_bps"] = (a - b) / mid * 1e4
    bid_px = g[[f"bid_px_{i}" for i in range(1, LEVELS + 1)]].to_numpy()
    ask_px = g[[f"ask_px_{i}" for i in range(1, LEVELS + 1)]].to_numpy()
    gaps = pd.DataFrame(np.column_stack([-np.diff(bid_px, axis=1), np.diff(ask_px, axis=1)]), index=g.index)
    out["spread_ticks"] = (a - b) / gaps.where(gaps > 0).min(axis=1)
    out["imb_l1"] = (qb - qa) / (qb + qa)
    w = 1 / np.arange(1, LEVELS + 1)
    wb, wa = (bid_sz * w).sum(axis=1, skipna=False), (ask_sz * w).sum(axis=1, skipna=False)
    out["imb_l5"] = (wb - wa) / (wb + wa)
    out["pressure_l5"] = np.log(db / da)
    out["depth_l5"] = np.log1p(db + da)
    out["microprice_bps"] = ((b * qa + a * qb) / (qb + qa) - mid) / mid * 1e4
    vb = (bid_px * bid_sz.to_numpy()).sum(axis=1) / db
    va = (ask_px * ask_sz.to_numpy()).sum(axis=1) / da
    out["wmid_l5_bps"] = ((vb * da + va * db) / (db + da) - mid) / mid * 1e4
    out["slope_bid_l5"] = np.log1p(db / ((mid - g["bid_px_5"]).abs() / mid * 1e4))
    out["slope_ask_l5"] = np.log1p(da / ((mid - g["ask_px_5"]).abs() / mid * 1e4))
    ret1 = logmid.diff() * 1e4
    out["ret_1s"] = ret1
    for k in (5, 30, 60, 300):
        out[f"ret_{k}s"] = (logmid - logmid.shift(k)) * 1e4
    pb, pa, pqb, pqa = b.shift(), a.shift(), qb.shift(), qa.shift()
    e = (qb.where(b >= pb, 0.0) - pqb.where(b <= pb, 0.0) - qa.where(a <= pa, 0.0) + pqa.where(a >= pa, 0.0))
    e[pb.isna()] = np.nan
    depth1 = (qb + qa) / 2
    for w_ in (5, 30, 60, 300):
        out[f"ofi_{w_}s"] = e.rolling(w_, min_periods=w_).sum() / depth1.rolling(w_, min_periods=w_).mean()
    qty = g["buy_qty"] + g["sell_qty"]
    signed = g["buy_qty"] - g["sell_qty"]
    for w_ in (5, 30, 60):
        tot = qty.rolling(w_, min_periods=w_).sum()
        out[f"tflow_{w_}s"] = (signed.rolling(w_, min_periods=w_).sum() / tot).where(tot > 0, 0.0).where(tot.notna())
    for w_ in (30, 300):
        out[f"rv_{w_}s"] = np.sqrt((ret1 ** 2).rolling(w_, min_periods=w_).sum())
    q60 = qty.rolling(60, min_periods=60).sum()
    out["signed_vol_60s"] = np.arcsinh(signed.rolling(60, min_periods=60).sum())
    vwap = (g["notional"].rolling(60, min_periods=60).sum() / q60).where(q60 > 0, mid).where(q60.notna())
    out["vwap_dev_60s_bps"] = (vwap - mid) / mid * 1e4
    aq = g["asof_qty"].rolling(60, min_periods=60).sum()
    out["eff_spread_60s_bps"] = (2 * g["asof_cost_bps"].rolling(60, min_periods=60).sum() / aq).where(
        aq > 0, out["spread_bps"]).where(aq.notna())
    out["vol_rate_60s"] = np.log1p(q60 / 60)
    out["vol_rate_300s"] = np.log1p(qty.rolling(300, min_periods=60).mean())
    out["vol_rate_900s"] = np.log1p(qty.rolling(900, min_periods=60).mean())
    base = qty.rolling(900, min_periods=60).mean()
    for side in ("buy", "sell"):
        s60 = g[f"{side}_qty"].rolling(60, min_periods=60).sum()
        out[f"{side}_pressure_60s"] = (s60 / (60 * base)).where(base > 0, 0.0).where(s60.notna() & base.notna())
    n = g["n_trades"]
    out["trades_30s"] = n.rolling(30, min_periods=30).sum()
    out["intensity_30s"] = np.log1p(out["trades_30s"] / 30) - np.log1p(n.rolling(900, min_periods=60).mean())
    has = n > 0
    logsize = np.log((qty / n).where(has, 1.0)).where(has, 0.0)
    cnt = has.astype(float).rolling(900, min_periods=60).mean()
    mean = logsize.rolling(900, min_periods=60).mean() / cnt
    sd = np.sqrt(((logsize ** 2).rolling(900, min_periods=60).mean() / cnt - mean ** 2).clip(lower=0))
    mean, sd = mean.where(cnt > 0), sd.where(cnt > 0)
    thr = np.exp(mean + 3 * sd).shift(1)
    flag = (g["max_qty"] > thr).astype(float).where(thr.notna())
    out["large_trades_60s"] = flag.rolling(60, min_periods=60).sum()
    frac = (g.index.hour * 3600 + g.index.minute * 60 + g.index.second) / 86_400
    out["tod_sin"], out["tod_cos"] = np.sin(2 * np.pi * frac), np.cos(2 * np.pi * frac)
    hours = frac * 24
    for name, (h0, h1) in {"asia": (0, 8), "europe": (7, 16), "us": (13, 21)}.items():
        out[f"session_{name}"] = ((hours >= h0) & (hours < h1)).astype(float)
    return out
