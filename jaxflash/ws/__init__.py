"""Weak supervision: label matrices, labelling functions and label models (FlyingSquid, Dugong,
Epoxy, Liger) with a scikit-learn-like ``fit / predict_proba / predict / score`` API."""
