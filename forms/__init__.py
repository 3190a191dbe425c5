"""WTForms forms of the custom views (Flask-WTF: CSRF on every POST)."""
