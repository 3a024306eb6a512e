"""The ground floor every package builds on: errors, atomic files, wheel assets, model loading,
personas, prompts and their rendering, items and data sets, batching, statistics.

Modules here import only each other. The names users need are re-exported by ``probes``.
"""
