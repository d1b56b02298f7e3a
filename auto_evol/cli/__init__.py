"""The command line: the typer app and its commands (main), presets and the one rule every verb
builds its options by, a typed flag over the preset over the default (config), and what the
terminal shows (console). The outermost layer: nothing imports it.

May import: core, storage, llm, algorithm, tracking, cluster, the verbs.
"""
