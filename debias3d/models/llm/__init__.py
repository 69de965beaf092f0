"""debias3d.models.llm: context writers for semantic augmentation.

* :mod:`.base`        ``ContextWriter`` protocol, ``LLMResult``, ``ContextRequest``
* :mod:`.template`    ``template``: offline ShapeWorld-grammar writer (default)
* :mod:`.openai_llm`  ``openai``: any OpenAI-compatible chat endpoint (key from ``OPENAI_API_KEY``)
"""
