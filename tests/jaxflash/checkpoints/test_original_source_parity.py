"""safari's own torch layers against ours, loaded through the converter (H3 with head_dim 1 and 2 and a
trained diagonal B, Hyena of order 2 and 3, the long convolution), and m2's own M2-BERT masked LM. The
originals' code is not shipped with jaxflash: these run only with torch (and einops, opt_einsum) installed
and ``JAXFLASH_SAFARI_SRC`` / ``JAXFLASH_M2_SRC`` naming checkouts of HazyResearch/safari and
HazyResearch/m2 (pytorch_lightning, which safari imports for one decorator, is stubbed)."""

import os
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jaxflash.models import H3Config, HyenaConfig, LanguageModel, LongConvConfig, tiny_lm

from jaxflash.checkpoints import from_safari_lm, to_safari_lm

torch = pytest.importorskip("torch", reason="torch is an optional extra (jaxflash[torch])")
pytest.importorskip("einops", reason="the originals' layers import einops")
pytest.importorskip("opt_einsum", reason="the originals' layers import opt_einsum")


@pytest.fixture(scope="module")
def safari():
    src = os.environ.get("JAXFLASH_SAFARI_SRC")
    if not src:
        pytest.skip(
            "set JAXFLASH_SAFARI_SRC to a checkout of HazyResearch/safari to compare with its own layers"
        )
    sys.path.insert(0, src)
    if "pytorch_lightning" not in sys.modules:  # safari's src.utils imports it for rank_zero_only only
        pl = types.ModuleType("pytorch_lightning")
        pl.utilities = types.ModuleType("pytorch_lightning.utilities")
        pl.utilities.rank_zero_only = lambda f: f
        sys.modules.update({"pytorch_lightning": pl, "pytorch_lightning.utilities": pl.utilities})
    from src.models.sequence.h3 import H3
    from src.models.sequence.hyena import HyenaOperator
    from src.models.sequence.long_conv import LongConv

    return types.SimpleNamespace(H3=H3, HyenaOperator=HyenaOperator, LongConv=LongConv)


D, L = 8, 16


def _compare(config, layer, call):
    """Put ``layer``'s state dict in block 0 of an exported LM, convert it, compare the mixers."""
    sd = to_safari_lm(LanguageModel(config, rngs=nnx.Rngs(0)))
    prefix = "backbone.layers.0.mixer."
    sd = {k: v for k, v in sd.items() if not k.startswith(prefix)}
    sd.update({prefix + k: v.detach().numpy().astype(np.float32) for k, v in layer.state_dict().items()})
    loaded, _ = from_safari_lm(sd, config=config)
    u = np.random.default_rng(1).standard_normal((2, L, D)).astype(np.float32)
    with torch.no_grad():
        ref = call(layer, torch.from_numpy(u)).numpy()
    with jax.default_matmul_precision("highest"):
        out = np.asarray(loaded.blocks[0].mixer(jnp.asarray(u)))
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.mark.parametrize("head_dim", [1, 2])
def test_h3(safari, head_dim):
    torch.manual_seed(head_dim)
    layer = safari.H3(D, d_state=4, head_dim=head_dim, mode="diag", measure="diag-lin")
    with torch.no_grad():  # trained-looking B in both SSMs
        layer.kernel.kernel.B.add_(0.3 * torch.randn_like(layer.kernel.kernel.B))
        layer.ssm_k_kernel.kernel.B.add_(0.3 * torch.randn_like(layer.ssm_k_kernel.kernel.B))
    config = tiny_lm("h3", n_layers=1, d_model=D, max_seq_len=L, h3=H3Config(d_state=4, head_dim=head_dim))
    _compare(config, layer, lambda m, u: m(u))


@pytest.mark.parametrize("order", [2, 3])
def test_hyena(safari, order):
    torch.manual_seed(order)
    layer = safari.HyenaOperator(D, l_max=L, order=order, filter_order=16, emb_dim=5, w=10)
    hyena = HyenaConfig(order=order, filter_order=16, emb_dim=5, sine_freq=10.0)
    _compare(tiny_lm("hyena", n_layers=1, d_model=D, max_seq_len=L, hyena=hyena), layer, lambda m, u: m(u))


def test_long_conv_at_l_max(safari):
    torch.manual_seed(0)
    layer = safari.LongConv(
        D,
        l_max=L,
        channels=2,
        lam=0.003,
        kernel_dropout=0.0,
        transposed=False,
        activation="gelu",
        postact="glu",
    )
    with torch.no_grad():
        layer.kernel.kernel.mul_(50.0)  # weights above the squash threshold
    layer.eval()
    long_conv = LongConvConfig(channels=2, lam=0.003)
    config = tiny_lm("long_conv", n_layers=1, d_model=D, max_seq_len=L, long_conv=long_conv)
    _compare(config, layer, lambda m, u: m(u)[0])


def test_m2_bert_masked_lm():
    """m2's own BertForMaskedLM (bidirectional Monarch Mixer, residual long conv, block-diagonal GLU),
    end to end through ``from_m2_bert``; needs ``JAXFLASH_M2_SRC`` (a checkout of HazyResearch/m2) and
    transformers."""
    m2 = os.environ.get("JAXFLASH_M2_SRC")
    if not m2:
        pytest.skip(
            "set JAXFLASH_M2_SRC to a checkout of HazyResearch/m2 to compare with its BertForMaskedLM"
        )
    pytest.importorskip("transformers", reason="m2's bert_layers builds on transformers")
    from jaxflash.checkpoints import from_m2_bert

    bert = os.path.join(m2, "bert")
    sys.path[:0] = [bert, os.path.join(bert, "src")]
    pkg = types.ModuleType("src")  # m2's src/__init__.py imports composer; load the modules without it
    pkg.__path__ = [os.path.join(bert, "src")]
    saved = sys.modules.get("src")
    sys.modules["src"] = pkg
    try:
        from src.bert_layers import BertForMaskedLM
        from src.configuration_bert import BertConfig
    finally:
        if saved is not None:
            sys.modules["src"] = saved
    config = BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        monarch_mixer_sequence_mixing=True,
        long_conv_l_max=32,
        bidirectional=True,
        residual_long_conv=True,
        use_glu_mlp=True,
        use_monarch_mlp=True,
        monarch_mlp_nblocks=4,
        hyena_emb_dim=5,
        hyena_filter_order=16,
        hyena_w=10,
        hidden_dropout_prob=0.0,
        use_positional_encodings=True,
        alibi_starting_size=32,
        long_conv_kernel_learning_rate=1e-3,
        hyena_lr_pos_emb=1e-5,
        hyena_wd=0.1,
    )
    torch.manual_seed(0)
    original = BertForMaskedLM(config).eval()
    ours, _ = from_m2_bert(
        {k: v.detach().numpy().astype(np.float32) for k, v in original.state_dict().items()}
    )
    ids = np.random.default_rng(0).integers(0, 64, (2, 32))
    with torch.no_grad():
        ref = original(input_ids=torch.from_numpy(ids), attention_mask=torch.ones(2, 32, dtype=torch.long))
    with jax.default_matmul_precision("highest"):
        out = np.asarray(ours(jnp.asarray(ids)))
    assert np.abs(out - ref.logits.numpy()).max() <= 1e-5 * np.abs(ref.logits.numpy()).max()
