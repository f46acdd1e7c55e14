"""Entry points for the platforms users run the app on (brainlife.io); the app itself stays one BIDS-App."""
