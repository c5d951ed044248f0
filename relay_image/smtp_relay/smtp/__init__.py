"""The SMTP listener: takes mail from clients, checks every step against admission and policy, queues it.

May import cleanup (the headers the relay adds), policy, and config, model, telemetry; the queue is
reached only through the `MessageSink` the process wiring (app) gives the server.
"""
