"""The protocol core: wire grammar, error codes, text rules and domain types. No I/O."""
