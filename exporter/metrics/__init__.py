"""Memory to metrics: the metric families and the /metrics body (docs/design.md, "Module
map"). It reads only :mod:`exporter.model` views and never imports polling."""
