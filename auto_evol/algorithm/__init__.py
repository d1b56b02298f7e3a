"""The paper's algorithm, Auto Evol-Instruct: the method and its rendering (method), evolving one
item (trajectory) and an evolve phase's item (rounds), the optimizer's analysis (feedback) and
rewrite (candidate), the dev set (devset) and the failure rate on it (evaluation, failure), the
LLM judges (judge), the choice among candidates (selection, stats), reading replies (parsing),
compare's result (comparison), and a step's calls on one event loop, phases overlapping (phases).
It drives LLM roles through llm's client and writes no tracking records: MLflow, Ray and the
terminal hear it from outside.

May import: core, storage, llm.
"""
