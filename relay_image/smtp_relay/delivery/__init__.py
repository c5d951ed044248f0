"""Delivery: routing, smarthosts, MX, the SMTP client wire protocol, capture."""
