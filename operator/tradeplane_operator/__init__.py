"""tradeplane operator: turns Market custom resources into matching-engine pods (kopf)."""
