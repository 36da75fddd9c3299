"""plaudit.state."""
