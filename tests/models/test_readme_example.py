"""The README's model example, verbatim between the markers: build, forward, one train step, decode."""


def test_readme_model_example():
    # --- README example (start) ---
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx
    from jaxflash.models import LanguageModel, tiny_lm
    from jaxflash.train.optim import make_optimizer

    config = tiny_lm("attention")  # 2 layers of width 32, vocabulary 16; any mixer, or a paper's preset
    model = LanguageModel(config, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(0), (4, 17), 0, config.vocab_size)
    logits = model(tokens[:, :-1])  # [batch 4, seq 16, vocab 16], float32

    # AdamW with the papers' parameter groups (filter, SSM and no-decay learning rates).
    optimizer = nnx.Optimizer(model, make_optimizer(model, lr=1e-3), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, tokens):
        def loss_fn(model):
            logits = model(tokens[:, :-1])
            return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    loss = train_step(model, optimizer, tokens)

    # Recurrent decoding: one token per sequence per step, through each mixer's state.
    state = model.init_state(batch=4, max_len=8)
    step = nnx.jit(lambda model, token, state: model.step(token, state))
    token = tokens[:, 0]
    generated = []
    for _ in range(8):
        next_logits, state = step(model, token, state)
        token = jnp.argmax(next_logits, axis=-1)
        generated.append(token)
    # --- README example (end) ---

    assert logits.shape == (4, 16, 16) and logits.dtype == jnp.float32
    assert bool(jnp.isfinite(loss)) and abs(float(loss) - float(jnp.log(16.0))) < 1.0
    assert len(generated) == 8 and generated[0].shape == (4,)
    assert float(train_step(model, optimizer, tokens)) < float(loss)  # the step trains
