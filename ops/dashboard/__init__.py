"""The web dashboard: `/` and its assets (`static/`), plain ES modules and CSS, no build step."""
