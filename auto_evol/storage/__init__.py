"""A run's files on disk: datasets read in (data), output written in the formats fine-tuning tools
read (output), journals and atomic writes (checkpoint), evolve's work folder and its on-disk names
(workfolder), and one process per work folder, run and store (locks). These are the contracts a
rerun relies on; nothing here calls an LLM or knows the algorithm.

May import: core.
"""
