"""What a run leaves in MLflow and for people to read afterwards: the store and resume state
(store), the run loggers as observers (loggers), the prompt registry as a home for methods
(registry), the MLflow UI server and its process group (ui, process_group), and compare's report
(report). Wrapped around the algorithm, never inside it: the verbs hand it their events.

May import: core, storage, llm, algorithm.
"""
