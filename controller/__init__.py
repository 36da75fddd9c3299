"""plaudit.controller."""
