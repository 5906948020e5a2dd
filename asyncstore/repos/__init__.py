"""Async repositories, one module per noun."""
