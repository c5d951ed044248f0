"""The durable spool: a message gets its 250 only once it is on disk, and survives any crash.

Group commit: messages that arrive within a short window are appended to one append-only segment
file with a single write and a single `fdatasync`, which costs a fraction of a per-message file +
fsync + rename. Delivery progress goes to a separate journal that is synced lazily: losing its
tail only repeats a delivery (at-least-once), never loses one.

Modules: `records` (file names and byte format), `recovery` (lock and read back at open), `files`
(the writer thread, which alone changes the segments and the journal), `writer` (group commit),
`journal` (lazy progress and segment removal), `index` (the SQLite index's statements and queries),
`indexer` (the index thread, off the commit path), `store` (the `Spool` callers use). Imports only
`model` and `util`.
"""
