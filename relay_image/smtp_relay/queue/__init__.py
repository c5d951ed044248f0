"""The queue: durable spool, scheduler, backoff and bounces."""
