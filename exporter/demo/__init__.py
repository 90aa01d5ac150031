"""The Shoplazza API simulator behind ``--demo`` and the tests, with the demo's tasks."""
