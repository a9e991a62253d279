"""``opifex bench second-order``: NIST StRD least squares, MGH minimisation, NNX overhead,
batched fits."""

from __future__ import annotations

from opifex.benchmarks._harness import Context, Record


def run(ctx: Context) -> list[Record]:
    """Run every part and return their records."""
    import jax

    jax.config.update("jax_enable_x64", True)
    from opifex.benchmarks.second_order import _batch, _mgh, _nist, _nnx

    records: list[Record] = []
    for part in (_nist, _mgh, _nnx, _batch):
        records.extend(part.run(ctx))
    return records
