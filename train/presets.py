"""Named training runs: ``python -m jaxflash.train NAME`` (``--list`` prints them).

Each preset is a function returning a :class:`~jaxflash.train.config.TrainConfig`; the docstring's first
line is what ``--list`` shows. The synthetic-task presets follow the papers' recipes
(``shared/reference/models.md`` section 2): safari's ICL synthetics (2 layers, d_model 32, d_inner 128,
AdamW lr 5e-4, weight decay 0.1, batch 32, 10% warmup), the Hyena paper's long associative recall (Table
A.1: vocab 30, width 64, 2000 examples), zoology's MQAR starter, MAD's selective copying. REPRODUCTIONS.md
has the commands that ran them and what came out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from jaxflash.models import (
    M2_FILTER,
    AttentionConfig,
    DiTConfig,
    H3Config,
    HyenaConfig,
    LMConfig,
    LongConvConfig,
    M2Config,
    m2_gpt_tiny,
    parcae_tiny,
)
from jaxflash.train.config import DiffusionConfig, MaskedLMConfig, OptimConfig, TrainConfig

from jaxflash.data import DataConfig

BYTES = 256  # the byte-level corpora's vocabulary


def _byte_lm(mixer: str, *, d_model: int, n_layers: int, seq_len: int) -> LMConfig:
    return LMConfig(
        vocab_size=BYTES,
        d_model=d_model,
        n_layers=n_layers,
        d_inner=2 * d_model,
        max_seq_len=seq_len,
        mixer=mixer,
        attention=AttentionConfig(num_heads=max(1, d_model // 32)),
        h3=H3Config(d_state=64),
        hyena=HyenaConfig(filter_order=64, emb_dim=5, sine_freq=10.0),
        long_conv=LongConvConfig(channels=1, lam=0.001),
        implementation="xla",
    )


def demo() -> TrainConfig:
    """The main job: a 4-layer Hyena byte LM on CPython's documentation text (minutes on 2 CPU cores)."""
    seq = 256
    return TrainConfig(
        model=_byte_lm("hyena", d_model=128, n_layers=4, seq_len=seq),
        data=DataConfig(name="pydoc", seq_len=seq),
        optim=OptimConfig(lr=3e-3, warmup_steps=20, weight_decay=0.1),
        workdir="runs/demo",
        steps=300,
        batch_size=16,
        checkpoint_every=100,
        eval_every=100,
        eval_batches=8,
        log_every=10,
        sample_tokens=200,
        sample_prompt="The for statement",
    )


def _lm_preset(mixer: str) -> Callable[[], TrainConfig]:
    def preset() -> TrainConfig:
        config = demo()
        return dataclasses.replace(
            config,
            model=dataclasses.replace(config.model, mixer=mixer, d_model=64, n_layers=2, d_inner=128),
            workdir=f"runs/lm_{mixer}",
            steps=200,
        )

    preset.__doc__ = f"A 2-layer, width-64 {mixer} byte LM on the pydoc corpus (CPU minutes)."
    return preset


def lm_m2_gpt() -> TrainConfig:
    """A 2-layer, width-64 causal Monarch Mixer (M2-GPT) byte LM on the pydoc corpus."""
    seq = 256
    model = m2_gpt_tiny(vocab_size=BYTES, d_model=64, d_inner=128, max_seq_len=seq)
    return dataclasses.replace(demo(), model=model, workdir="runs/lm_m2_gpt", steps=200)


def lm_parcae() -> TrainConfig:
    """A 1/1/1-block, width-64 Parcae looped byte LM on the pydoc corpus."""
    seq = 256
    base = parcae_tiny()
    model = dataclasses.replace(
        base,
        vocab_size=BYTES,
        d_model=64,
        d_inner=128,
        max_seq_len=seq,
        attention=dataclasses.replace(base.attention, num_heads=2, num_kv_heads=1),
    )
    return dataclasses.replace(demo(), model=model, workdir="runs/lm_parcae", steps=200)


def lm_parcae_linear() -> TrainConfig:
    """lm_parcae with the linear (concat-adapter) injection, Parcae's unstable baseline."""
    config = lm_parcae()
    return dataclasses.replace(
        config,
        model=dataclasses.replace(config.model, injection="linear"),
        workdir="runs/lm_parcae_linear",
    )


def _synthetic_lm(mixer: str, vocab: int, seq: int) -> LMConfig:
    # safari's lm_simple: 2 layers, d_model 32, d_inner 128; H3 d_state 64, head_dim 1; attention 1 head
    # with learned positions (the Transformer baseline).
    attention = mixer == "attention"
    return LMConfig(
        vocab_size=vocab,
        d_model=32,
        n_layers=2,
        d_inner=128,
        max_seq_len=seq,
        mixer=mixer,
        attention=AttentionConfig(num_heads=1, rope=False),
        learned_pos_emb=attention,
        h3=H3Config(d_state=64, head_dim=1),
        hyena=HyenaConfig(filter_order=64, emb_dim=5, sine_freq=10.0),
        embed_dropout=0.1,
        implementation="xla",
    )


def _safari(task: str, mixer: str, *, vocab: int, input_seq_len: int, steps: int) -> TrainConfig:
    return TrainConfig(
        model=_synthetic_lm(mixer, vocab, input_seq_len + 2),  # safari's l_max
        data=DataConfig(name=task, seq_len=input_seq_len, vocab_size=vocab),
        optim=OptimConfig(lr=5e-4, weight_decay=0.1, warmup_steps=steps // 10, clip_norm=None),
        workdir=f"runs/{task}_{mixer}",
        steps=steps,
        batch_size=32,
        checkpoint_every=max(steps // 4, 1),
        eval_every=max(steps // 10, 1),
        eval_batches=16,
        log_every=50,
        sample_tokens=0,
    )


# safari's epochs of 5000 examples in batches of 32 (156.25 steps each): vocab_size_10.yaml trains
# associative recall 200 epochs, induction_head/base.yaml 400.
ASSOCIATIVE_RECALL_STEPS = 200 * 5000 // 32
INDUCTION_HEAD_STEPS = 400 * 5000 // 32


def induction_head_h3() -> TrainConfig:
    """H3 on safari's induction head (vocab 20, length 30), 400 epochs; the paper reports 100%."""
    return _safari("induction_head", "h3", vocab=20, input_seq_len=30, steps=INDUCTION_HEAD_STEPS)


def induction_head_transformer() -> TrainConfig:
    """The 1-head Transformer baseline on safari's induction head, 400 epochs (paper: 100%)."""
    return _safari("induction_head", "attention", vocab=20, input_seq_len=30, steps=INDUCTION_HEAD_STEPS)


def associative_recall_h3() -> TrainConfig:
    """H3 on safari's associative recall (vocab 10, length 20), 200 epochs; paper 99.8% (REPRODUCTIONS.md)."""
    return _safari("associative_recall", "h3", vocab=10, input_seq_len=20, steps=ASSOCIATIVE_RECALL_STEPS)


def associative_recall_transformer() -> TrainConfig:
    """The 1-head Transformer baseline on safari's associative recall, 200 epochs (paper: 100%)."""
    return _safari(
        "associative_recall", "attention", vocab=10, input_seq_len=20, steps=ASSOCIATIVE_RECALL_STEPS
    )


def induction_head_s4d() -> TrainConfig:
    """S4D (safari's s4d layer, d_state 64) on safari's induction head, 400 epochs (paper: 35.6%)."""
    return _safari("induction_head", "s4d", vocab=20, input_seq_len=30, steps=INDUCTION_HEAD_STEPS)


def associative_recall_s4d() -> TrainConfig:
    """S4D (safari's s4d layer, d_state 64) on safari's associative recall, 200 epochs (paper: 86.0%)."""
    return _safari("associative_recall", "s4d", vocab=10, input_seq_len=20, steps=ASSOCIATIVE_RECALL_STEPS)


def associative_recall_hyena() -> TrainConfig:
    """Hyena on safari's associative recall (vocab 10, length 20), 200 epochs."""
    return _safari("associative_recall", "hyena", vocab=10, input_seq_len=20, steps=ASSOCIATIVE_RECALL_STEPS)


def mqar_attention() -> TrainConfig:
    """zoology's MQAR starter (vocab 256, length 64, 4 pairs) on 100K examples, 2 attention layers, d 128.

    zoology's ``basic.py`` with its Figure 2's 100 000 training examples, batch 128, 4000 steps (5
    epochs). On the starter's own 10 000 examples in batches of 32, attention stays at 0.25 (one of the four
    values, not bound to its key) for 48 epochs; with 100 000 it reaches 0.98 (REPRODUCTIONS.md)."""
    seq = 64
    model = dataclasses.replace(
        _synthetic_lm("attention", 256, seq), d_model=128, d_inner=512, max_seq_len=seq
    )
    return TrainConfig(
        model=model,
        data=DataConfig(name="mqar", seq_len=seq, vocab_size=256, num_kv_pairs=4, num_examples=100_000),
        optim=OptimConfig(lr=1e-3, weight_decay=0.1, clip_norm=None),
        workdir="runs/mqar_attention",
        steps=4000,
        batch_size=128,
        checkpoint_every=1000,
        eval_every=500,
        log_every=50,
        sample_tokens=0,
    )


# --- Hyena's long-sequence associative recall (Hyena paper Table A.1) ----------------------------------


# Hyena Table A.1: 2000 training examples in batches of 32 (62.5 steps an epoch), 200 epochs, 10 of them
# linear warmup, then cosine.
LONG_AR_EXAMPLES = 2000
LONG_AR_STEPS = 200 * LONG_AR_EXAMPLES // 32
# safari's regularised long-conv layer (configs/model/layer/long-conv.yaml): 2 channels, squash at 0.003,
# kernel dropout 0.2, no smoothing.
SAFARI_LONG_CONV = LongConvConfig(channels=2, lam=0.003, kernel_dropout=0.2)


def _long_ar(mixer: str, *, input_seq_len: int = 1024, vocab: int = 30) -> TrainConfig:
    # safari hyena-131k-30vs.yaml at a CPU length: 2 layers, width 64 (MLP 4x), Hyena emb_dim 5, filter
    # FFN 64, w 10; Table A.1: AdamW (0.9, 0.98) lr 5e-4, wd 0.1, no dropout, batch 32.
    seq = 2 * (input_seq_len // 2) + 2
    model = dataclasses.replace(
        _synthetic_lm(mixer, vocab, seq),
        d_model=64,
        d_inner=256,
        embed_dropout=0.0,
        long_conv=SAFARI_LONG_CONV,
    )
    steps = LONG_AR_STEPS
    return TrainConfig(
        model=model,
        data=DataConfig(
            name="associative_recall", seq_len=input_seq_len, vocab_size=vocab, num_examples=LONG_AR_EXAMPLES
        ),
        optim=OptimConfig(lr=5e-4, weight_decay=0.1, warmup_steps=steps // 20, clip_norm=None),
        workdir=f"runs/associative_recall_{input_seq_len}_{mixer}",
        steps=steps,
        batch_size=32,
        checkpoint_every=max(steps // 4, 1),
        eval_every=max(steps // 10, 1),
        eval_batches=16,
        log_every=25,
        sample_tokens=0,
    )


def associative_recall_1k_hyena() -> TrainConfig:
    """Hyena on associative recall at 1K tokens, vocab 30, width 64 (Hyena Table A.1; 100% at 30K)."""
    return _long_ar("hyena")


def associative_recall_1k_h3() -> TrainConfig:
    """H3 (d_state 64) on associative recall at 1K tokens, vocab 30, width 64 (Hyena paper: 8.4% at 30K)."""
    return _long_ar("h3")


def associative_recall_1k_conv1d() -> TrainConfig:
    """Order-2 Hyena with an explicit 64-tap filter on associative recall at 1K (Hyena Table A.2, Conv1d)."""
    config = _long_ar("hyena")
    hyena = dataclasses.replace(config.model.hyena, filter="conv1d", explicit_taps=64)
    return dataclasses.replace(
        config,
        model=dataclasses.replace(config.model, hyena=hyena),
        workdir="runs/associative_recall_1024_conv1d",
    )


def associative_recall_512_long_conv() -> TrainConfig:
    """Long convolutions (safari's squash 0.003, kernel dropout 0.2) on associative recall at 512 tokens."""
    return _long_ar("long_conv", input_seq_len=512)


# --- zoology's MQAR across mixers ---------------------------------------------------------------------


def _mqar(model: LMConfig | M2Config, name: str) -> TrainConfig:
    return dataclasses.replace(mqar_attention(), model=model, workdir=f"runs/mqar_{name}")


def mqar_hyena() -> TrainConfig:
    """MQAR (mqar_attention's recipe), 2 Hyena layers, zoology's filter (emb_dim 3, w 1, FFN 64), d 128."""
    model = mqar_attention().model
    return _mqar(
        dataclasses.replace(
            model,
            mixer="hyena",
            learned_pos_emb=False,
            hyena=HyenaConfig(filter_order=64, emb_dim=3, sine_freq=1.0),
        ),
        "hyena",
    )


def mqar_h3() -> TrainConfig:
    """MQAR (mqar_attention's recipe), 2 H3 layers, d_state 64 = seq, head_dim 2 (Figure 2)."""
    model = mqar_attention().model
    return _mqar(
        dataclasses.replace(model, mixer="h3", learned_pos_emb=False, h3=H3Config(d_state=64, head_dim=2)),
        "h3",
    )


def mqar_long_conv() -> TrainConfig:
    """MQAR (mqar_attention's recipe), 2 long-convolution layers, safari's regularised kernel, d 128."""
    model = mqar_attention().model
    return _mqar(
        dataclasses.replace(model, mixer="long_conv", learned_pos_emb=False, long_conv=SAFARI_LONG_CONV),
        "long_conv",
    )


def mqar_m2() -> TrainConfig:
    """MQAR (mqar_attention's recipe), a 2-layer M2-GPT (Monarch Mixer), d_model 128, filter FFN 64."""
    base = mqar_attention().model
    tiny = m2_gpt_tiny()
    model = m2_gpt_tiny(
        vocab_size=base.vocab_size,
        d_model=base.d_model,
        d_inner=base.d_inner,
        max_seq_len=base.max_seq_len,
        hyena=dataclasses.replace(tiny.hyena, filter_order=64),
    )
    return _mqar(model, "m2")


def selective_copying_hyena() -> TrainConfig:
    """MAD's selective copying (vocab 16, length 256, 16 tokens) with a 2-layer Hyena, d_model 128."""
    seq = 256
    model = dataclasses.replace(_synthetic_lm("hyena", 16, seq), d_model=128, d_inner=512, embed_dropout=0.0)
    return TrainConfig(
        model=model,
        data=DataConfig(name="selective_copying", seq_len=seq, vocab_size=16),
        optim=OptimConfig(lr=5e-4, weight_decay=0.0, schedule="cosine", min_lr_ratio=0.002),
        workdir="runs/selective_copying_hyena",
        steps=4000,
        batch_size=128,
        checkpoint_every=1000,
        eval_every=500,
        log_every=50,
        sample_tokens=0,
    )


def dit_digits() -> TrainConfig:
    """A 6-block, width-64 DiT (patch 2, 64 tokens) on scikit-learn's digits upsampled to 16x16."""
    return TrainConfig(
        model=DiTConfig(
            input_size=16,
            patch_size=2,
            in_channels=1,
            d_model=64,
            n_layers=6,
            num_heads=4,
            num_classes=10,
            implementation="xla",
        ),
        data=DataConfig(name="digits", image_size=16, validation_fraction=0.2),
        # DiT: AdamW at a constant 1e-4, no weight decay; a larger lr and a short warmup suit this size.
        optim=OptimConfig(lr=3e-4, weight_decay=0.0, schedule="constant", warmup_steps=200, clip_norm=1.0),
        diffusion=DiffusionConfig(ema_decay=0.999, sample_steps=50),
        workdir="runs/dit_digits",
        steps=6000,
        batch_size=64,
        checkpoint_every=1000,
        eval_every=2000,
        eval_batches=8,
        log_every=100,
        sample_tokens=0,
    )


# Byte vocabulary plus M2-BERT's [CLS], [SEP] and, last, [MASK] (jaxflash.train.MaskedLMConfig).
BERT_BYTES = BYTES + 3


def _bert_pydoc(monarch: bool) -> TrainConfig:
    seq = 512
    model = M2Config(
        vocab_size=BERT_BYTES,
        d_model=128,
        n_layers=4,
        d_inner=256,
        max_seq_len=8192,  # positions and filters for the retrieval lengths; pretraining reads 512
        hyena=dataclasses.replace(M2_FILTER, filter_order=64),
        monarch_mixer_sequence_mixing=monarch,
        num_attention_heads=4,
        implementation="xla",
    )
    name = "m2_bert_pydoc" if monarch else "bert_pydoc"
    return TrainConfig(
        model=model,
        data=DataConfig(name="pydoc", seq_len=seq),
        # M2-BERT's recipe (shared/reference/models.md 5.2): lr 5e-4, betas (0.9, 0.98), eps 1e-6,
        # weight decay 1e-5, 6% warmup then linear decay; MLM rate 0.3 (evaluation 0.15).
        optim=OptimConfig(lr=5e-4, b2=0.98, eps=1e-6, weight_decay=1e-5, schedule="linear", warmup_steps=24),
        mlm=MaskedLMConfig(mask_rate=0.3, eval_mask_rate=0.15),
        workdir=f"runs/{name}",
        steps=400,  # CPU minutes; the paper pretrains for days
        batch_size=16,
        checkpoint_every=200,
        eval_every=200,
        eval_batches=8,
        log_every=50,
        sample_tokens=0,
    )


def m2_bert_pydoc() -> TrainConfig:
    """A 4-layer, width-128 M2-BERT masked-LM pretrained on the pydoc bytes at 512 (retrieval's encoder)."""
    return _bert_pydoc(monarch=True)


def bert_pydoc() -> TrainConfig:
    """The same BERT with self-attention in place of the M2 mixer (retrieval's attention baseline)."""
    return _bert_pydoc(monarch=False)


PRESETS: dict[str, Callable[[], TrainConfig]] = {
    "demo": demo,
    **{f"lm_{mixer}": _lm_preset(mixer) for mixer in ("attention", "h3", "hyena", "long_conv")},
    "lm_m2_gpt": lm_m2_gpt,
    "lm_parcae": lm_parcae,
    "lm_parcae_linear": lm_parcae_linear,
    "induction_head_h3": induction_head_h3,
    "induction_head_transformer": induction_head_transformer,
    "associative_recall_h3": associative_recall_h3,
    "associative_recall_transformer": associative_recall_transformer,
    "induction_head_s4d": induction_head_s4d,
    "associative_recall_s4d": associative_recall_s4d,
    "associative_recall_hyena": associative_recall_hyena,
    "associative_recall_1k_hyena": associative_recall_1k_hyena,
    "associative_recall_1k_h3": associative_recall_1k_h3,
    "associative_recall_1k_conv1d": associative_recall_1k_conv1d,
    "associative_recall_512_long_conv": associative_recall_512_long_conv,
    "mqar_attention": mqar_attention,
    "mqar_hyena": mqar_hyena,
    "mqar_h3": mqar_h3,
    "mqar_long_conv": mqar_long_conv,
    "mqar_m2": mqar_m2,
    "selective_copying_hyena": selective_copying_hyena,
    "dit_digits": dit_digits,
    "m2_bert_pydoc": m2_bert_pydoc,
    "bert_pydoc": bert_pydoc,
}


def describe() -> list[str]:
    """One line per preset: its name and the first line of its docstring."""
    width = max(map(len, PRESETS))
    return [f"{name:<{width}}  {(fn.__doc__ or '').strip().splitlines()[0]}" for name, fn in PRESETS.items()]


def get(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; accepted: {', '.join(PRESETS)} (see --list)")
    return PRESETS[name]()
