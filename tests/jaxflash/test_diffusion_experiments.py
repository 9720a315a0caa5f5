"""The REPRODUCTIONS driver's pure parts (jaxflash.diffusion.experiments): the analytic FLOP count of a
Chipmunk sampling and the results tables. The experiments themselves train and sample for minutes; they
are run by the commands in REPRODUCTIONS.md, not here."""

import numpy as np
import pytest
from jaxflash.models import dit_tiny

from jaxflash.diffusion import ChipmunkConfig
from jaxflash.diffusion.chipmunk import ChipmunkStats
from jaxflash.diffusion.experiments import flop_fraction, markdown


def stats(full, attn, mlp):
    attn, mlp = np.asarray(attn, np.float32), np.asarray(mlp, np.float32)
    zeros = np.zeros_like(attn)
    return ChipmunkStats(np.asarray(full), zeros, zeros, attn, zeros, zeros, mlp)


def test_flop_fraction_by_hand():
    cfg = dit_tiny()  # D 64, F 256, T 16 tokens
    d, f, t = 64, 256, 16
    fixed, attn, mlp = 12 * d * d + 8 * t * d * d, 4 * t * t * d, 4 * t * d * f
    dense = fixed + attn + mlp
    nothing_sparse = ChipmunkConfig(sparse_attn=False, sparse_mlp=False, first_dense_layers=0)
    assert flop_fraction(cfg, nothing_sparse, stats([True, True], [[1, 1]] * 2, [[1, 1]] * 2)) == 1.0
    # Two layers, the first dense; step 0 full, step 1 sparse at densities 0.25 / 0.5.
    config = ChipmunkConfig(attn_top_keys=0.25, mlp_block_rows=16, first_dense_layers=1)
    n_blocks = 1
    full_extra = 2 * t * t * d + 0.25 * attn + 2 * n_blocks * d * f
    sparse = fixed + 0.25 * attn + 0.5 * mlp + 2 * n_blocks * d * f
    want = (dense + (dense + full_extra) + dense + sparse) / (4 * dense)
    got = flop_fraction(cfg, config, stats([True, False], [[1, 1], [1, 0.25]], [[1, 1], [1, 0.5]]))
    assert got == pytest.approx(want, rel=1e-12)


def test_markdown_tables():
    bounds = {
        "floor": {"digits_fd": 0.5, "label_accuracy": 0.9, "nn_distance": 0.2},
        "ceiling": {"digits_fd": 3.8, "label_accuracy": 0.1, "nn_distance": 0.9},
    }
    scored = {"digits_fd": 1.0, "digits_fd_std": 0.1, "label_accuracy": 0.5, "label_accuracy_std": 0.01}
    graft = markdown(
        {
            "bounds": bounds,
            "teacher": {**scored, "nn_distance": 0.3},
            "x": {**scored, "nn_distance": 0.3, "stage1_val_mse": 0.01, "stage1_zero_mse": 0.3},
        }
    )
    assert "| x | 0.0100 (0.3000) | 1.000 ± 0.100 |" in graft and "floor (real held-out images)" in graft
    sparse = {"sample_rel_error": 0.05, "attn_density": 0.3, "mlp_density": 0.4, "flop_fraction": 0.6}
    chip = markdown(
        {
            "bounds": bounds,
            "dense": {**scored, "nn_distance": 0.3, "sample_s": 2.0},
            "c": {**scored, "nn_distance": 0.3, **sparse, "sample_s": 1.0, "speedup": 2.0},
        }
    )
    assert (
        "| c | 1.000 ± 0.100 | 0.500 ± 0.010 | 0.300 | 0.0500 | 0.30 / 0.40 | 0.60 | 1.00 | 2.00x |" in chip
    )
    assert "| dense | 1.000 ± 0.100 | 0.500 ± 0.010 | 0.300 |  | 1 / 1 | 1 | 2.00 | 1.00x |" in chip
