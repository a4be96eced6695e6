"""(filled by its command group)."""
