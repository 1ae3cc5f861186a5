"""Input channels: where customers' messages arrive from besides the HTTP API (WeChat, ...)."""
