"""`daclip-jax serve`: the web app. handler (requests, no web framework), page (Gradio),
examples (scikit-image photos to try)."""
