"""Process life: wiring, reload, systemd, control socket, metrics, logs."""
