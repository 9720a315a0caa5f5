"""The PyTorch peers of ``bench models`` compute what our layers compute, from the same weights.

torch is in the optional ``bench`` extra, not in the test extra (its wheel is several GB): without it
these tests are skipped, and say so.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflash.bench import models


@pytest.mark.parametrize("layer", sorted(models.LAYERS))
def test_torch_peer_matches_our_layer(layer):
    torch = pytest.importorskip("torch", reason="torch is the bench extra's peer, not installed here")
    d_model, seq = 16, 48
    ours, theirs = models.layer_pair(layer, d_model, seq, seed=3)
    x = models.layer_input(d_model, seq, batch=2, seed=4)

    y_ours, vjp = jax.vjp(ours, jnp.asarray(x))
    xt = torch.from_numpy(x).requires_grad_()
    y_theirs = theirs(xt)
    scale = float(np.max(np.abs(y_ours)))
    np.testing.assert_allclose(y_theirs.detach().numpy(), np.asarray(y_ours), atol=2e-5 * scale, rtol=0)

    g = np.random.default_rng(5).standard_normal(y_ours.shape).astype(np.float32)
    (dx_ours,) = vjp(jnp.asarray(g))
    y_theirs.backward(torch.from_numpy(g))
    gscale = float(np.max(np.abs(dx_ours)))
    np.testing.assert_allclose(xt.grad.numpy(), np.asarray(dx_ours), atol=2e-5 * gscale, rtol=0)


def test_layer_pair_rejects_an_unknown_layer():
    with pytest.raises(ValueError, match="layer='mamba'"):
        models.layer_pair("mamba", 16, 32)
