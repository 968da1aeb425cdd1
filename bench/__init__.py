"""Microbenchmarks of the GLAI ops (pytest-benchmark) and the plots of their results: see CONTRIBUTING.md."""
