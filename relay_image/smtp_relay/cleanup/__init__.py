"""Cleanup: trace headers and every header the relay adds to a message.

May import policy (the spam report it turns into headers) and the packages below it.
"""
