"""Roles whose calls go to a provider's batch endpoint (``--batch``): the batcher (batcher), the table
of batch endpoints, OpenAI and Anthropic (endpoints), and the journal that keeps a rerun from paying
twice (journal). Part of the llm layer, under its rule.
"""
