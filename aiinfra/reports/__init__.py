"""Self-contained HTML reports: one page layout (``html``) and one way to embed a plot (``figures``).

Both the evaluation report of a training run and the demo's loop report render through this kit.
It sits low in the layering: it imports only Jinja2 and matplotlib, so any layer may use it.
"""
