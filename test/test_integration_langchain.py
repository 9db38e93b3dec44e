"""The LangChain integration, proven by LangChain's own standard suites (``langchain-tests``), run
unchanged against the simulator over real HTTP, the local model, and the embedded Postgres; then
what those suites do not reach: filters, the retriever, collections, skip-unchanged, and the
indexing API with a record manager.

Skipped standard tests: none. The harness only supplies what each suite asks its subclass for
(the class, its parameters, a fresh empty store per test).
"""
from __future__ import annotations

import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.indexing import InMemoryRecordManager, index
from langchain_tests.integration_tests import EmbeddingsIntegrationTests, VectorStoreIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests

from sections.integrations.common import NotStored
from sections.integrations.langchain import SectionsEmbeddings, SectionsVectorStore, langchain_filter
from sections.records import SearchFilter
from sections.store.supabase_store import SupabaseStore

MODEL = "text-embedding-3-small"
NOWHERE = "http://127.0.0.1:9/v1"  # constructing makes no request


class TestEmbeddingsUnit(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[SectionsEmbeddings]:
        return SectionsEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"model": MODEL, "api_key": "test", "base_url": NOWHERE}

    @property
    def init_from_env_params(self) -> tuple[dict, dict, dict]:
        return ({"OPENAI_API_KEY": "from-env", "OPENAI_BASE_URL": NOWHERE}, {"model": MODEL},
                {"model": MODEL, "base_url": NOWHERE})


class TestEmbeddingsOverTheSimulator(EmbeddingsIntegrationTests):
    @pytest.fixture(autouse=True)
    def _server(self, sim):
        self.base_url = sim.base_url

    @property
    def embeddings_class(self) -> type[SectionsEmbeddings]:
        return SectionsEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"model": MODEL, "api_key": "test", "base_url": self.base_url}


class TestEmbeddingsLocalModel(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[SectionsEmbeddings]:
        return SectionsEmbeddings  # the default model: all-MiniLM-L6-v2, shipped as a package


class TestVectorStoreWithTheSuitesEmbeddings(VectorStoreIntegrationTests):
    """The suite's own fake embeddings (6 dimensions): vectors from a function we did not build."""

    @pytest.fixture
    def vectorstore(self, database_url):
        with SectionsVectorStore(self.get_embeddings(), database_url=database_url) as store:
            yield store


class TestVectorStoreWithOurEmbeddings(VectorStoreIntegrationTests):
    """Our engine embedding, through the simulator: the store hands it only what is due."""

    @pytest.fixture
    def vectorstore(self, database_url, sim):
        embeddings = SectionsEmbeddings(model=MODEL, api_key="test", base_url=sim.base_url)
        with SectionsVectorStore(embeddings, database_url=database_url) as store:
            yield store
        embeddings.close()


# -- beyond the standard suites -----------------------------------------------------------------------


@pytest.fixture
def fake_store(database_url):
    with SectionsVectorStore(DeterministicFakeEmbedding(size=8), database_url=database_url) as store:
        yield store


DOCS = [Document(page_content="red apple", metadata={"kind": "fruit", "color": "red", "n": 1}, id="a"),
        Document(page_content="green apple", metadata={"kind": "fruit", "color": "green", "n": 2}, id="b"),
        Document(page_content="red car", metadata={"kind": "car", "color": "red", "n": 3}, id="c")]


def test_filters_in_langchains_form(fake_store):
    fake_store.add_documents(DOCS)
    ids = lambda f: sorted(d.id for d in fake_store.similarity_search("red apple", k=10, filter=f))  # noqa: E731
    assert ids({"color": "red"}) == ["a", "c"]
    assert ids({"color": {"$eq": "red"}, "kind": "fruit"}) == ["a"]
    assert ids({"$and": [{"kind": "fruit"}, {"n": {"$eq": 2}}]}) == ["b"]
    assert ids({"$and": [{"color": "red"}, {"color": "green"}]}) == []  # can match nothing
    assert ids(None) == ids({}) == ["a", "b", "c"]
    for refused in ({"n": {"$gt": 1}}, {"$or": [{"kind": "car"}]}, {"color": {"$in": ["red"]}},
                    {"color": ["red"]}, {"n": {"$eq": 1, "$ne": 2}}):
        with pytest.raises(ValueError, match="not supported"):
            fake_store.similarity_search("x", filter=refused)


def test_the_filter_translation_is_containment_of_equalities():
    assert langchain_filter({"a": 1, "$and": [{"b": {"$eq": None}}]}) == SearchFilter(metadata={"a": 1, "b": None})


def test_scores_are_cosine_distances_and_relevance_is_their_complement(fake_store):
    fake_store.add_documents(DOCS)
    (best, distance), *_ = fake_store.similarity_search_with_score("green apple", k=3)
    assert best.id == "b" and distance == pytest.approx(0.0, abs=1e-5)
    (_, relevance), *_ = fake_store.similarity_search_with_relevance_scores("green apple", k=1)
    assert relevance == pytest.approx(1.0, abs=1e-5)
    vector = fake_store.embeddings.embed_query("red car")
    assert [d.id for d in fake_store.similarity_search_by_vector(vector, k=1)] == ["c"]


def test_as_retriever(fake_store):
    fake_store.add_documents(DOCS)
    retriever = fake_store.as_retriever(search_kwargs={"k": 1, "filter": {"kind": "car"}})
    assert [d.id for d in retriever.invoke("red apple")] == ["c"]


def test_collections_keep_apart(database_url):
    embeddings = DeterministicFakeEmbedding(size=8)
    shared = SupabaseStore(database_url)
    with SectionsVectorStore(embeddings, connection=shared, collection_name="docs") as docs, \
            SectionsVectorStore(embeddings, connection=shared, collection_name="notes") as notes:
        docs.add_texts(["one", "two"], ids=["d1", "d2"])
        notes.add_texts(["one"], ids=["n1"])
        assert [d.id for d in notes.similarity_search("one", k=5)] == ["n1"]
        notes.delete(["d1"])  # another collection's id: untouched
        assert len(docs.get_by_ids(["d1", "d2"])) == 2 and notes.get_by_ids(["d1"]) == []
        with pytest.raises(NotStored, match="already stored in collection 'docs'"):
            notes.add_texts(["clash"], ids=["d2"])
        docs.delete_collection()
        assert docs.similarity_search("one") == []
    assert shared.collections() == {"notes": 1}  # handed in: still open, the caller's to close
    shared.close()


def test_unchanged_texts_are_not_embedded_again(database_url, sim):
    embeddings = SectionsEmbeddings(model=MODEL, api_key="test", base_url=sim.base_url, cache_size=0)
    with SectionsVectorStore(embeddings, database_url=database_url) as store:
        store.add_texts(["alpha", "beta"], ids=["1", "2"])
        sent = sim.stats()["inputs"]
        store.add_texts(["alpha", "beta changed"], [{"v": 1}, {}], ids=["1", "2"])
        assert sim.stats()["inputs"] - sent == 1  # only the changed text
        assert store.get_by_ids(["1"]) == [Document(id="1", page_content="alpha", metadata={"v": 1})]
    embeddings.close()


def test_what_the_store_cannot_hold_is_refused_before_anything_is_written(fake_store):
    with pytest.raises(ValueError, match="NUL"):
        fake_store.add_texts(["fine", "bad\x00text"], ids=["ok", "bad"])
    with pytest.raises(ValueError, match="not JSON"):
        fake_store.add_texts(["x"], [{"when": object()}])
    assert fake_store.get_by_ids(["ok"]) == []
    with pytest.raises(ValueError, match="delete_collection"):
        fake_store.delete()


def test_indexing_api_cleanup_and_skip_unchanged(database_url, sim):
    embeddings = SectionsEmbeddings(model=MODEL, api_key="test", base_url=sim.base_url, cache_size=0)
    with SectionsVectorStore(embeddings, database_url=database_url) as store:
        manager = InMemoryRecordManager("sections/test")
        manager.create_schema()
        docs = [Document(page_content=f"page {i}", metadata={"source": f"{i}.md"}) for i in range(4)]
        assert index(docs, manager, store, cleanup="full", source_id_key="source", key_encoder="sha256") == {
            "num_added": 4, "num_updated": 0, "num_skipped": 0, "num_deleted": 0}
        docs[0] = Document(page_content="page 0, edited", metadata={"source": "0.md"})
        assert index(docs[:3], manager, store, cleanup="full", source_id_key="source", key_encoder="sha256") == {
            "num_added": 1, "num_updated": 0, "num_skipped": 2, "num_deleted": 2}
        assert sorted(d.page_content for d in store.similarity_search("page", k=10)) == [
            "page 0, edited", "page 1", "page 2"]
        # a record manager that forgot everything re-adds every document; the store embeds none of them again
        sent = sim.stats()["inputs"]
        forgetful = InMemoryRecordManager("sections/test")
        forgetful.create_schema()
        assert index(docs[:3], forgetful, store, cleanup="incremental", source_id_key="source",
                     key_encoder="sha256")["num_added"] == 3
        assert sim.stats()["inputs"] == sent
    embeddings.close()


class _Refusing(DeterministicFakeEmbedding):
    """An embedding function whose provider refuses the key, and says so with the key in the message."""

    def embed_documents(self, texts):
        raise PermissionError("401: invalid api key sk-proj-abcdefghijklmnopqrstuvwxyz0123456789")


def test_a_foreign_function_that_fails_fails_its_texts_without_the_key(database_url):
    with SectionsVectorStore(_Refusing(size=4), database_url=database_url) as store:
        with pytest.raises(NotStored, match="PermissionError: 401") as raised:
            store.add_texts(["one", "two"], ids=["1", "2"])
        assert raised.value.summary["failed_ids"] == ["1", "2"] and "abcdefghij" not in str(raised.value)
        assert store.get_by_ids(["1"])[0].page_content == "one"  # stored, due: the next add embeds it
