"""Benchmarks: ``python -m jaxflash.bench SUITE`` (see ``--help``)."""
