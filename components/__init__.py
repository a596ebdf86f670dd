"""Reusable layout pieces and figure builders."""
