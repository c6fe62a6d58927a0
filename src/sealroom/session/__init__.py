"""One client session as a state machine: lines in, replies and effects out."""
