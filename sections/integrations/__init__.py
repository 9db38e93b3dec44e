"""Our engine and store inside the frameworks people already use: ``sections.integrations.langchain``
(``pip install 'sections-pgvector[langchain]'``) and ``sections.integrations.llama_index``
(``pip install 'sections-pgvector[llama-index]'``).

Neither framework is a dependency of the core: nothing outside these modules imports them, and this
package's ``__init__`` imports nothing, so ``import sections`` never loads LangChain or LlamaIndex.
"""
