"""plaudit.daemon: process life: CLI, config, signals, systemd notify, logging, metrics, HTTP."""
