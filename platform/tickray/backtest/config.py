"""The backtest job's YAML config (`jobs/configs/backtest-*.yaml`): which data, which models, how a
probability becomes a position, and what trading costs.

``train`` is a training config (the same schema as `tickray train`): the models
each walk-forward window fits, the horizons, the calibration share and purged folds inside each
window's history. Every key is known; a bad value (a fee written as a string, say) is a one-line
:class:`ConfigError` naming the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from tickray.backtest.core import Rules
from tickray.bars.build import timeframe_minutes
from tickray.config import StrictModel
from tickray.training.config import TrainConfig, load_job_config

Bps = Annotated[float, Field(ge=0, strict=True)]
NS = 1_000_000_000




class DataConfig(StrictModel):
    """``ticks``: the feature lake's one-second grid (tick features, mid prices). ``bars``: the lake's 1m
    bars resampled to ``timeframe``, with the bar indicators (bars-v1) as features and the close as price.
    Symbols, dates, horizons and (for ticks) the feature selection come from ``train.data``."""
    source: Literal["ticks", "bars"] = "ticks"
    timeframe: str = "1h"

    @field_validator("timeframe")
    @classmethod
    def _known_timeframe(cls, v: str) -> str:
        timeframe_minutes(v)
        return v


class WalkForwardConfig(StrictModel):
    windows: int = Field(4, ge=1, le=100)
    # The first share of the rows is only ever trained on; the rest is cut into `windows` test windows.
    min_train_fraction: float = Field(0.4, gt=0, lt=1)
    # Models per symbol (one task per (symbol, window)) instead of one model over all symbols per window.
    per_symbol: bool = False


class StrategyConfig(StrictModel):
    threshold: float = Field(0.02, ge=0, lt=0.5)  # |p - 0.5| above it takes a position
    sizing: Literal["fixed", "confidence"] = "fixed"
    max_position: float = Field(1.0, gt=0)
    full_size_confidence: float = Field(0.5, gt=0, le=1)  # sizing "confidence": confidence giving max_position
    shock_filter: bool = True  # flat where the ensemble's shock detector says the market is abnormal
    # Also a cost-aware variant of every model ("<model>:cost"): in each window, the threshold whose
    # positions made the most net of costs over the calibration part of the window's history (never its
    # test part); 0.5 when none beat doing nothing: it never trades.
    cost_aware: bool = False
    # Seconds between decisions; none: the horizon (bets do not overlap). A duration, never a row count.
    hold_s: float | None = Field(None, gt=0)
    # A gap between a symbol's rows longer than this ends a session: the position is closed before it.
    # None: a minute, or one bar for bars (any missing bar).
    session_gap_s: float | None = Field(None, gt=0)


class CostsConfig(StrictModel):
    """Per side, in bps of the traded notional, by venue; the backtest uses ``venue``'s."""
    venue: str = "binance-usdm"
    fee_bps: dict[str, Bps] = Field(default_factory=lambda: {"binance-usdm": 5.0, "binance-spot": 10.0,
                                                                "binance-coinm": 5.0, "cme": 0.5})
    slippage_bps: dict[str, Bps] = Field(default_factory=lambda: {"binance-usdm": 1.0, "binance-spot": 2.0,
                                                                     "binance-coinm": 1.0, "cme": 0.5})
    # Decision latency: a position is filled at the first row at or after decision time + latency.
    latency_ms: Annotated[float, Field(ge=0, strict=True)] = 250.0

    @model_validator(mode="after")
    def _venue_priced(self):
        for name, table in (("fee_bps", self.fee_bps), ("slippage_bps", self.slippage_bps)):
            if self.venue not in table:
                raise ValueError(f"{name} has no entry for venue {self.venue!r} (has: {', '.join(table)})")
        return self

    @property
    def fee(self) -> float:
        return self.fee_bps[self.venue]

    @property
    def slippage(self) -> float:
        return self.slippage_bps[self.venue]


class ValidationConfig(StrictModel):
    noise_std: float = Field(0.1, gt=0)  # stability: Gaussian noise of this many feature std devs
    calibration_bins: int = Field(10, ge=2, le=50)


class BacktestConfig(StrictModel):
    name: str = "tickray-backtest"  # the MLflow experiment
    train: TrainConfig = Field(default_factory=TrainConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    walk_forward: WalkForwardConfig = Field(default_factory=WalkForwardConfig)
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    costs: CostsConfig = Field(default_factory=CostsConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    periods_per_year: float | None = Field(None, gt=0)  # default: 365 days of the clock's period (24/7 markets)

    @property
    def period_s(self) -> float:
        return 60.0 * timeframe_minutes(self.data.timeframe) if self.data.source == "bars" else 1.0

    @model_validator(mode="after")
    def _whole_bars(self):
        for h in self.train.data.horizons_s:
            if self.data.source == "bars" and (h % self.period_s or h < self.period_s):
                raise ValueError(f"train.data.horizons_s: {h}s is not a whole number of {self.data.timeframe} bars")
        return self

    @property
    def clock_s(self) -> float:
        """The period returns are measured on: a minute for tick data, a bar for bars."""
        return self.period_s if self.data.source == "bars" else 60.0

    @property
    def annual_periods(self) -> float:
        return self.periods_per_year or 365 * 86_400 / self.clock_s

    def rules(self, horizon_s: int) -> Rules:
        """The core's rules for a horizon: durations in ns."""
        s = self.strategy
        return Rules(threshold=s.threshold, sizing=s.sizing, max_position=s.max_position,
                     full_size_confidence=s.full_size_confidence, shock_filter=s.shock_filter,
                     hold_ns=round((s.hold_s or horizon_s) * NS), latency_ns=round(self.costs.latency_ms * 1e6),
                     session_gap_ns=round((s.session_gap_s or max(60.0, self.period_s)) * NS),
                     fee_bps=self.costs.fee, slippage_bps=self.costs.slippage)


def load_backtest_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> BacktestConfig:
    """The config at ``path`` (None: the defaults) with dotted-key ``overrides`` applied."""
    return load_job_config(BacktestConfig, path, overrides, "backtest config")
