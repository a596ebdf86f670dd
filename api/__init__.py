"""REST API on the web app's Flask server."""
