"""The recommendation domain: the wire contract, the catalog, prompts, conversations and
sessions, the answer and its rendering, admission, and the service that ties them to the
engine. It imports the engine's interface, never the HTTP layer."""
