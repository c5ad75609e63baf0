"""Programs around the product rather than in it: the demo workflows and the local
Alertmanager webhook receiver of the compose stack.

May import: anything in the package.
"""
