"""The HTTP routes, one module per resource; each hands off to the ChatService in app.state."""
