"""The HTTP layer: the app, its routes, SSE framing, the body limit and the page.

It parses and checks requests, hands them to ``service.recommend`` and streams back what that
yields; it never touches the engine."""
