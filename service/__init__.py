"""Leafresh challenge recommender: the service behind the Leafresh chatbot."""
