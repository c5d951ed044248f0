"""Delivery: sends each spooled message along `spec.routing` and reports one outcome per recipient.

Routing (router), the relay's DNS resolver (resolver), upstream sessions (connection), the smarthost
connection pools (pool), the SMTP client wire protocol with pipelining and BDAT (pipelining), one
transaction's replies as outcomes (transaction), the capture Maildir (capture), and the `Deliverer`
that ties them together (deliverer). May import only config, model, telemetry and util.
"""
