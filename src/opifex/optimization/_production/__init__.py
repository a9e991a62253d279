"""Private implementation of :mod:`opifex.optimization.production`."""
