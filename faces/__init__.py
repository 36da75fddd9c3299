"""plaudit.faces."""
