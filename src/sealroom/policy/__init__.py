"""Policies that decide without doing I/O of their own: passwords, rate limits, admission."""
