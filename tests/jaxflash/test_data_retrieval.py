"""The standard-library documentation retrieval task (jaxflash.data.retrieval)."""

import os
import re
import sys

import pytest

from jaxflash.data.retrieval import MIN_QUERY_WORDS, python_docs_corpus, split_of, summary_of


@pytest.fixture(scope="module")
def corpus():
    return python_docs_corpus()


def test_splits_are_disjoint_and_cover_every_document(corpus):
    seen = []
    for split in ("train", "validation", "test"):
        assert len(corpus.queries[split]) == len(corpus.qrels[split]) > 10
        for rel in corpus.qrels[split]:
            (doc,) = rel
            assert rel[doc] == 1
            assert split_of(corpus.names[doc]) == split
            seen.append(doc)
    assert sorted(seen) == list(range(len(corpus.documents)))
    assert len(corpus.documents) > 250


def test_queries_are_summaries_removed_from_their_pages(corpus):
    by_name = dict(zip(corpus.names, corpus.documents, strict=True))
    assert corpus.names.index("json") >= 0
    json_page = by_name["json"]
    assert "JSON (JavaScript Object Notation)" not in json_page
    assert "dumps(" in json_page and "loads(" in json_page
    for split in corpus.queries:
        for query, rel in zip(corpus.queries[split], corpus.qrels[split], strict=True):
            (doc,) = rel
            assert len(query.split()) >= MIN_QUERY_WORDS
            page = corpus.documents[doc]
            assert re.search(r"\s+".join(map(re.escape, query.split())), page) is None
    all_queries = [q for split in corpus.queries.values() for q in split]
    assert len(set(all_queries)) == len(all_queries)


def test_pages_hold_nothing_of_the_machine(corpus):
    for page in corpus.documents:
        assert sys.prefix not in page and os.getcwd() not in page and " at 0x" not in page
        assert "\nFILE\n" not in page and "MODULE REFERENCE" not in page and "\nDATA\n" not in page


def test_long_documents_span_the_range_the_retrieval_tables_need(corpus):
    lengths = sorted(len(d.encode()) for d in corpus.documents)
    assert lengths[len(lengths) // 10] < 2_000 and lengths[-len(lengths) // 10] > 32_000


def test_deterministic_split_and_summary():
    assert split_of("json") == split_of("json")
    assert summary_of("  First line\n  goes on.\n\n  Body.") == "First line goes on."
