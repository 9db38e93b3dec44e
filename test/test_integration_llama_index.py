"""The LlamaIndex integration, tested from LlamaIndex's documented contract (``llama-index-core``
ships no conformance suite for embeddings or vector stores): the ``BaseEmbedding`` methods, sync
and async, against the simulator over real HTTP and the local model; the ``BasePydanticVectorStore``
methods (add, query, delete by ref doc, get/delete nodes, clear, their async forms, metadata
filters) on the embedded Postgres; and ``VectorStoreIndex`` built, queried, edited and reopened.
"""
from __future__ import annotations

import numpy as np
import pytest
from llama_index.core import Document, StorageContext, VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.types import (FilterCondition, FilterOperator, MetadataFilter, MetadataFilters,
                                                  VectorStoreQuery, VectorStoreQueryMode)

from sections.integrations.llama_index import SectionsEmbedding, SectionsVectorStore
from sections.simulator.server import expected_embedding

MODEL = "text-embedding-3-small"


@pytest.fixture
def embed_model(sim):
    model = SectionsEmbedding(model=MODEL, api_key="test", api_base=sim.base_url)
    yield model
    model.close()


@pytest.fixture
def store(embed_model, database_url):
    vector_store = SectionsVectorStore(embed_model, database_url=database_url)
    yield vector_store
    vector_store.close()


# -- the embedding -----------------------------------------------------------------------------------


def test_embedding_methods_sync_and_async_pair_every_vector_with_its_text(embed_model, sim):
    sim.configure(shuffle=True)  # replies out of order: each vector must still land on its text
    texts = [f"text number {i}" for i in range(300)]
    batch = embed_model.get_text_embedding_batch(texts)
    assert all(np.allclose(v, expected_embedding(t, MODEL), atol=1e-5) for v, t in zip(batch, texts))
    assert np.allclose(embed_model.get_query_embedding("q"), expected_embedding("q", MODEL), atol=1e-5)
    assert np.allclose(embed_model.get_text_embedding("t"), expected_embedding("t", MODEL), atol=1e-5)


async def test_embedding_async_methods(embed_model):
    texts = ["a", "b", "c"]
    batch = await embed_model.aget_text_embedding_batch(texts)
    assert all(np.allclose(v, expected_embedding(t, MODEL), atol=1e-5) for v, t in zip(batch, texts))
    assert np.allclose(await embed_model.aget_query_embedding("q"), expected_embedding("q", MODEL), atol=1e-5)
    assert np.allclose(await embed_model.aget_text_embedding("t"), expected_embedding("t", MODEL), atol=1e-5)


def test_embedding_names_and_the_local_model():
    local = SectionsEmbedding()  # all-MiniLM-L6-v2, shipped as a package: no key, no server
    assert local.model_name == "all-MiniLM-L6-v2" and len(local.get_query_embedding("hello")) == 384
    with pytest.raises(ValueError, match="same server"):
        SectionsEmbedding(model=MODEL, api_base="http://a/v1", base_url="http://b/v1")
    with pytest.raises(ValueError, match="index 1 is empty"):
        local.get_text_embedding_batch(["fine", " "])


# -- the vector store --------------------------------------------------------------------------------


def _nodes(embed_model, *specs):
    """TextNodes with ids, metadata and a source document, embedded as LlamaIndex embeds them."""
    nodes = []
    for node_id, text, metadata, doc in specs:
        node = TextNode(id_=node_id, text=text, metadata=metadata,
                        relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=doc)})
        node.embedding = embed_model.get_text_embedding(node.get_content(metadata_mode="embed"))
        nodes.append(node)
    return nodes


SPECS = [("n1", "red apple", {"kind": "fruit", "tags": ["red", "round"]}, "doc-a"),
         ("n2", "green apple", {"kind": "fruit", "tags": ["green", "round"]}, "doc-a"),
         ("n3", "red car", {"kind": "car", "tags": ["red"]}, "doc-b")]


def _query(store, embed_model, text, k=10, filters=None, **extra):
    query = VectorStoreQuery(query_embedding=embed_model.get_query_embedding(text), similarity_top_k=k,
                             filters=filters, query_str=text, **extra)
    return store.query(query)


def test_add_query_and_the_node_comes_back_whole(store, embed_model):
    nodes = _nodes(embed_model, *SPECS)
    assert store.add(nodes) == ["n1", "n2", "n3"]
    exact = nodes[2].get_content(metadata_mode="embed")
    result = _query(store, embed_model, exact, k=2)
    assert result.ids[0] == "n3" and result.similarities[0] == pytest.approx(1.0, abs=1e-5)
    assert result.similarities == sorted(result.similarities, reverse=True) and len(result.nodes) == 2
    back = result.nodes[0]
    assert (back.node_id, back.text, back.metadata, back.ref_doc_id) == ("n3", "red car", SPECS[2][2], "doc-b")


def test_metadata_filters_we_support_and_refuse(store, embed_model):
    store.add(_nodes(embed_model, *SPECS))
    ids = lambda *filters, **kw: sorted(_query(store, embed_model, "apple", filters=MetadataFilters(  # noqa: E731
        filters=list(filters), **kw)).ids)
    eq = lambda key, value: MetadataFilter(key=key, value=value)  # noqa: E731
    assert ids(eq("kind", "fruit")) == ["n1", "n2"]
    assert ids(MetadataFilter(key="tags", value="red", operator=FilterOperator.CONTAINS)) == ["n1", "n3"]
    assert ids(MetadataFilter(key="tags", value=["red", "round"], operator=FilterOperator.ALL)) == ["n1"]
    assert ids(eq("kind", "fruit"), MetadataFilters(filters=[eq("ref_doc_id", "doc-a")])) == ["n1", "n2"]
    assert ids(eq("kind", "fruit"), eq("kind", "car")) == []  # can match nothing
    assert _query(store, embed_model, "apple", doc_ids=["doc-b"]).ids == ["n3"]
    for refused in (MetadataFilters(filters=[MetadataFilter(key="kind", value="car", operator=FilterOperator.NE)]),
                    MetadataFilters(filters=[eq("kind", "car"), eq("kind", "fruit")], condition=FilterCondition.OR),
                    MetadataFilters(filters=[MetadataFilter(key="n", value=1, operator=FilterOperator.GT)])):
        with pytest.raises(ValueError, match="not supported"):
            _query(store, embed_model, "apple", filters=refused)


def test_delete_by_ref_doc_get_and_delete_nodes_clear(store, embed_model):
    store.add(_nodes(embed_model, *SPECS))
    store.delete("doc-a")
    assert [n.node_id for n in store.get_nodes()] == ["n3"]
    store.add(_nodes(embed_model, *SPECS))
    assert [n.node_id for n in store.get_nodes(["n1", "n3", "missing"])] == ["n1", "n3"]
    fruit = MetadataFilters(filters=[MetadataFilter(key="kind", value="fruit")])
    assert [n.node_id for n in store.get_nodes(["n1", "n3"], filters=fruit)] == ["n1"]
    store.delete_nodes(filters=fruit)
    assert [n.node_id for n in store.get_nodes()] == ["n3"]
    store.delete_nodes(["n3"])
    assert store.get_nodes() == []
    store.add(_nodes(embed_model, *SPECS))
    store.clear()
    assert _query(store, embed_model, "apple").ids == []
    with pytest.raises(ValueError, match="clear"):
        store.delete_nodes()


async def test_async_methods(store, embed_model):
    assert await store.async_add(_nodes(embed_model, *SPECS)) == ["n1", "n2", "n3"]
    query = VectorStoreQuery(query_embedding=embed_model.get_query_embedding("red car"), similarity_top_k=3)
    assert len((await store.aquery(query)).ids) == 3
    await store.adelete("doc-b")
    assert [n.node_id for n in await store.aget_nodes()] == ["n1", "n2"]
    await store.adelete_nodes(["n1"])
    await store.aclear()
    assert await store.aget_nodes() == []


def test_unchanged_nodes_are_not_written_again(store, embed_model, db):
    store.add(_nodes(embed_model, *SPECS))
    versions = lambda: dict(db.execute(  # noqa: E731
        "select section_id, xmin::text from section_embeddings").fetchall())
    before = versions()
    edited = [SPECS[0], ("n2", "green apple, sliced", SPECS[1][2], "doc-a"), SPECS[2]]
    store.add(_nodes(embed_model, *edited))
    after = versions()
    assert [i for i in before if before[i] != after[i]] == ["n2"]


def test_hybrid_mode_and_refused_modes(store, embed_model):
    store.add(_nodes(embed_model, *SPECS))
    hybrid = _query(store, embed_model, "car", mode=VectorStoreQueryMode.HYBRID)
    assert hybrid.ids[0] == "n3"  # the only section with the word
    with pytest.raises(ValueError, match="not supported"):
        _query(store, embed_model, "car", mode=VectorStoreQueryMode.MMR)


def test_a_foreign_embed_model_keeps_its_own_name(database_url):
    mock = MockEmbedding(embed_dim=8)
    vector_store = SectionsVectorStore(mock, database_url=database_url)
    node = TextNode(id_="m", text="hello")
    node.embedding = mock.get_text_embedding("hello")
    vector_store.add([node])
    assert vector_store.model_name == "MockEmbedding/unknown"
    assert vector_store.client.status("MockEmbedding/unknown")["MockEmbedding/unknown"]["embedded"] == 1
    with pytest.raises(ValueError, match="no embedding"):
        vector_store.add([TextNode(id_="bare", text="no vector")])
    vector_store.close()


def test_sections_the_store_holds_otherwise_come_back_as_text_nodes(store, embed_model):
    store.client.ingest([{"id": "cli", "title": "From the CLI", "content": "a section read from a file",
                          "metadata": {"source": "x.md"}}], embed_model.service)
    (node,) = store.get_nodes(["cli"])
    assert isinstance(node, TextNode) and node.text == "From the CLI\n\na section read from a file"
    assert _query(store, embed_model, "From the CLI\n\na section read from a file", k=1).ids == ["cli"]


# -- end to end: VectorStoreIndex -------------------------------------------------------------------------


def test_vector_store_index_build_query_edit_and_reopen(embed_model, database_url):
    documents = [Document(text="The capital of France is Paris.", doc_id="france", metadata={"topic": "geo"}),
                 Document(text="Python was created by Guido van Rossum.", doc_id="python", metadata={"topic": "code"})]
    vector_store = SectionsVectorStore(embed_model, database_url=database_url, collection_name="kb")
    index = VectorStoreIndex.from_documents(
        documents, storage_context=StorageContext.from_defaults(vector_store=vector_store), embed_model=embed_model)
    question = documents[1].get_content(metadata_mode="embed")  # the simulator's vectors match exact texts only
    (best, *_) = index.as_retriever(similarity_top_k=2).retrieve(question)
    assert best.node.ref_doc_id == "python" and best.score == pytest.approx(1.0, abs=1e-5)
    index.delete_ref_doc("python")
    index.insert(Document(text="Rust was created by Graydon Hoare.", doc_id="rust", metadata={"topic": "code"}))
    vector_store.close()

    reopened = SectionsVectorStore(embed_model, database_url=database_url, collection_name="kb")
    again = VectorStoreIndex.from_vector_store(reopened, embed_model=embed_model)
    found = {n.node.ref_doc_id for n in again.as_retriever(similarity_top_k=5).retrieve(question)}
    assert found == {"france", "rust"}
    code_only = again.as_retriever(similarity_top_k=5, filters=MetadataFilters(
        filters=[MetadataFilter(key="topic", value="code")])).retrieve(question)
    assert [n.node.ref_doc_id for n in code_only] == ["rust"]
    reopened.close()
