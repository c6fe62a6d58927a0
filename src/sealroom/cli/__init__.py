"""The `sealroom` command line."""
