"""tradeplane gateway: the public protocol, order entry validation and the client SDK."""
