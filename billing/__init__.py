"""Intervals, settlement periods and invoices."""
