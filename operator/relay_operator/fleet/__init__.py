"""The fleet controller: what the relay pods themselves report (queue figures into status), and, as the
next issues add them, drain and hand-off on scale-down and queue-aware autoscaling."""
