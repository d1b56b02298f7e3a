"""What every layer shares, and nothing else: the exceptions the command line turns into one line
(errors), the folders that ship with auto-evol (resources), the events a run announces to its
observers (observer), and the rule that keeps credentials in URLs out of everything written
(secrets). Pure: no MLflow, DSPy, HTTP or terminal, so any module may import it at no cost.

May import: nothing of auto_evol.
"""
