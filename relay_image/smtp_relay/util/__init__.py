"""Small helpers with no relay knowledge (durable file writes)."""
