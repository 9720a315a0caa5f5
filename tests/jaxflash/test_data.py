"""jaxflash.data: stateless deterministic batches, the papers' synthetic tasks, the byte and token corpora."""

import numpy as np
import pytest

from jaxflash.data import (
    DATASETS,
    END_OF_DOCUMENT,
    DataConfig,
    decode_bytes,
    encode_bytes,
    make_dataset,
    safari_vocab,
)

# Small versions of every dataset that needs no files.
SMALL = {
    "pydoc": dict(seq_len=64),
    "induction_head": dict(num_examples=48, num_test_examples=20),
    "associative_recall": dict(num_examples=48, num_test_examples=20),
    "mqar": dict(vocab_size=64, seq_len=32, num_kv_pairs=4, num_examples=48, num_test_examples=20),
    "selective_copying": dict(seq_len=40, num_tokens_to_copy=5, num_examples=48, num_test_examples=20),
}


def small(name, **overrides):
    return DataConfig(name=name, **{**SMALL[name], **overrides})


def assert_batches_equal(a, b):
    assert a.keys() == b.keys() == {"inputs", "targets", "weights"}
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture
def counting(tmp_path):
    """A ``tokens`` dataset whose token at stream position i is i: window w starts with token w * T,
    so a row names the example it came from."""
    path = tmp_path / "count.npy"
    np.save(path, np.arange(135, dtype=np.int32))  # train: the first 135 - round(13.5) = 121 tokens
    return make_dataset(DataConfig(name="tokens", path=str(path), seq_len=4), "train")


def example_ids(dataset, batch):
    return batch["inputs"][:, 0] // dataset.seq_len


# --- the contract: determinism, stateless resume, epochs, sharding, evaluation ------------------------


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("split", ["train", "validation"])
def test_same_config_same_batches_other_seed_differs(name, split):
    a, b = make_dataset(small(name), split), make_dataset(small(name), split)
    other = make_dataset(small(name, seed=1), split)
    assert (a.vocab_size, a.seq_len, a.num_examples) == (b.vocab_size, b.seq_len, b.num_examples)
    for step in (0, 3, 11):
        batch = a.batch(step, 8)
        assert batch["inputs"].shape == batch["targets"].shape == batch["weights"].shape == (8, a.seq_len)
        assert batch["inputs"].dtype == batch["targets"].dtype == np.int32
        assert batch["weights"].dtype == np.float32
        assert 0 <= batch["inputs"].min() and batch["inputs"].max() < a.vocab_size
        assert_batches_equal(batch, b.batch(step, 8))
    assert any(not np.array_equal(a.batch(s, 8)["inputs"], other.batch(s, 8)["inputs"]) for s in range(3))


def test_resume_reads_what_the_uninterrupted_run_read():
    config = small("induction_head", num_examples=37)  # batches of 8 straddle epochs
    uninterrupted = make_dataset(config, "train")
    run = [uninterrupted.batch(step, 8) for step in range(15)]
    resumed = make_dataset(config, "train")
    for step in range(9, 15):  # step 9 starts inside the second epoch (examples 72..79 of 37 per epoch)
        assert_batches_equal(resumed.batch(step, 8), run[step])
    assert_batches_equal(make_dataset(config, "train").batch(6, 8), run[6])


def test_each_epoch_reads_every_example_once(counting):
    n, b = counting.num_examples, 6
    assert n == 30
    orders = []
    for epoch in range(3):
        ids = np.concatenate(
            [example_ids(counting, counting.batch(s, b)) for s in range(epoch * 5, epoch * 5 + 5)]
        )
        np.testing.assert_array_equal(np.sort(ids), np.arange(n))
        np.testing.assert_array_equal(ids, counting.permutation(epoch))
        orders.append(ids)
    assert not np.array_equal(orders[0], orders[1])


def test_batches_straddle_epochs_and_may_be_longer_than_one(counting):
    n = counting.num_examples
    ids = example_ids(counting, counting.batch(1, 2 * n + 4))  # rows 2n+4 .. 4n+8 of the stream
    number = np.arange(2 * n + 4, 4 * n + 8)
    expected = [counting.permutation(int(g // n))[g % n] for g in number]
    np.testing.assert_array_equal(ids, expected)


@pytest.mark.parametrize("process_count", [2, 4])
@pytest.mark.parametrize("name", ["pydoc", "mqar"])
def test_process_slices_make_up_the_global_batch(name, process_count):
    dataset = make_dataset(small(name), "train")
    for step in (0, 5):
        whole = dataset.batch(step, 8)
        parts = [
            dataset.batch(step, 8, process_index=p, process_count=process_count) for p in range(process_count)
        ]
        assert all(len(part["inputs"]) == 8 // process_count for part in parts)
        assert_batches_equal({k: np.concatenate([p[k] for p in parts]) for k in whole}, whole)
    evals = [
        list(dataset.eval_batches(8, max_batches=2, process_index=p, process_count=process_count))
        for p in range(process_count)
    ]
    for whole, *parts in zip(dataset.eval_batches(8, max_batches=2), *evals, strict=True):
        assert_batches_equal({k: np.concatenate([p[k] for p in parts]) for k in whole}, whole)


def test_bad_reads_are_refused(counting):
    with pytest.raises(ValueError, match="not divisible by process_count=4"):
        counting.batch(0, 6, process_count=4)
    with pytest.raises(ValueError, match="process_index=2 must be < process_count=2"):
        counting.batch(0, 6, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="step must be an integer >= 0; got -1"):
        counting.batch(-1, 6)
    with pytest.raises(ValueError, match="step"):
        counting.batch(1.5, 6)
    with pytest.raises(ValueError, match="batch_size must be a positive integer; got 0"):
        counting.batch(0, 0)
    with pytest.raises(ValueError, match="index=30 is out of range"):
        counting.example(30)


@pytest.mark.parametrize("batch_size", [7, 10, 30, 64])
def test_eval_batches_score_every_example_once(counting, batch_size):
    batches = list(counting.eval_batches(batch_size))
    assert len(batches) == -(-30 // batch_size)
    assert all(b["inputs"].shape == (batch_size, counting.seq_len) for b in batches)
    rows = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    real = rows["weights"].any(axis=1)
    assert real.sum() == 30 and real[:30].all()  # the padding rows come last, weight 0
    np.testing.assert_array_equal(rows["inputs"][~real], 0)
    np.testing.assert_array_equal(example_ids(counting, rows)[:30], np.arange(30))  # in order, unshuffled
    for i in (0, 17, 29):
        assert_batches_equal({k: v[i] for k, v in rows.items()}, counting.example(i))
    assert len(list(counting.eval_batches(batch_size, max_batches=1))) == 1


def test_eval_batches_of_a_masked_task_keep_its_weights():
    dataset = make_dataset(small("mqar"), "validation")
    total = sum(b["weights"].sum() for b in dataset.eval_batches(8))
    assert total == dataset.num_examples * 4  # one scored query per key-value pair


# --- the synthetic tasks, as the papers define them ---------------------------------------------------


def test_safari_vocabulary_is_sorted_as_strings():
    vocab = safari_vocab(20)
    assert len(vocab) == 20 and vocab == sorted(vocab)
    # "." (0x2e) sorts before the digits and "=>" (0x3d) after them: safari's Vocab gives "10" the id 3,
    # the third regular token ("0", "1", "10", ...).
    assert (
        vocab.index(".") == 0
        and vocab.index("10") == 3
        and vocab.index("2") == 11
        and vocab.index("=>") == 19
    )
    assert safari_vocab(10) == [".", "0", "1", "2", "3", "4", "5", "6", "7", "=>"]


@pytest.mark.parametrize("split", ["train", "validation"])
def test_induction_head_copies_the_token_after_the_earlier_copy_prefix(split):
    vocab = safari_vocab(20)
    dataset = make_dataset(DataConfig(name="induction_head", num_examples=200, num_test_examples=100), split)
    assert dataset.vocab_size == 20 and dataset.seq_len == 31  # input_seq_len 30 + "=>"
    copy_prefix = vocab.index("=>")
    for i in range(dataset.num_examples):
        ex = dataset.example(i)
        np.testing.assert_array_equal(ex["inputs"][1:], ex["targets"][:-1])  # next-token targets
        assert ex["inputs"][-1] == copy_prefix
        (trigger,) = np.flatnonzero(ex["inputs"][:-1] == copy_prefix)
        assert trigger < 30 - 2
        assert ex["targets"][-1] == ex["inputs"][trigger + 1]
        assert vocab.index(".") not in ex["inputs"]
        expected = np.ones(31) if split == "train" else np.eye(31)[-1]  # safari: test scores the last token
        np.testing.assert_array_equal(ex["weights"], expected)


@pytest.mark.parametrize("split", ["train", "validation"])
def test_associative_recall_answers_from_the_example_map(split):
    vocab = safari_vocab(10)  # regular "0".."7": keys "0".."3", values "4".."7"
    keys, values = [vocab.index(str(k)) for k in range(4)], [vocab.index(str(v)) for v in range(4, 8)]
    dataset = make_dataset(
        DataConfig(name="associative_recall", num_examples=200, num_test_examples=100), split
    )
    assert dataset.vocab_size == 10 and dataset.seq_len == 22  # 10 pairs, "=>", the query key
    maps = []
    for i in range(dataset.num_examples):
        ex = dataset.example(i)
        sequence = np.append(ex["inputs"], ex["targets"][-1])
        pairs, (prefix, query, answer) = sequence[:20].reshape(10, 2), sequence[20:]
        assert set(pairs[:, 0]) <= set(keys) and set(pairs[:, 1]) <= set(values)
        kv = {}
        for k, v in pairs:
            assert kv.setdefault(k, v) == v  # one map per example
        assert prefix == vocab.index("=>") and query in kv and answer == kv[query]
        assert ex["weights"].sum() == (22 if split == "train" else 1) and ex["weights"][-1] == 1
        maps.append(tuple(sorted(kv.items())))
    assert len(set(maps)) > dataset.num_examples // 2  # a fresh map per example


@pytest.mark.parametrize("name", ["induction_head", "associative_recall"])
def test_safari_splits_are_deduplicated_and_disjoint(name):
    # A tiny space (16 induction-head sequences; few AR ones) where drawing without dedup would repeat.
    config = DataConfig(
        name=name,
        vocab_size=4 if name == "induction_head" else 6,
        seq_len=4,
        num_examples=10,
        num_test_examples=5,
    )
    train, validation = (make_dataset(config, split) for split in ("train", "validation"))
    rows = [
        {tuple(d.example(i)["inputs"]) + (d.example(i)["targets"][-1],) for i in range(d.num_examples)}
        for d in (train, validation)
    ]
    assert len(rows[0]) == 10 and len(rows[1]) == 5 and not rows[0] & rows[1]
    with pytest.raises(ValueError, match="could draw only"):
        make_dataset(DataConfig(name="induction_head", vocab_size=4, seq_len=4, num_examples=17), "train")


@pytest.mark.parametrize("random_non_queries", [True, False])
def test_mqar_queries_recall_their_values(random_non_queries):
    V, T, D = 128, 64, 8
    config = DataConfig(
        name="mqar",
        vocab_size=V,
        seq_len=T,
        num_kv_pairs=D,
        num_examples=300,
        random_non_queries=random_non_queries,
    )
    dataset = make_dataset(config, "train")
    assert dataset.seq_len == T and dataset.vocab_size == V
    for i in range(dataset.num_examples):
        ex = dataset.example(i)
        keys, values = ex["inputs"][0 : 2 * D : 2], ex["inputs"][1 : 2 * D : 2]
        assert ((1 <= keys) & (keys < V // 2)).all() and ((V // 2 <= values) & (values < V)).all()
        assert len(set(keys)) == D and len(set(values)) == D
        queries = np.flatnonzero(ex["weights"])
        assert len(queries) == D and (queries >= 2 * D).all() and ((queries - 2 * D) % 2 == 0).all()
        assert sorted(ex["inputs"][queries]) == sorted(keys)  # every key queried once
        value_of = dict(zip(keys, values, strict=True))
        assert all(ex["targets"][q] == value_of[ex["inputs"][q]] for q in queries)
        if not random_non_queries:
            rest = np.ones(T, bool)
            rest[: 2 * D] = rest[queries] = False
            np.testing.assert_array_equal(ex["inputs"][rest], 0)


def test_mqar_power_law_makes_short_gaps_likelier():
    def mean_gap(power_a):
        config = DataConfig(
            name="mqar", vocab_size=128, seq_len=64, num_kv_pairs=4, num_examples=500, power_a=power_a
        )
        (batch,) = make_dataset(config, "train").eval_batches(500)
        weights = batch["weights"]
        return (np.nonzero(weights)[1] - 8).mean() / 2

    assert mean_gap(0.01) < 0.75 * mean_gap(1.0)  # 1.0 is uniform over the 28 gaps (mean ~ 13.5 there)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(seq_len=63), "even seq_len"),
        (dict(vocab_size=64, seq_len=64), "vocab_size > seq_len"),
        (dict(seq_len=64, num_kv_pairs=17), "4 \\* num_kv_pairs <= seq_len"),
        (dict(power_a=0.0), "power_a must be a finite number > 0"),
    ],
)
def test_mqar_constraints(overrides, message):
    with pytest.raises(ValueError, match=message):
        DataConfig(name="mqar", **overrides)


@pytest.mark.parametrize("split", ["train", "validation"])
def test_selective_copying_targets_are_the_non_blank_tokens(split):
    V, T, n = 16, 64, 8
    config = DataConfig(
        name="selective_copying",
        vocab_size=V,
        seq_len=T,
        num_tokens_to_copy=n,
        num_examples=200,
        num_test_examples=50,
    )
    dataset = make_dataset(config, split)
    blank, copy = V - 2, V - 1
    for i in range(dataset.num_examples):
        ex = dataset.example(i)
        prefix = ex["inputs"][: T - n - 1]
        assert ex["inputs"][T - n - 1] == copy and (ex["inputs"][T - n :] == blank).all()
        assert (prefix == blank).sum() == T - 2 * n - 1 and prefix[-1] != blank  # blanks go before tokens
        np.testing.assert_array_equal(ex["targets"][T - n :], prefix[prefix != blank])
        np.testing.assert_array_equal(ex["weights"], np.arange(T) >= T - n)
    with pytest.raises(ValueError, match="seq_len > 2 \\* num_tokens_to_copy \\+ 1"):
        DataConfig(name="selective_copying", seq_len=17, num_tokens_to_copy=8)


def test_synthetic_train_and_validation_are_different_draws():
    for name in ("mqar", "selective_copying"):
        train, validation = (make_dataset(small(name), split) for split in ("train", "validation"))
        assert not np.array_equal(train.example(0)["inputs"], validation.example(0)["inputs"])


# --- byte and token corpora ---------------------------------------------------------------------------


def documents_of(tokens):
    return set(bytes(tokens.astype(np.uint8)).split(bytes([END_OF_DOCUMENT]))[:-1])


def test_pydoc_split_is_fixed_by_topic():
    from pydoc_data.topics import topics

    train, validation = (make_dataset(DataConfig(name="pydoc"), split) for split in ("train", "validation"))
    assert train.vocab_size == validation.vocab_size == 256 and train.seq_len == 256
    held_out = len(validation.tokens) / (len(train.tokens) + len(validation.tokens))
    assert 0.07 < held_out < 0.13
    train_docs, validation_docs = documents_of(train.tokens), documents_of(validation.tokens)
    assert not train_docs & validation_docs
    assert train_docs | validation_docs == {text.encode() for text in topics.values()}
    other_seed = make_dataset(DataConfig(name="pydoc", seed=5, seq_len=32), "validation")
    np.testing.assert_array_equal(other_seed.tokens, validation.tokens)


def test_windows_reconstruct_the_stream():
    dataset = make_dataset(DataConfig(name="pydoc", seq_len=100), "validation")
    rows = next(dataset.eval_batches(dataset.num_examples))
    T, n = 100, dataset.num_examples
    np.testing.assert_array_equal(rows["inputs"].ravel(), dataset.tokens[: n * T])
    np.testing.assert_array_equal(rows["targets"].ravel(), dataset.tokens[1 : n * T + 1])
    np.testing.assert_array_equal(rows["weights"], 1)
    assert n == (len(dataset.tokens) - 1) // T


def test_decode_bytes_round_trip():
    text = "naïve café ≠ 🐍\n"
    tokens = encode_bytes(text)
    assert tokens.dtype == np.int32 and len(tokens) == len(text.encode())
    assert decode_bytes(tokens) == text and decode_bytes(list(tokens)) == text
    assert decode_bytes(tokens[:-3]) == "naïve café ≠ \ufffd"  # a cut character is replaced, not an error
    with pytest.raises(ValueError, match="in \\[0, 256\\)"):
        decode_bytes([65, 256])


def test_text_files_directories_and_lists(tmp_path):
    (tmp_path / "sub").mkdir()
    texts = {"a.txt": "alpha " * 30, "b.txt": "beta " * 40, "sub/c.txt": "gamma " * 50, "skip.md": "no"}
    for name, content in texts.items():
        (tmp_path / name).write_text(content)
    stream = b"".join(texts[f].encode() + b"\0" for f in ("a.txt", "b.txt", "sub/c.txt"))
    config = DataConfig(name="text", path=str(tmp_path), seq_len=16, validation_fraction=0.2)
    train, validation = make_dataset(config, "train"), make_dataset(config, "validation")
    assert bytes(np.concatenate([train.tokens, validation.tokens])) == stream
    assert 0.15 < len(validation.tokens) / len(stream) < 0.25 and train.vocab_size == 256
    listed = DataConfig(name="text", path=f"{tmp_path / 'a.txt'}, {tmp_path / 'sub'}", seq_len=16)
    both = [make_dataset(listed, s).tokens for s in ("train", "validation")]
    assert (
        bytes(np.concatenate(both)) == texts["a.txt"].encode() + b"\0" + texts["sub/c.txt"].encode() + b"\0"
    )


def test_text_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        make_dataset(DataConfig(name="text", path=str(tmp_path / "missing.txt")), "train")
    with pytest.raises(ValueError, match="without .txt files"):
        make_dataset(DataConfig(name="text", path=str(tmp_path)), "train")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty"):
        make_dataset(DataConfig(name="text", path=str(tmp_path)), "train")
    (tmp_path / "short.txt").write_text("short text")
    with pytest.raises(ValueError, match="shorter than one window"):
        make_dataset(DataConfig(name="text", path=str(tmp_path / "short.txt"), seq_len=64), "train")
    with pytest.raises(ValueError, match="path"):
        DataConfig(name="text")


def test_token_files(tmp_path):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 1000, size=5001).astype(np.uint16)
    np.save(tmp_path / "t.npy", tokens)
    tokens.tofile(tmp_path / "t.bin")
    for path in ("t.npy", "t.bin"):
        config = DataConfig(name="tokens", path=str(tmp_path / path), seq_len=50)
        train, validation = make_dataset(config, "train"), make_dataset(config, "validation")
        assert train.vocab_size == validation.vocab_size == tokens.max() + 1
        np.testing.assert_array_equal(np.concatenate([train.tokens, validation.tokens]), tokens)
        assert len(validation.tokens) == 500  # the final tenth
        np.testing.assert_array_equal(validation.example(1)["inputs"], tokens[4551:4601])
        np.testing.assert_array_equal(train.batch(2, 4)["inputs"].dtype, np.int32)
    wide = DataConfig(name="tokens", path=str(tmp_path / "t.npy"), seq_len=50, vocab_size=4096)
    assert make_dataset(wide, "train").vocab_size == 4096


def test_token_file_errors(tmp_path):
    np.arange(11, dtype=np.uint8).tofile(tmp_path / "odd.bin")
    np.save(tmp_path / "two_d.npy", np.zeros((4, 4), np.int32))
    np.save(tmp_path / "floats.npy", np.zeros(100, np.float32))
    np.save(tmp_path / "t.npy", np.arange(100, dtype=np.int32))
    (tmp_path / "t.txt").write_text("1 2 3")
    (tmp_path / "empty.bin").write_bytes(b"")
    cases = [
        ("missing.npy", {}, FileNotFoundError, "no such file"),
        ("odd.bin", {}, ValueError, "not a whole number of token_dtype='uint16' tokens"),
        ("empty.bin", {}, ValueError, "empty"),
        ("two_d.npy", {}, ValueError, "1-D integer array"),
        ("floats.npy", {}, ValueError, "1-D integer array"),
        ("t.txt", {}, ValueError, "must end in one of"),
        ("t.npy", dict(vocab_size=50), ValueError, "vocab_size=50 but .* holds token id 99"),
        ("t.npy", dict(seq_len=200), ValueError, "shorter than one window"),
    ]
    for path, overrides, error, message in cases:
        with pytest.raises(error, match=message):
            make_dataset(DataConfig(name="tokens", path=str(tmp_path / path), **overrides), "train")
    with pytest.raises(ValueError, match="token_dtype must name an integer NumPy dtype.*'float32'"):
        DataConfig(name="tokens", path="x.bin", token_dtype="float32")
    with pytest.raises(ValueError, match="token_dtype.*'uint17'"):
        DataConfig(name="tokens", path="x.bin", token_dtype="uint17")


# --- the config ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            dict(name="wikitext"),
            "name='wikitext' is not a dataset; accepted: pydoc, text, tokens, induction_head",
        ),
        (dict(seq_len=0), "seq_len must be a positive integer; got 0"),
        (dict(seq_len=True), "seq_len must be a positive integer; got True"),
        (dict(vocab_size=100), "vocab_size must be >= 256; got 100"),
        (dict(num_examples=10), "num_examples applies to the synthetic tasks"),
        (dict(seed=-1), "seed must be an integer >= 0; got -1"),
        (dict(path="x.txt"), "path must be None"),
        (dict(validation_fraction=1.0), "validation_fraction must be a finite number > 0 and < 1; got 1.0"),
        (dict(random_non_queries="yes"), "random_non_queries must be true or false; got 'yes'"),
        (dict(name="induction_head", seq_len=2), "seq_len must be an integer >= 3; got 2"),
        (dict(name="associative_recall", vocab_size=3), "vocab_size must be an integer >= 4; got 3"),
        (dict(name="mqar", num_kv_pairs=0), "num_kv_pairs must be a positive integer; got 0"),
    ],
)
def test_config_errors_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DataConfig(**kwargs)


def test_registry_defaults_and_splits():
    assert set(DATASETS) == {
        "pydoc",
        "text",
        "tokens",
        "induction_head",
        "associative_recall",
        "mqar",
        "selective_copying",
        "digits",
    }
    assert all(isinstance(d, str) and d for d in DATASETS.values())
    defaults = DataConfig(name="mqar").with_defaults()
    assert (defaults.vocab_size, defaults.seq_len, defaults.num_kv_pairs) == (8192, 64, 4)
    assert DataConfig(name="induction_head").with_defaults().num_examples == 5000
    assert DataConfig(name="selective_copying").with_defaults().vocab_size == 16
    with pytest.raises(ValueError, match="split must be one of \\('train', 'validation'\\); got 'test'"):
        make_dataset(DataConfig(), "test")


# --- images -----------------------------------------------------------------------------------------


def test_digits_splits_are_disjoint_deterministic_and_in_range():
    from sklearn.datasets import load_digits

    train = make_dataset(DataConfig(name="digits"), "train")
    val = make_dataset(DataConfig(name="digits"), "validation")
    assert (train.num_examples, val.num_examples) == (1617, 180)
    assert (train.image_size, train.channels, train.num_classes) == (8, 1, 10)
    # Every image is one of scikit-learn's, mapped by x / 8 - 1, and the two splits share none.
    raw = load_digits()
    want = {
        (img.astype(np.float32) / 8 - 1).tobytes(): y for img, y in zip(raw.images, raw.target, strict=True)
    }
    seen = [img[..., 0].tobytes() for img in np.concatenate([train.images, val.images])]
    assert len(set(seen)) == len(set(want)) and set(seen) <= set(want)
    assert not {i.tobytes() for i in train.images} & {i.tobytes() for i in val.images}
    assert all(want[img[..., 0].tobytes()] == y for img, y in zip(val.images, val.labels, strict=True))
    again = make_dataset(DataConfig(name="digits"), "validation")
    np.testing.assert_array_equal(again.images, val.images)
    other = make_dataset(DataConfig(name="digits", seed=1), "validation")
    assert not np.array_equal(other.labels, val.labels)


def test_digits_batches_by_step_and_eval_padding():
    data = make_dataset(DataConfig(name="digits", image_size=16), "train")
    batch = data.batch(5, 32)
    assert batch["images"].shape == (32, 16, 16, 1) and batch["images"].dtype == np.float32
    assert batch["labels"].dtype == np.int32 and batch["weights"].tolist() == [1.0] * 32
    assert -1.0 <= batch["images"].min() and batch["images"].max() <= 1.0
    np.testing.assert_array_equal(data.batch(5, 32)["images"], batch["images"])
    halves = [data.batch(5, 32, process_index=i, process_count=2)["labels"] for i in range(2)]
    np.testing.assert_array_equal(np.concatenate(halves), batch["labels"])
    last = list(make_dataset(DataConfig(name="digits"), "validation").eval_batches(64))[-1]
    assert last["weights"].sum() == 180 - 128 and (last["images"][52:] == 0).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(name="digits", seq_len=64), "seq_len applies to token datasets"),
        (dict(name="digits", image_size=4), "image_size=4 must be >= 8"),
        (dict(name="digits", path="x.png"), "reads no files"),
    ],
)
def test_digits_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DataConfig(**kwargs)
