"""The web dashboard (``ltemlive dashboard``): a gateway that follows the update stream and renders the
pictures (gateway.py), and the FastAPI app that serves them and the page to browsers (server.py)."""
