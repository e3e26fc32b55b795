"""Pure differential-privacy building blocks (no Ray, no torch, nothing from the rest of fedray).

- :mod:`.accounting`: client-level DP-FedAvg and per-client DP-SGD accounting on ``dp_accounting``.
- :mod:`.ddp_accounting`: accounting for distributed DP (sum of clients' discrete noise).
- :mod:`.clipping`: global L2 norm, clipping, adaptive clipping (Andrew et al. 2021).
- :mod:`.discrete`: discrete Gaussian / Skellam samplers and the secure-aggregation encoding
  pipeline of the distributed discrete Gaussian mechanism (Kairouz et al. 2021).
- :mod:`.audit`: one-run empirical privacy estimation with canaries (Andrew et al. 2024).
"""
