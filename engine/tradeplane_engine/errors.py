"""The root of every error the engine raises, so that a caller can catch them all.

    TradeplaneEngineError
    ├── OffGrid              core.market: a price or quantity off the market's grid
    │                        (also a ValueError)
    ├── AccessError          access: credentials that cannot be read or used
    ├── FeedError            feed: a stream cannot give its reader what it needs
    ├── PublishError         service.events: events not stored in the events stream
    │   └── Fenced           a newer leader holds the market
    ├── NotLeadingError      service.lease: this replica does not lead the market
    └── SnapshotUnavailable  store.snapshots: a requested snapshot cannot be taken

Control-flow signals that never leave their module (``store.recorder.Resync``) are not
errors and do not derive from it.
"""

from __future__ import annotations


class TradeplaneEngineError(Exception):
    """Base of every error the engine raises."""
