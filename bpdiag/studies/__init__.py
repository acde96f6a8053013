"""Curated studies (``experiments/NAME/``): the classic gradient-flow results re-measured.

- ``run``: a study's sweep files (full size or tiny) and its report, rendered from the store;
- ``store``: what a report reads back from MLflow; ``report``: report.md, its checks, figures;
- one module per study (``he2015``, ...): its checks against the paper, figures and tables.
"""
