"""The relay policy chain: checks that decide whether a message is accepted, tagged, deferred or refused."""
