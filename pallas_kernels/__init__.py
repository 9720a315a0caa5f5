"""Pallas kernels, one module per family, each beside its plain-``jnp`` reference.

Installed as ``jaxflash.pallas_kernels``. Models never import these modules directly: they call the
public ops in ``jaxflash``, which dispatch here.
"""
