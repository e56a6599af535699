"""Unattended operation: state, opening hours, health, systemd notify, logs, display blanking."""
