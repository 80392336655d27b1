"""The agents tier: the real provisioning agents, installed from PyPI, driving rawfetch."""
