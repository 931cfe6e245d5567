"""The `corolla` command line."""
