"""Build-time generator of the CRDs from the spec models (not part of the operator's runtime)."""
