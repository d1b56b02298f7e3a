"""Beyond one machine: joining a Ray cluster and its checks (connect), and evolve's phases and
optimize's dev evaluation as Ray Data pipelines, vLLM engine stages included (pipeline). The items'
steps are the algorithm's own (algorithm.rounds, algorithm.trajectory), so a cluster run writes the
records a local one does.

May import: core, storage, llm, algorithm.
"""
