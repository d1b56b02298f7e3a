"""The LLM layer: how a role's calls are made, whatever model stands behind it. client (a role:
replies, usage, structured output and its fallback, the outage window), reply formats (replies),
backends (a role from its model string, key checks, the response cache), roles (a verb's roles:
checked, built, sharing one Llm and one limit per server), the engines (http_engine: pooled
OpenAI-compatible; gguf_engine: the embedded model in process), provider rules (providers), the
provider check (check), the adaptive limit (concurrency), prices (cost), DSPy adjustments
(dspy_tuning) and provider batch APIs (batch/). It knows nothing of methods or failure rates.

May import: core, storage.
"""
