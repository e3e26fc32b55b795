"""Privacy building blocks: accounting, clipping, discrete noise, secure aggregation, CKKS."""
