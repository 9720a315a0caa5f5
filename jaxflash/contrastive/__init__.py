"""Contrastive representation learning experiments.

* :mod:`jaxflash.contrastive.balanced`: Perfectly Balanced (Chen et al., ICML 2022) on scikit-learn's
  digits - SupCon, SupCon + class-conditional InfoNCE, SupCon + class-conditional autoencoder and Thanos
  trained on superclasses, scored by coarse-to-fine linear probes and worst-group accuracy under a
  spurious attribute (``python -m jaxflash.contrastive.balanced``).
"""
