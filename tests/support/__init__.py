"""Helpers the tests share that are not fixtures: conftest.py holds the
fixtures, this package the code behind them."""
