"""The configuration bundle's generators: the mixin config, the Prometheus alert and
recording rules, the grafanalib dashboard helpers, and the README's metric table.

May import: the core only (the catalog above all), so everything generated derives from
the one declaration of each metric.
"""
