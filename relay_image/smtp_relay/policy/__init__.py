"""Policy: the checks that decide whether a client, a transaction and a message are accepted, tagged,
deferred or refused, at each SMTP stage (connect, AUTH, MAIL, RCPT, end of DATA).

Layers inside: `verdict` (the vocabulary) < the pure helpers (dnsbl, spf, ratelimit, recipients,
mime, client_view, attachments, spam_builtin, scanners, quarantine, util, metrics, lookups) <
`chain` (the runner) < `checks/` (one module per stage, never importing each other) < `admission`,
`data_stage` < `engine` (the wiring). May import queue, delivery, config, model, telemetry and util;
never smtp or cleanup (cleanup's header composer is handed to the engine by the app).
"""
