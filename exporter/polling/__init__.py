"""Polling the API: due tasks, budgets, the scheduler, the HTTP client and transport, and
the state file (docs/design.md, "Module map"). It never imports metrics or web."""
