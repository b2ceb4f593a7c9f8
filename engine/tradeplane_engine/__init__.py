"""tradeplane's matching engine: the pure core (``core``), the engine service around it
(``service``) and the recorder (``store``)."""
