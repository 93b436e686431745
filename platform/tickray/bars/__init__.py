"""Bars: built from trades, resampled, cached in layers, kept live, screened and collected."""
