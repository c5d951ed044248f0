"""The admin stage: the relay's HTTP side and the `--workers` supervisor.

- `http`: the relay process's admin server (/metrics, /livez, /readyz, /queue, POST /drain), kept apart
  from SMTP so the probes answer while SMTP drains or is overloaded; `quarantine_api` adds /quarantine*,
  `handoff_api` /handoff (taking a draining relay's message); `handoff_send` hands this relay's queue to the
  peers a /drain names, in the format of `handoff_wire` (pure).
- `supervisor`: `smtp-relay run --workers N`, N relay processes under one supervisor (process control);
  `fleet` is what it runs (its workers, whose spool is whose), `supervisor_http` its public admin
  port answered by asking the workers, `merging` the pure sums of their figures.

May import every stage below it (smtp, cleanup, policy, queue, delivery, config, model, telemetry,
util); never `smtp_relay.app` or `smtp_relay.cli`, which import it. The supervisor starts its workers as
`python -m smtp_relay.cli` processes, it does not import them.
"""
