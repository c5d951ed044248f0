"""Build-time generator of the CRDs from the spec models in `smtp_relay.config.spec` (not part of the
operator's runtime or its wheel).

The models are the contract; the CRDs are derived from them so `kubectl explain`, admission and
the relay itself agree. `structural` converts pydantic's JSON schema, `rules` holds the CEL rules
with their Python mirrors, `documents` the CRDs around the schemas, `cli` the command line.
Imports only `smtp_relay.config`, pydantic and PyYAML; nothing at runtime imports crdgen.
"""
