"""Accounts and access: who may see and change what (managers, members, API tokens)."""
