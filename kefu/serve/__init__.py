"""`kefu serve`: the assistant behind an OpenAI-compatible API, a web page and WeChat."""
