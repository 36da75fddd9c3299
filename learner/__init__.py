"""plaudit.learner."""
