"""The SmtpRelay controller: reconcile, validation, status and the pure renderers."""
