"""Tariffs and per-interval prices (break_even with the surplus cap, static, zev_proportional)."""
