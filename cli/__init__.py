"""The `bounds` command line."""
