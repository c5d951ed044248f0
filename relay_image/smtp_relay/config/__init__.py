"""The one contract and how it is read: spec models, manifest loading, units, the resolved config."""
