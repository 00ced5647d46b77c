"""Loads the suite's fixtures (fixtures/ wraps the plain library in harness/)."""
pytest_plugins = ["fixtures.signals", "fixtures.options", "fixtures.testbed", "fixtures.cells", "fixtures.sessions",
                  "fixtures.serve"]
