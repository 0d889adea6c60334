"""dialer: an outbound-call dialer for Twilio that never has more than N calls in flight."""

__version__ = "0.1.0"
