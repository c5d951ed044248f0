"""The message data model every stage shares: envelopes, stored messages, delivery outcomes."""
